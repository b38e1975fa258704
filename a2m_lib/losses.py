"""Training losses on offsets (B, T, V, 3) with frame masks (B, T): L1 (AniPortrait's), and the optional terms, each
with its weight in the train section:

    velocity_weight    L1 of frame-to-frame differences, every vertex
    lip_weight         L1 on the lip vertices (regions.LIPS): Real3DPortrait and GeneFace++ weight them x5
    lip_gap_weight     L1 on the lip distances (regions.LIP_GAP_PAIRS: upper-to-lower pairs along the inner and outer
                       lips, and the mouth's widths), measured on absolute meshes: Audio2Face-3D's lip-distance loss
    closure_weight     frames where the true inner-lip gap is in the sample's lowest CLOSURE_QUANTILE count
                       (1 + closure_weight) times in the lip and lip-gap terms: closures (m, b, p) weigh more
    motion_std_weight  L1 between the predicted and the true standard deviation over time of every lip coordinate, per
                       sample: a statistics term against the regression to the mean that L1 rewards
    lip_ccc_weight     1 - the concordance correlation (Lin's CCC) of each lip distance over the sample's frames: it
                       asks for the person's timing, mean and spread at once, and, unlike L1, a shrunken copy of the
                       truth does not satisfy it (the loss of affect regression, which has the same regression to
                       the mean)
    silence_weight     predicted motion in silent frames (stillness)

Each term is a sum and a count, so that under DDP the counts summed over processes give the loss one process would
compute on the whole batch. A term whose weight is 0 is not added (its value is still computed and can be logged)."""
from __future__ import annotations

import torch

from . import regions
from .config import TrainConfig

CLOSURE_QUANTILE = 0.2  # the frames metrics.closure_error looks at: the lowest 20% of the true inner-lip gap
MIN_MOVING_STD = 0.02  # mesh units (0.2 mm): a lip distance that moves less within a sample is left out of lip_ccc
WEIGHTS = {"l1": None, "velocity": "velocity_weight", "lip": "lip_weight", "lip_gap": "lip_gap_weight",
           "motion_std": "motion_std_weight", "lip_ccc": "lip_ccc_weight", "silence": "silence_weight"}


def closure_frames(gap: torch.Tensor, mask: torch.Tensor, quantile: float = CLOSURE_QUANTILE) -> torch.Tensor:
    """(B, T) True where the true inner-lip gap is within the sample's lowest `quantile` of its valid frames."""
    closed = torch.zeros_like(mask)
    for i in range(len(gap)):
        valid = gap[i][mask[i]]
        if len(valid):
            closed[i] = mask[i] & (gap[i] <= torch.quantile(valid, quantile))
    return closed


def lip_distances(meshes: torch.Tensor) -> torch.Tensor:
    """(..., V, 3) absolute meshes -> (..., P) distances of regions.LIP_GAP_PAIRS."""
    first, second = regions.LIP_GAP_PAIRS.T
    return (meshes[..., second, :] - meshes[..., first, :]).norm(dim=-1)


def loss_sums(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, silent: torch.Tensor,
              base: torch.Tensor | None = None, closure_weight: float = 0.0) -> dict:
    """Summed errors and their counts per term (see the module docstring). prediction and target: offsets
    (B, T, V, 3) from `base` (B, V, 3), the meshes they are offsets of (lip distances need absolute positions);
    mask, silent (B, T). Divided by counts summed over all processes, they give one process's loss on the batch."""
    error = (prediction - target).abs().sum(-1)                                        # (B, T, V)
    frames = mask.to(prediction.dtype)
    pairs = (mask[:, 1:] & mask[:, :-1]).to(prediction.dtype)                          # (B, T-1)
    velocity = ((prediction[:, 1:] - prediction[:, :-1]) - (target[:, 1:] - target[:, :-1])).abs().sum(-1)
    still = (pairs * silent[:, 1:].to(prediction.dtype))
    motion = (prediction[:, 1:] - prediction[:, :-1]).abs().sum(-1)                    # (B, T-1, V)
    n_vertices = prediction.shape[2]
    has_lips = n_vertices >= regions.N_LANDMARKS
    lips = error[:, :, regions.LIPS] if has_lips else error[:, :, :0]                 # (B, T, lips)
    sums = dict(
        l1=((error * frames[..., None]).sum(), frames.sum() * n_vertices * 3),
        velocity=((velocity * pairs[..., None]).sum(), pairs.sum() * n_vertices * 3),
        silence=((motion * still[..., None]).sum(), still.sum() * n_vertices * 3),
    )
    if not has_lips:
        zero = prediction.sum() * 0
        return dict(sums, lip=(zero, zero), lip_gap=(zero, zero), motion_std=(zero, zero), lip_ccc=(zero, zero))
    if base is None:
        base = torch.zeros(prediction.shape[0], n_vertices, 3, dtype=prediction.dtype, device=prediction.device)
    truth_mesh = base[:, None] + target                                                # (B, T, V, 3)
    weights = frames
    if closure_weight:
        inner = (truth_mesh[:, :, regions.LOWER_INNER_LIP] - truth_mesh[:, :, regions.UPPER_INNER_LIP]).norm(dim=-1)
        weights = frames * (1 + closure_weight * closure_frames(inner, mask).to(prediction.dtype))   # (B, T)
    predicted_gaps, true_gaps = lip_distances(base[:, None] + prediction), lip_distances(truth_mesh)  # (B, T, P)
    gap_error = (predicted_gaps - true_gaps).abs()
    lip_std = _std_over_time(prediction[:, :, regions.LIPS], mask) - _std_over_time(target[:, :, regions.LIPS], mask)
    concordance = _concordance(predicted_gaps, true_gaps, mask)                             # (B, P)
    # a distance the person does not move within the sample (a width in a pause) has no concordance to ask for
    moving = (_std_over_time(true_gaps[..., None], mask)[..., 0] > MIN_MOVING_STD).to(prediction.dtype)
    has_motion = (mask.sum(1) > 1).to(prediction.dtype)                                # (B,)
    return dict(
        sums,
        lip=((lips * weights[..., None]).sum(), weights.sum() * lips.shape[2] * 3),
        lip_gap=((gap_error * weights[..., None]).sum(), weights.sum() * gap_error.shape[2]),
        motion_std=((lip_std.abs().sum((1, 2)) * has_motion).sum(), has_motion.sum() * lip_std.shape[1] * 3),
        lip_ccc=(((1 - concordance) * moving).sum(), moving.sum()),
    )


def _concordance(predicted: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Lin's concordance correlation of (B, T, P) series over each sample's valid frames -> (B, P), in [-1, 1]:
    2 cov / (var_p + var_t + (mean_p - mean_t)^2). By hand: torchmetrics' version takes no frame mask."""
    keep = mask.to(predicted.dtype)[..., None]
    count = keep.sum(1).clamp(min=1)
    mean_p, mean_t = (predicted * keep).sum(1) / count, (true * keep).sum(1) / count
    centred_p, centred_t = (predicted - mean_p[:, None]) * keep, (true - mean_t[:, None]) * keep
    var_p, var_t = centred_p.square().sum(1) / count, centred_t.square().sum(1) / count
    covariance = (centred_p * centred_t).sum(1) / count
    return 2 * covariance / (var_p + var_t + (mean_p - mean_t).square() + 1e-8)


def _std_over_time(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, K, 3) over the valid frames of each sample -> (B, K, 3) standard deviation (0 with under 2 frames)."""
    keep = mask.to(values.dtype)[:, :, None, None]
    count = keep.sum(1).clamp(min=1)
    mean = (values * keep).sum(1) / count
    return (((values - mean[:, None]) ** 2 * keep).sum(1) / count + 1e-12).sqrt()


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |prediction - target| over valid frames: (B, T, V, 3) with mask (B, T)."""
    total, count = loss_sums(prediction, target, mask, torch.zeros_like(mask))["l1"]
    return total / count.clamp(min=1)


def total_loss(sums: dict, counts: list[float], train_cfg: TrainConfig) -> torch.Tensor:
    """L1 plus the weighted optional terms, each normalised by its count over all processes."""
    loss = 0.0
    for (name, (total, _)), count in zip(sums.items(), counts):
        weight = 1.0 if WEIGHTS[name] is None else getattr(train_cfg, WEIGHTS[name])
        if weight and count > 0:
            loss = loss + weight * total / count
    return loss
