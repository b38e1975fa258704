"""Stage 05: held-out error of the trained model against the neutral baseline.

    result = evaluate.evaluate(cfg, run_dir)   # writes run_dir/metrics.json

Split, checkpoint and device come from the config's `evaluate` section (evaluate.split, evaluate.checkpoint,
evaluate.device); the model is read by model.load_model, and each clip by store.load_example with the
run's QA shift, as in training.

metrics.json:
    {"split": "test", "n_clips": .., "n_frames": .., "unit": "mesh units (~cm)", "checkpoint": ..,
     "model": {"lve": .., "mve": .., "mouth_corr": .. (mean over clips)},
     "baselines": {"neutral": {"lve": .., "mve": .., "mouth_corr": 0.0}},
     "per_clip": [{"clip_id": .., "model_lve": .., "neutral_lve": .., ...}, ...]}
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import files, metrics, store
from .config import Config
from .model import load_model, normalise_audio, resolve_device

METRICS = {"lve": metrics.lip_vertex_error, "mve": metrics.mean_vertex_error,
           "mouth_corr": metrics.mouth_opening_correlation}


@dataclass
class EvalResult:
    summary: dict
    per_clip: pd.DataFrame
    predictions: dict[str, dict[str, np.ndarray]]  # clip_id -> {"prediction", "target", "neutral"}


@torch.no_grad()
def predict_offsets(model, audio: np.ndarray, n_frames: int, device) -> np.ndarray:
    """One clip: audio (samples,) -> offsets (n_frames, V, 3)."""
    batch = torch.from_numpy(normalise_audio(audio))[None].to(device)
    return model(batch, n_frames)[0].cpu().numpy()


def evaluate(cfg: Config, run_dir: str | Path, split: str | None = None, checkpoint: str | None = None,
             progress: bool = True) -> EvalResult:
    """Evaluate on `split` (default evaluate.split) with `checkpoint` (default evaluate.checkpoint)."""
    run_dir = Path(run_dir)
    split, checkpoint = split or cfg.evaluate.split, checkpoint or cfg.evaluate.checkpoint
    device = resolve_device(cfg.evaluate.device)
    checkpoint_path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    model = load_model(checkpoint_path, device)
    n_vertices = model.cfg.n_vertices
    splits = pd.read_csv(run_dir / "splits.csv")
    clips = splits[splits.split == split]
    if clips.empty:
        raise RuntimeError(f"no '{split}' clips in {run_dir / 'splits.csv'}; add clips or raise data.test_fraction")
    neutrals = store.load_neutrals(run_dir / "neutral")
    rows, predictions = [], {}
    all_pred, all_target, all_neutral = [], [], []
    for row in tqdm(clips.itertuples(), total=len(clips), desc=f"evaluate {split}", disable=not progress):
        example = store.load_example(cfg.data.processed, row.clip_id, row.audio_shift_frames, cfg.data.sample_rate,
                                     n_vertices)
        neutral_mesh = neutrals[row.speaker][:n_vertices]
        target, valid = example.mesh, example.valid
        prediction = neutral_mesh + predict_offsets(model, example.audio, len(target), device)
        baseline = np.broadcast_to(neutral_mesh, target.shape)
        target, prediction, baseline = target[valid], prediction[valid], baseline[valid]
        predictions[row.clip_id] = dict(prediction=prediction, target=target, neutral=np.asarray(neutral_mesh))
        rows.append(dict(clip_id=row.clip_id, speaker=row.speaker, n_frames=int(valid.sum()),
                         **{f"model_{k}": f(prediction, target) for k, f in METRICS.items()},
                         **{f"neutral_{k}": f(baseline, target) for k, f in METRICS.items()}))
        all_pred.append(prediction)
        all_target.append(target)
        all_neutral.append(baseline)
    pred, target, base = (np.concatenate(x) for x in (all_pred, all_target, all_neutral))
    per_clip = pd.DataFrame(rows)
    summary = {
        "split": split, "n_clips": len(per_clip), "n_frames": int(per_clip.n_frames.sum()),
        "unit": "mesh units (~cm; outer eye corners 9 units apart)", "checkpoint": str(checkpoint_path),
        # LVE and MVE over all frames; the mouth correlation per clip, averaged (frames pooled from several
        # speakers would mix their neutrals)
        "model": dict(lve=metrics.lip_vertex_error(pred, target), mve=metrics.mean_vertex_error(pred, target),
                      mouth_corr=float(per_clip.model_mouth_corr.mean())),
        "baselines": {"neutral": dict(lve=metrics.lip_vertex_error(base, target),
                                      mve=metrics.mean_vertex_error(base, target),
                                      mouth_corr=float(per_clip.neutral_mouth_corr.mean()))},
    }
    summary["lve_ratio_model_to_neutral"] = summary["model"]["lve"] / max(summary["baselines"]["neutral"]["lve"], 1e-12)
    files.write_json(run_dir / "metrics.json", dict(summary, per_clip=rows))
    return EvalResult(summary=summary, per_clip=per_clip, predictions=predictions)
