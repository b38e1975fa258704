"""Synthetic talking heads whose mouth motion is a known function of the audio.

Audio: a small source-filter synthesiser. A glottal pulse train at the speaker's pitch goes through
formant resonators, one set per vowel. Each vowel has its own articulation:

    vowel  F1/F2/F3 (Hz)     jaw   spread  round
    a      800/1200/2500     1.0   0.2     0.0
    e      500/1900/2500     0.5   0.6     0.0
    i      300/2300/3000     0.15  1.0     0.0
    o      500/ 900/2400     0.6   0.0     0.7
    u      320/ 800/2300     0.2   0.0     1.0

p/b/m are lip closures (all articulators 0) and pauses return to neutral (also 0).

Video: a face photo warped frame by frame. Dense displacement fields anchored on the photo's MediaPipe
landmarks open the jaw, spread or round the lips; the inner-lip polygon is painted as the mouth
interior; a small slow similarity transform adds head motion. 30 fps by default.

Output, per clip: `OUT/<speaker>/<clip_id>.mp4` (H.264 + AAC) and `<clip_id>.gt.npz` with the
articulation per video frame (jaw, spread, round), the head motion and any injected faults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import signal
from scipy.ndimage import gaussian_filter1d
from tqdm.auto import tqdm

from . import files, media, regions, trackers

VOWELS = {  # formants (Hz), articulation (jaw, spread, round)
    "a": ((800, 1200, 2500), (1.0, 0.2, 0.0)),
    "e": ((500, 1900, 2500), (0.5, 0.6, 0.0)),
    "i": ((300, 2300, 3000), (0.15, 1.0, 0.0)),
    "o": ((500, 900, 2400), (0.6, 0.0, 0.7)),
    "u": ((320, 800, 2300), (0.2, 0.0, 1.0)),
}
CONSONANTS = ("p", "b", "m", "")
ARTICULATORS = ("jaw", "spread", "round")
SPEAKER_PITCH_HZ = (115.0, 210.0, 150.0, 260.0, 95.0)
FACE_SIZE = 256


@dataclass
class Faults:
    """Defects injected on purpose, so QA has something to catch."""
    audio_offset_frames: int = 0  # > 0: audio starts k frames late relative to the mouth
    dropped_frames: int = 0  # video frames removed at random
    no_face_frames: int = 0  # consecutive frames replaced by an empty background


# ----------------------------------------------------------------------------------- audio

def _resonator(x: np.ndarray, freq: float, bandwidth: float, sample_rate: int) -> np.ndarray:
    # Two-pole formant resonator (Klatt style): scipy has no ready-made one with this gain convention.
    r = math.exp(-math.pi * bandwidth / sample_rate)
    a = [1.0, -2 * r * math.cos(2 * math.pi * freq / sample_rate), r * r]
    return signal.lfilter([1 - r], a, x)


def _voiced(n: int, pitch: float, formants, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sample_rate
    f0 = pitch * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6)))
    phase = np.cumsum(f0 / sample_rate)
    source = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    source = signal.lfilter([1.0], [1.0, -0.95], source)  # glottal roll-off
    out = source
    for freq, bw in zip(formants, (80, 100, 140)):
        out = _resonator(out, freq, bw, sample_rate)
    return out / (np.abs(out).max() + 1e-9)


def _envelope(n: int, sample_rate: int, ramp_s: float = 0.012) -> np.ndarray:
    ramp = min(n // 2, int(ramp_s * sample_rate))
    env = np.ones(n)
    if ramp:
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
    return env


def synth_utterance(seconds: float, pitch: float, rng: np.random.Generator, sample_rate: int = 16000):
    """Return (audio float32, articulation per sample (n, 3), phoneme segments [(label, start_s, end_s)])."""
    n_total = int(round(seconds * sample_rate))
    audio = np.zeros(n_total)
    target = np.zeros((n_total, 3))
    segments = []
    pos = int(rng.uniform(0.15, 0.35) * sample_rate)  # leading pause
    while pos < n_total:
        for _ in range(rng.integers(1, 5)):  # a word of 1-4 syllables
            consonant = CONSONANTS[rng.integers(len(CONSONANTS))]
            vowel = "aeiou"[rng.integers(5)]
            if consonant:
                n = int(rng.uniform(0.06, 0.09) * sample_rate)
                if consonant == "p":  # silent closure, then a short noise burst at release
                    burst = int(0.012 * sample_rate)
                    seg = np.zeros(n)
                    seg[-burst:] = rng.normal(0, 0.25, burst)
                elif consonant == "b":  # voice bar: weak, low-passed voicing
                    seg = 0.15 * _voiced(n, pitch, (250, 1000, 2500), sample_rate, rng)
                else:  # nasal murmur
                    seg = 0.35 * _voiced(n, pitch, (260, 1100, 2600), sample_rate, rng)
                end = min(pos + n, n_total)
                audio[pos:end] = (seg * _envelope(n, sample_rate, 0.004))[: end - pos]
                segments.append((consonant, pos / sample_rate, end / sample_rate))
                pos = end
            if pos >= n_total:
                break
            formants, articulation = VOWELS[vowel]
            n = int(rng.uniform(0.12, 0.22) * sample_rate)
            end = min(pos + n, n_total)
            seg = 0.8 * _voiced(n, pitch, formants, sample_rate, rng) * _envelope(n, sample_rate)
            audio[pos:end] = seg[: end - pos]
            target[pos:end] = articulation
            segments.append((vowel, pos / sample_rate, end / sample_rate))
            pos = end
            if pos >= n_total:
                break
        pos += int(rng.uniform(0.18, 0.45) * sample_rate)  # pause between words
    audio += rng.normal(0, 0.002, n_total)  # faint room noise so silence is not digital zero
    # Articulators move smoothly (about 30 ms time constant): this is the coarticulation the model learns.
    target = gaussian_filter1d(target, sigma=0.03 * sample_rate, axis=0, mode="nearest")
    return (0.5 * audio).astype(np.float32), target, segments


# ----------------------------------------------------------------------------------- face

@dataclass
class FaceRig:
    image: np.ndarray  # (H, W, 3) RGB, mouth closed
    landmarks: np.ndarray  # (478, 3) pixels
    fields: np.ndarray  # (3, H, W, 2) displacement (dx, dy) in pixels per unit of each articulator


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _basis_fields(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Dense displacement fields for jaw, spread and round, anchored on the face's landmarks."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    upper, lower = landmarks[regions.UPPER_INNER_LIP, :2], landmarks[regions.LOWER_INNER_LIP, :2]
    left, right = landmarks[regions.MOUTH_CORNERS[0], :2], landmarks[regions.MOUTH_CORNERS[1], :2]
    chin = landmarks[regions.CHIN, :2]
    mouth_x, mouth_y = (left[0] + right[0]) / 2, (upper[1] + lower[1]) / 2
    half_width = abs(right[0] - left[0]) / 2
    chin_drop = chin[1] - mouth_y

    # Jaw: everything below the lip line moves down, most at the lower lip, fading past the chin.
    below = _smoothstep((ys - upper[1]) / max(lower[1] - upper[1] + 2, 3))
    fade = 1 - _smoothstep((ys - chin[1]) / (0.5 * chin_drop))
    sideways = np.exp(-(((xs - mouth_x) / (2.2 * half_width)) ** 2))
    jaw = np.stack([np.zeros_like(xs), 0.55 * half_width * below * fade * sideways], -1)

    # Spread / round: lip corners move out / in, confined to the mouth region.
    around_mouth = np.exp(-(((ys - mouth_y) / (0.7 * half_width)) ** 2)) * np.exp(-(((xs - mouth_x) / (1.6 * half_width)) ** 2))
    horizontal = np.clip((xs - mouth_x) / half_width, -1.5, 1.5) * around_mouth
    spread = np.stack([0.22 * half_width * horizontal, np.zeros_like(xs)], -1)
    rounding = np.stack([-0.3 * half_width * horizontal, 0.08 * half_width * below * fade * sideways], -1)
    return np.stack([jaw, spread, rounding]).astype(np.float32)


def _warp(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    # Backward mapping: for smooth small fields, sampling at x - d(x) approximates moving content by d.
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(image, xs - displacement[..., 0], ys - displacement[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


INNER_LIP_CONTOUR = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]


def load_face(face: str | Path | None = None, mirror: bool = False) -> FaceRig:
    """Crop a face photo (default: skimage's astronaut) to FACE_SIZE, close its mouth, and rig it."""
    if face is None:
        from skimage import data
        photo = data.astronaut()
    else:
        photo = cv2.cvtColor(cv2.imread(str(face)), cv2.COLOR_BGR2RGB) if Path(face).is_file() else None
        if photo is None:
            raise FileNotFoundError(f"face image {face} cannot be read; pass a JPEG or PNG photo of one frontal face")
    with trackers.FaceTracker(static=True) as tracker:
        landmarks = tracker(photo)
        if landmarks is None:
            raise ValueError(f"MediaPipe finds no face in {face or 'skimage.data.astronaut()'}; use a frontal face photo")
        x0, y0 = landmarks[:, :2].min(0)
        x1, y1 = landmarks[:, :2].max(0)
        side = 1.6 * max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.05 * side
        scale = FACE_SIZE / side
        affine = np.array([[scale, 0, FACE_SIZE / 2 - scale * cx], [0, scale, FACE_SIZE / 2 - scale * cy]], np.float32)
        image = cv2.warpAffine(photo, affine, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
        if mirror:
            image = image[:, ::-1].copy()
        landmarks = tracker(image)
        # Close the lips: a negative jaw opening as large as the gap between the inner lips.
        gap = landmarks[regions.LOWER_INNER_LIP, 1] - landmarks[regions.UPPER_INNER_LIP, 1]
        fields = _basis_fields(landmarks, FACE_SIZE, FACE_SIZE)
        jaw_per_unit = fields[0, int(landmarks[regions.LOWER_INNER_LIP, 1]), int(landmarks[regions.LOWER_INNER_LIP, 0]), 1]
        image = np.ascontiguousarray(_warp(image, -fields[0] * (0.9 * gap / jaw_per_unit)))
        # Cover what is left of the teeth with lip colour and draw the closed mouth's line, so that rest
        # is the most closed mouth the face shows (the astronaut smiles with her teeth showing).
        with trackers.FaceTracker(static=True) as tracker_closed:
            closed = tracker_closed(image)
        lip_colour = np.median(image[closed[regions.LIPS, 1].astype(int), closed[regions.LIPS, 0].astype(int)], axis=0)
        inner = np.round(closed[INNER_LIP_CONTOUR, :2] * 4).astype(np.int32)
        cv2.fillPoly(image, [inner], tuple(int(c) for c in lip_colour), lineType=cv2.LINE_AA, shift=2)
        cv2.polylines(image, [inner[:11]], False, tuple(int(c * 0.45) for c in lip_colour), 1, cv2.LINE_AA, shift=2)
        with trackers.FaceTracker(static=True) as tracker_closed:
            landmarks = tracker_closed(image)
    return FaceRig(image=image, landmarks=landmarks, fields=_basis_fields(landmarks, FACE_SIZE, FACE_SIZE))


def render_frame(rig: FaceRig, articulation: np.ndarray, head: np.ndarray) -> np.ndarray:
    """One frame: articulation (3,) in [0, 1], head (4,) = (roll degrees, dx px, dy px, log scale)."""
    displacement = np.tensordot(np.asarray(articulation, np.float32), rig.fields, axes=1)
    frame = _warp(rig.image, displacement)
    contour = rig.landmarks[INNER_LIP_CONTOUR, :2]
    ix, iy = np.clip(contour.astype(int), 0, FACE_SIZE - 1).T
    moved = contour + displacement[iy, ix]
    upper, lower = INNER_LIP_CONTOUR.index(regions.UPPER_INNER_LIP), INNER_LIP_CONTOUR.index(regions.LOWER_INNER_LIP)
    if (moved - contour)[lower, 1] - (moved - contour)[upper, 1] > 0.5:  # an open mouth shows a dark interior
        cv2.fillPoly(frame, [np.round(moved * 4).astype(np.int32)], (70, 25, 30), lineType=cv2.LINE_AA, shift=2)
    roll, dx, dy, log_scale = head
    affine = cv2.getRotationMatrix2D((FACE_SIZE / 2, FACE_SIZE / 2), roll, math.exp(log_scale))
    affine[:, 2] += (dx, dy)
    return cv2.warpAffine(frame, affine, (FACE_SIZE, FACE_SIZE), borderMode=cv2.BORDER_REFLECT)


def head_motion(n_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Slow sinusoidal roll (±2°), shift (±3 px) and scale (±2%): (n_frames, 4)."""
    t = np.arange(n_frames) / fps
    amplitude = np.array([2.0, 3.0, 3.0, 0.02])
    freq = rng.uniform(0.1, 0.5, 4)
    phase = rng.uniform(0, 2 * np.pi, 4)
    return (amplitude * np.sin(2 * np.pi * freq * t[:, None] + phase)).astype(np.float32)


# ----------------------------------------------------------------------------------- dataset

def synth_clip(path: Path, rig: FaceRig, seconds: float, pitch: float, rng: np.random.Generator,
               fps: float = 30.0, sample_rate: int = 16000, faults: Faults | None = None) -> dict:
    """Write one clip (mp4 + .gt.npz); return its ground truth."""
    faults = faults or Faults()
    n_frames = int(round(seconds * fps))
    n_samples = int(round(n_frames * sample_rate / fps))
    audio, per_sample, segments = synth_utterance(n_samples / sample_rate, pitch, rng, sample_rate)
    frame_centres = ((np.arange(n_frames) + 0.5) * sample_rate / fps).astype(int)
    articulation = per_sample[np.clip(frame_centres, 0, n_samples - 1)].astype(np.float32)
    head = head_motion(n_frames, fps, rng)
    frames = np.stack([render_frame(rig, a, h) for a, h in zip(articulation, head)])

    if faults.audio_offset_frames:
        shift = int(round(faults.audio_offset_frames * sample_rate / fps))
        audio = np.roll(audio, shift)
        if shift > 0:
            audio[:shift] = 0
        else:
            audio[shift:] = 0
    if faults.no_face_frames:
        start = rng.integers(0, max(1, n_frames - faults.no_face_frames))
        frames[start:start + faults.no_face_frames] = rig.image[:8, :8].mean((0, 1)).astype(np.uint8)
    kept = np.arange(n_frames)
    if faults.dropped_frames:
        dropped = rng.choice(n_frames, faults.dropped_frames, replace=False)
        kept = np.setdiff1d(kept, dropped)
        frames = frames[kept]
    media.write_video(path, frames, fps, audio, sample_rate)
    truth = dict(articulation=articulation[kept], head=head[kept], frame_index=kept, fps=fps, pitch=pitch,
                 audio_offset_frames=faults.audio_offset_frames, dropped_frames=faults.dropped_frames,
                 no_face_frames=faults.no_face_frames, segments=np.array(segments, dtype=object))
    gt_path = path.with_suffix(".gt.npz")
    with files.atomic_path(gt_path) as tmp:
        np.savez(tmp, **truth)
    return truth


def synth_dataset(out_dir: str | Path, speakers: int = 2, clips: int = 20, seconds: tuple[float, float] = (3.0, 6.0),
                  seed: int = 0, face: str | Path | None = None, fps: float = 30.0, sample_rate: int = 16000,
                  faults: Faults | None = None, progress: bool = True) -> list[Path]:
    """Write `clips` clips per speaker under OUT/<speaker>/. Speaker k has its own pitch; odd speakers
    see the face mirrored so the speakers also differ in shape. Existing clips are kept (resumable)."""
    out_dir = Path(out_dir)
    paths = []
    rigs = {}
    jobs = [(s, c) for s in range(speakers) for c in range(clips)]
    for speaker, clip in tqdm(jobs, desc="synth clips", disable=not progress):
        clip_rng = np.random.default_rng([seed, speaker, clip])
        length = clip_rng.uniform(*seconds)
        speaker_dir = out_dir / f"spk{speaker}"
        speaker_dir.mkdir(parents=True, exist_ok=True)
        path = speaker_dir / f"spk{speaker}_{clip:04d}.mp4"
        paths.append(path)
        if path.exists() and path.with_suffix(".gt.npz").exists():
            continue
        if speaker % 2 not in rigs:
            rigs[speaker % 2] = load_face(face, mirror=bool(speaker % 2))
        pitch = SPEAKER_PITCH_HZ[speaker % len(SPEAKER_PITCH_HZ)] * (1 + 0.05 * (speaker // len(SPEAKER_PITCH_HZ)))
        synth_clip(path, rigs[speaker % 2], length, pitch, clip_rng, fps, sample_rate, faults)
    return paths
