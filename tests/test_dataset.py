"""a2m_lib.dataset: batches, padding, the split and the footage limit."""

import torch

from a2m_lib.dataset import EpochBatches, collate


def test_collate_pads_features_and_masks():
    batch = [dict(features=torch.ones(n, 8), offsets=torch.ones(n, 468, 3), valid=torch.ones(n, dtype=torch.bool),
                  silent=torch.zeros(n, dtype=torch.bool), clip_id=c, speaker_id=0, reference=torch.zeros(468, 3), base=torch.zeros(468, 3))
             for c, n in (("a", 10), ("b", 25))]
    out = collate(batch)
    assert out["features"].shape == (2, 25, 8) and out["offsets"].shape == (2, 25, 468, 3)
    assert out["mask"].sum().item() == 35 and out["offsets"][0, 10:].abs().sum() == 0


def test_epoch_batches_resume_and_split_across_processes():
    whole = EpochBatches(10, 4, seed=3, epoch=2).batches
    assert sorted(i for b in whole for i in b) == list(range(10))
    assert EpochBatches(10, 4, seed=3, epoch=2, skip=1).batches == whole[1:]
    halves = [EpochBatches(10, 4, seed=3, epoch=2, rank=r, world_size=2).batches for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*halves)] == [sorted(b) for b in whole]
    assert EpochBatches(10, 4, seed=3, epoch=3).batches != whole


def test_train_minutes_limits_training_footage_and_keeps_the_held_out_clips():
    import pandas as pd

    from a2m_lib.dataset import split_clips

    accepted = pd.DataFrame(dict(clip_id=[f"c{i:02d}" for i in range(40)], speaker=["a"] * 20 + ["b"] * 20,
                                 n_frames=[90] * 40))  # 3 s clips at 30 fps
    full = split_clips(accepted, 0.1, 0.2, seed=0)
    limited = split_clips(accepted, 0.1, 0.2, seed=0, train_minutes=0.25, fps=30)  # 15 s: 5 clips per speaker
    held_out = full.split.isin(["val", "test"])
    assert (limited.split[held_out] == full.split[held_out]).all() and not limited.split[~held_out].isin(["val", "test"]).any()
    assert (limited[limited.split == "train"].groupby("speaker").size() == 5).all()
    assert set(limited.split) == {"train", "val", "test", "unused"}
