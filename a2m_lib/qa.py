"""Stage 02: alignment QA of a clip store -> the run's qa.csv, whose usable rows are what training reads.

    report = qa.check_store("data/processed/demo", cfg.qa, cfg.data.sample_rate, run_dir="runs/demo")

Checks per clip:
- expected frames: ceil(audio_seconds * fps) against the mesh frame count, within qa.frame_tolerance;
- audio/video offset, positive = audio late, |offset| > qa.max_offset_frames fails (see below);
- face coverage: the share of frames without a face, at most qa.max_face_missing_frac;
- length: at least qa.min_frames frames.

How the offset is measured, per clip (a 3-6 s clip must stand on its own):
1. **A sync model learned from the store itself** (self-supervised, as SyncNet is trained, but linear and
   with no download). Features: 40 log-mel bands at the video frame rate, standardised per clip, with
   ±4 frames (±133 ms) of context; the mouth: five distances (inner and outer opening, two widths,
   nose-chin), standardised per clip. A ridge regression learns mouth-from-audio on every clip *of the
   other sources*, each aligned at its source's current offset (leave-source-out: a clip never judges
   itself, and a wrongly aligned source cannot confirm its own error). A clip's score at a lag is the
   correlation of the model's prediction from the audio shifted by that lag with the measured mouth,
   over the frames both cover. Twice: the first alignment comes from step 2 pooled per source, the
   second from the model's own pooled estimates.
2. **Per-clip regression** (the fallback, when the other sources give less than
   SYNC_MIN_TRAINING_SECONDS of audio, as in a store of a few clips): at each lag, a ridge regression
   fitted on the clip alone predicts the mouth from 8 mel bands; the score is the mean R^2.
The clip's offset is the lag of its best score; its confidence is the best score minus the best rival
more than PEAK_SHOULDER lags away (how much the peak stands out, in correlation or R^2 units).
On the real clips of ../shared/eval_media (3-6 s windows of 23 sources), the store model agrees
within ±1 frame with its source's pooled estimate for about 96% of clips, the per-clip regression for
75%; and the low-confidence clips are the ones that disagree (notebook 02 plots it).

Decisions (qa.csv `status`):
- the clip's own estimate, when its confidence is at least qa.min_offset_confidence;
- else its source's pooled estimate (the frame-weighted mean of the lag scores of all the source's
  clips), when the source has several clips and that is confident;
- else `uncertain`: neither rejected nor corrected on an unsure estimate. qa.use_uncertain says
  whether training, neutral selection and evaluation use such clips (column `use`).
A decided offset beyond qa.max_offset_frames fails, or with qa.correct_offset is corrected: the
clip is kept and its audio shifted by the offset wherever training and evaluation read it
(column audio_shift_frames). Columns: clip_offset_frames / clip_confidence (the clip's own estimate,
before any pooling), source_offset_frames / source_confidence (pooled), av_offset_frames /
av_confidence (the value QA decided on), sync_method (store | clip).

The decisions depend on the run's qa.* settings, so they belong to the run: `runs/<id>/qa.csv`. The
store keeps only the expensive measurements (per-clip regression scores, face coverage, jitter) in
`measurements/<key>.json`, keyed by the settings that produce them and checked per clip against the
clip's source hash and extraction settings, so a second run with other thresholds measures nothing again.
The store model is refitted at every check (seconds for an hour of clips): it depends on all clips.
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
              "av_confidence", "face_missing_frac", "jitter", "status", "use", "reason", "audio_shift_frames",
              "clip_offset_frames", "clip_confidence", "source_offset_frames", "source_confidence", "sync_method",
              "source"]
MAX_LAG_FRAMES = 15
PEAK_SHOULDER = 3  # lags within this distance of the best one are its shoulders, not rivals
SYNC_CONTEXT_FRAMES = 4  # audio frames each side of the mouth frame the store model sees
SYNC_MEL_BANDS = 40
SYNC_RIDGE = 1.0  # ridge penalty per training frame (features are standardised)
SYNC_ITERATIONS = 2
SYNC_MIN_TRAINING_SECONDS = 60.0  # other sources' audio the store model needs; less: per-clip regression
MEASUREMENT_VERSION = 2  # raise when measure_clip changes, so cached measurements are redone


@dataclass
class QAReport:
    table: pd.DataFrame  # one row per clip, QA_COLUMNS
    processed: Path
    table_path: Path     # runs/<id>/qa.csv
    measured_clips: int  # clips measured now (the others came from the store's cache)
    lag_scores: dict     # clip_id -> the score of every lag (-MAX_LAG_FRAMES..MAX_LAG_FRAMES) its offset came from

    @property
    def accepted(self) -> list[str]:
        """The clips training reads: passed, and uncertain ones when qa.use_uncertain."""
        return self.table.loc[self.table.use, "clip_id"].tolist()

    @property
    def worst_clip(self) -> str:
        return self.table.loc[self.table.av_offset_frames.abs().idxmax(), "clip_id"]


def _interpolate_nan(values: np.ndarray) -> np.ndarray:
    good = np.isfinite(values)
    if good.sum() < 2:
        return np.nan_to_num(values)
    return np.interp(np.arange(len(values)), np.flatnonzero(good), values[good])


def band_energies(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int, n_bands: int = 8,
                  fmax: float = 4000) -> np.ndarray:
    """Log mel-band energies (80 Hz to fmax) per video frame, (n_frames, n_bands).

    librosa centres frame k at k * hop; video frame k is centred at (k + 0.5) * hop, so the audio is
    advanced by half a hop first. Without that, every lag came out half a frame late.
    """
    hop = int(round(sample_rate / fps))
    audio = audio[hop // 2:]
    power = librosa.feature.melspectrogram(y=audio, sr=sample_rate, n_fft=1024, hop_length=hop, n_mels=n_bands,
                                           fmin=80, fmax=min(fmax, sample_rate // 2))
    energies = np.log(power + 1e-6).T
    return np.pad(energies, ((0, max(0, n_frames - len(energies))), (0, 0)), mode="edge")[:n_frames]


MOUTH_DISTANCES = ((13, 14), (0, 17), (61, 291), (78, 308), (1, 152))  # inner/outer opening, widths, nose-chin


def mouth_features(meshes: np.ndarray) -> np.ndarray:
    """Five mouth distances per frame, (T, 5), gaps (no face) filled by linear interpolation."""
    columns = [np.linalg.norm(meshes[:, a] - meshes[:, b], axis=-1) for a, b in MOUTH_DISTANCES]
    return np.stack([_interpolate_nan(column) for column in columns], axis=1)


def estimate_av_offset(mouth: np.ndarray, energies: np.ndarray, max_lag: int = MAX_LAG_FRAMES) -> tuple[int, float, np.ndarray]:
    """The per-clip regression: best lag (frames, positive = audio late), its confidence, every lag's score.

    At each lag a small ridge regression fitted on this clip alone predicts each mouth distance from the
    mel-band energies of the shifted audio; the lag's score is the mean R^2. Several bands matter:
    loudness alone cannot tell an open "a" from a spread "i", the formants can. Every lag is scored on the
    same central frames (an overlap that shrinks with the lag would favour the extreme lags, since the fit
    is in-sample), and scores are smoothed over neighbouring lags.
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
        scores.append(np.mean(1 - residual.var(0) / (targets.var(0) + 1e-12)))
    scores = np.convolve(np.array(scores), [0.25, 0.5, 0.25], mode="same")
    return (*_peak(scores), scores)


def _peak(scores: np.ndarray) -> tuple[int, float]:
    """(lag of the best score, confidence: the best score minus the best rival more than PEAK_SHOULDER lags away)."""
    best = int(np.argmax(scores))
    rivals = np.abs(np.arange(len(scores)) - best) > PEAK_SHOULDER
    return best - (len(scores) - 1) // 2, float(scores[best] - scores[rivals].max())


def _standardise(values: np.ndarray) -> np.ndarray:
    return (values - values.mean(0)) / (values.std(0) + 1e-6)


def sync_features(clip: dict, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """What the store model reads of one clip: (audio (T, SYNC_MEL_BANDS x (2 SYNC_CONTEXT_FRAMES + 1)),
    mouth (T, 5)), each standardised over the clip, so no speaker's voice or face size sets the scale."""
    n_frames = int(clip["meta"]["n_frames"])
    energies = _standardise(band_energies(clip["audio"], sample_rate, float(clip["meta"]["fps"]), n_frames,
                                          n_bands=SYNC_MEL_BANDS, fmax=7600))
    k = SYNC_CONTEXT_FRAMES
    padded = np.pad(energies, ((k, k), (0, 0)), mode="edge")
    audio = np.concatenate([padded[i:i + n_frames] for i in range(2 * k + 1)], axis=1)
    return audio.astype(np.float32), _standardise(mouth_features(clip["mesh"])).astype(np.float32)


def _overlap(n_frames: int, lag: int) -> np.ndarray:
    """Mouth frames t whose audio frame t + lag exists."""
    return np.arange(max(0, -lag), min(n_frames, n_frames - lag))


def _normal_equations(audio: np.ndarray, mouth: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray, int]:
    frames = _overlap(len(mouth), lag)
    design = np.c_[audio[frames + lag], np.ones(len(frames), np.float32)].astype(np.float64)
    return design.T @ design, design.T @ mouth[frames], len(frames)


def sync_lag_scores(audio: np.ndarray, mouth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The store model's score of every lag for one clip: the correlation of the mouth predicted from the
    audio shifted by the lag with the measured mouth, over the frames both cover, averaged over distances."""
    predicted = np.c_[audio, np.ones(len(audio), np.float32)] @ weights
    scores = []
    for lag in range(-MAX_LAG_FRAMES, MAX_LAG_FRAMES + 1):
        frames = _overlap(len(mouth), lag)
        scores.append(np.mean(_standardise(predicted[frames + lag]) * _standardise(mouth[frames])))
    return np.array(scores)


def store_sync_scores(features: dict, sources: dict, offsets: dict, min_frames: float) -> dict:
    """Lag scores of every clip from the store model (see the module docstring), or None for the clips of
    a source whose other sources hold fewer than min_frames frames to learn from.

    features: clip_id -> sync_features; sources: clip_id -> source; offsets: source -> initial offset.
    Each source's equations are summed once, so leaving a source out is a subtraction, not a refit.
    """
    by_source: dict[str, list] = {}
    for clip_id, source in sources.items():
        by_source.setdefault(source, []).append(clip_id)
    scores: dict[str, np.ndarray | None] = {}
    for _ in range(SYNC_ITERATIONS):
        sums = {}
        for source, clip_ids in by_source.items():
            parts = [_normal_equations(*features[c], offsets[source]) for c in clip_ids]
            sums[source] = tuple(sum(part[i] for part in parts) for i in range(3))
        total = tuple(sum(part[i] for part in sums.values()) for i in range(3))
        for source, clip_ids in by_source.items():
            gram, moment, n_frames = (total[i] - sums[source][i] for i in range(3))
            if n_frames < min_frames:
                scores.update({c: None for c in clip_ids})
                continue
            weights = np.linalg.solve(gram + SYNC_RIDGE * n_frames * np.eye(len(gram)), moment)
            scores.update({c: sync_lag_scores(*features[c], weights) for c in clip_ids})
        offsets = {source: _peak(_pool([(scores[c], len(features[c][1])) for c in clip_ids]))[0]
                   if scores[clip_ids[0]] is not None else offsets[source] for source, clip_ids in by_source.items()}
    return scores


def _pool(curves: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """The frame-weighted mean of several clips' lag scores."""
    return sum(curve * n for curve, n in curves) / sum(n for _, n in curves)


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
    """Add the decided offset, status, reason, `use` and any audio correction to a measured row (which
    holds clip_* and source_* estimates, and source_clips: how many clips the source's estimate pools)."""
    reasons, notes = [], []
    if row["n_frames"] < cfg.min_frames:
        reasons.append(f"only {row['n_frames']} frames (< {cfg.min_frames})")
    if abs(row["frame_diff"]) > cfg.frame_tolerance:
        reasons.append(f"{row['n_frames']} mesh frames vs {row['expected_frames']} expected from the audio")
    if row["face_missing_frac"] > cfg.max_face_missing_frac:
        reasons.append(f"no face in {row['face_missing_frac']:.0%} of frames")
    offset, confidence, shift, uncertain = row["clip_offset_frames"], row["clip_confidence"], 0, False
    if confidence < cfg.min_offset_confidence:
        if row.pop("source_clips") > 1 and row["source_confidence"] >= cfg.min_offset_confidence:
            offset, confidence = row["source_offset_frames"], row["source_confidence"]
            notes.append(f"the clip's own offset estimate is unsure ({row['clip_confidence']:.3f} < "
                         f"{cfg.min_offset_confidence}); its source's pooled estimate is used")
        else:
            uncertain = True
            notes.append(f"offset estimate unsure (confidence {row['clip_confidence']:.3f} < qa.min_offset_confidence="
                         f"{cfg.min_offset_confidence}); reads {offset:+d} frames")
    else:
        row.pop("source_clips")
    if not uncertain and abs(offset) > cfg.max_offset_frames:
        if cfg.correct_offset:
            shift = offset
            notes.append(f"audio/video offset {offset:+d} frames corrected: the audio is shifted {offset:+d} frames earlier")
        else:
            reasons.append(f"audio/video offset {offset:+d} frames (> {cfg.max_offset_frames})")
    status = "fail" if reasons else "uncertain" if uncertain else "pass"
    use = status == "pass" or (status == "uncertain" and cfg.use_uncertain)
    return dict(row, av_offset_frames=offset, av_confidence=round(confidence, 4), status=status, use=use,
                reason="; ".join(reasons + notes), audio_shift_frames=shift)


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
    """QA every clip of the store with the run's settings; write run_dir/qa.csv; return the report."""
    processed = Path(processed)
    measured, fresh = measure_store(processed, sample_rate, progress)
    rows = {row["clip_id"]: row for row, _ in measured}
    clip_scores = {row["clip_id"]: scores for row, scores in measured if scores is not None}
    methods = {clip_id: "clip" for clip_id in clip_scores}
    sources = {clip_id: rows[clip_id]["source"] for clip_id in clip_scores}
    initial = {}  # each source's pooled per-clip-regression offset: the store model's first alignment
    for source in set(sources.values()):
        initial[source] = _peak(_pool([(clip_scores[c], rows[c]["n_frames"]) for c in sources if sources[c] == source]))[0]
    features, rates = {}, []
    for clip_id in tqdm(clip_scores, desc="sync features", leave=False, disable=not progress):
        clip = store.load_clip(processed, clip_id, keys=("audio", "mesh"))
        features[clip_id] = sync_features(clip, sample_rate)
        rates.append(float(clip["meta"]["fps"]))
    min_frames = SYNC_MIN_TRAINING_SECONDS * float(np.median(rates or [30.0]))
    for clip_id, scores in store_sync_scores(features, sources, initial, min_frames).items():
        if scores is not None:
            clip_scores[clip_id], methods[clip_id] = scores, "store"
    pooled = {}
    for source in set(sources.values()):
        members = [c for c in sources if sources[c] == source]
        pooled[source] = (_pool([(clip_scores[c], rows[c]["n_frames"]) for c in members]), len(members))
    table_rows = []
    for row, _ in measured:
        clip_id = row["clip_id"]
        if clip_id in clip_scores:
            (offset, confidence), (source_curve, count) = _peak(clip_scores[clip_id]), pooled[row["source"]]
            source_offset, source_confidence = _peak(source_curve)
        else:  # too short to tell: nothing to decide on
            offset, confidence, source_offset, source_confidence, count = 0, 0.0, 0, 0.0, 1
        row = dict(row, clip_offset_frames=offset, clip_confidence=round(confidence, 4),
                   source_offset_frames=source_offset, source_confidence=round(source_confidence, 4),
                   source_clips=count, sync_method=methods.get(clip_id, "none"))
        table_rows.append(judge(row, cfg))
    table = pd.DataFrame(table_rows, columns=QA_COLUMNS)
    table_path = store.qa_table_path(run_dir)
    with files.atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    return QAReport(table=table, processed=processed, table_path=table_path, measured_clips=fresh,
                    lag_scores=clip_scores)


def lag_trace(report: QAReport, clip_id: str, sample_rate: int = 16000) -> dict:
    """What plots.qa_trace shows for one clip: mouth opening, audio loudness, and the score of every lag
    from the method QA used for it."""
    clip = store.load_clip(report.processed, clip_id, keys=("audio", "mesh"))
    row = report.table.set_index("clip_id").loc[clip_id]
    scores = report.lag_scores.get(clip_id)
    return dict(fps=float(clip["meta"]["fps"]), opening=regions.mouth_opening(clip["mesh"]), audio=clip["audio"],
                lag=int(row.clip_offset_frames), confidence=float(row.clip_confidence), method=row.sync_method,
                scores=scores, lags=np.arange(-MAX_LAG_FRAMES, MAX_LAG_FRAMES + 1))


def offset_agreement(table: pd.DataFrame) -> pd.DataFrame:
    """The clips of sources cut into several clips, with `error`: how far each clip's own offset is from
    its source's pooled one (frames). What notebook 02 plots against the clip's confidence."""
    table = table[table.sync_method != "none"]
    several = table.groupby("source").clip_id.transform("size") > 1
    table = table[several].copy()
    table["error"] = (table.clip_offset_frames - table.source_offset_frames).abs()
    return table
