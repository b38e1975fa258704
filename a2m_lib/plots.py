"""Every figure the notebooks show, apart from the stage logic (which imports no matplotlib). Plots draw; they write
no file (renders are a2m_lib.evaluate's) and read no benchmark (the notebook passes the rows in).

    plots.clip(processed, clip_id)             01: a frame with landmarks, the pose-free mesh, the mouth over time
    plots.qa_summary(report, fps)              02: offsets and clip lengths by QA status
    plots.qa_confidence(report, threshold)     02: clip offset error against confidence; confidence by status
    plots.qa_trace(report, clip_id)            02: mouth opening against loudness, and the score of each lag
    plots.neutrals(run_dir)                    03: each speaker's neutral, front and side
    plots.training_curves(history)             04: train and validation L1 per epoch
    plots.footage_curve(rows, minutes)         04: the footage curve of benchmarks/footage_curve.py, this run marked
    plots.evaluation_summary(result)           05: LVE of the model against the baselines
    plots.lip_trace(result, clip_id, store)    05: predicted against true mouth opening for one clip
    plots.look_and_listen(result, videos, ...) 05: the rendered clips' lip traces and videos with sound
    plots.articulation(curve, fitted)          05: LVE and motion ratio against the articulation gain
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import audio_frames, files, media, qa, regions, rundir, store


# ----------------------------------------------------------------------------------- 01 extraction

def banner(text: str):
    """A loud warning for a notebook (a collapse, a baseline the model does not beat): an IPython HTML object."""
    from html import escape

    from IPython.display import HTML

    return HTML(f"<div style='background:#fdd;padding:8px;font-weight:bold'>{escape(text)}</div>")


def clip(processed: str | Path, clip_id: str):
    """A frame with its landmarks, the pose-free mesh from the front and the side, and the mouth over time."""
    data = store.load_clip(processed, clip_id)
    meta = data["meta"]
    frame_index = int(np.argmax(data["face_found"]))
    frame = media.read_frame(meta["source"], float(meta["start"]) + frame_index / float(meta["fps"]))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), gridspec_kw={"width_ratios": [1, 1, 1, 2]})
    if frame is not None:
        axes[0].imshow(frame)
    points = data["landmarks_image"][frame_index]
    axes[0].scatter(points[:, 0], points[:, 1], s=0.3, color="lime")
    axes[0].set(title=f"frame {frame_index} + landmarks")
    shape = data["mesh"][frame_index]
    axes[1].scatter(shape[:, 0], shape[:, 1], s=0.5)
    axes[1].set(title="pose-free mesh, front", xlabel="x")
    axes[2].scatter(shape[:, 2], shape[:, 1], s=0.5)
    axes[2].set(title="side", xlabel="z")
    for axis in axes[:3]:
        axis.set_aspect("equal")
        axis.invert_yaxis() if axis is not axes[0] else None
    t = np.arange(len(data["mesh"])) / float(meta["fps"])
    axes[3].plot(t, regions.mouth_opening(data["mesh"]), label="inner-lip gap (mesh units)")
    axes[3].fill_between(t, 0, (~data["face_found"]) * np.nanmax(regions.mouth_opening(data["mesh"])), color="tab:red",
                         alpha=0.3, label="no face")
    axes[3].set(xlabel="seconds", title=clip_id)
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- 02 alignment QA

STATUS_COLOURS = {"pass": "tab:green", "uncertain": "tab:orange", "fail": "tab:red"}


def qa_summary(report, fps: float = 30.0):
    """Histograms of A/V offsets and clip lengths, coloured by status."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    table = report.table
    for status, colour in STATUS_COLOURS.items():
        part = table[table.status == status]
        axes[0].hist(part.av_offset_frames, bins=np.arange(-15.5, 16.5), color=colour, alpha=0.7, label=status)
        axes[1].hist(part.n_frames / fps, bins=20, color=colour, alpha=0.7, label=status)
    axes[0].set(xlabel="audio/video offset (frames, + = audio late)", ylabel="clips")
    axes[1].set(xlabel="clip length (s)", ylabel="clips")
    axes[0].legend()
    fig.tight_layout()
    return fig


def qa_confidence(report, min_confidence: float):
    """Does the confidence mean something? Left: for clips of sources cut into several clips, how far each
    clip's own offset is from its source's pooled one, against the clip's confidence; the unsure clips
    (left of the line) should hold the disagreements. Right: the confidence of every clip, by status."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    agreement = qa.offset_agreement(report.table)
    if len(agreement):
        agree = agreement.error <= 1
        jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(agreement))  # to see stacked points
        axes[0].scatter(agreement.clip_confidence[agree], agreement.error[agree] + jitter[agree], s=12,
                        color="tab:green", label=f"within ±1 frame ({agree.sum()})")
        axes[0].scatter(agreement.clip_confidence[~agree], agreement.error[~agree] + jitter[~agree], s=12,
                        color="tab:red", label=f"further ({(~agree).sum()})")
        axes[0].legend(fontsize=8)
        axes[0].set_title(f"{agree.mean():.0%} of {len(agreement)} clips agree with their source", fontsize=10)
    else:
        axes[0].text(0.5, 0.5, "no source was cut into several clips:\nnothing to compare with",
                     ha="center", va="center", transform=axes[0].transAxes)
    axes[0].axvline(min_confidence, color="grey", linestyle="--")
    axes[0].set(xlabel="clip confidence", ylabel="|clip offset - source offset| (frames)")
    table = report.table
    bins = np.linspace(min(0, table.clip_confidence.min()), max(table.clip_confidence.max(), min_confidence) + 1e-3, 25)
    for status, colour in STATUS_COLOURS.items():
        axes[1].hist(table.clip_confidence[table.status == status], bins=bins, color=colour, alpha=0.7, label=status)
    axes[1].axvline(min_confidence, color="grey", linestyle="--", label="qa.min_offset_confidence")
    axes[1].set(xlabel="clip confidence", ylabel="clips")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def qa_trace(report, clip_id: str, sample_rate: int = 16000):
    """Mouth opening against the audio loudness envelope for one clip, and the lag curve QA read its offset from."""
    trace = qa.lag_trace(report, clip_id, sample_rate)
    fps, n_frames = trace["fps"], len(trace["opening"])
    opening, lag, confidence, scores = trace["opening"], trace["lag"], trace["confidence"], trace["scores"]
    envelope = audio_frames.frame_energy(trace["audio"], sample_rate, fps, n_frames)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    t = np.arange(n_frames) / fps
    axes[0].plot(t, opening, label="mouth opening (mesh units)")
    twin = axes[0].twinx()
    twin.plot(t, envelope, color="tab:orange", alpha=0.7, label="audio log-RMS")
    axes[0].set(xlabel="seconds", title=f"{clip_id}")
    axes[0].legend(loc="upper left")
    twin.legend(loc="upper right")
    if scores is not None:
        axes[1].plot(trace["lags"], scores, marker=".")
        axes[1].axvline(lag, color="tab:red")
    score_name = {"store": "correlation (store model)", "clip": "mean R$^2$ (per-clip fit)"}.get(trace["method"], "")
    axes[1].set(xlabel="lag (frames)", ylabel=score_name, title=f"offset {lag:+d}, confidence {confidence:.3f}")
    fig.tight_layout()
    return fig

# ----------------------------------------------------------------------------------- 03 neutral

def neutrals(run_dir: str | Path):
    """Each speaker's neutral mesh from the front and the side, titled with where it came from."""
    paths = sorted(p for p in rundir.neutral_dir(run_dir).glob("*.npz") if not files.is_part(p))
    fig, axes = plt.subplots(len(paths), 2, figsize=(6, 3.2 * len(paths)), squeeze=False)
    for row, path in zip(axes, paths):
        saved = rundir.load_neutral(path)
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

def training_curves(history: pd.DataFrame, title: str = ""):
    """Train against validation L1 (overall and per speaker), and the validation motion ratio."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    axes[0].plot(history.epoch, history.train_loss, color="black", label="train L1")
    valid = history.dropna(subset=["val_loss"])
    axes[0].plot(valid.epoch, valid.val_loss, color="tab:red", marker=".", label="val L1")
    for column in (c for c in history.columns if c.startswith("val_loss[")):
        axes[0].plot(valid.epoch, valid[column], lw=0.8, alpha=0.7, label=column[9:-1])
    axes[0].set(xlabel="epoch", ylabel="L1 on offsets (mesh units)", yscale="log",
                title=title or "train vs validation: a widening gap means memorising")
    axes[0].legend(fontsize=7, ncol=2)
    if "val_motion_ratio" in history:
        axes[1].plot(valid.epoch, valid.val_motion_ratio, marker=".")
        axes[1].axhline(1, color="gray", ls="--")
        axes[1].set(xlabel="epoch", ylabel="predicted / true motion std", title="validation motion ratio", ylim=(0, None))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- 05 evaluation

NAMES = {"model": "model", "neutral": "neutral", "mean_offset": "mean offset", "nearest_audio": "nearest audio"}
COLOURS = {"model": "tab:blue", "neutral": "tab:gray", "mean_offset": "tab:orange", "nearest_audio": "tab:green"}


def evaluation_summary(result, title: str = ""):
    """LVE and mouth correlation of the model against every baseline, and LVE per held-out clip."""
    summary = result.summary
    blocks = {"model": summary["model"], **summary["baselines"]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4), gridspec_kw={"width_ratios": [1, 1, 3]})
    for axis, key, label in ((axes[0], "lve", "LVE (mesh units, lower is better)"),
                             (axes[1], "mouth_corr", "mouth-opening correlation (higher is better)")):
        axis.bar([NAMES[n] for n in blocks], [b[key] for b in blocks.values()], color=[COLOURS[n] for n in blocks])
        axis.set(ylabel=label)
        axis.tick_params(axis="x", rotation=30)
    table = result.per_clip.sort_values("neutral_lve")
    x = np.arange(len(table))
    for offset, name in zip((-0.3, -0.1, 0.1, 0.3), ("neutral", "mean_offset", "nearest_audio", "model")):
        axes[2].bar(x + offset, table[f"{name}_lve"], 0.2, color=COLOURS[name], label=NAMES[name])
    axes[2].set_xticks(x, table.clip_id, rotation=60, ha="right", fontsize=7)
    axes[2].set(ylabel="LVE", title=title or f"{summary['split']}: per held-out clip")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def lip_trace(result, clip_id: str, processed: str | Path, label: str = ""):
    """Inner-lip distance over time, truth against the model (and the nearest-audio baseline), waveform underneath."""
    clip = result.load(clip_id)
    fps = float(clip["fps"])
    t = clip["frames"] / fps
    fig, axes = plt.subplots(2, 1, figsize=(12, 3.8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    axes[0].plot(t, regions.mouth_opening(clip["truth"]), color="black", label="truth (extracted mesh)")
    axes[0].plot(t, regions.mouth_opening(clip["model"]), color="tab:blue", label="model")
    axes[0].plot(t, regions.mouth_opening(clip["baseline_nearest_audio"]), color="tab:green", lw=0.7, alpha=0.6,
                 label="nearest-audio baseline")
    axes[0].axhline(regions.mouth_opening(clip["neutral"]), color="tab:gray", ls="--", label="neutral")
    row = result.per_clip.set_index("clip_id").loc[clip_id]
    axes[0].set(ylabel="inner-lip gap (mesh units)",
                title=f"{label + ': ' if label else ''}{clip_id}  LVE {row.model_lve:.3f}, mouth corr {row.model_mouth_corr:.2f}")
    axes[0].legend(fontsize=7, loc="upper right")
    audio = store.load_clip(processed, clip_id, keys=("audio",))["audio"]
    axes[1].plot(np.arange(len(audio)) / 16000, audio, color="tab:gray", lw=0.3)
    axes[1].set(xlabel="seconds", ylabel="audio")
    fig.tight_layout()
    return fig


def vertex_error_map(result):
    """Mean per-vertex error of the model over all held-out frames, drawn on the mesh (front view)."""
    total, count, neutral = 0.0, 0, None
    for clip_id in result.per_clip.clip_id:
        clip = result.load(clip_id)
        total = total + np.linalg.norm(clip["model"] - clip["truth"], axis=-1).sum(0)
        count += len(clip["truth"])
        neutral = clip["neutral"] if neutral is None else neutral
    error = total / max(count, 1)
    fig, ax = plt.subplots(figsize=(4.6, 5))
    points = ax.scatter(neutral[:, 0], neutral[:, 1], c=error, s=6, cmap="magma_r")
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set(title="mean vertex error of the model (mesh units)", xticks=[], yticks=[])
    fig.colorbar(points, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def error_histograms(result):
    """Per-frame lip error (the max over lip vertices) of the model and each baseline."""
    errors: dict[str, list] = {name: [] for name in ("neutral", "mean_offset", "nearest_audio", "model")}
    for clip_id in result.per_clip.clip_id:
        clip = result.load(clip_id)
        for name in errors:
            prediction = np.broadcast_to(clip["neutral"], clip["truth"].shape) if name == "neutral" else \
                clip["model" if name == "model" else f"baseline_{name}"]
            errors[name].append(np.linalg.norm(prediction[:, regions.LIPS] - clip["truth"][:, regions.LIPS], axis=-1).max(1))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = np.linspace(0, max(np.concatenate(v).max() for v in errors.values()), 40)
    for name, values in errors.items():
        ax.hist(np.concatenate(values), bins=bins, histtype="step", lw=1.5, color=COLOURS[name], label=NAMES[name])
    ax.set(xlabel="per-frame lip error (mesh units)", ylabel="frames")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def look_and_listen(result, renders: dict, processed: str | Path) -> None:
    """For each rendered clip (evaluate.render_clips: the best, median and worst), its lip trace, its video with the
    sound, and the 3D viewer's page inline (in a frame: rotate it, play it)."""
    from html import escape

    from IPython.display import HTML, Video, display

    for label, files_of in renders.items():
        figure = lip_trace(result, Path(files_of["video"]).stem, processed, label)
        display(figure)
        plt.close(figure)
        display(Video(str(files_of["video"]), embed=True, width=960, html_attributes="controls"))
        display(HTML(f'<iframe srcdoc="{escape(Path(files_of["view"]).read_text())}" width="990" height="660" '
                     f'style="border:0"></iframe>'))


def articulation(curve: pd.DataFrame, gains: dict | None = None, default: float | None = None, label: str = "this run"):
    """LVE and motion ratio of the held-out predictions against the articulation gain (evaluate.gain_curve), the gain
    in use marked: where a louder mouth starts to cost error."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    axes[0].plot(curve.gain, curve.lve, marker=".", label=label)
    axes[0].set(xlabel="articulation gain (1 = as trained)", ylabel="held-out LVE (mesh units)", title="LVE against gain")
    axes[1].plot(curve.motion_ratio, curve.lve, marker=".", label=label)
    axes[1].axvline(1, color="grey", linestyle=":", linewidth=1)
    axes[1].set(xlabel="motion ratio (predicted / true lip motion)", ylabel="held-out LVE",
                title="LVE against motion ratio (lower and right is better)")
    for value in sorted(set((gains or {}).values()) | ({default} if default else set())):
        axes[0].axvline(value, color="tab:red", linestyle="--", linewidth=0.8)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------------- how much footage

def footage_curve(rows: list[dict] | None, this_run_minutes: float | None = None):
    """Held-out mouth correlation and LVE (x the mean-offset baseline) against minutes of one speaker's training
    footage, one line per encoder (benchmarks/footage_curve.py's rows); `this_run_minutes` marks a run's own amount."""
    if not rows:
        print("no footage curve: run benchmarks/footage_curve.py for the reference points")
        return None
    if this_run_minutes is not None:
        print(f"this run: {this_run_minutes:.1f} min of training footage for the median speaker")
    table = pd.DataFrame(rows)
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for (encoder, group), marker in zip(table.groupby("encoder"), "os^v"):
        group = group.sort_values("minutes")
        for axis, key in zip(axes, ("mouth_corr", "lve_x_mean_offset", "motion_ratio")):
            axis.plot(group.minutes, group[key], marker=marker, label=encoder)
    for axis, key, title, target in zip(axes, ("mouth_corr", "lve_x_mean_offset", "motion_ratio"),
                                        ("mouth correlation (held out)", "LVE / mean-offset baseline", "motion ratio"),
                                        ((0.7,), (0.85,), (0.7, 1.3))):
        axis.set_xscale("log")
        axis.set_xlabel("minutes of training footage (one speaker)")
        axis.set_title(title)
        for value in target:
            axis.axhline(value, color="grey", linestyle=":", linewidth=1)
        if this_run_minutes:
            axis.axvline(this_run_minutes, color="black", linewidth=1, label="this run")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle("How much footage does a speaker need? (GRID s1, same held-out clips; dotted: targets)")
    figure.tight_layout()
    return figure


def layer_mix(run_dir: str | Path, checkpoint: str = "best"):
    """How much the trained model listens to each hidden state of a pretrained encoder that mixes its layers
    (model.encoder_options.layers: weighted); None for an encoder without a layer mix."""
    from .model import load_model

    model = load_model(rundir.checkpoint(run_dir, checkpoint))
    mix = getattr(model.audio_encoder, "layer_mix", lambda: None)()
    if mix is None:
        return None
    figure, axis = plt.subplots(figsize=(6, 2.6))
    axis.bar(range(len(mix)), mix)
    axis.axhline(1 / len(mix), color="grey", linestyle=":", linewidth=1)
    axis.set_xticks(range(len(mix)), ["embedding"] + [f"layer {i}" for i in range(1, len(mix))])
    axis.set_ylabel("weight")
    axis.set_title(f"layer mix of {model.audio_encoder.describe().split(',')[0]} (dotted: uniform)")
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------------- 06 runs side by side

def compare_curves(curves: dict[str, pd.DataFrame]):
    """Training (dashed) and validation (solid) L1 of several runs, overlaid, and their validation motion ratio."""
    figure, axes = plt.subplots(1, 2, figsize=(13, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    for (name, history), colour in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 5):
        valid = history.dropna(subset=["val_loss"])
        axes[0].plot(history.epoch, history.train_loss, color=colour, linestyle="--", linewidth=0.8)
        axes[0].plot(valid.epoch, valid.val_loss, color=colour, marker=".", label=name)
        if "val_motion_ratio" in valid:
            axes[1].plot(valid.epoch, valid.val_motion_ratio, color=colour, marker=".", label=name)
    axes[0].set(xlabel="epoch", ylabel="L1 on offsets (mesh units)", yscale="log",
                title="validation (solid) and training (dashed) L1")
    axes[1].axhline(1, color="grey", linestyle=":")
    axes[1].set(xlabel="epoch", ylabel="predicted / true motion", title="validation motion ratio", ylim=(0, None))
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def compare_lip_traces(seconds: np.ndarray, truth: np.ndarray, traces: dict[str, np.ndarray], clip_id: str = ""):
    """One held-out clip's inner-lip gap from every run, over the truth."""
    figure, axis = plt.subplots(figsize=(12, 3.4))
    axis.plot(seconds, truth, color="black", linewidth=2, label="truth")
    for name, gap in traces.items():
        axis.plot(seconds, gap, linewidth=1, label=name)
    axis.set(xlabel="seconds", ylabel="inner-lip gap (mesh units)", title=f"the same held-out clip from every run: {clip_id}")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    return figure
