"""Stage 02: alignment QA of the clip store -> qa.csv, whose `pass` rows are what training reads.

Checks per clip:
- expected frames: ceil(audio_seconds * fps) against the mesh frame count, within qa.frame_tolerance;
- audio/video offset: the lag (±15 frames) at which the audio's mel-band energies best predict the
  mouth's shape (see estimate_av_offset); |offset| > qa.max_offset_frames fails. Positive = audio late.
- face coverage: the share of frames without a face, at most qa.max_face_missing_frac;
- length: at least qa.min_frames frames.

With qa.correct_offset, a clip whose offset is confidently measured is kept and its audio shifted by
the offset wherever training and evaluation read it (qa.csv column audio_shift_frames records it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import librosa
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import extract, mesh
from .config import QAConfig

QA_COLUMNS = ["clip_id", "speaker", "n_frames", "expected_frames", "frame_diff", "av_offset_frames",
              "av_confidence", "face_missing_frac", "jitter", "status", "reason", "audio_shift_frames",
              "clip_offset_frames", "source"]
MAX_LAG_FRAMES = 15


@dataclass
class QAReport:
    table: pd.DataFrame  # one row per clip, QA_COLUMNS
    processed: Path

    @property
    def accepted(self) -> list[str]:
        return self.table.loc[self.table.status == "pass", "clip_id"].tolist()

    @property
    def worst_clip(self) -> str:
        return self.table.loc[self.table.av_offset_frames.abs().idxmax(), "clip_id"]


def _interpolate_nan(values: np.ndarray) -> np.ndarray:
    good = np.isfinite(values)
    if good.sum() < 2:
        return np.nan_to_num(values)
    return np.interp(np.arange(len(values)), np.flatnonzero(good), values[good])


def band_energies(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int, n_bands: int = 8) -> np.ndarray:
    """Log mel-band energies (80-4000 Hz) per video frame, (n_frames, n_bands).

    librosa centres frame k at k * hop; video frame k is centred at (k + 0.5) * hop, so the audio is
    advanced by half a hop first. Without that, every lag came out half a frame late.
    """
    hop = int(round(sample_rate / fps))
    audio = audio[hop // 2:]
    power = librosa.feature.melspectrogram(y=audio, sr=sample_rate, n_fft=1024, hop_length=hop, n_mels=n_bands,
                                           fmin=80, fmax=min(4000, sample_rate // 2))
    energies = np.log(power + 1e-6).T
    return np.pad(energies, ((0, max(0, n_frames - len(energies))), (0, 0)), mode="edge")[:n_frames]


MOUTH_DISTANCES = ((13, 14), (0, 17), (61, 291), (78, 308), (1, 152))  # inner/outer opening, widths, nose-chin


def mouth_features(meshes: np.ndarray) -> np.ndarray:
    """Five mouth distances per frame, (T, 5), gaps (no face) filled by linear interpolation."""
    columns = [np.linalg.norm(meshes[:, a] - meshes[:, b], axis=-1) for a, b in MOUTH_DISTANCES]
    return np.stack([_interpolate_nan(column) for column in columns], axis=1)


def estimate_av_offset(mouth: np.ndarray, energies: np.ndarray, max_lag: int = MAX_LAG_FRAMES) -> tuple[int, float, np.ndarray]:
    """Best lag (frames, positive = audio late), its confidence, and the score of every lag.

    At each lag a small ridge regression predicts each mouth distance from the mel-band energies of the
    shifted audio; the lag's score is the summed R^2. Several bands matter: loudness alone cannot tell an
    open "a" from a spread "i", the formants can. Every lag is scored on the same central frames (an
    overlap that shrinks with the lag would favour the extreme lags), and scores are smoothed over
    neighbouring lags. Confidence: the peak's height above the other lags in their standard deviations.
    """
    # Ridge regression written out with numpy (three lines) rather than adding scikit-learn for it.
    mouth = mouth.reshape(len(mouth), -1)
    frames = np.arange(max_lag, len(mouth) - max_lag)
    scores = []
    for lag in range(-max_lag, max_lag + 1):
        design = np.c_[energies[frames + lag], np.ones(len(frames))]
        gram = design.T @ design + 0.1 * np.eye(design.shape[1])
        targets = mouth[frames]
        residual = targets - design @ np.linalg.solve(gram, design.T @ targets)
        scores.append(np.sum(1 - residual.var(0) / (targets.var(0) + 1e-12)))
    scores = np.convolve(np.array(scores), [0.25, 0.5, 0.25], mode="same")
    return (*_peak(scores), scores)


def _peak(scores: np.ndarray) -> tuple[int, float]:
    """(lag of the best score, its height above the other lags in their standard deviations)."""
    best = int(np.argmax(scores))
    others = np.delete(scores, best)
    return best - (len(scores) - 1) // 2, float((scores[best] - others.mean()) / (others.std() + 1e-9))


def measure_clip(clip: dict, sample_rate: int) -> tuple[dict, np.ndarray | None]:
    """The QA measurements of one clip, and its A/V lag scores (None when the clip is too short to tell)."""
    meta = clip["meta"]
    fps, n_frames = float(meta["fps"]), int(meta["n_frames"])
    expected_frames = math.ceil(round(len(clip["audio"]) / sample_rate * fps, 6))
    scores = None
    if n_frames > 3 * MAX_LAG_FRAMES and clip["face_found"].sum() > 2:
        energies = band_energies(clip["audio"], sample_rate, fps, n_frames)
        scores = estimate_av_offset(mouth_features(clip["mesh"]), energies)[2]
    stable = clip["mesh"][:, mesh.STABLE_VERTICES]
    jitter = float(np.nanmean(np.linalg.norm(np.diff(stable, axis=0), axis=-1))) if n_frames > 1 else 0.0
    row = dict(clip_id=meta["clip_id"], speaker=meta["speaker"], source=meta["source"], n_frames=n_frames,
               expected_frames=expected_frames, frame_diff=n_frames - expected_frames,
               face_missing_frac=round(float(1 - clip["face_found"].mean()), 4), jitter=round(jitter, 5))
    return row, scores


def judge(row: dict, cfg: QAConfig) -> dict:
    """Add status, reason and any audio correction to a measured row."""
    reasons, notes = [], []
    if row["n_frames"] < cfg.min_frames:
        reasons.append(f"only {row['n_frames']} frames (< {cfg.min_frames})")
    if abs(row["frame_diff"]) > cfg.frame_tolerance:
        reasons.append(f"{row['n_frames']} mesh frames vs {row['expected_frames']} expected from the audio")
    offset, shift = row["av_offset_frames"], 0
    if abs(offset) > cfg.max_offset_frames:
        if cfg.correct_offset and row["av_confidence"] >= cfg.min_offset_confidence:
            shift = offset
            notes.append(f"audio/video offset {offset:+d} frames corrected: the audio is shifted {offset:+d} frames earlier")
        else:
            reasons.append(f"audio/video offset {offset:+d} frames (> {cfg.max_offset_frames})")
    if row["face_missing_frac"] > cfg.max_face_missing_frac:
        reasons.append(f"no face in {row['face_missing_frac']:.0%} of frames")
    return dict(row, status="fail" if reasons else "pass", reason="; ".join(reasons + notes), audio_shift_frames=shift)


def check_store(processed: str | Path, cfg: QAConfig, sample_rate: int = 16000) -> QAReport:
    """QA every clip of the store; write processed/qa.csv; return the report.

    The A/V offset is a property of the recording, and a 3-6 s clip alone gives a noisy estimate, so the
    lag scores of all clips cut from one source are summed: `av_offset_frames` and `av_confidence`
    are that source-level estimate, `clip_offset_frames` is the clip's own (a large difference hints at drift).
    """
    processed = Path(processed)
    manifest_path = processed / "manifest.csv"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} does not exist; run extraction (notebook 01 or `a2m extract`) first")
    manifest = pd.read_csv(manifest_path, keep_default_na=False)
    measured = [measure_clip(extract.load_clip(processed, clip_id), sample_rate)
                for clip_id in tqdm(manifest.loc[manifest.status == "ok", "clip_id"], desc="qa", leave=False)]
    pooled: dict[str, np.ndarray] = {}
    for row, scores in measured:
        if scores is not None:
            pooled[row["source"]] = pooled.get(row["source"], 0) + scores
    rows = []
    for row, scores in measured:
        row["clip_offset_frames"] = _peak(scores)[0] if scores is not None else 0
        offset, confidence = _peak(pooled[row["source"]]) if row["source"] in pooled else (0, 0.0)
        rows.append(judge(dict(row, av_offset_frames=offset, av_confidence=round(confidence, 3)), cfg))
    table = pd.DataFrame(rows, columns=QA_COLUMNS)
    tmp = processed / "qa.csv.part"
    table.to_csv(tmp, index=False)
    tmp.replace(processed / "qa.csv")
    return QAReport(table=table, processed=processed)


def shift_audio(audio: np.ndarray, shift_frames: int, samples_per_frame: float) -> np.ndarray:
    """Move the audio `shift_frames` frames earlier (negative: later), keeping its length; QA's correction."""
    shift = int(round(shift_frames * samples_per_frame))
    if shift == 0:
        return audio
    shifted = np.zeros_like(audio)
    if shift > 0:
        shifted[:-shift] = audio[shift:]
    else:
        shifted[-shift:] = audio[:shift]
    return shifted


def accepted_clips(processed: str | Path) -> pd.DataFrame:
    """The QA rows that passed: the clip list that training reads."""
    path = Path(processed) / "qa.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run alignment QA (notebook 02 or `a2m qa`) first")
    table = pd.read_csv(path, keep_default_na=False)
    return table[table.status == "pass"].reset_index(drop=True)


# ----------------------------------------------------------------------------------- plots

def plot_summary(report: QAReport, fps: float = 30.0):
    """Histograms of A/V offsets and clip lengths, coloured by status."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    table = report.table
    for status, colour in (("pass", "tab:green"), ("fail", "tab:red")):
        part = table[table.status == status]
        axes[0].hist(part.av_offset_frames, bins=np.arange(-15.5, 16.5), color=colour, alpha=0.7, label=status)
        axes[1].hist(part.n_frames / fps, bins=20, color=colour, alpha=0.7, label=status)
    axes[0].set(xlabel="audio/video offset (frames, + = audio late)", ylabel="clips")
    axes[1].set(xlabel="clip length (s)", ylabel="clips")
    axes[0].legend()
    fig.tight_layout()
    return fig


def plot_trace(report: QAReport, clip_id: str, sample_rate: int = 16000):
    """Mouth opening against the audio loudness envelope for one clip, and its lag curve."""
    clip = extract.load_clip(report.processed, clip_id)
    fps, n_frames = float(clip["meta"]["fps"]), int(clip["meta"]["n_frames"])
    opening = mesh.mouth_opening(clip["mesh"])
    envelope = extract.frame_energy(clip["audio"], sample_rate, fps, n_frames)
    lag, confidence, scores = estimate_av_offset(mouth_features(clip["mesh"]),
                                                 band_energies(clip["audio"], sample_rate, fps, n_frames))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    t = np.arange(n_frames) / fps
    axes[0].plot(t, opening, label="mouth opening (mesh units)")
    twin = axes[0].twinx()
    twin.plot(t, envelope, color="tab:orange", alpha=0.7, label="audio log-RMS")
    axes[0].set(xlabel="seconds", title=f"{clip_id}")
    axes[0].legend(loc="upper left")
    twin.legend(loc="upper right")
    axes[1].plot(np.arange(-MAX_LAG_FRAMES, MAX_LAG_FRAMES + 1), scores, marker=".")
    axes[1].axvline(lag, color="tab:red")
    axes[1].set(xlabel="lag (frames)", ylabel="summed R$^2$", title=f"offset {lag:+d}, confidence {confidence:.1f}")
    fig.tight_layout()
    return fig
