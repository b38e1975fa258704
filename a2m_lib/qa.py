"""Stage 02: alignment QA of a clip store -> the run's qa.csv, whose `pass` rows are what training reads.

    report = qa.check_store("data/processed/demo", cfg.qa, cfg.data.sample_rate, run_dir="runs/demo")

Checks per clip:
- expected frames: ceil(audio_seconds * fps) against the mesh frame count, within qa.frame_tolerance;
- audio/video offset: the lag (±15 frames) at which the audio's mel-band energies best predict the
  mouth's shape (see estimate_av_offset); |offset| > qa.max_offset_frames fails. Positive = audio late.
- face coverage: the share of frames without a face, at most qa.max_face_missing_frac;
- length: at least qa.min_frames frames.

With qa.correct_offset, a clip whose offset is confidently measured is kept and its audio shifted by
the offset wherever training and evaluation read it (qa.csv column audio_shift_frames records it).

The decisions depend on the run's qa.* settings, so they belong to the run: `runs/<id>/qa.csv`. The
store keeps only the expensive measurements (lag scores, face coverage, jitter) in
`measurements/<key>.json`, keyed by the settings that produce them and checked per clip against the
clip's source hash and extraction settings, so a second run with other thresholds measures nothing again.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import files, regions, store
from .config import QAConfig

QA_COLUMNS = ["clip_id", "speaker", "language", "n_frames", "expected_frames", "frame_diff", "av_offset_frames",
              "av_confidence", "face_missing_frac", "jitter", "status", "reason", "audio_shift_frames",
              "clip_offset_frames", "source"]
MAX_LAG_FRAMES = 15
MEASUREMENT_VERSION = 1  # raise when measure_clip changes, so cached measurements are redone


@dataclass
class QAReport:
    table: pd.DataFrame  # one row per clip, QA_COLUMNS
    processed: Path
    table_path: Path     # runs/<id>/qa.csv
    measured_clips: int  # clips measured now (the others came from the store's cache)

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
    expected_frames = store.expected_frames(len(clip["audio"]), sample_rate, fps)
    scores = None
    if n_frames > 3 * MAX_LAG_FRAMES and clip["face_found"].sum() > 2:
        energies = band_energies(clip["audio"], sample_rate, fps, n_frames)
        scores = estimate_av_offset(mouth_features(clip["mesh"]), energies)[2]
    stable = clip["mesh"][:, regions.STABLE]
    jitter = float(np.nanmean(np.linalg.norm(np.diff(stable, axis=0), axis=-1))) if n_frames > 1 else 0.0
    row = dict(clip_id=meta["clip_id"], speaker=meta["speaker"], language=meta.get("language", ""),
               source=meta["source"], n_frames=n_frames,
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


def _measurements_path(processed: Path, sample_rate: int) -> Path:
    """The store's cache of measure_clip results for these measurement settings."""
    key = hashlib.sha256(json.dumps(dict(version=MEASUREMENT_VERSION, sample_rate=sample_rate,
                                         max_lag=MAX_LAG_FRAMES)).encode()).hexdigest()[:12]
    return processed / "measurements" / f"{key}.json"


def measure_store(processed: str | Path, sample_rate: int = 16000, progress: bool = True) -> tuple[list, int]:
    """measure_clip for every extracted clip, reusing the store's cached measurements where the clip is
    unchanged (same source hash and extraction settings). Returns ([(row, scores)], clips measured now)."""
    processed = Path(processed)
    manifest = store.read_manifest(processed)
    cache_path = _measurements_path(processed, sample_rate)
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    measured, fresh = [], 0
    clips = manifest[manifest.status == "ok"]
    for entry in tqdm(clips.itertuples(), total=len(clips), desc="qa", leave=False, disable=not progress):
        identity = f"{entry.source_hash}|{entry.settings}"
        cached = cache.get(entry.clip_id)
        if cached is None or cached["identity"] != identity:
            row, scores = measure_clip(store.load_clip(processed, entry.clip_id), sample_rate)
            cached = cache[entry.clip_id] = dict(identity=identity, row=row,
                                                 scores=None if scores is None else scores.tolist())
            fresh += 1
        measured.append((dict(cached["row"]), None if cached["scores"] is None else np.array(cached["scores"])))
    if fresh:
        files.write_json(cache_path, cache)
    return measured, fresh


def check_store(processed: str | Path, cfg: QAConfig, sample_rate: int = 16000, run_dir: str | Path = "runs/qa",
                progress: bool = True) -> QAReport:
    """QA every clip of the store with the run's settings; write run_dir/qa.csv; return the report.

    The A/V offset is a property of the recording, and a 3-6 s clip alone gives a noisy estimate, so the
    lag scores of all clips cut from one source are summed: `av_offset_frames` and `av_confidence`
    are that source-level estimate, `clip_offset_frames` is the clip's own (a large difference hints at drift).
    """
    processed = Path(processed)
    measured, fresh = measure_store(processed, sample_rate, progress)
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
    table_path = store.qa_table_path(run_dir)
    with files.atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    return QAReport(table=table, processed=processed, table_path=table_path, measured_clips=fresh)


def lag_trace(clip: dict, sample_rate: int = 16000) -> dict:
    """What plots.qa_trace shows for one clip: mouth opening, audio loudness, and the score of every lag."""
    fps, n_frames = float(clip["meta"]["fps"]), int(clip["meta"]["n_frames"])
    lag, confidence, scores = estimate_av_offset(mouth_features(clip["mesh"]),
                                                 band_energies(clip["audio"], sample_rate, fps, n_frames))
    return dict(fps=fps, opening=regions.mouth_opening(clip["mesh"]), lag=lag, confidence=confidence,
                scores=scores, lags=np.arange(-MAX_LAG_FRAMES, MAX_LAG_FRAMES + 1))
