"""Stage 02: alignment QA of the clip store -> qa.csv, whose `pass` rows are what training reads.

Checks per clip:
- expected frames: ceil(audio_seconds * fps) against the mesh frame count, within qa.frame_tolerance;
- audio/video offset: the lag (±15 frames) at which the audio's mel-band energies best predict the
  mouth's shape (see estimate_av_offset); |offset| > qa.max_offset_frames fails. Positive = audio late.
- face coverage: the share of frames without a face, at most qa.max_face_missing_frac;
- length: at least qa.min_frames frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import librosa
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import extract, mesh
from .config import QAConfig

QA_COLUMNS = ["clip_id", "speaker", "n_frames", "expected_frames", "frame_diff", "av_offset_frames",
              "av_confidence", "face_missing_frac", "jitter", "status", "reason"]
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


def audio_envelope(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    """Log RMS loudness per video frame, (n_frames,)."""
    hop = sample_rate / fps
    rms = librosa.feature.rms(y=audio, frame_length=int(2 * hop), hop_length=int(round(hop)), center=True)[0]
    envelope = np.log(rms + 1e-4)
    return np.pad(envelope, (0, max(0, n_frames - len(envelope))), mode="edge")[:n_frames]


def _interpolate_nan(values: np.ndarray) -> np.ndarray:
    good = np.isfinite(values)
    if good.sum() < 2:
        return np.nan_to_num(values)
    return np.interp(np.arange(len(values)), np.flatnonzero(good), values[good])


def band_energies(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int, n_bands: int = 8) -> np.ndarray:
    """Log mel-band energies (80-4000 Hz) per video frame, (n_frames, n_bands)."""
    hop = int(round(sample_rate / fps))
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
    best = int(np.argmax(scores))
    others = np.delete(scores, best)
    confidence = float((scores[best] - others.mean()) / (others.std() + 1e-9))
    return best - max_lag, confidence, scores


def check_clip(clip: dict, cfg: QAConfig, sample_rate: int) -> dict:
    meta = clip["meta"]
    fps, n_frames = float(meta["fps"]), int(meta["n_frames"])
    expected_frames = math.ceil(round(len(clip["audio"]) / sample_rate * fps, 6))
    frame_diff = n_frames - expected_frames
    face_missing = float(1 - clip["face_found"].mean())
    energies = band_energies(clip["audio"], sample_rate, fps, n_frames)
    if n_frames > 3 * MAX_LAG_FRAMES and clip["face_found"].sum() > 2:
        offset, confidence, _ = estimate_av_offset(mouth_features(clip["mesh"]), energies)
    else:
        offset, confidence = 0, 0.0
    stable = clip["mesh"][:, mesh.STABLE_VERTICES]
    jitter = float(np.nanmean(np.linalg.norm(np.diff(stable, axis=0), axis=-1))) if n_frames > 1 else 0.0
    reasons = []
    if n_frames < cfg.min_frames:
        reasons.append(f"only {n_frames} frames (< {cfg.min_frames})")
    if abs(frame_diff) > cfg.frame_tolerance:
        reasons.append(f"{n_frames} mesh frames vs {expected_frames} expected from the audio")
    if abs(offset) > cfg.max_offset_frames:
        reasons.append(f"audio/video offset {offset:+d} frames (> {cfg.max_offset_frames})")
    if face_missing > cfg.max_face_missing_frac:
        reasons.append(f"no face in {face_missing:.0%} of frames")
    return dict(clip_id=meta["clip_id"], speaker=meta["speaker"], n_frames=n_frames, expected_frames=expected_frames,
                frame_diff=frame_diff, av_offset_frames=offset, av_confidence=round(confidence, 3),
                face_missing_frac=round(face_missing, 4), jitter=round(jitter, 5),
                status="fail" if reasons else "pass", reason="; ".join(reasons))


def check_store(processed: str | Path, cfg: QAConfig, sample_rate: int = 16000) -> QAReport:
    """QA every clip of the store; write processed/qa.csv; return the report."""
    processed = Path(processed)
    manifest_path = processed / "manifest.csv"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} does not exist; run extraction (notebook 01 or `a2m extract`) first")
    manifest = pd.read_csv(manifest_path, keep_default_na=False)
    rows = [check_clip(extract.load_clip(processed, clip_id), cfg, sample_rate)
            for clip_id in manifest.loc[manifest.status == "ok", "clip_id"]]
    table = pd.DataFrame(rows, columns=QA_COLUMNS)
    tmp = processed / "qa.csv.part"
    table.to_csv(tmp, index=False)
    tmp.replace(processed / "qa.csv")
    return QAReport(table=table, processed=processed)


def accepted_clips(processed: str | Path) -> pd.DataFrame:
    """The QA rows that passed: the clip list that training reads."""
    path = Path(processed) / "qa.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run alignment QA (notebook 02 or `a2m qa`) first")
    table = pd.read_csv(path, keep_default_na=False)
    return table[table.status == "pass"].reset_index(drop=True)


# ----------------------------------------------------------------------------------- plots

def plot_summary(report: QAReport):
    """Histograms of A/V offsets and clip lengths, coloured by status."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    table = report.table
    for status, colour in (("pass", "tab:green"), ("fail", "tab:red")):
        part = table[table.status == status]
        axes[0].hist(part.av_offset_frames, bins=np.arange(-15.5, 16.5), color=colour, alpha=0.7, label=status)
        axes[1].hist(part.n_frames / 30.0, bins=20, color=colour, alpha=0.7, label=status)
    axes[0].set(xlabel="audio/video offset (frames, + = audio late)", ylabel="clips")
    axes[1].set(xlabel="clip length (s, at 30 fps)", ylabel="clips")
    axes[0].legend()
    fig.tight_layout()
    return fig


def plot_trace(report: QAReport, clip_id: str, sample_rate: int = 16000):
    """Mouth opening against the audio loudness envelope for one clip, and its lag curve."""
    clip = extract.load_clip(report.processed, clip_id)
    fps, n_frames = float(clip["meta"]["fps"]), int(clip["meta"]["n_frames"])
    opening = mesh.mouth_opening(clip["mesh"])
    envelope = audio_envelope(clip["audio"], sample_rate, fps, n_frames)
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
