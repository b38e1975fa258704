"""Training data: a run's accepted clips (store.load_example) as (audio, offsets from the speaker's neutral) pairs.

Samples mix whole clips and random sub-clips of at least `min_subclip_frames` frames, as in AniPortrait.
Audio is cut at exactly `frames * sample_rate / fps` samples so that padding keeps frames aligned.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch

from . import store
from .model import normalise_audio


def split_clips(accepted: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.DataFrame:
    """Deterministic per-speaker split by a hash of (seed, clip_id): adds a `split` column (train|val|test).

    Each speaker with at least 3 clips gets at least one val and one test clip.
    """
    parts = []
    for _, group in accepted.groupby("speaker", sort=True):
        group = group.copy()
        group["_rank"] = [hashlib.sha256(f"{seed}:{c}".encode()).hexdigest() for c in group.clip_id]
        group = group.sort_values("_rank")
        n = len(group)
        n_test = max(1, round(test_fraction * n)) if n >= 3 else 0
        n_val = max(1, round(val_fraction * n)) if n >= 3 else 0
        group["split"] = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
        parts.append(group.drop(columns="_rank"))
    return pd.concat(parts).sort_values("clip_id").reset_index(drop=True)


class ClipDataset(torch.utils.data.Dataset):
    """Holds its clips in memory (a 6 s clip is about 0.5 MB of audio and offsets)."""

    def __init__(self, processed, clips: pd.DataFrame, neutrals: dict[str, np.ndarray], n_vertices: int,
                 sample_rate: int, whole_clip_fraction: float = 1.0, min_subclip_frames: int = 10, seed: int = 0):
        self.items = []
        for row in clips.itertuples():
            if row.speaker not in neutrals:
                raise KeyError(f"no neutral for speaker '{row.speaker}' (clip {row.clip_id}); re-run neutral selection")
            example = store.load_example(processed, row.clip_id, int(getattr(row, "audio_shift_frames", 0)),
                                         sample_rate, n_vertices)
            offsets = example.mesh - neutrals[row.speaker][:n_vertices]                   # (T, V, 3)
            self.items.append(dict(clip_id=row.clip_id, speaker=row.speaker, audio=normalise_audio(example.audio),
                                   offsets=np.nan_to_num(offsets).astype(np.float32), valid=example.valid,
                                   samples_per_frame=example.samples_per_frame))
        self.whole_clip_fraction = whole_clip_fraction
        self.min_subclip_frames = min_subclip_frames
        self.rng = np.random.default_rng(seed)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.rng = np.random.default_rng([self.seed, epoch])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        n_frames = len(item["offsets"])
        start, length = 0, n_frames
        if n_frames > self.min_subclip_frames and self.rng.random() >= self.whole_clip_fraction:
            length = int(self.rng.integers(self.min_subclip_frames, n_frames + 1))
            start = int(self.rng.integers(0, n_frames - length + 1))
        spf = item["samples_per_frame"]
        first, count = int(round(start * spf)), int(round(length * spf))
        audio = item["audio"][first: first + count]
        audio = np.pad(audio, (0, count - len(audio)))  # the audio may end up to a frame early
        return dict(audio=torch.from_numpy(audio), offsets=torch.from_numpy(item["offsets"][start: start + length]),
                    valid=torch.from_numpy(item["valid"][start: start + length]), clip_id=item["clip_id"],
                    samples_per_frame=spf)


def collate(batch: list[dict]) -> dict:
    """Zero-pad to the longest sample: audio (B, S), offsets (B, T, V, 3), mask (B, T)."""
    n_frames = max(len(sample["offsets"]) for sample in batch)
    n_samples = int(round(n_frames * batch[0]["samples_per_frame"]))
    audio = torch.zeros(len(batch), n_samples)
    offsets = torch.zeros(len(batch), n_frames, *batch[0]["offsets"].shape[1:])
    mask = torch.zeros(len(batch), n_frames, dtype=torch.bool)
    for i, sample in enumerate(batch):
        audio[i, : len(sample["audio"])] = sample["audio"][:n_samples]
        offsets[i, : len(sample["offsets"])] = sample["offsets"]
        mask[i, : len(sample["valid"])] = sample["valid"]
    return dict(audio=audio, offsets=offsets, mask=mask, n_frames=n_frames, clip_ids=[s["clip_id"] for s in batch])
