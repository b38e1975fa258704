"""Every figure the notebooks show, apart from the stage logic (which imports no matplotlib).

    plots.clip(processed, clip_id)             01: a frame with landmarks, the pose-free mesh, the mouth over time
    plots.qa_summary(report, fps)              02: offsets and clip lengths by QA status
    plots.qa_trace(report, clip_id)            02: mouth opening against loudness, and the score of each lag
    plots.neutrals(neutral_dir)                03: each speaker's neutral, front and side
    plots.training_curves(history)             04: train and validation L1 per epoch
    plots.evaluation_summary(result)           05: LVE of the model against the neutral baseline
    plots.evaluation_clip(result, clip_id)     05: predicted against true mouth opening for one clip
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import extract, files, media, qa, regions, store


# ----------------------------------------------------------------------------------- 01 extraction

def clip(processed: str | Path, clip_id: str):
    """A frame with its landmarks, the pose-free mesh from the front and the side, and the mouth over time."""
    clip = store.load_clip(processed, clip_id)
    meta = clip["meta"]
    frame_index = int(np.argmax(clip["face_found"]))
    frame = media.read_frame(meta["source"], float(meta["start"]) + frame_index / float(meta["fps"]))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), gridspec_kw={"width_ratios": [1, 1, 1, 2]})
    if frame is not None:
        axes[0].imshow(frame)
    points = clip["landmarks_image"][frame_index]
    axes[0].scatter(points[:, 0], points[:, 1], s=0.3, color="lime")
    axes[0].set(title=f"frame {frame_index} + landmarks")
    shape = clip["mesh"][frame_index]
    axes[1].scatter(shape[:, 0], shape[:, 1], s=0.5)
    axes[1].set(title="pose-free mesh, front", xlabel="x")
    axes[2].scatter(shape[:, 2], shape[:, 1], s=0.5)
    axes[2].set(title="side", xlabel="z")
    for axis in axes[:3]:
        axis.set_aspect("equal")
        axis.invert_yaxis() if axis is not axes[0] else None
    t = np.arange(len(clip["mesh"])) / float(meta["fps"])
    axes[3].plot(t, regions.mouth_opening(clip["mesh"]), label="inner-lip gap (mesh units)")
    axes[3].fill_between(t, 0, (~clip["face_found"]) * np.nanmax(regions.mouth_opening(clip["mesh"])), color="tab:red",
                         alpha=0.3, label="no face")
    axes[3].set(xlabel="seconds", title=clip_id)
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- 02 alignment QA

def qa_summary(report, fps: float = 30.0):
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


def qa_trace(report, clip_id: str, sample_rate: int = 16000):
    """Mouth opening against the audio loudness envelope for one clip, and its lag curve."""
    clip = store.load_clip(report.processed, clip_id)
    trace = qa.lag_trace(clip, sample_rate)
    fps, n_frames = trace["fps"], len(trace["opening"])
    opening, lag, confidence, scores = trace["opening"], trace["lag"], trace["confidence"], trace["scores"]
    envelope = extract.frame_energy(clip["audio"], sample_rate, fps, n_frames)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    t = np.arange(n_frames) / fps
    axes[0].plot(t, opening, label="mouth opening (mesh units)")
    twin = axes[0].twinx()
    twin.plot(t, envelope, color="tab:orange", alpha=0.7, label="audio log-RMS")
    axes[0].set(xlabel="seconds", title=f"{clip_id}")
    axes[0].legend(loc="upper left")
    twin.legend(loc="upper right")
    axes[1].plot(trace["lags"], scores, marker=".")
    axes[1].axvline(lag, color="tab:red")
    axes[1].set(xlabel="lag (frames)", ylabel="summed R$^2$", title=f"offset {lag:+d}, confidence {confidence:.1f}")
    fig.tight_layout()
    return fig

# ----------------------------------------------------------------------------------- 03 neutral

def neutrals(neutral_dir: str | Path):
    """Each speaker's neutral mesh from the front and the side, titled with where it came from."""
    paths = sorted(p for p in Path(neutral_dir).glob("*.npz") if not files.is_part(p))
    fig, axes = plt.subplots(len(paths), 2, figsize=(6, 3.2 * len(paths)), squeeze=False)
    for row, path in zip(axes, paths):
        saved = store.load_neutral(path)
        shape = saved["mesh"]
        row[0].scatter(shape[:, 0], shape[:, 1], s=0.5)
        row[0].scatter(*shape[regions.LIPS][:, :2].T, s=3, color="tab:red")
        row[1].scatter(shape[:, 2], shape[:, 1], s=0.5)
        row[0].set_title(f"{saved['speaker']}: {saved['clip_id']}:{saved['frame']} ({saved['chosen_by']}), front", fontsize=9)
        row[1].set_title("side", fontsize=9)
        for axis in row:
            axis.set_aspect("equal")
            axis.invert_yaxis()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- 04 training

def training_curves(history: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(history.epoch, history.train_loss, label="train L1")
    valid = history.dropna(subset=["val_loss"])
    ax.plot(valid.epoch, valid.val_loss, marker=".", label="val L1")
    ax.set(xlabel="epoch", ylabel="L1 on offsets (mesh units)", yscale="log")
    ax.legend()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- 05 evaluation

def evaluation_summary(result):
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


def evaluation_clip(result, clip_id: str, fps: float = 30.0):
    """Mouth opening over time (truth vs model) and a front view of the lips at the widest-open frame."""
    clip = result.predictions[clip_id]
    truth, prediction = regions.mouth_opening(clip["target"]), regions.mouth_opening(clip["prediction"])
    frame = int(np.argmax(truth))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    t = np.arange(len(truth)) / fps
    axes[0].plot(t, truth, label="extracted mesh", color="black")
    axes[0].plot(t, prediction, label="model", color="tab:blue")
    axes[0].axhline(regions.mouth_opening(clip["neutral"]), color="tab:gray", ls="--", label="neutral")
    axes[0].set(xlabel="seconds", ylabel="inner-lip gap (mesh units)", title=clip_id)
    axes[0].legend()
    for mesh_frame, colour, label in ((clip["target"][frame], "black", "truth"),
                                      (clip["prediction"][frame], "tab:blue", "model"),
                                      (clip["neutral"], "tab:gray", "neutral")):
        lips = mesh_frame[regions.LIPS]
        axes[1].scatter(lips[:, 0], lips[:, 1], s=8, color=colour, label=label)
    axes[1].invert_yaxis()
    axes[1].set_aspect("equal")
    axes[1].set(title=f"lips, frame {frame}")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
