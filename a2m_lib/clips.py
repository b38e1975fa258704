"""A tracked source becomes clips: where to cut (plan_clips: face gaps, speech pauses, 3-6 s), short detection gaps
filled (interpolate_gaps), the face kept when two are on screen (a2m_lib.faces), head pose removed against the
reference (pose_reference), and each clip's file and manifest row (clips_from_tracks). extract.py runs the
sources through the tracker and calls this for each one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import audio_frames, faces, mesh, store
from .config import ExtractConfig


class ExtractionError(RuntimeError):
    """A source file that yields no clip; the message says why."""


def plan_clips(found: np.ndarray, energy: np.ndarray, fps: float, extract_cfg: ExtractConfig) -> tuple[list, list]:
    """Where clips start and end, in frames: ([(start, end)], [(start, end, reason)] of skipped pieces).

    Face tracks are split at gaps longer than max_gap_frames. A track longer than segment_max_seconds
    is cut at its quietest frame inside each allowed window (a pause in speech, if there is one).
    A video that fits in one clip is kept whole, however short (QA judges it); pieces of longer
    videos shorter than segment_min_seconds are skipped with a reason.
    """
    n_frames = len(found)
    min_frames = int(round(extract_cfg.segment_min_seconds * fps))
    max_frames = int(round(extract_cfg.segment_max_seconds * fps))
    found_at = np.flatnonzero(found)
    runs, skipped = [], []
    start = found_at[0]
    for before, after in zip(found_at[:-1], found_at[1:]):
        if after - before - 1 > extract_cfg.max_gap_frames:
            runs.append((start, before + 1))
            skipped.append((before + 1, after, f"no face for {after - before - 1} frames (> extract.max_gap_frames)"))
            start = after
    runs.append((start, found_at[-1] + 1))
    whole_video = len(runs) == 1 and n_frames <= max_frames
    if whole_video:
        return [(0, n_frames)], [(int(a), int(b), reason) for a, b, reason in skipped]  # edge frames without a face stay NaN; QA counts them
    clips = []
    for run_start, run_end in runs:
        position = run_start
        while run_end - position > max_frames:
            window = energy[position + min_frames: position + max_frames + 1]
            cut = position + min_frames + int(np.argmin(window))
            clips.append((position, cut))
            position = cut
        if run_end - position >= min_frames:
            clips.append((position, run_end))
        else:
            skipped.append((position, run_end, f"{(run_end - position) / fps:.2f} s piece is shorter than "
                                               f"extract.segment_min_seconds={extract_cfg.segment_min_seconds}"))
    return [(int(a), int(b)) for a, b in clips], [(int(a), int(b), reason) for a, b, reason in skipped]


def interpolate_gaps(landmarks: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of landmarks across interior detection gaps; returns (landmarks, interpolated)."""
    interpolated = np.zeros(len(found), bool)
    found_at = np.flatnonzero(found)
    gaps = np.setdiff1d(np.arange(found_at[0], found_at[-1] + 1), found_at) if len(found_at) > 1 else []
    if len(gaps) == 0:
        return landmarks, interpolated
    filled = landmarks.copy()
    from scipy.interpolate import interp1d

    filled[gaps] = interp1d(found_at, landmarks[found_at], axis=0)(gaps)
    interpolated[gaps] = True
    return filled, interpolated


def pose_reference(extract_cfg: ExtractConfig, n_points: int) -> np.ndarray:
    """The mesh every frame is aligned to: the user's canonical model if given, else the built-in one."""
    if extract_cfg.canonical_model:
        return mesh.load_canonical_model(extract_cfg.canonical_model, n_points)
    return mesh.reference_mesh()[:n_points]


def save_clip(out_dir: Path, clip_id: str, row: dict, face: dict, n_faces: np.ndarray, audio: np.ndarray,
               extras: dict) -> None:
    """face: faces.face_arrays of the face kept, and with a second candidate face, its arrays as other_<key>."""
    store.save_clip(out_dir, clip_id, dict(face, n_faces=n_faces, audio=audio, **extras), row)


def clips_from_tracks(job, settings: str, source_hash: str, audio: np.ndarray, tracks: tuple, decode_errors: int
                      ) -> list[dict]:
    """A tracked source (extract.track_video's tracks, its audio) -> its clips, saved into job.out_dir, and its
    manifest rows: one per clip (ok) and per piece left out (skipped, with the reason). `job`: extract.Job."""
    source, data_cfg, extract_cfg = job.source, job.data_cfg, job.extract_cfg
    landmarks, found, n_faces, extras, second_face = tracks
    reference = pose_reference(extract_cfg, landmarks.shape[1])
    if not found.any():
        raise ExtractionError(f"MediaPipe found no face in any of {len(found)} frames")

    fps, samples_per_frame = data_cfg.fps, data_cfg.sample_rate / data_cfg.fps
    energy = audio_frames.frame_energy(audio, data_cfg.sample_rate, fps, len(found))
    clips, skipped = plan_clips(found, energy, fps, extract_cfg)
    common = dict(speaker=source["speaker"], language=source["language"], source=str(source["path"]), fps=fps,
                  settings=settings, source_hash=source_hash)
    rows = []
    for number, (start, end) in enumerate(clips):
        clip_id = source["source_key"] if len(clips) == 1 else f"{source['source_key']}_{number:03d}"
        if len(clips) == 1 and (start, end) == (0, len(found)):
            piece_audio = audio  # the whole video: keep all of its audio, so QA sees any length mismatch
        else:
            piece_audio = audio[int(round(start * samples_per_frame)): int(round(end * samples_per_frame))]
        piece, piece_found = landmarks[start:end], found[start:end]
        face, why, other_face = dict(face_choice="one face", face_sync_score=np.nan, other_face_sync_score=np.nan), "", {}
        if n_faces[start:end].max() > 1:
            other = second_face[start:end] if second_face is not None else None
            presence = np.isfinite(other[:, 0, 0]).mean() if other is not None else 0.0
            if presence >= faces.SPEAKER_MIN_PRESENCE and piece_found.mean() >= faces.SPEAKER_MIN_PRESENCE:
                use_second, face, why = faces.choose_in_clip(piece, other, piece_audio, data_cfg.sample_rate, fps,
                                                             reference)
                other_found = np.isfinite(other[:, 0, 0])
                if use_second:
                    piece, piece_found, other, other_found = other, other_found, piece, piece_found
                other_landmarks, other_interpolated = interpolate_gaps(other, other_found)
                other_face = {f"other_{key}": value for key, value in
                              faces.face_arrays(other_landmarks, other_found, other_interpolated, reference).items()}
            else:
                face["face_choice"] = "largest"
                why = "the largest, most central (the second face is not on screen long enough to compare)"
        piece_landmarks, interpolated = interpolate_gaps(piece, piece_found)
        row = dict(common, clip_id=clip_id, start=round(start / fps, 4), end=round(end / fps, 4), n_frames=end - start,
                   audio_seconds=round(len(piece_audio) / data_cfg.sample_rate, 6), status="ok", reason="",
                   interpolated_frames=int(interpolated.sum()), multi_face_frames=int((n_faces[start:end] > 1).sum()),
                   face_centre=faces.centre(piece_landmarks), **face)
        notes = [faces.note(row, why)] if why else []
        if decode_errors:
            notes.append(f"the source has {decode_errors} damaged video packets, skipped (the frame before "
                         "them stands in for theirs)")
        row["reason"] = "; ".join(notes)
        piece_extras = {key: value if key == "blendshape_names" else value[start:end] for key, value in extras.items()}
        save_clip(job.out_dir, clip_id, row, {**faces.face_arrays(piece_landmarks, piece_found, interpolated, reference),
                                               **other_face}, n_faces[start:end], piece_audio, piece_extras)
        rows.append(row)
    for start, end, reason in skipped:
        rows.append(dict(common, clip_id="", start=round(start / fps, 4), end=round(end / fps, 4), n_frames=end - start,
                         audio_seconds=np.nan, status="skipped", reason=reason, interpolated_frames=0, multi_face_frames=0))
    if not clips:
        raise ExtractionError("no clip long enough: " + "; ".join(reason for *_, reason in skipped))
    return rows
