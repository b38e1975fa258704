"""Stage 02: alignment QA of a clip store -> the run's qa.csv, whose usable rows are what training reads.

    report = qa.check_store("data/processed/demo", cfg.qa, cfg.data.sample_rate, run_dir="runs/demo")

Checks per clip:
- expected frames: ceil(audio_seconds * fps) against the mesh frame count, within qa.frame_tolerance;
- audio/video offset, positive = audio late, |offset| > qa.max_offset_frames fails (see below);
- face coverage: the share of frames without a face, at most qa.max_face_missing_frac;
- length: at least qa.min_frames frames;
- copies: a clip whose middle 2 s of audio is found in another clip of the same speaker, waveform for waveform
  (the same recording published twice, re-encoded, cropped or re-timed), fails, naming the clip it copies
  (column duplicate_of). a2m_lib.copies finds candidates in an index of spectral landmarks (linear in the
  clip count), then compares their waveforms.

How the offset is measured, per clip (a 3-6 s clip must stand on its own; the code is in a2m_lib.sync):
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
within ±1 frame with its source's pooled estimate for 95% of clips, the per-clip regression for
75%; and the low-confidence clips are the ones that disagree (notebook 02 plots it).

Decisions (qa.csv `status`):
- the clip's own estimate, when its confidence is at least qa.min_offset_confidence;
- else its source's pooled estimate (the frame-weighted mean of the lag scores of all the source's
  clips), when the source has several clips and that is confident;
- else `uncertain`: neither rejected nor corrected on an unsure estimate. qa.use_uncertain says
  whether training, neutral selection and evaluation use such clips (column `use`).
A decided offset beyond qa.max_offset_frames fails, or with qa.correct_offset is corrected: the
clip is kept and its audio shifted by the offset wherever training and evaluation read it
(column audio_shift_frames). With qa.align_in_tolerance (the default), a decided offset within
tolerance is shifted the same way, so training never learns a lag of 1-3 frames (100 ms at 30 fps). Columns: clip_offset_frames / clip_confidence (the clip's own estimate,
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

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import copies, files, regions, rundir, store, sync
from .config import QAConfig

QA_COLUMNS = ["clip_id", "speaker", "language", "n_frames", "expected_frames", "frame_diff", "av_offset_frames",
              "av_confidence", "face_missing_frac", "jitter", "status", "use", "reason", "audio_shift_frames",
              "clip_offset_frames", "clip_confidence", "source_offset_frames", "source_confidence", "sync_method",
              "duplicate_of", "source"]
MEASUREMENT_VERSION = 2  # raise when measure_clip changes, so cached measurements are redone


@dataclass
class QAReport:
    table: pd.DataFrame  # one row per clip, QA_COLUMNS
    processed: Path
    table_path: Path     # runs/<id>/qa.csv
    measured_clips: int  # clips measured now (the others came from the store's cache)
    lag_scores: dict     # clip_id -> the score of every lag (-MAX_LAG_FRAMES..MAX_LAG_FRAMES of a2m_lib.sync) its offset came from

    @property
    def accepted(self) -> list[str]:
        """The clips training reads: passed, and uncertain ones when qa.use_uncertain."""
        return self.table.loc[self.table.use, "clip_id"].tolist()

    @property
    def worst_clip(self) -> str:
        return self.table.loc[self.table.av_offset_frames.abs().idxmax(), "clip_id"]


def measure_clip(clip: dict, sample_rate: int) -> tuple[dict, np.ndarray | None]:
    """The QA measurements of one clip, and its A/V lag scores (None when the clip is too short to tell)."""
    meta = clip["meta"]
    fps, n_frames = float(meta["fps"]), int(meta["n_frames"])
    expected_frames = store.expected_frames(len(clip["audio"]), sample_rate, fps)
    scores = None
    if n_frames > 3 * sync.MAX_LAG_FRAMES and clip["face_found"].sum() > 2:
        scores = sync.clip_lag_scores(clip["mesh"], clip["audio"], sample_rate, fps)
    stable = clip["mesh"][:, regions.STABLE]
    jitter = float(np.nanmean(np.linalg.norm(np.diff(stable, axis=0), axis=-1))) if n_frames > 1 else 0.0
    row = dict(clip_id=meta["clip_id"], speaker=meta["speaker"], language=meta.get("language", ""),
               source=meta["source"], n_frames=n_frames,
               expected_frames=expected_frames, frame_diff=n_frames - expected_frames,
               face_missing_frac=round(float(1 - clip["face_found"].mean()), 4), jitter=round(jitter, 5))
    return row, scores


def judge(row: dict, qa_cfg: QAConfig) -> dict:
    """Add the decided offset, status, reason, `use` and any audio correction to a measured row (which
    holds clip_* and source_* estimates, and source_clips: how many clips the source's estimate pools)."""
    reasons, notes = [], []
    if row["n_frames"] < qa_cfg.min_frames:
        reasons.append(f"only {row['n_frames']} frames (< {qa_cfg.min_frames})")
    if abs(row["frame_diff"]) > qa_cfg.frame_tolerance:
        reasons.append(f"{row['n_frames']} mesh frames vs {row['expected_frames']} expected from the audio")
    if row["face_missing_frac"] > qa_cfg.max_face_missing_frac:
        reasons.append(f"no face in {row['face_missing_frac']:.0%} of frames")
    correlation = row.pop("duplicate_correlation", 0.0)
    if row.get("duplicate_of"):
        reasons.append(f"a copy of clip {row['duplicate_of']} (the same audio, waveform correlation {correlation:.2f}): "
                       f"one recording is used once, so that no copy of a training clip can be held out; remove the "
                       f"copy from data.raw to silence this")
    offset, confidence, shift, uncertain = row["clip_offset_frames"], row["clip_confidence"], 0, False
    source_clips = row.pop("source_clips")
    if confidence < qa_cfg.min_offset_confidence:
        if source_clips > 1 and row["source_confidence"] >= qa_cfg.min_offset_confidence:
            offset, confidence = row["source_offset_frames"], row["source_confidence"]
            notes.append(f"the clip's own offset estimate is unsure ({row['clip_confidence']:.3f} < "
                         f"{qa_cfg.min_offset_confidence}); its source's pooled estimate is used")
        else:
            uncertain = True
            notes.append(f"offset estimate unsure (confidence {row['clip_confidence']:.3f} < qa.min_offset_confidence="
                         f"{qa_cfg.min_offset_confidence}); reads {offset:+d} frames")
    if not uncertain and abs(offset) > qa_cfg.max_offset_frames:
        if qa_cfg.correct_offset:
            shift = offset
            notes.append(f"audio/video offset {offset:+d} frames corrected: the audio is shifted {offset:+d} frames earlier")
        else:
            reasons.append(f"audio/video offset {offset:+d} frames (> {qa_cfg.max_offset_frames})")
    elif not uncertain and offset and qa_cfg.align_in_tolerance:
        shift = offset
        notes.append(f"audio/video offset {offset:+d} frames (within tolerance) corrected: the audio is shifted "
                     f"{offset:+d} frames earlier")
    status = "fail" if reasons else "uncertain" if uncertain else "pass"
    use = status == "pass" or (status == "uncertain" and qa_cfg.use_uncertain)
    return dict(row, av_offset_frames=offset, av_confidence=round(confidence, 4), status=status, use=use,
                reason="; ".join(reasons + notes), audio_shift_frames=shift)


def _measurements_path(processed: Path, sample_rate: int) -> Path:
    """The store's cache of measure_clip results for these measurement settings."""
    key = hashlib.sha256(json.dumps(dict(version=MEASUREMENT_VERSION, sample_rate=sample_rate,
                                         max_lag=sync.MAX_LAG_FRAMES)).encode()).hexdigest()[:12]
    return processed / "measurements" / f"{key}.json"


def measure_store(processed: str | Path, sample_rate: int = 16000, progress: bool = True) -> tuple[list, int]:
    """measure_clip for every extracted clip, reusing the store's cached measurements where the clip is
    unchanged (same source hash, extraction settings and face). Returns ([(row, scores)], clips measured now)."""
    processed = Path(processed)
    manifest = store.read_manifest(processed)
    cache_path = _measurements_path(processed, sample_rate)
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    measured, fresh = [], 0
    clips = manifest[manifest.status == "ok"]
    for entry in tqdm(clips.itertuples(), total=len(clips), desc="qa", leave=False, disable=not progress):
        identity = f"{entry.source_hash}|{entry.settings}|{entry.face_centre}"  # a2m_lib.faces may change the face
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


def check_store(processed: str | Path, qa_cfg: QAConfig, sample_rate: int = 16000, run_dir: str | Path = "runs/qa",
                progress: bool = True) -> QAReport:
    """QA every clip of the store with the run's settings; write run_dir/qa.csv; return the report."""
    processed = Path(processed)
    measured, fresh = measure_store(processed, sample_rate, progress)
    rows = {row["clip_id"]: row for row, _ in measured}
    clip_scores = {row["clip_id"]: scores for row, scores in measured if scores is not None}
    methods = {clip_id: "clip" for clip_id in clip_scores}
    members: dict[str, list[str]] = {}  # source -> its clips
    for clip_id in clip_scores:
        members.setdefault(rows[clip_id]["source"], []).append(clip_id)

    def pooled(source: str) -> np.ndarray:  # the source's clips' lag scores, frame-weighted
        return sync.pool([(clip_scores[c], rows[c]["n_frames"]) for c in members[source]])

    initial = {source: sync.peak(pooled(source))[0] for source in members}  # the store model's first alignment
    features, rates, prints = {}, [], {}
    for clip_id in tqdm(rows, desc="sync features", leave=False, disable=not progress):
        clip = store.load_clip(processed, clip_id, keys=("audio", "mesh"))
        prints[clip_id] = copies.fingerprint(clip["audio"], sample_rate)
        if clip_id in clip_scores:
            features[clip_id] = sync.sync_features(clip, sample_rate)
            rates.append(float(clip["meta"]["fps"]))
    by_speaker: dict[str, list[str]] = {}
    for clip_id, row in rows.items():
        by_speaker.setdefault(row["speaker"], []).append(clip_id)
    copied = copies.find_copies(prints, list(by_speaker.values()),
                                lambda clip_id: store.load_clip(processed, clip_id, keys=("audio",))["audio"], sample_rate)
    min_frames = sync.SYNC_MIN_TRAINING_SECONDS * float(np.median(rates or [30.0]))
    for clip_id, scores in sync.store_sync_scores(features, members, initial, min_frames).items():
        if scores is not None:
            clip_scores[clip_id], methods[clip_id] = scores, "store"
    source_peaks = {source: sync.peak(pooled(source)) for source in members}
    table_rows = []
    for row, _ in measured:
        clip_id = row["clip_id"]
        if clip_id in clip_scores:
            offset, confidence = sync.peak(clip_scores[clip_id])
            (source_offset, source_confidence), count = source_peaks[row["source"]], len(members[row["source"]])
        else:  # too short to tell: nothing to decide on
            offset, confidence, source_offset, source_confidence, count = 0, 0.0, 0, 0.0, 1
        row = dict(row, clip_offset_frames=offset, clip_confidence=round(confidence, 4),
                   source_offset_frames=source_offset, source_confidence=round(source_confidence, 4),
                   source_clips=count, sync_method=methods.get(clip_id, "none"),
                   duplicate_of=copied.get(clip_id, ("", 0.0))[0], duplicate_correlation=copied.get(clip_id, ("", 0.0))[1])
        table_rows.append(judge(row, qa_cfg))
    table = pd.DataFrame(table_rows, columns=QA_COLUMNS)
    table_path = rundir.qa_table(run_dir)
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
                scores=scores, lags=np.arange(-sync.MAX_LAG_FRAMES, sync.MAX_LAG_FRAMES + 1))


def offset_agreement(table: pd.DataFrame) -> pd.DataFrame:
    """The clips of sources cut into several clips, with `error`: how far each clip's own offset is from
    its source's pooled one (frames). What notebook 02 plots against the clip's confidence."""
    table = table[table.sync_method != "none"]
    several = table.groupby("source").clip_id.transform("size") > 1
    table = table[several].copy()
    table["error"] = (table.clip_offset_frames - table.source_offset_frames).abs()
    return table
