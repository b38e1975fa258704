"""Stage 04: train Audio2Mesh on `mesh - neutral` offsets with an L1 loss.

    result = train.train(cfg, run_dir)   # resumes from run_dir/checkpoints/last.pt if present

Reads the run's accepted clips (run_dir/qa.csv) and neutrals (run_dir/neutral/). Writes, in run_dir:
    splits.csv                 clip_id, speaker, split (train | val | test), audio_shift_frames
    checkpoints/last.pt        after every epoch (atomic): model, optimiser, epoch, history, config;
                               plain tensors and values only, read back with torch.load(weights_only=True)
    checkpoints/best.pt        the epoch with the lowest validation loss
    train_log.csv              epoch, train_loss, val_loss, seconds
"""
from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import files, store
from .config import Config
from .dataset import ClipDataset, collate, split_clips
from .model import Audio2Mesh, load_checkpoint, resolve_device


@dataclass
class TrainResult:
    history: pd.DataFrame
    best_epoch: int
    best_val_loss: float
    device: str
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |prediction - target| over valid frames: (B, T, V, 3) with mask (B, T)."""
    weight = mask[..., None, None].to(prediction.dtype)
    return ((prediction - target).abs() * weight).sum() / (weight.sum() * target.shape[2] * target.shape[3]).clamp(min=1)


def save_checkpoint(path: Path, model: Audio2Mesh, optimiser, epoch: int, history: list, best: tuple, cfg: Config) -> None:
    """Model (as model.load_model reads it), optimiser and progress, as tensors and plain values only."""
    with files.atomic_path(path) as tmp:
        torch.save(dict(model.describe(), model=model.state_dict(), optimiser=optimiser.state_dict(), epoch=epoch,
                        history=history, best=list(best), config=cfg.to_dict()), tmp)


@torch.no_grad()
def validation_loss(model: Audio2Mesh, loader, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        prediction = model(batch["audio"].to(device), batch["n_frames"])
        total += masked_l1(prediction, batch["offsets"].to(device), batch["mask"].to(device)).item() * len(batch["clip_ids"])
        count += len(batch["clip_ids"])
    model.train()
    return total / max(count, 1)


def train(cfg: Config, run_dir: str | Path, progress: bool = True) -> TrainResult:
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)

    accepted = store.accepted_clips(run_dir)
    if accepted.empty:
        raise RuntimeError(f"no clips passed QA in {store.qa_table_path(run_dir)}; see its reason column")
    splits = split_clips(accepted, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    with files.atomic_path(run_dir / "splits.csv") as tmp:
        splits[["clip_id", "speaker", "split", "audio_shift_frames"]].to_csv(tmp, index=False)
    neutrals = store.load_neutrals(run_dir / "neutral")
    train_set = ClipDataset(cfg.data.processed, splits[splits.split == "train"], neutrals, cfg.model.n_vertices,
                            cfg.data.sample_rate, cfg.train.whole_clip_fraction, cfg.train.min_subclip_frames, cfg.seed)
    val_set = ClipDataset(cfg.data.processed, splits[splits.split == "val"], neutrals, cfg.model.n_vertices,
                          cfg.data.sample_rate)
    if len(train_set) == 0:
        raise RuntimeError("the training split is empty; add clips or lower data.val_fraction / data.test_fraction")
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True,
                                               collate_fn=collate, generator=generator)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.train.batch_size, collate_fn=collate)

    model = Audio2Mesh(cfg.model).to(device)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay)
    history: list[dict] = []
    best = (float("inf"), -1)  # (val loss, epoch)
    start_epoch = 0
    last_path = checkpoints / "last.pt"
    if last_path.exists():  # resume after a crash or an interrupted run
        state = load_checkpoint(last_path, map_location=device)
        if state["model_config"] == dataclasses.asdict(cfg.model):
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            history, best, start_epoch = state["history"], tuple(state["best"]), state["epoch"] + 1
            print(f"resuming from {last_path} at epoch {start_epoch}")
        else:
            print(f"{last_path} was trained with another model config; starting afresh")

    started = time.time()
    bar = tqdm(range(start_epoch, cfg.train.epochs), desc="train", disable=not progress,
               initial=start_epoch, total=cfg.train.epochs)
    for epoch in bar:
        epoch_start = time.time()
        train_set.set_epoch(epoch)
        losses = []
        for batch in train_loader:
            prediction = model(batch["audio"].to(device), batch["n_frames"])
            loss = masked_l1(prediction, batch["offsets"].to(device), batch["mask"].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        row = dict(epoch=epoch, train_loss=float(np.mean(losses)), val_loss=float("nan"))
        if len(val_set) and (epoch % cfg.train.validate_every == 0 or epoch == cfg.train.epochs - 1):
            row["val_loss"] = validation_loss(model, val_loader, device)
        row["seconds"] = time.time() - epoch_start
        history.append(row)
        monitored = row["val_loss"] if len(val_set) else row["train_loss"]
        if np.isfinite(monitored) and monitored < best[0]:
            best = (monitored, epoch)
            save_checkpoint(checkpoints / "best.pt", model, optimiser, epoch, history, best, cfg)
        save_checkpoint(last_path, model, optimiser, epoch, history, best, cfg)
        with files.atomic_path(run_dir / "train_log.csv") as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
        bar.set_postfix(train=f"{row['train_loss']:.4f}", val=f"{row['val_loss']:.4f}")
    return TrainResult(history=pd.DataFrame(history), best_epoch=best[1], best_val_loss=best[0],
                       device=str(device), seconds=time.time() - started)
