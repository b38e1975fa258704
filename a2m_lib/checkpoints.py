"""Training checkpoints and the resume policy: what a checkpoint holds, and whether a run continues from it.

    saved = checkpoints.previous_state(run_dir, cfg, split)   # the checkpoint to continue from, or None: start afresh
    state = checkpoints.restore(saved, model, optimiser, scheduler) if saved else TrainState()
    checkpoints.save(path, model, optimiser, scheduler, state, cfg, split)

A checkpoint (rundir.checkpoint(run_dir, "last" | "best")) holds tensors and plain values only: the model as
model.load_model reads it, optimiser, scheduler, RNG states, the TrainState (epoch, step, the losses of the epoch so
far, best, history, `finished`), the config and the split. Resume is explicit (train.resume, the default): an
interrupted run continues where its last checkpoint left it, mid-epoch included; one whose model or training
config (other than RESUMABLE_CHANGES), data, seed or split changed is refused, naming what changed; a finished run,
or any run with train.resume=false, starts afresh and its old checkpoints are removed first.
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import files, rundir
from .config import Config, config_from_dict
from .model import Audio2Mesh, load_checkpoint

# Training keys that change only speed or bookkeeping, not the weights: a resumed run may differ in these.
RESUMABLE_CHANGES = {"device", "num_workers", "num_threads", "processes", "resume", "validate_every",
                     "checkpoint_every", "compile", "collapse_ratio"}


@dataclass
class TrainState:
    """Where training is: what a checkpoint saves and restores besides weights, optimiser, scheduler and RNG."""

    epoch: int = 0                       # the epoch in progress (or the next to start)
    step: int = 0                        # optimiser steps done in that epoch
    epoch_losses: list = field(default_factory=list)  # those steps' losses (a resumed epoch's mean includes them)
    best_loss: float = math.inf          # the lowest validation loss so far ...
    best_epoch: int = -1                 # ... and its epoch (checkpoints/best.pt)
    history: list = field(default_factory=list)       # one row per finished epoch: train_log.csv
    finished: bool = False

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "TrainState":
        if "state" in saved:
            return cls(**saved["state"])
        best_loss, best_epoch = saved["best"]  # written before TrainState: flat progress keys
        return cls(epoch=saved["epoch"], step=saved["step_in_epoch"], epoch_losses=list(saved.get("epoch_losses", [])),
                   best_loss=best_loss, best_epoch=best_epoch, history=saved["history"], finished=saved.get("finished", False))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


class ResumeRefused(RuntimeError):
    """The run's last checkpoint cannot be continued with this config; the message says what changed."""


def rng_states() -> dict:
    states = dict(python=random.getstate(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(path: Path, model: Audio2Mesh, optimiser, scheduler, state: TrainState, cfg: Config, split: list) -> None:
    """Model (as model.load_model reads it), optimiser, scheduler, RNG and the TrainState: tensors and plain values
    only. Refuses to write non-finite weights, so the last good checkpoint survives a diverging run."""
    weights = model.state_dict()
    if not all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()):
        raise TrainingDiverged(f"the weights are no longer finite; {path} keeps the last good state")
    with files.atomic_path(path) as tmp:
        torch.save(dict(model.describe(), model=weights, optimiser=optimiser.state_dict(), scheduler=scheduler.state_dict(),
                        rng=rng_states(), state=dataclasses.asdict(state), config=cfg.to_dict(), split=split,
                        finished=state.finished), tmp)


def resume_problem(saved: dict, cfg: Config, split: list) -> str:
    """Why the checkpoint `saved` cannot be continued with `cfg` and `split` ('' if it can)."""
    before, now = config_from_dict(saved["config"], "the checkpoint's config").to_dict(), cfg.to_dict()
    changed = [f"model.{k}" for k in now["model"] if before["model"].get(k) != now["model"][k]]
    changed += [f"train.{k}" for k in now["train"] if k not in RESUMABLE_CHANGES and before["train"].get(k) != now["train"][k]]
    changed += [f"data.{k}" for k in ("processed", "fps", "sample_rate") if before["data"].get(k) != now["data"][k]]
    changed += ["seed"] if before["seed"] != now["seed"] else []
    details = ", ".join(f"{key} ({lookup(before, key)!r} -> {lookup(now, key)!r})" for key in changed)
    if not details and saved["split"] != split:
        details = "the split (the run's accepted clips changed: its QA decisions or data.* differ)"
    return details


def lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def previous_state(run_dir, cfg: Config, split: list, clear: bool = True) -> dict | None:
    """The run's last checkpoint to continue from, or None to start afresh (with `clear`, the process that writes
    removes a finished or unwanted run's checkpoints). Raises ResumeRefused when it cannot be continued."""
    last_path, best_path = rundir.checkpoint(run_dir, "last"), rundir.checkpoint(run_dir, "best")
    saved = load_checkpoint(last_path, map_location="cpu") if last_path.exists() else None
    if saved is not None and (saved.get("finished") or not cfg.train.resume):
        if clear:
            print(f"{last_path} is from a {'finished' if saved.get('finished') else 'previous'} run; training afresh")
            last_path.unlink(missing_ok=True)
            best_path.unlink(missing_ok=True)
        return None
    if saved is not None and (problem := resume_problem(saved, cfg, split)):
        raise ResumeRefused(f"{last_path} cannot be continued: changed since it was written: {problem}. To train "
                            f"afresh in this run use -p train.resume=false, or give another --run-dir")
    return saved


def restore(saved: dict, model: Audio2Mesh, optimiser, scheduler) -> TrainState:
    """Load a checkpoint's weights, optimiser, scheduler and RNG; return where training was."""
    model.load_state_dict(saved["model"])
    optimiser.load_state_dict(saved["optimiser"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_states(saved["rng"])
    return TrainState.from_checkpoint(saved)
