"""Stage 04: train Audio2Mesh on offsets from the reference with an L1 loss (AniPortrait's recipe, plus options).

    result = train.train(cfg, run_dir)              # in process, one device
    torchrun --nproc_per_node 2 -m a2m_lib.cli train --config C --run-dir R   # DDP; `accelerate launch` works too

Reads the run's accepted clips (run_dir/qa.csv) and neutrals (run_dir/neutral/). Writes, in run_dir:
    splits.csv                 clip_id, speaker, language, split (train | val | test), audio_shift_frames; written
                               once per run and kept in every checkpoint
    checkpoints/last.pt        every train.checkpoint_every steps and after every epoch (atomic): model, optimiser,
                               scheduler, RNG states, epoch and step, the config, the split, `finished`
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
from .checkpoints import ResumeRefused, TrainingDiverged  # noqa: F401 - callers catch them as train.ResumeRefused / train.TrainingDiverged
from .config import Config, TrainConfig, load_config, write_run_config
from .dataset import ClipDataset, EpochBatches, FeatureCache, collate, speaker_statistics, split_clips
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

def train(cfg: Config, run_dir: str | Path, progress: bool = True) -> TrainResult:
    run_dir = Path(run_dir)
    tcfg = cfg.train
    procs = start_processes(tcfg.device)
    device = procs.device
    rundir.checkpoints(run_dir).mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)

    accepted = rundir.accepted_clips(run_dir)
    if accepted.empty:
        raise RuntimeError(f"no clips passed QA in {rundir.qa_table(run_dir)}; see its reason column")
    splits = split_clips(accepted, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed, cfg.data.split_by,
                         cfg.data.train_minutes, cfg.data.fps)
    split_columns = [c for c in ("clip_id", "speaker", "language", "split", "audio_shift_frames") if c in splits]
    split = splits[split_columns].astype(str).values.tolist()
    neutrals = rundir.load_neutrals(run_dir)
    train_clips, val_clips = splits[splits.split == "train"], splits[splits.split == "val"]
    if train_clips.empty:
        raise RuntimeError("the training split is empty; add clips or lower data.val_fraction / data.test_fraction")
    speakers = sorted(train_clips.speaker.unique())
    languages = dict(zip(splits.clip_id, splits.language)) if "language" in splits else {}

    # Resume, start afresh, or refuse: decided before anything is written.
    last_path, best_path = rundir.checkpoint(run_dir, "last"), rundir.checkpoint(run_dir, "best")
    saved = checkpoints.previous_state(run_dir, cfg, split, clear=procs.main)
    if procs.main:
        with files.atomic_path(rundir.splits(run_dir)) as tmp:
            splits[split_columns].to_csv(tmp, index=False)

    if cfg.model.speaker_embedding and cfg.data.split_by == "speaker":
        raise ValueError("model.speaker_embedding cannot serve held-out speakers (data.split_by=speaker); "
                         "use model.speaker_normalisation, or data.split_by=clip")
    model = Audio2Mesh(cfg.model, speakers, tcfg.reference).to(device)
    if cfg.model.speaker_normalisation:
        model.set_speaker_statistics(*speaker_statistics(cfg.data.processed, train_clips, neutrals, cfg.model.n_vertices))
    cache = FeatureCache(cfg.data.processed, model, cfg.data.sample_rate) if model.frozen_features and tcfg.cache_features else None
    common = dict(processed=cfg.data.processed, neutrals=neutrals, n_vertices=cfg.model.n_vertices,
                  sample_rate=cfg.data.sample_rate, speakers=speakers, seed=cfg.seed, features=cache, reference=tcfg.reference,
                  cut_audio=not model.frozen_features)
    train_set = ClipDataset(clips=train_clips, whole_clip_fraction=tcfg.whole_clip_fraction,
                            min_subclip_frames=tcfg.min_subclip_frames, **common)
    val_set = ClipDataset(clips=val_clips, **common)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr,
                                  weight_decay=tcfg.weight_decay)
    steps_per_epoch = EpochBatches.count(len(train_set), tcfg.batch_size, procs.world_size)
    scheduler = make_scheduler(optimiser, tcfg, steps_per_epoch * tcfg.epochs)
    history: list[dict] = []
    best = [float("inf"), -1]  # (val loss, epoch)
    epoch, step_in_epoch, resumed_losses = 0, 0, []
    if saved is not None:
        history, best, epoch, step_in_epoch, resumed_losses = checkpoints.restore(saved, model, optimiser, scheduler)
        if procs.main:
            print(f"resuming from {last_path} at epoch {epoch}, step {step_in_epoch} of {steps_per_epoch}")
    network = model
    if tcfg.compile:
        network = torch.compile(model)
    if procs.world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if procs.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(rundir.tensorboard(run_dir)))
    started = time.time()
    bar = tqdm(total=steps_per_epoch * tcfg.epochs, initial=epoch * steps_per_epoch + step_in_epoch, desc="train",
               disable=not (progress and procs.main))
    try:
        while epoch < tcfg.epochs:
            epoch_start = time.time()
            losses, resumed_losses = resumed_losses, []  # a resumed epoch keeps its earlier steps' losses
            train_set.set_epoch(epoch)
            batches = EpochBatches(len(train_set), tcfg.batch_size, cfg.seed, epoch, skip=step_in_epoch,
                                   rank=procs.rank, world_size=procs.world_size)
            loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches, collate_fn=collate,
                                                 num_workers=tcfg.num_workers, pin_memory=device.type == "cuda")
            for batch in loader:
                augment = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + step_in_epoch) \
                    if tcfg.augment or tcfg.stretch else None
                features = batch_features(model, batch, device, augment if tcfg.augment else None)
                target, mask, silent = batch["offsets"].to(device), batch["mask"].to(device), batch["silent"].to(device)
                if tcfg.stretch:
                    features, target, mask, silent = stretch_batch(features, target, mask, silent, batch["lengths"],
                                                                   tcfg.stretch, augment)
                with _autocast(device, tcfg.precision):
                    prediction = network(features, mask, batch["speaker_ids"].to(device), batch["reference"].to(device))
                sums = loss_sums(prediction.float(), target, mask, silent)
                counts = procs.sum([float(count) for _, count in sums.values()])
                loss = total_loss(sums, counts, tcfg)
                reported = procs.sum([float(loss.detach())])[0]
                if not math.isfinite(reported):
                    raise TrainingDiverged(
                        f"the training loss became {reported} at epoch {epoch}, step {step_in_epoch}; {last_path} keeps the "
                        f"last good state. Lower train.lr (now {tcfg.lr}), or check the clips of this batch: "
                        f"{', '.join(batch['clip_ids'])}")
                optimiser.zero_grad(set_to_none=True)
                (loss * procs.world_size).backward()  # DDP averages gradients over processes; the loss is already global
                optimiser.step()
                scheduler.step()
                losses.append(reported)
                step_in_epoch += 1
                bar.update()
                bar.set_postfix(loss=f"{reported:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                global_step = epoch * steps_per_epoch + step_in_epoch
                if tcfg.checkpoint_every and global_step % tcfg.checkpoint_every == 0 and step_in_epoch < steps_per_epoch \
                        and procs.main:
                    checkpoints.save(last_path, model, optimiser, scheduler, dict(
                        epoch=epoch, step_in_epoch=step_in_epoch, epoch_losses=losses, best=best, finished=False),
                        history, cfg, split)
                faults.crash_point("train.step", f"{epoch}:{step_in_epoch}")
            row = dict(epoch=epoch, train_loss=float(np.mean(losses)) if losses else float("nan"), val_loss=float("nan"),
                       lr=float(scheduler.get_last_lr()[0]))
            if len(val_set) and (epoch % tcfg.validate_every == 0 or epoch == tcfg.epochs - 1):
                row.update(validate(model, val_set, languages, device, tcfg.batch_size))
            row["seconds"] = time.time() - epoch_start
            history.append(row)
            epoch, step_in_epoch = epoch + 1, 0
            if procs.main:
                monitored = row["val_loss"] if len(val_set) else row["train_loss"]
                progress_state = dict(epoch=epoch, step_in_epoch=0, best=best, finished=epoch == tcfg.epochs)
                if math.isfinite(monitored) and monitored < best[0]:
                    best[:] = [monitored, epoch - 1]
                    checkpoints.save(best_path, model, optimiser, scheduler, progress_state, history, cfg, split)
                checkpoints.save(last_path, model, optimiser, scheduler, progress_state, history, cfg, split)
                with files.atomic_path(rundir.train_log(run_dir)) as tmp:
                    pd.DataFrame(history).to_csv(tmp, index=False)
                for key, value in row.items():
                    if key != "epoch" and isinstance(value, float) and math.isfinite(value):
                        writer.add_scalar(key.replace("[", "/").replace("]", ""), value, row["epoch"])
                writer.flush()
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    result = _summary(history, best, str(device), time.time() - started, tcfg.collapse_ratio)
    result.encoder = model.audio_encoder.describe()
    if procs.main:
        files.write_json(rundir.train_summary(run_dir), dataclasses.asdict(result) | dict(history=None))
    if result.warning:
        warnings.warn(result.warning, stacklevel=2)
    return result


def _summary(history: list, best: list, device: str, seconds: float, collapse_ratio: float) -> TrainResult:
    table = pd.DataFrame(history)
    ratios = table["val_motion_ratio"].dropna() if "val_motion_ratio" in table else pd.Series(dtype=float)
    ratio = float(ratios.iloc[-1]) if len(ratios) else float("nan")
    collapsed = bool(math.isfinite(ratio) and ratio < collapse_ratio)
    warning = (f"COLLAPSE: on validation the predicted motion is {ratio:.2f} x the true motion (below "
               f"train.collapse_ratio={collapse_ratio}): the model predicts almost no movement. See the README's "
               f"real-footage recipe (configs/real.yaml) and its \"Which encoder when\"") if collapsed else ""
    return TrainResult(history=table, best_epoch=int(best[1]), best_val_loss=float(best[0]), device=device,
                       seconds=seconds, motion_ratio=ratio, collapsed=collapsed, warning=warning)


def load_result(run_dir: str | Path) -> TrainResult:
    """The result of a finished training run, from its files (after a multi-process launch)."""
    run_dir = Path(run_dir)
    summary = json.loads(rundir.train_summary(run_dir).read_text())
    summary["history"] = pd.read_csv(rundir.train_log(run_dir))
    return TrainResult(**summary)


def launch(run_dir: str | Path, processes: int) -> TrainResult:
    """Train in `processes` processes with torchrun (DDP) and wait: each reads the run's config.yaml, no overrides."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "a2m_lib.cli", "train", "--config", str(rundir.config(run_dir)), "--run-dir", str(run_dir)]
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
