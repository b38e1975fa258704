"""Stage 05: predictions on held-out clips first, then the field's metrics against hard baselines.

    result = evaluate.evaluate(cfg, run_dir)                       # split, checkpoint, device, articulation: cfg.evaluate
    videos = evaluate.render_clips(result, cfg, run_dir)           # the best, median and worst clips, with sound
    summary = evaluate.score(rundir.predictions(run_dir), ...)     # metrics again from the files, no model

`cfg` is the run's config (config.run_config): the data, QA shift and evaluation settings come from it. The
model's own settings (encoder, sizes, speakers) come from the checkpoint, which describes what was trained.

0. The articulation gain (evaluate.articulation): `auto` fits, per speaker, the gain on the predicted movement
   (model.articulate) that minimises LVE on the run's validation clips (fit_articulation), and writes it to the
   run (rundir.articulation), where `a2m predict` reads it too; a number sets one gain for everyone.
1. `predict_clips` writes RUN_DIR/predictions/<clip_id>.npz (PREDICTION_KEYS): the model's and the truth's
   absolute meshes, the reference used, fps, and the baselines' meshes, all on the clip's valid frames. Each
   clip goes through Audio2Mesh.predict, the inference path `a2m predict` uses, with the run's QA shift.
2. `score` computes metrics.py's metrics from those files alone (as CodeTalker's cal_metric.py does) and
   writes metrics.json: under `model` and `baselines.<name>` (neutral, mean_offset, nearest_audio), with
   breakdowns under per_clip, per_speaker and per_language, and `failures` naming each baseline the model
   does not beat on lve or mouth_corr.

Baselines:
    neutral        no motion: the speaker's neutral mesh on every frame
    mean_offset    the speaker's mean training offset (mesh - neutral) on every frame
    nearest_audio  per frame, the training frame of the speaker whose log-mel audio frame is nearest

Reference at test time: every model is also run with a random non-neutral frame of the speaker's training
clips as its reference (prediction = that frame + predicted offsets, the reference given to a
dynamic-reference model as input), reported under `reference_tests`, so a reader sees what a non-neutral
reference costs with and without model.reference = random_frame.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import audio_frames, files, metrics, rundir, store
from .config import Config, flatten
from .dataset import running_sum
from .model import Articulation, Audio2Mesh, articulate, load_model, resolve_device

BASELINES = ("neutral", "mean_offset", "nearest_audio")
ARTICULATION_GAINS = np.round(np.arange(0.5, 2.5001, 0.05), 2)  # the gains fit_articulation tries
MIN_SPEAKER_FIT_SECONDS = 3.0  # a speaker with less validation footage gets the gain fitted on every speaker's
PREDICTION_KEYS = {
    "model": "(T, V, 3) predicted absolute mesh (neutral reference), with the speaker's articulation gain",
    "model_unscaled": "(T, V, 3) the same prediction without the articulation gain (gain 1)",
    "articulation": "the gain applied to `model`",
    "truth": "(T, V, 3) extracted mesh",
    "neutral": "(V, 3) the speaker's neutral: the reference of `model`",
    "baseline_mean_offset": "(T, V, 3)", "baseline_nearest_audio": "(T, V, 3)",
    "random_reference": "(V, 3) a non-neutral training frame of the speaker",
    "model_random_reference": "(T, V, 3) prediction with random_reference as the reference",
    "frames": "(T,) indices of the clip's valid frames these rows are", "fps": "frames per second",
    "audio": "(samples,) the audio the model heard (the run's QA shift applied)", "sample_rate": "its rate, Hz",
    "clip_id": "", "speaker": "", "language": "",
}
LOWER_IS_BETTER = ("lve",)
HIGHER_IS_BETTER = ("mouth_corr",)


@dataclass
class EvalResult:
    summary: dict            # what metrics.json holds
    per_clip: pd.DataFrame   # one row per clip: model_<metric>, <baseline>_<metric>
    predictions: Path        # the folder of prediction files

    def load(self, clip_id: str) -> dict:
        with np.load(self.predictions / f"{clip_id}.npz") as data:
            return {key: data[key] for key in data.files}


# ----------------------------------------------------------------------------------- baselines from training clips

class TrainingFrames:
    """What the baselines draw on: each training speaker's mean offset, and its frames' log-mel audio with where each
    frame is. A frame's offsets are read from the store when a baseline picks it (a few clips kept): holding every
    training frame's offsets took 0.4 GB for an hour of one speaker."""

    CACHED_CLIPS = 64

    def __init__(self, processed, train_rows: pd.DataFrame, neutrals: dict, n_vertices: int, sample_rate: int,
                 progress: bool = True):
        self.mean_offset, self.mel, self.frames = {}, {}, {}  # frames: speaker -> (N, 2) (row in self.rows, frame)
        self.rows = [(row.clip_id, int(row.audio_shift_frames), row.speaker) for row in train_rows.itertuples()]
        self.processed, self.neutrals, self.n_vertices, self.sample_rate = processed, neutrals, n_vertices, sample_rate
        self._offsets = functools.lru_cache(maxsize=self.CACHED_CLIPS)(self._clip_offsets)
        for speaker in sorted(train_rows.speaker.unique()):
            total, count, mels, frames = None, 0, [], []
            mine = [i for i, (_, _, owner) in enumerate(self.rows) if owner == speaker]
            for index in tqdm(mine, desc=f"baselines {speaker}", leave=False, disable=not progress):
                example = self._example(index)
                offsets = example.mesh[example.valid] - neutrals[speaker][:n_vertices]
                total, count = running_sum(total, offsets), count + len(offsets)
                mel = audio_frames.standardised_log_mel(example.audio, sample_rate, len(example.mesh), example.fps)
                mels.append(mel[example.valid])
                frames.append(np.c_[np.full(len(offsets), index), np.flatnonzero(example.valid)])
            self.mel[speaker], self.frames[speaker] = np.concatenate(mels), np.concatenate(frames)
            self.mean_offset[speaker] = total / np.float32(count)
        self.all_speakers = sorted(self.mel)

    def _example(self, index: int, audio: bool = True) -> store.Example:
        clip_id, shift, _ = self.rows[index]
        return store.load_example(self.processed, clip_id, shift, self.sample_rate, self.n_vertices, audio=audio)

    def _clip_offsets(self, index: int) -> np.ndarray:
        return self._example(index, audio=False).mesh - self.neutrals[self.rows[index][2]][:self.n_vertices]

    def n_frames(self, speaker: str) -> int:
        return len(self.frames[speaker]) if speaker in self.frames else 0

    def offsets(self, frames: np.ndarray) -> np.ndarray:
        """(N, V, 3) offsets of training frames given as (row, frame) pairs (self.frames), clip by clip."""
        out = np.empty((len(frames), self.n_vertices, 3), np.float32)
        for index in np.unique(frames[:, 0]):
            at = frames[:, 0] == index
            out[at] = self._offsets(int(index))[frames[at, 1]]
        return out

    def mean_offset_for(self, speaker: str) -> np.ndarray:
        """The speaker's mean offset; for a speaker not in training, the mean over training speakers."""
        if speaker in self.mean_offset:
            return self.mean_offset[speaker]
        return np.mean([self.mean_offset[s] for s in self.all_speakers], axis=0)

    def nearest_audio(self, speaker: str, audio: np.ndarray, sample_rate: int, n_frames: int, fps: float) -> np.ndarray:
        """(n_frames, V, 3) offsets of the nearest training frames by log-mel distance."""
        pool = [speaker] if speaker in self.mel else self.all_speakers
        bank = torch.from_numpy(np.concatenate([self.mel[s] for s in pool]))
        frames = np.concatenate([self.frames[s] for s in pool])
        query = torch.from_numpy(audio_frames.standardised_log_mel(audio, sample_rate, n_frames, fps))
        nearest = torch.cat([torch.cdist(chunk, bank).argmin(1) for chunk in query.split(2048)])
        return self.offsets(frames[nearest.numpy()])


# ----------------------------------------------------------------------------------- 1. predictions

def gain_errors(offsets: np.ndarray, neutral: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """LVE of one clip's predicted offsets (T, V, 3) from `neutral`, scaled by each of ARTICULATION_GAINS, against the
    truth (T, V, 3) on its valid frames."""
    valid = np.ones(len(truth), bool) if valid is None else valid
    return np.array([metrics.lip_vertex_error((neutral + articulate(offsets, float(gain)))[valid], truth[valid])
                     for gain in ARTICULATION_GAINS])


def fit_articulation(model: Audio2Mesh, clips: pd.DataFrame, processed, neutrals: dict, sample_rate: int,
                     progress: bool = True) -> Articulation:
    """Per speaker, the gain of ARTICULATION_GAINS with the lowest LVE (frame-weighted) on `clips` (the validation
    clips); a speaker with under MIN_SPEAKER_FIT_SECONDS of them, and any other speaker, gets the gain fitted on all."""
    errors: dict[str, np.ndarray] = {}  # speaker -> summed LVE x frames per gain
    frames: dict[str, float] = {}
    fps = 30.0
    for row in tqdm(list(clips.itertuples()), desc="fit articulation", disable=not progress):
        example = store.load_example(processed, row.clip_id, int(row.audio_shift_frames), sample_rate, model.cfg.n_vertices)
        neutral, valid, fps = neutrals[row.speaker][: model.cfg.n_vertices], example.valid, example.fps
        offsets = model.predict(example.audio, len(example.mesh), speaker=row.speaker, sample_rate=sample_rate, fps=fps)
        errors[row.speaker] = errors.get(row.speaker, 0) + gain_errors(offsets, neutral, example.mesh, valid) * valid.sum()
        frames[row.speaker] = frames.get(row.speaker, 0) + float(valid.sum())
    if not errors:
        return Articulation({}, 1.0, "no validation clips to fit on: gain 1")
    every = sum(errors.values())
    default = float(ARTICULATION_GAINS[int(np.argmin(every))])
    gains = {speaker: float(ARTICULATION_GAINS[int(np.argmin(total))]) for speaker, total in errors.items()
             if frames[speaker] >= MIN_SPEAKER_FIT_SECONDS * fps}
    curve = {f"{gain:g}": float(value / sum(frames.values())) for gain, value in zip(ARTICULATION_GAINS, every)}
    return Articulation(gains, default, f"fitted on {len(clips)} validation clips", curve)


def articulation_for(cfg: Config, run_dir: Path, model: Audio2Mesh, splits: pd.DataFrame, neutrals: dict,
                     progress: bool = True) -> Articulation:
    """The run's gain per speaker is fitted on its validation clips and written to the run (rundir.articulation)
    every time; evaluate.articulation says which gain applies: `auto` the fitted ones, a number that gain for every
    speaker (the fitted gains stay in the file and in metrics.json's `articulation.fitted`)."""
    fitted = fit_articulation(model, splits[splits.split == "val"], cfg.data.processed, neutrals, cfg.data.sample_rate,
                              progress)
    files.write_json(rundir.articulation(run_dir), dataclasses.asdict(fitted))
    setting = cfg.evaluate.articulation
    if setting == "auto":
        return fitted
    return Articulation({}, float(setting), f"set: evaluate.articulation={setting}; fitted on validation: "
                                            f"{fitted.default:g} ({fitted.source})", fitted.curve)


def predict_clips(model: Audio2Mesh, clips: pd.DataFrame, processed, neutrals: dict, training: TrainingFrames,
                  out_dir: Path, sample_rate: int, seed: int = 0, progress: bool = True,
                  articulation: Articulation | None = None) -> list[Path]:
    """Write one prediction file per clip (PREDICTION_KEYS) and return their paths."""
    rng = np.random.default_rng(seed)
    written = []
    for row in tqdm(list(clips.itertuples()), desc="predict", disable=not progress):
        example = store.load_example(processed, row.clip_id, int(row.audio_shift_frames), sample_rate, model.cfg.n_vertices)
        neutral = neutrals[row.speaker][: model.cfg.n_vertices]
        n_frames, valid = len(example.mesh), example.valid
        speaker = row.speaker  # Audio2Mesh.speaker_index refuses a speaker its embedding does not know
        unscaled = model.predict(example.audio, n_frames, speaker=speaker, sample_rate=sample_rate, fps=example.fps)
        gain = articulation.gain(speaker) if articulation is not None else 1.0
        offsets = articulate(unscaled, gain)
        # a non-neutral reference: a random training frame of the speaker (its mean-offset pool)
        pool = training.frames.get(row.speaker)
        reference_offsets = training.offsets(pool[[rng.integers(len(pool))]])[0] if pool is not None \
            else training.mean_offset_for(row.speaker)
        random_reference = neutral + reference_offsets
        if model.reference_fn is not None:
            with_reference = random_reference + model.predict(example.audio, n_frames, speaker=speaker,
                                                              reference=reference_offsets, sample_rate=sample_rate,
                                                              fps=example.fps, articulation=gain)
        else:
            with_reference = random_reference + offsets  # the model assumes its reference is the neutral
        nearest = training.nearest_audio(row.speaker, example.audio, sample_rate, n_frames, example.fps)
        path = out_dir / f"{row.clip_id}.npz"
        with files.atomic_path(path) as tmp:
            np.savez(tmp, model=(neutral + offsets)[valid], model_unscaled=(neutral + unscaled)[valid], articulation=gain,
                     truth=example.mesh[valid], neutral=neutral,
                     baseline_mean_offset=np.broadcast_to(neutral + training.mean_offset_for(row.speaker),
                                                          example.mesh.shape)[valid],
                     baseline_nearest_audio=(neutral + nearest)[valid], random_reference=random_reference,
                     model_random_reference=with_reference[valid], frames=np.flatnonzero(valid), fps=example.fps,
                     audio=example.audio.astype(np.float32), sample_rate=sample_rate,
                     clip_id=row.clip_id, speaker=row.speaker, language=example.language)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------- 2. metrics from the files

def score(predictions: Path, split: str = "test", extra: dict | None = None) -> dict:
    """Metrics from prediction files alone (no model needed): the summary that metrics.json holds."""
    rows = []
    variants = {"model": "model", **{name: f"baseline_{name}" for name in BASELINES if name != "neutral"}}
    for path in sorted(p for p in Path(predictions).glob("*.npz") if not files.is_part(p)):
        with np.load(path) as data:
            clip = {key: data[key] for key in data.files}
        truth, neutral = clip["truth"], clip["neutral"]
        candidates = {name: clip[key] for name, key in variants.items()}
        candidates["neutral"] = np.broadcast_to(neutral, truth.shape)
        candidates["model_random_reference"] = clip["model_random_reference"]
        candidates["model_unscaled"] = clip.get("model_unscaled", clip["model"])  # files written before the knob
        candidates["random_reference_still"] = np.broadcast_to(clip["random_reference"], truth.shape)
        row = dict(clip_id=str(clip["clip_id"]), speaker=str(clip["speaker"]), language=str(clip["language"]) or "unknown",
                   n_frames=len(truth))
        for name, prediction in candidates.items():
            for key, value in metrics.clip_metrics(prediction, truth, neutral).items():
                if key != "n_frames":
                    row[f"{name}_{key}"] = value
        rows.append(row)
    if not rows:
        raise RuntimeError(f"no prediction files in {predictions}; run the prediction step first")
    per_clip = pd.DataFrame(rows)

    def block(table: pd.DataFrame, name: str) -> dict:
        return metrics.summarise([dict(n_frames=r["n_frames"], **{k: r[f"{name}_{k}"] for k in metrics.UNITS})
                                  for r in table.to_dict("records")])

    def everything(table: pd.DataFrame) -> dict:
        return dict(model=block(table, "model"), baselines={name: block(table, name) for name in BASELINES})

    summary = dict(split=split, n_clips=len(per_clip), n_frames=int(per_clip.n_frames.sum()),
                   unit="mesh units (~cm; outer eye corners 9 units apart)", units=metrics.UNITS, **everything(per_clip))
    summary["lve_ratio_model_to_neutral"] = summary["model"]["lve"] / max(summary["baselines"]["neutral"]["lve"], 1e-12)
    summary["lve_ratio_model_to_mean_offset"] = summary["model"]["lve"] / max(summary["baselines"]["mean_offset"]["lve"], 1e-12)
    summary["model_unscaled"] = block(per_clip, "model_unscaled")  # the same predictions at articulation gain 1
    summary["reference_tests"] = {"neutral": block(per_clip, "model"), "random_frame": block(per_clip, "model_random_reference"),
                                  "random_frame_no_motion": block(per_clip, "random_reference_still")}
    summary["failures"] = [
        f"the model does not beat the {name} baseline on {key}: {summary['model'][key]:.4f} vs "
        f"{summary['baselines'][name][key]:.4f}"
        for name in BASELINES for key in LOWER_IS_BETTER + HIGHER_IS_BETTER
        if (key in LOWER_IS_BETTER and summary["model"][key] >= summary["baselines"][name][key])
        or (key in HIGHER_IS_BETTER and summary["model"][key] <= summary["baselines"][name][key])]
    summary["per_speaker"] = {speaker: everything(table) for speaker, table in per_clip.groupby("speaker")}
    summary["per_language"] = {language: everything(table) for language, table in per_clip.groupby("language")}
    summary.update(extra or {})
    summary["per_clip"] = per_clip.to_dict("records")
    return summary


# ----------------------------------------------------------------------------------- the stage

def evaluate(cfg: Config, run_dir: str | Path, split: str | None = None, checkpoint: str | None = None,
             data: str | Path | None = None, data_run: str | Path | None = None, progress: bool = True) -> EvalResult:
    """Predict `split` clips of the run (default evaluate.split) with `checkpoint` (default evaluate.checkpoint), score
    them, write metrics.json. With `data` (another clip store) and `data_run` (its QA decisions and neutrals, from
    `a2m evaluate --data`), every accepted clip of that store is evaluated instead, into data_run/."""
    run_dir = Path(run_dir)
    split, checkpoint = split or cfg.evaluate.split, checkpoint or cfg.evaluate.checkpoint
    device = resolve_device(cfg.evaluate.device)
    checkpoint_path = rundir.checkpoint(run_dir, checkpoint)
    model = load_model(checkpoint_path, device)
    splits_path = rundir.splits(run_dir)
    splits = rundir.read_splits(run_dir)
    neutrals = run_neutrals = rundir.load_neutrals(run_dir)
    training = TrainingFrames(cfg.data.processed, splits[splits.split == "train"], run_neutrals, model.cfg.n_vertices,
                              cfg.data.sample_rate, progress)
    if data is None:
        processed, out_dir, clips = cfg.data.processed, run_dir, splits[splits.split == split]
        if clips.empty:
            raise RuntimeError(f"no '{split}' clips in {splits_path}; add clips or raise data.test_fraction")
    else:
        processed, out_dir = Path(data), Path(data_run)
        clips, split = rundir.accepted_clips(out_dir), f"all accepted clips of {data}"
        neutrals = {**run_neutrals, **rundir.load_neutrals(out_dir)}
    articulation = articulation_for(cfg, run_dir, model, splits, run_neutrals, progress)
    predictions = rundir.predictions(out_dir)
    for stale in predictions.glob("*.npz"):
        stale.unlink()
    predict_clips(model, clips, processed, neutrals, training, predictions, cfg.data.sample_rate, cfg.seed, progress,
                  articulation)
    summary = score(predictions, split, dict(
        checkpoint=str(checkpoint_path), encoder=model.audio_encoder.describe(), encoder_record=model.audio_encoder.record(),
        reference=model.cfg.reference, articulation=dataclasses.asdict(articulation)))
    files.write_json(rundir.metrics(out_dir), summary)
    if data is None:
        log_hparams(cfg, run_dir, summary)
    return EvalResult(summary=summary, per_clip=pd.DataFrame(summary["per_clip"]), predictions=predictions)


HPARAM_METRICS = ("lve", "mouth_corr", "motion_ratio", "closure_error", "peak_opening_ratio", "lip_lag_frames")


def log_hparams(cfg: Config, run_dir: Path, summary: dict) -> None:
    """The run's settings and its held-out metrics as TensorBoard HParams, beside its training curves: `tensorboard
    --logdir runs` then compares runs by setting (its HPARAMS tab), as `a2m compare` does."""
    from torch.utils.tensorboard import SummaryWriter

    settings = {key: value for key, value in flatten(cfg.to_dict()).items() if isinstance(value, (bool, int, float, str))}
    scores = {f"hparam/{key}": float(summary["model"][key]) for key in HPARAM_METRICS
              if np.isfinite(summary["model"].get(key, np.nan))}
    scores["hparam/lve_x_mean_offset"] = float(summary["lve_ratio_model_to_mean_offset"])
    writer = SummaryWriter(str(rundir.tensorboard(run_dir)))
    try:
        writer.add_hparams(settings, scores, run_name=".")  # "." : the run's own folder, with its curves
    finally:
        writer.close()


def report(summary: dict) -> str:
    """The headline, and a loud line for every baseline the model does not beat."""
    model = summary["model"]
    lines = [f"held-out ({summary['split']}, {summary['n_clips']} clips): LVE model {model['lve']:.4f} | "
             + " | ".join(f"{name} {summary['baselines'][name]['lve']:.4f}" for name in BASELINES)
             + f"  ({summary['unit']}); mouth_corr {model['mouth_corr']:.2f}, motion_ratio {model['motion_ratio']:.2f}",
             f"lips: closure_error {model.get('closure_error', float('nan')):.3f}, peak_opening_ratio "
             f"{model.get('peak_opening_ratio', float('nan')):.2f}, lip_lag_frames {model.get('lip_lag_frames', float('nan')):+.2f}"]
    if "articulation" in summary:
        art = summary["articulation"]
        gains = ", ".join(f"{k} {v:g}" for k, v in sorted(art["gains"].items())[:6])
        lines.append(f"articulation gain: {art['source']}; default {art['default']:g}{'; ' + gains if gains else ''}")
    lines += [f"WARNING: {failure}" for failure in summary["failures"]]
    return "\n".join(lines)


def per_speaker_table(summary: dict) -> pd.DataFrame:
    """Notebook 05's table: per speaker, the model's LVE against the mean-offset baseline, mouth correlation, motion
    ratio and the three lip metrics, with the clip count."""
    return pd.DataFrame({speaker: {"clips": s["model"]["n_clips"], "model lve": s["model"]["lve"],
                                   "mean-offset lve": s["baselines"]["mean_offset"]["lve"],
                                   "model mouth_corr": s["model"]["mouth_corr"], "motion_ratio": s["model"]["motion_ratio"],
                                   "closure_error": s["model"].get("closure_error"),
                                   "peak_opening_ratio": s["model"].get("peak_opening_ratio"),
                                   "lip_lag_frames": s["model"].get("lip_lag_frames")}
                         for speaker, s in summary["per_speaker"].items()}).T


def lip_table(summary: dict) -> pd.DataFrame:
    """The lips' size, closure and timing (metrics.py) of the model, the model at gain 1 and the baselines."""
    blocks = {"model": summary["model"], "model, gain 1": summary.get("model_unscaled", summary["model"]),
              **{f"baseline: {name}": block for name, block in summary["baselines"].items()}}
    keys = ["lve", "mouth_corr", "motion_ratio", "closure_error", "peak_opening_ratio", "lip_lag_frames"]
    return pd.DataFrame({name: {key: block.get(key) for key in keys} for name, block in blocks.items()}).T


def gain_curve(predictions: Path, gains=ARTICULATION_GAINS) -> pd.DataFrame:
    """LVE (frame-weighted) and motion ratio (clip mean) of the held-out predictions at gain 1 (model_unscaled) scaled
    by each gain: what the articulation knob trades, and the curve a better model must lie below."""
    totals = np.zeros((len(gains), 2))
    frames = n_clips = 0
    for path in sorted(p for p in Path(predictions).glob("*.npz") if not files.is_part(p)):
        with np.load(path) as data:
            unscaled = data["model_unscaled"] if "model_unscaled" in data.files else data["model"]
            truth = data["truth"]
        for i, gain in enumerate(gains):
            scaled = articulate(unscaled, float(gain))
            totals[i] += metrics.lip_vertex_error(scaled, truth) * len(truth), metrics.motion_ratio(scaled, truth)
        frames, n_clips = frames + len(truth), n_clips + 1
    if not n_clips:
        raise RuntimeError(f"no prediction files in {predictions}; run evaluation first")
    return pd.DataFrame(dict(gain=gains, lve=totals[:, 0] / frames, motion_ratio=totals[:, 1] / n_clips))


PER_CLIP_COLUMNS = ["clip_id", "speaker", "language", "n_frames", "model_lve", "mean_offset_lve", "nearest_audio_lve",
                    "neutral_lve", "model_mouth_corr", "model_motion_ratio", "model_closure_error",
                    "model_peak_opening_ratio", "model_lip_lag_frames"]


def worst_clips(per_clip: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The n held-out clips with the largest model LVE (all of them are in metrics.json and per_clip)."""
    return per_clip.sort_values("model_lve", ascending=False)[PER_CLIP_COLUMNS].head(n)


# ----------------------------------------------------------------------------------- renders

def chosen_clips(per_clip: pd.DataFrame) -> dict[str, str]:
    """The best, median and worst held-out clips by the model's LVE."""
    table = per_clip.sort_values("model_lve").reset_index(drop=True)
    return {"best": table.clip_id.iloc[0], "median": table.clip_id.iloc[len(table) // 2], "worst": table.clip_id.iloc[-1]}


def render_clips(result: EvalResult, cfg: Config, run_dir: str | Path, progress: bool = True) -> dict[str, dict]:
    """Render the best, median and worst clips to the run's renders: a video (truth | model, front and side, beside the
    source frame, with the audio the model heard) and the 3D viewer's page (a2m_lib.viewer); returns
    {label: {"video": mp4, "view": html}} (rundir.render)."""
    from . import render, viewer

    shifts = rundir.read_splits(run_dir).set_index("clip_id").audio_shift_frames
    videos = {}
    for label, clip_id in tqdm(list(chosen_clips(result.per_clip).items()), desc="render", disable=not progress):
        prediction = result.predictions / f"{clip_id}.npz"
        videos[label] = dict(
            video=render.render_prediction_file(prediction, cfg.data.processed, rundir.render(run_dir, clip_id),
                                                int(shifts.get(clip_id, 0)), cfg.data.sample_rate),
            view=viewer.write_html(prediction, rundir.render(run_dir, clip_id, "view")))
    return videos
