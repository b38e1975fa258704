"""Training losses on offsets (B, T, V, 3) with frame masks (B, T): L1 (AniPortrait's), and the optional velocity,
lip and silence terms (train.velocity_weight, lip_weight, silence_weight). Each term is a sum and a count, so that
under DDP the counts summed over processes give the loss one process would compute on the whole batch."""
from __future__ import annotations

import torch

from . import regions
from .config import TrainConfig


def loss_sums(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, silent: torch.Tensor) -> dict:
    """Summed absolute errors and their counts, (B, T, V, 3) with masks (B, T); divided by counts summed over
    all processes, they give the same loss as one process would on the whole batch."""
    error = (prediction - target).abs().sum(-1)                                        # (B, T, V)
    frames = mask.to(prediction.dtype)
    pairs = (mask[:, 1:] & mask[:, :-1]).to(prediction.dtype)                          # (B, T-1)
    velocity = ((prediction[:, 1:] - prediction[:, :-1]) - (target[:, 1:] - target[:, :-1])).abs().sum(-1)
    still = (pairs * silent[:, 1:].to(prediction.dtype))
    motion = (prediction[:, 1:] - prediction[:, :-1]).abs().sum(-1)                    # (B, T-1, V)
    n_vertices = prediction.shape[2]
    lips = error[:, :, regions.LIPS] if n_vertices >= regions.N_LANDMARKS else error[:, :, :0]
    return dict(
        l1=((error * frames[..., None]).sum(), frames.sum() * n_vertices * 3),
        velocity=((velocity * pairs[..., None]).sum(), pairs.sum() * n_vertices * 3),
        lip=((lips * frames[..., None]).sum(), frames.sum() * lips.shape[2] * 3),
        silence=((motion * still[..., None]).sum(), still.sum() * n_vertices * 3),
    )


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |prediction - target| over valid frames: (B, T, V, 3) with mask (B, T)."""
    total, count = loss_sums(prediction, target, mask, torch.zeros_like(mask))["l1"]
    return total / count.clamp(min=1)


def total_loss(sums: dict, counts: list[float], train_cfg: TrainConfig) -> torch.Tensor:
    """L1 plus the weighted optional terms, each normalised by its count over all processes."""
    weights = dict(l1=1.0, velocity=train_cfg.velocity_weight, lip=train_cfg.lip_weight, silence=train_cfg.silence_weight)
    loss = 0.0
    for (name, (total, _)), count in zip(sums.items(), counts):
        if weights[name] and count > 0:
            loss = loss + weights[name] * total / count
    return loss
