"""a2m_lib.losses: each term measures what it names, on batches built to give a known answer, and moves the
prediction the way it should (a term with weight 0 changes nothing; the lip-gap term opens a mouth left too closed)."""
import dataclasses

import numpy as np
import pytest
import torch

from a2m_lib import regions
from a2m_lib.config import TrainConfig
from a2m_lib.losses import CLOSURE_QUANTILE, closure_frames, lip_distances, loss_sums, masked_l1, total_loss
from a2m_lib.mesh import reference_mesh

V = regions.N_LANDMARKS
NOT_LIP = int(np.setdiff1d(np.arange(V), regions.LIPS)[0])


def _batch(frames: int = 10):
    """Zero offsets from the reference face, one sample, every frame valid and voiced."""
    base = torch.from_numpy(reference_mesh()[:V].astype(np.float32))[None]               # (1, V, 3)
    zeros = torch.zeros(1, frames, V, 3)
    return zeros.clone(), zeros.clone(), torch.ones(1, frames, dtype=torch.bool), torch.zeros(1, frames, dtype=torch.bool), base


def _term(name, prediction, target, mask, silent, base=None, closure_weight=0.0) -> float:
    total, count = loss_sums(prediction, target, mask, silent, base, closure_weight)[name]
    return float(total / count) if count > 0 else float(total)  # no frame counts (nothing silent): the sum, 0


def test_masked_l1_ignores_padding():
    prediction, target = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    target[1, 2:] = 100.0
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    assert masked_l1(prediction, target, mask).item() == pytest.approx(1.0)


def test_velocity_counts_changes_between_frames_not_constant_errors():
    prediction, target, mask, silent, base = _batch(3)
    assert _term("velocity", prediction + 0.7, target, mask, silent, base) == 0  # off by a constant: no velocity error
    prediction[0, 1, NOT_LIP, 0] = 1.0  # one coordinate jumps for one frame: +1 then -1 against a still truth
    assert _term("velocity", prediction, target, mask, silent, base) == pytest.approx(2 / (2 * V * 3))


def test_lip_term_sees_only_the_lips():
    prediction, target, mask, silent, base = _batch()
    prediction[:, :, NOT_LIP] = 1.0
    assert _term("lip", prediction, target, mask, silent, base) == 0 and _term("l1", prediction, target, mask, silent) > 0
    prediction[:, :, regions.LIPS[0], 1] = 0.4
    assert _term("lip", prediction, target, mask, silent, base) == pytest.approx(0.4 / (len(regions.LIPS) * 3))


def test_silence_term_is_motion_in_silent_frames_only():
    prediction, target, mask, silent, base = _batch(6)
    prediction[0, 1::2, NOT_LIP, 0] = 1.0  # the face flickers on every other frame
    assert _term("silence", prediction, target, mask, silent, base) == 0  # nothing silent
    silent[0, 3:] = True  # frames 3-5 silent: pairs (2,3), (3,4), (4,5) each move by 1
    assert _term("silence", prediction, target, mask, silent, base) == pytest.approx(3 / (3 * V * 3))


def _open_mouth(frames: int, gap: float) -> torch.Tensor:
    """Offsets that lower the lower lip by `gap` on every frame (the inner-lip gap grows by about `gap`)."""
    offsets = torch.zeros(1, frames, V, 3)
    reference = reference_mesh()
    lower = regions.LIPS[reference[regions.LIPS, 1] > reference[[regions.UPPER_INNER_LIP, regions.LOWER_INNER_LIP], 1].mean()]
    offsets[:, :, lower, 1] = gap
    return offsets


def test_lip_distances_measure_the_gap_on_absolute_meshes():
    _, _, mask, silent, base = _batch(4)
    opened = _open_mouth(4, 0.5)
    before, after = lip_distances(base), lip_distances(base[:, None] + opened)[:, 0]
    pairs = [tuple(pair) for pair in regions.LIP_GAP_PAIRS.tolist()]
    inner = pairs.index((regions.UPPER_INNER_LIP, regions.LOWER_INNER_LIP))
    assert float(after[0, inner] - before[0, inner]) == pytest.approx(0.5, abs=0.02)  # 13-14 is vertical, about
    corners = pairs.index(regions.MOUTH_CORNERS)
    assert float(after[0, corners]) == pytest.approx(float(before[0, corners]), abs=1e-5)  # the corners did not move
    prediction = torch.zeros_like(opened)
    gap = _term("lip_gap", prediction, opened, mask, silent, base)
    assert 0 < gap < 0.5 and _term("lip_gap", opened, opened, mask, silent, base) == 0


def test_a_lip_gap_term_pulls_a_too_small_gap_open():
    """The truth's mouth is open; the prediction's is at the neutral. One gradient step on the lip-gap term alone
    moves the lower inner lip down (+y, opening), and the predicted gap grows."""
    _, _, mask, silent, base = _batch(4)
    target = _open_mouth(4, 0.5)
    prediction = torch.zeros_like(target, requires_grad=True)
    total, count = loss_sums(prediction, target, mask, silent, base)["lip_gap"]
    (total / count).backward()
    assert float(prediction.grad[0, :, regions.LOWER_INNER_LIP, 1].max()) < 0  # descending opens the mouth
    assert float(prediction.grad[0, :, regions.UPPER_INNER_LIP, 1].min()) > 0  # ... from both lips
    with torch.no_grad():
        stepped = prediction - 2.0 * prediction.grad
    gap = lambda offsets: lip_distances(base[:, None] + offsets)[0, :, 4]  # noqa: E731 - (13, 14) is the fifth pair
    assert (gap(stepped) > gap(prediction.detach()) + 1e-3).all()


def test_a_term_with_weight_zero_changes_nothing_and_a_weighted_one_changes_the_gradient():
    _, _, mask, silent, base = _batch(8)
    generator = torch.Generator().manual_seed(0)
    target = _open_mouth(8, 0.3) + 0.01 * torch.randn(1, 8, V, 3, generator=generator)
    # not perfectly still: a constant prediction is a saddle of the spread term (its gradient there is 0)
    prediction = 0.001 * torch.randn(1, 8, V, 3, generator=generator)
    l1_only = TrainConfig()
    gradients = {}
    for name, cfg in (("l1", l1_only), ("zeros", dataclasses.replace(l1_only, lip_gap_weight=0.0, motion_std_weight=0.0)),
                      ("gap", dataclasses.replace(l1_only, lip_gap_weight=10.0)),
                      ("std", dataclasses.replace(l1_only, motion_std_weight=10.0))):
        guess = prediction.clone().requires_grad_(True)
        sums = loss_sums(guess, target, mask, silent, base, cfg.closure_weight)
        total_loss(sums, [float(count) for _, count in sums.values()], cfg).backward()
        gradients[name] = guess.grad
    assert torch.equal(gradients["l1"], gradients["zeros"])
    for name in ("gap", "std"):
        changed = (gradients[name] - gradients["l1"]).abs().sum((0, 1, 3))              # per vertex
        assert changed[regions.LIPS].sum() > 0 and changed[NOT_LIP] == 0  # lip terms move only lip vertices


def test_closure_frames_weigh_more_in_the_lip_terms():
    frames = 10
    _, _, mask, silent, base = _batch(frames)
    target = _open_mouth(frames, 0.0)
    for t in range(frames):  # the gap opens and closes: frames 0 and 5 closed (the lowest 20%)
        target[:, t] = _open_mouth(1, 0.6 * abs(np.sin(np.pi * t / 5)))[:, 0]
    inner = lip_distances(base[:, None] + target)[..., 4]
    closed = closure_frames(inner, mask)
    assert closed[0].tolist() == [t % 5 == 0 for t in range(frames)] and CLOSURE_QUANTILE == 0.2
    on_closures, elsewhere = target.clone(), target.clone()
    on_closures[:, closed[0], regions.LOWER_INNER_LIP, 1] += 0.3   # a mouth left open where the person closes it
    elsewhere[:, ~closed[0], regions.LOWER_INNER_LIP, 1] += 0.3 * 2 / 8  # the same total error on open frames
    for term in ("lip", "lip_gap"):
        plain = [_term(term, p, target, mask, silent, base) for p in (on_closures, elsewhere)]
        weighted = [_term(term, p, target, mask, silent, base, closure_weight=4.0) for p in (on_closures, elsewhere)]
        assert plain[0] == pytest.approx(plain[1], rel=0.01)  # unweighted, about the same (a distance is not linear)
        assert weighted[0] > 2 * weighted[1]  # weighted, the error at the closures costs more


def test_motion_std_is_the_gap_between_the_predicted_and_the_true_spread():
    _, _, mask, silent, base = _batch(20)
    swing = torch.from_numpy(np.sin(np.linspace(0, 6, 20)).astype(np.float32))
    target = torch.zeros(1, 20, V, 3)
    target[0, :, regions.LIPS, 1] = swing[:, None]
    assert _term("motion_std", target, target, mask, silent, base) == pytest.approx(0, abs=1e-5)
    assert _term("motion_std", target + 0.5, target, mask, silent, base) == pytest.approx(0, abs=1e-5)  # a shift: same spread
    half = 0.5 * target
    spread = float(swing.std(unbiased=False))
    assert _term("motion_std", half, target, mask, silent, base) == pytest.approx(0.5 * spread / 3, rel=1e-3)  # y of 3 axes
    padded_mask = mask.clone()
    padded_mask[0, 10:] = False
    padded = target.clone()
    padded[0, 10:] = 99.0  # padding does not count
    assert _term("motion_std", padded, target, padded_mask, silent, base) == pytest.approx(0, abs=1e-5)


def test_sums_over_halves_of_a_batch_give_the_whole_batchs_loss():
    """What makes DDP's loss the single process's: every term is a sum and a count."""
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(4, 12, V, 3, generator=generator) * 0.1
    prediction = target + torch.randn(4, 12, V, 3, generator=generator) * 0.05
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[3, 7:] = False
    silent = torch.zeros(4, 12, dtype=torch.bool)
    silent[:, :3] = True
    base = torch.from_numpy(reference_mesh()[:V].astype(np.float32))[None].repeat(4, 1, 1)
    cfg = TrainConfig(velocity_weight=0.5, lip_weight=2, lip_gap_weight=10, closure_weight=3, motion_std_weight=1,
                      silence_weight=0.2)
    whole = loss_sums(prediction, target, mask, silent, base, cfg.closure_weight)
    halves = [loss_sums(prediction[part], target[part], mask[part], silent[part], base[part], cfg.closure_weight)
              for part in (slice(0, 2), slice(2, 4))]
    summed = {name: (sum(h[name][0] for h in halves), sum(h[name][1] for h in halves)) for name in whole}
    counts = [float(count) for _, count in summed.values()]
    torch.testing.assert_close(total_loss(summed, counts, cfg), total_loss(whole, [float(c) for _, c in whole.values()], cfg))


def test_concordance_asks_for_the_timing_and_the_size_of_the_lip_distances():
    """1 - CCC is 0 for the truth itself, and not for a shrunken copy (which correlates perfectly), nor for a copy
    that moves as much but late: L1's regression to the mean does not satisfy it."""
    _, _, mask, silent, base = _batch(40)
    target = torch.zeros(1, 40, V, 3)
    for t in range(40):
        target[:, t] = _open_mouth(1, 0.3 * (1 + np.sin(2 * np.pi * t / 13)))[:, 0]
    assert _term("lip_ccc", target, target, mask, silent, base) == pytest.approx(0, abs=1e-5)
    shrunk = _term("lip_ccc", target.mean(1, keepdim=True) + 0.5 * (target - target.mean(1, keepdim=True)),
                   target, mask, silent, base)
    late = _term("lip_ccc", torch.roll(target, 3, dims=1), target, mask, silent, base)
    still = _term("lip_ccc", target.mean(1, keepdim=True).expand_as(target), target, mask, silent, base)
    assert 0.05 < shrunk < late < still and still == pytest.approx(1, abs=1e-5)  # the pairs that never move are left out
