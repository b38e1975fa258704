"""Stage 04: train Audio2Mesh on offsets from the reference with an L1 loss (AniPortrait's recipe, plus options).

    result = train.train(cfg, run_dir)              # in process, one device
    torchrun --nproc_per_node 2 -m a2m_lib.cli train --config C --run-dir R   # DDP; `accelerate launch` works too

The loop (train) reads top to bottom: the split (dataset.make_split), resume or not (checkpoints.previous_state),
the model, data and optimiser (build), then per batch train_step and per epoch end_epoch / save_epoch; where
training is lives in one TrainState (epoch, step, best, losses, history), which checkpoints save and restore.

Reads the run's accepted clips (run_dir/qa.csv) and neutrals (run_dir/neutral/). Writes, in run_dir:
    splits.csv                 clip_id, speaker, language, split (train | val | test), audio_shift_frames; written
                               once per run and kept in every checkpoint
    checkpoints/last.pt        every train.checkpoint_every steps and after every epoch (atomic): model, optimiser,
                               scheduler, RNG states, the TrainState, the config, the split
    checkpoints/best.pt        the epoch with the lowest validation loss (what evaluation reads by default)
    train_log.csv              per epoch: train/val loss (per speaker and language too), motion ratio, lr, seconds
    tensorboard/               the same curves as TensorBoard event files
    train_summary.json         best epoch, device, seconds, the collapse warning if any

Resume is explicit: with train.resume (the default) an interrupted run continues where its last checkpoint
left it, mid-epoch included, and reaches the weights an uninterrupted run reaches. A run whose training
or model config, or split, changed refuses to resume and says what changed. A finished run is trained
again from scratch (its old checkpoints are removed first). Losses that become NaN or inf stop the run; the
last good checkpoint stays, and no checkpoint with non-finite weights is ever written.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoints, faults, files, rundir
from .checkpoints import ResumeRefused, TrainingDiverged, TrainState  # noqa: F401 - callers catch them as train.*
from .config import Config, TrainConfig, load_config, write_run_config
from .dataset import ClipDataset, EpochBatches, FeatureCache, collate, make_split, speaker_statistics, split_rows
from .losses import loss_sums, total_loss
from .model import Audio2Mesh, resolve_device

@dataclass
class TrainResult:
    history: pd.DataFrame
    best_epoch: int
    best_val_loss: float
    device: str
    seconds: float
    motion_ratio: float = float("nan")  # predicted / true motion std on validation, last epoch
    collapsed: bool = False  # motion_ratio below train.collapse_ratio
    warning: str = ""
    encoder: str = ""  # which encoder, its weights and whether it was pretrained (AudioEncoder.describe)


@dataclass
class Processes:
    """This process's place among the training processes (one, or several under torchrun / accelerate)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()


def start_processes(device_name: str) -> Processes:
    """Join the process group when launched by torchrun or accelerate (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes(device=resolve_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, device=device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------- pieces of the loop

def batch_features(model: Audio2Mesh, batch: dict, device, augment: torch.Generator | None = None) -> torch.Tensor:
    """The batch's frame features (B, T, C): cached ones, or computed now on each whole clip and sliced."""
    if "features" in batch:
        features = batch["features"].to(device, non_blocking=True)
    else:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not model.frozen_features):
            pieces = [model.frame_features(audio.to(device), n_frames, fps=batch["fps"])[start: start + length]
                      for audio, start, n_frames, length in zip(batch["audio"], batch["starts"], batch["clip_frames"],
                                                                batch["lengths"])]
        features = torch.nn.utils.rnn.pad_sequence(pieces, batch_first=True).float()
    if augment is not None:  # standardised log-mel: a random tilt per clip, noise, a masked band (SpecAugment-like)
        shape = features.shape
        tilt = torch.linspace(-1, 1, shape[2])[None, None] * torch.empty(shape[0], 1, 1).uniform_(-0.3, 0.3, generator=augment)
        features = features + (tilt + 0.2 * torch.randn(shape, generator=augment)).to(device)
        band = int(torch.randint(0, max(1, shape[2] - 8), (1,), generator=augment))
        features[:, :, band: band + 8] = 0.0
    return features


def stretch_batch(features: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, silent: torch.Tensor,
                  lengths: list[int], most: float, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Tempo augmentation: each sample's frames resampled in time by a factor exp(U(-most, most)), audio features
    and mesh targets together (linear; masks nearest), as if the sentence were spoken that much faster or
    slower. Speed perturbation is the usual augmentation of speech models trained on little data; here it acts
    on frame features, so the pitch stays. By hand: torchaudio's speed perturbation works on waveforms, not on
    cached frame features and the meshes that go with them."""
    factors = torch.exp(torch.empty(len(lengths)).uniform_(-most, most, generator=generator))
    new_lengths = [max(2, int(round(length * float(factor)))) for length, factor in zip(lengths, factors)]
    size = max(new_lengths)
    out = [torch.zeros(len(lengths), size, *t.shape[2:], dtype=t.dtype, device=t.device) for t in (features, target, mask, silent)]
    for i, (length, new) in enumerate(zip(lengths, new_lengths)):
        for source, result, mode in zip((features, target, mask, silent), out, ("linear", "linear", "nearest", "nearest")):
            frames = source[i, :length].reshape(length, -1).T[None].float()                   # (1, C, length)
            kwargs = dict(align_corners=True) if mode == "linear" else {}
            resampled = F.interpolate(frames, size=new, mode=mode, **kwargs)[0].T                 # (new, C)
            result[i, :new] = resampled.reshape(new, *source.shape[2:]).to(source.dtype)
    return tuple(out)


def make_scheduler(optimiser, train_cfg: TrainConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < train_cfg.warmup_steps:
            return (step + 1) / train_cfg.warmup_steps
        if train_cfg.lr_schedule == "cosine":
            progress = (step - train_cfg.warmup_steps) / max(1, total_steps - train_cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


@torch.no_grad()
def validate(model: Audio2Mesh, dataset: ClipDataset, languages: dict, device, batch_size: int) -> dict:
    """Validation L1 overall, per speaker and per language, and the motion ratio (predicted / true std over time)."""
    model.eval()
    sums: dict[str, list[float]] = {}
    predicted_var = true_var = 0.0
    for first in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(first, min(first + batch_size, len(dataset)))])
        features = batch_features(model, batch, device)
        prediction = model(features, batch["mask"].to(device), batch["speaker_ids"].to(device), batch["reference"].to(device)).float()
        target, mask = batch["offsets"].to(device), batch["mask"].to(device)
        for i, clip_id in enumerate(batch["clip_ids"]):
            valid = mask[i]
            error = float((prediction[i][valid] - target[i][valid]).abs().sum())
            count = float(valid.sum()) * target.shape[2] * 3
            speaker = dataset.rows[first + i][1]
            for key in ("all", f"speaker={speaker}", f"language={languages.get(clip_id) or 'unknown'}"):
                sums.setdefault(key, [0.0, 0.0])
                sums[key][0] += error
                sums[key][1] += count
            if valid.sum() > 1:
                predicted_var += float(prediction[i][valid].var(0).sum())
                true_var += float(target[i][valid].var(0).sum())
    model.train()
    result = {("val_loss" if key == "all" else f"val_loss[{key}]"): total / max(count, 1) for key, (total, count) in sums.items()}
    result["val_motion_ratio"] = math.sqrt(predicted_var / true_var) if true_var > 0 else float("nan")
    return result


def uses_bf16(device: torch.device, precision: str) -> bool:
    """train.precision: auto = bf16 autocast on CUDA (no loss scaling needed, unlike fp16), fp32 on the CPU, where
    bf16 matmuls are slower on most CPUs. The weights, the optimiser and the loss stay fp32 either way."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


# ----------------------------------------------------------------------------------- the loop

@dataclass
class Job:
    """What the loop works with, built once (build): the model, the data and what trains it."""

    model: Audio2Mesh
    network: torch.nn.Module  # the model as the step calls it: compiled and/or wrapped in DDP
    train_set: ClipDataset
    val_set: ClipDataset
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int
    languages: dict  # clip_id -> language, for validation per language

    def batches(self, cfg: Config, state: TrainState, procs: "Processes"):
        """The epoch's remaining batches (a resumed epoch skips those done), this process's share of each."""
        self.train_set.set_epoch(state.epoch)
        order = EpochBatches(len(self.train_set), cfg.train.batch_size, cfg.seed, state.epoch, skip=state.step,
                             rank=procs.rank, world_size=procs.world_size)
        return torch.utils.data.DataLoader(self.train_set, batch_sampler=order, collate_fn=collate,
                                           num_workers=cfg.train.num_workers, pin_memory=procs.device.type == "cuda")


def build(cfg: Config, run_dir: Path, splits: pd.DataFrame, procs: Processes) -> Job:
    """Model (with each speaker's statistics), datasets, feature cache, optimiser, schedule, DDP."""
    tcfg, device = cfg.train, procs.device
    neutrals = rundir.load_neutrals(run_dir)
    train_clips, val_clips = splits[splits.split == "train"], splits[splits.split == "val"]
    if train_clips.empty:
        raise RuntimeError("the training split is empty; add clips or lower data.val_fraction / data.test_fraction")
    if cfg.model.speaker_embedding and cfg.data.split_by == "speaker":
        raise ValueError("model.speaker_embedding cannot serve held-out speakers (data.split_by=speaker); "
                         "use model.speaker_normalisation, or data.split_by=clip")
    speakers = sorted(train_clips.speaker.unique())
    model = Audio2Mesh(cfg.model, speakers).to(device)
    if cfg.model.speaker_normalisation:
        model.set_speaker_statistics(*speaker_statistics(cfg.data.processed, train_clips, neutrals, cfg.model.n_vertices))
    cache = FeatureCache(cfg.data.processed, model, cfg.data.sample_rate) if model.frozen_features and tcfg.cache_features else None
    common = dict(processed=cfg.data.processed, neutrals=neutrals, n_vertices=cfg.model.n_vertices,
                  sample_rate=cfg.data.sample_rate, speakers=speakers, seed=cfg.seed, features=cache,
                  reference=cfg.model.reference, cut_audio=not model.frozen_features, normalise=model.normalise)
    train_set = ClipDataset(clips=train_clips, whole_clip_fraction=tcfg.whole_clip_fraction,
                            min_subclip_frames=tcfg.min_subclip_frames, **common)
    val_set = ClipDataset(clips=val_clips, **common)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr,
                                  weight_decay=tcfg.weight_decay)
    steps_per_epoch = EpochBatches.count(len(train_set), tcfg.batch_size, procs.world_size)
    scheduler = make_scheduler(optimiser, tcfg, steps_per_epoch * tcfg.epochs)
    network = torch.compile(model) if tcfg.compile else model
    if procs.world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    languages = dict(zip(splits.clip_id, splits.language)) if "language" in splits else {}
    return Job(model, network, train_set, val_set, optimiser, scheduler, steps_per_epoch, languages)


def train_step(job: Job, batch: dict, cfg: Config, state: TrainState, procs: Processes) -> float:
    """One optimiser step on one batch; returns the loss over every process's share of it."""
    tcfg, device = cfg.train, procs.device
    augment = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.epoch * 10_007 + state.step) \
        if tcfg.augment or tcfg.stretch else None
    features = batch_features(job.model, batch, device, augment if tcfg.augment else None)       # (B, T, C)
    target, mask, silent = batch["offsets"].to(device), batch["mask"].to(device), batch["silent"].to(device)
    if tcfg.stretch:
        features, target, mask, silent = stretch_batch(features, target, mask, silent, batch["lengths"], tcfg.stretch, augment)
    with _autocast(device, tcfg.precision):
        prediction = job.network(features, mask, batch["speaker_ids"].to(device), batch["reference"].to(device))
    sums = loss_sums(prediction.float(), target, mask, silent, batch["base"].to(device), tcfg.closure_weight)
    loss = total_loss(sums, procs.sum([float(count) for _, count in sums.values()]), tcfg)
    reported = procs.sum([float(loss.detach())])[0]
    if not math.isfinite(reported):
        raise TrainingDiverged(f"the training loss became {reported} at epoch {state.epoch}, step {state.step}; lower "
                               f"train.lr (now {tcfg.lr}), or check the clips of this batch: {', '.join(batch['clip_ids'])}")
    job.optimiser.zero_grad(set_to_none=True)
    (loss * procs.world_size).backward()  # DDP averages gradients over processes; the loss is already global
    job.optimiser.step()
    job.scheduler.step()
    return reported


def train(cfg: Config, run_dir: str | Path, progress: bool = True) -> TrainResult:
    """Train the run's model (see the module docstring): the loop, top to bottom."""
    run_dir, tcfg = Path(run_dir), cfg.train
    procs = start_processes(tcfg.device)
    rundir.checkpoints(run_dir).mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    splits = make_split(cfg, run_dir, write=False)
    split = split_rows(splits)
    saved = checkpoints.previous_state(run_dir, cfg, split, clear=procs.main)  # resume, afresh or refuse: nothing written yet
    if procs.main:
        rundir.write_splits(run_dir, splits)
    job = build(cfg, run_dir, splits, procs)
    state = checkpoints.restore(saved, job.model, job.optimiser, job.scheduler) if saved else TrainState()
    if saved and procs.main:
        print(f"resuming {run_dir} at epoch {state.epoch}, step {state.step} of {job.steps_per_epoch}")
    log = TrainingLog(run_dir) if procs.main else None
    bar = tqdm(total=job.steps_per_epoch * tcfg.epochs, initial=state.epoch * job.steps_per_epoch + state.step,
               desc="train", disable=not (progress and procs.main))
    started = time.time()
    try:
        while state.epoch < tcfg.epochs:
            epoch_start = time.time()
            for batch in job.batches(cfg, state, procs):
                try:
                    state.epoch_losses.append(train_step(job, batch, cfg, state, procs))
                except TrainingDiverged as error:
                    raise TrainingDiverged(f"{error}. {rundir.checkpoint(run_dir, 'last')} keeps the last good state") from None
                state.step += 1
                bar.update()
                bar.set_postfix(loss=f"{state.epoch_losses[-1]:.4f}", lr=f"{job.scheduler.get_last_lr()[0]:.2e}")
                done = state.epoch * job.steps_per_epoch + state.step
                if procs.main and tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0 \
                        and state.step < job.steps_per_epoch:
                    checkpoints.save(rundir.checkpoint(run_dir, "last"), job.model, job.optimiser, job.scheduler, state,
                                     cfg, split)
                faults.crash_point("train.step", f"{state.epoch}:{state.step}")
            improved = end_epoch(job, state, cfg, procs, time.time() - epoch_start)
            if procs.main:
                save_epoch(job, state, cfg, split, run_dir, log, improved)
    finally:
        bar.close()
        if log is not None:
            log.close()
    result = _summary(state, str(procs.device), time.time() - started, tcfg.collapse_ratio)
    result.encoder = job.model.audio_encoder.describe()
    if procs.main:
        files.write_json(rundir.train_summary(run_dir), dataclasses.asdict(result) | dict(
            history=None, encoder_record=job.model.audio_encoder.record()))
    if result.warning:
        warnings.warn(result.warning, stacklevel=2)
    return result


def end_epoch(job: Job, state: TrainState, cfg: Config, procs: Processes, seconds: float) -> bool:
    """Validate (every train.validate_every epochs and the last) and close the epoch in `state`; True when the
    monitored loss (validation's, or training's without validation clips) is the best so far."""
    row = dict(epoch=state.epoch, train_loss=float(np.mean(state.epoch_losses)) if state.epoch_losses else float("nan"),
               val_loss=float("nan"), lr=float(job.scheduler.get_last_lr()[0]))
    if len(job.val_set) and (state.epoch % cfg.train.validate_every == 0 or state.epoch == cfg.train.epochs - 1):
        row.update(validate(job.model, job.val_set, job.languages, procs.device, cfg.train.batch_size))
    row["seconds"] = seconds
    state.history.append(row)
    state.epoch, state.step, state.epoch_losses = state.epoch + 1, 0, []
    state.finished = state.epoch == cfg.train.epochs
    monitored = row["val_loss"] if len(job.val_set) else row["train_loss"]
    improved = math.isfinite(monitored) and monitored < state.best_loss
    if improved:
        state.best_loss, state.best_epoch = monitored, state.epoch - 1
    return improved


def save_epoch(job: Job, state: TrainState, cfg: Config, split: list, run_dir: Path, log: "TrainingLog",
               improved: bool) -> None:
    """After an epoch, by the process that writes: the best checkpoint when validation improved, the last, the logs."""
    for name in (("best", "last") if improved else ("last",)):
        checkpoints.save(rundir.checkpoint(run_dir, name), job.model, job.optimiser, job.scheduler, state, cfg, split)
    log.write(state.history)


class TrainingLog:
    """train_log.csv (one row per epoch) and the same curves as TensorBoard scalars."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.path, self.writer = rundir.train_log(run_dir), SummaryWriter(str(rundir.tensorboard(run_dir)))

    def write(self, history: list[dict]) -> None:
        with files.atomic_path(self.path) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
        row = history[-1]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, float) and math.isfinite(value):
                self.writer.add_scalar(key.replace("[", "/").replace("]", ""), value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _summary(state: TrainState, device: str, seconds: float, collapse_ratio: float) -> TrainResult:
    table = pd.DataFrame(state.history)
    ratios = table["val_motion_ratio"].dropna() if "val_motion_ratio" in table else pd.Series(dtype=float)
    ratio = float(ratios.iloc[-1]) if len(ratios) else float("nan")
    collapsed = bool(math.isfinite(ratio) and ratio < collapse_ratio)
    warning = (f"COLLAPSE: on validation the predicted motion is {ratio:.2f} x the true motion (below "
               f"train.collapse_ratio={collapse_ratio}): the model predicts almost no movement. See the README's "
               f"real-footage recipe (configs/real.yaml) and its \"Which encoder when\"") if collapsed else ""
    return TrainResult(history=table, best_epoch=int(state.best_epoch), best_val_loss=float(state.best_loss), device=device,
                       seconds=seconds, motion_ratio=ratio, collapsed=collapsed, warning=warning)


def load_result(run_dir: str | Path) -> TrainResult:
    """The result of a finished training run, from its files (after a multi-process launch)."""
    run_dir = Path(run_dir)
    summary = json.loads(rundir.train_summary(run_dir).read_text())
    summary["history"] = pd.read_csv(rundir.train_log(run_dir))
    return TrainResult(**{field.name: summary[field.name] for field in dataclasses.fields(TrainResult) if field.name in summary})


def launch(run_dir: str | Path, processes: int) -> TrainResult:
    """Train in `processes` processes with torchrun (DDP) and wait: each reads the run's config.yaml, no overrides."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "a2m_lib.cli", "train", "--run-dir", str(run_dir)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    return load_result(run_dir)


def run(cfg: Config, run_dir: str | Path) -> TrainResult:
    """What notebook 04 calls: in process on one device, or `launch` when train.processes > 1. `cfg` is the run's
    config (config.run_config); for several processes it must be the run's config.yaml, which they read."""
    if cfg.train.processes > 1:
        saved = rundir.config(run_dir)
        if not saved.exists():
            write_run_config(cfg, run_dir)
        elif load_config(saved) != cfg:
            raise ValueError(f"train.run was given a config that differs from {saved}, which torchrun's processes would "
                             f"read; pass config.run_config({str(run_dir)!r}), or write this config there first")
        return launch(run_dir, cfg.train.processes)
    return train(cfg, run_dir)
