"""Stage 05: held-out error of the trained model against the neutral baseline.

    result = evaluate.evaluate(cfg, run_dir)   # writes run_dir/metrics.json and run_dir/predictions/

metrics.json:
    {"split": "test", "n_clips": .., "n_frames": .., "unit": "mesh units (~cm)", "checkpoint": ..,
     "model": {"lve": .., "mve": .., "mouth_corr": .. (mean over clips)},
     "baselines": {"neutral": {"lve": .., "mve": .., "mouth_corr": 0.0}},
     "per_clip": [{"clip_id": .., "model_lve": .., "neutral_lve": .., ...}, ...]}
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import extract, media, metrics, neutral, qa
from .config import Config
from .mesh import LIP_VERTICES, mouth_opening
from .model import normalise_audio, resolve_device
from .train import load_model

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


def evaluate(cfg: Config, run_dir: str | Path, split: str = "test", checkpoint: str = "best",
             progress: bool = True) -> EvalResult:
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    checkpoint_path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    model = load_model(checkpoint_path, device)
    n_vertices = model.cfg.n_vertices
    splits = pd.read_csv(run_dir / "splits.csv")
    clips = splits[splits.split == split]
    if clips.empty:
        raise RuntimeError(f"no '{split}' clips in {run_dir / 'splits.csv'}; add clips or raise data.test_fraction")
    neutrals = neutral.load_neutrals(run_dir / "neutral")
    rows, predictions = [], {}
    all_pred, all_target, all_neutral = [], [], []
    for row in tqdm(clips.itertuples(), total=len(clips), desc=f"evaluate {split}", disable=not progress):
        clip = extract.load_clip(cfg.data.processed, row.clip_id)
        neutral_mesh = neutrals[row.speaker][:n_vertices]
        target = clip["mesh"][:, :n_vertices]
        valid = np.isfinite(target).all(axis=(1, 2))
        audio = qa.shift_audio(clip["audio"], int(row.audio_shift_frames), cfg.data.sample_rate / float(clip["meta"]["fps"]))
        prediction = neutral_mesh + predict_offsets(model, audio, len(target), device)
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
    media.write_json_atomic(run_dir / "metrics.json", dict(summary, per_clip=rows))
    return EvalResult(summary=summary, per_clip=per_clip, predictions=predictions)


# ----------------------------------------------------------------------------------- plots

def plot_summary(result: EvalResult):
    """LVE and MVE of the model against the neutral baseline, per clip and overall."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1, 3]})
    names = ["neutral", "model"]
    values = [result.summary["baselines"]["neutral"]["lve"], result.summary["model"]["lve"]]
    axes[0].bar(names, values, color=["tab:gray", "tab:blue"])
    axes[0].set(ylabel="lip vertex error (mesh units)", title=f"{result.summary['split']}: LVE")
    table = result.per_clip.sort_values("neutral_lve")
    x = np.arange(len(table))
    axes[1].bar(x - 0.2, table.neutral_lve, 0.4, color="tab:gray", label="neutral")
    axes[1].bar(x + 0.2, table.model_lve, 0.4, color="tab:blue", label="model")
    axes[1].set_xticks(x, table.clip_id, rotation=60, ha="right", fontsize=7)
    axes[1].set(ylabel="LVE", title="per held-out clip")
    axes[1].legend()
    fig.tight_layout()
    return fig


def plot_clip(result: EvalResult, clip_id: str, fps: float = 30.0):
    """Mouth opening over time (truth vs model) and a front view of the lips at the widest-open frame."""
    clip = result.predictions[clip_id]
    truth, prediction = mouth_opening(clip["target"]), mouth_opening(clip["prediction"])
    frame = int(np.argmax(truth))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    t = np.arange(len(truth)) / fps
    axes[0].plot(t, truth, label="extracted mesh", color="black")
    axes[0].plot(t, prediction, label="model", color="tab:blue")
    axes[0].axhline(mouth_opening(clip["neutral"]), color="tab:gray", ls="--", label="neutral")
    axes[0].set(xlabel="seconds", ylabel="inner-lip gap (mesh units)", title=clip_id)
    axes[0].legend()
    for mesh_frame, colour, label in ((clip["target"][frame], "black", "truth"),
                                      (clip["prediction"][frame], "tab:blue", "model"),
                                      (clip["neutral"], "tab:gray", "neutral")):
        lips = mesh_frame[LIP_VERTICES]
        axes[1].scatter(lips[:, 0], lips[:, 1], s=8, color=colour, label=label)
    axes[1].invert_yaxis()
    axes[1].set_aspect("equal")
    axes[1].set(title=f"lips, frame {frame}")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
