"""Training data: a run's accepted clips as (frame features or audio, offsets from the reference) samples.

    splits = make_split(cfg, run_dir)                              # the run's split, written once: splits.csv
    dataset = ClipDataset(processed, clips, neutrals, n_vertices=468, speakers=["spk0"], features=cache, ...)
    batches = EpochBatches(len(dataset), batch_size=8, seed=0)     # the order of an epoch, resumable mid-epoch

Each epoch mixes whole clips and random sub-clips of at least `min_subclip_frames` frames, in the ratio
`whole_clip_fraction`. With frozen frame features (a frozen CNN, or log-mel) a sub-clip is a slice of the
clip's features (see a2m_lib.model), so they are computed once per clip (FeatureCache); a CNN being trained
runs on the sub-clip's own audio, cut to exactly its frames, as in AniPortrait.
Every random choice is a function of (seed, epoch, sample index), so an epoch is the same whether it runs in
one go, resumes after a crash, or is split across DDP processes. Clips are read from the store when a sample
is drawn (store.load_example), not held in memory; cached features are memory-mapped.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import audio_frames, files, regions, rundir, store
from .config import Config

# splits.csv's columns (rundir.splits): what evaluation and plots read, and what every checkpoint keeps
SPLIT_COLUMNS = ("clip_id", "speaker", "language", "split", "audio_shift_frames")


def split_clips(accepted: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int,
                by: str = "clip", train_minutes: float = 0.0, fps: float = 30.0) -> pd.DataFrame:
    """Deterministic split by a hash of (seed, clip_id or speaker): adds a `split` column (train|val|test|unused).

    by="clip": per speaker, so every speaker is in training; each speaker with at least 3 clips gets at least one
    val and one test clip. by="speaker": whole speakers are held out (needs at least 3 speakers).
    train_minutes > 0: each speaker trains on at most that much footage (n_frames / fps), its clips taken in the
    split's hash order; the rest are `unused`. The val and test clips do not change with it, so runs with
    different amounts of footage are scored on the same held-out clips (data.train_minutes).
    """
    def ranked(names):
        return sorted(names, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())

    def assign(n):
        n_test = max(1, round(test_fraction * n)) if n >= 3 else 0
        n_val = max(1, round(val_fraction * n)) if n >= 3 else 0
        return ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)

    table = accepted.copy()
    if by == "speaker":
        speakers = ranked(table.speaker.unique())
        if len(speakers) < 3:
            raise ValueError(f"data.split_by=speaker needs at least 3 speakers, found {len(speakers)}; use data.split_by=clip")
        table["split"] = table.speaker.map(dict(zip(speakers, assign(len(speakers)))))
    else:
        parts = []
        for _, group in table.groupby("speaker", sort=True):
            order = ranked(group.clip_id)
            parts.append(group.assign(split=group.clip_id.map(dict(zip(order, assign(len(order)))))))
        table = pd.concat(parts)
    if train_minutes > 0:
        for _, group in table[table.split == "train"].groupby("speaker", sort=True):
            order = ranked(group.clip_id)
            seconds = group.set_index("clip_id").loc[order, "n_frames"].to_numpy(float) / fps
            within = np.concatenate([[True], np.cumsum(seconds)[:-1] < train_minutes * 60])  # at least one clip
            table.loc[table.clip_id.isin([c for c, keep in zip(order, within) if not keep]), "split"] = "unused"
    return table.sort_values("clip_id").reset_index(drop=True)


def make_split(cfg: Config, run_dir, write: bool = True) -> pd.DataFrame:
    """The run's split of its accepted clips (rundir.accepted_clips: QA's `use` rows) by data.split_by, val_fraction,
    test_fraction, train_minutes and the seed: SPLIT_COLUMNS, one row per clip. With `write` (the process that
    writes, under DDP), saved to splits.csv when it is new or changed: one file, read by training, evaluation and
    plots."""
    accepted = rundir.accepted_clips(run_dir)
    if accepted.empty:
        raise RuntimeError(f"no clips passed QA in {rundir.qa_table(run_dir)}; see its reason column")
    table = split_clips(accepted, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed, cfg.data.split_by,
                        cfg.data.train_minutes, cfg.data.fps)
    table = table[[c for c in SPLIT_COLUMNS if c in table]]
    if write:
        rundir.write_splits(run_dir, table)
    return table


def training_minutes(run_dir, fps: float) -> float:
    """Minutes of training footage of the run's median speaker (its split and its QA table's frame counts)."""
    splits = rundir.read_splits(run_dir)
    frames = rundir.accepted_clips(run_dir)[["clip_id", "n_frames"]]
    train = splits[splits.split == "train"].merge(frames, on="clip_id")
    return float(train.groupby("speaker").n_frames.sum().median()) / fps / 60


def split_rows(table: pd.DataFrame) -> list[list[str]]:
    """The split as plain strings, the form a checkpoint keeps (and compares on resume)."""
    return table.astype(str).values.tolist()


def silent_frames(loudness: np.ndarray) -> np.ndarray:
    """Frames at least 30 dB (log 10^1.5) below the clip's loud frames: pauses, where the face should rest."""
    return loudness < np.quantile(loudness, 0.9) - 1.5 * np.log(10)


class FeatureCache:
    """Frame features that no training changes (a frozen Wav2Vec2 CNN, or log-mel), computed once per clip.

    Kept in the store (they depend only on the clip's audio and the encoder): features/<features_id>/
    <clip_id>-<audio sha256>.npy, keyed by the frozen weights (model.features_id) and the audio after the run's QA
    shift. Read back memory-mapped.
    """

    def __init__(self, processed: str | Path, model, sample_rate: int = 16000):
        self.folder = Path(processed) / "features" / model.features_id()
        self.model, self.sample_rate = model, sample_rate

    def get(self, example: store.Example) -> np.ndarray:
        audio = self.model.normalise(example.audio)
        digest = hashlib.sha256(audio.tobytes()).hexdigest()[:16]
        path = self.folder / f"{example.clip_id}-{digest}-{len(example.mesh)}.npy"
        if not path.exists():
            with torch.no_grad():
                device = next(self.model.parameters()).device
                features = self.model.frame_features(torch.from_numpy(audio).to(device), len(example.mesh), self.sample_rate,
                                                     example.fps)
            with files.atomic_path(path) as tmp:
                np.save(tmp, features.cpu().numpy())  # in the encoder's dtype (Whisper: float16)
        return np.load(path, mmap_mode="r")


class ClipDataset(torch.utils.data.Dataset):
    """Samples of a run's clips: sub-clip choice, reference, targets. See the module docstring."""

    def __init__(self, processed, clips: pd.DataFrame, neutrals: dict[str, np.ndarray], n_vertices: int,
                 sample_rate: int = 16000, speakers: list[str] | None = None, whole_clip_fraction: float = 1.0,
                 min_subclip_frames: int = 10, seed: int = 0, features: FeatureCache | None = None,
                 reference: str = "neutral", cut_audio: bool = False, normalise=None):
        self.processed, self.neutrals, self.n_vertices, self.sample_rate = Path(processed), neutrals, n_vertices, sample_rate
        self.rows = [(row.clip_id, row.speaker, int(getattr(row, "audio_shift_frames", 0) or 0)) for row in clips.itertuples()]
        for clip_id, speaker, _ in self.rows:
            if speaker not in neutrals:
                raise KeyError(f"no neutral for speaker '{speaker}' (clip {clip_id}); re-run neutral selection (notebook 03)")
        self.speakers = list(speakers or sorted({speaker for _, speaker, _ in self.rows}))
        self.whole_clip_fraction, self.min_subclip_frames = whole_clip_fraction, min_subclip_frames
        self.seed, self.epoch, self.features, self.reference = seed, 0, features, reference
        self.cut_audio = cut_audio  # a trained CNN sees only the sub-clip's audio (AniPortrait's slices)
        self.normalise = normalise or (lambda audio: audio)  # the encoder's (AudioEncoder.normalise)
        self.reference_pool = self._reference_pool() if reference == "random_frame" else {}

    def _reference_pool(self, per_clip: int = 8) -> dict[str, np.ndarray]:
        """Per speaker, frames of its clips that can serve as a dynamic reference, (K, V, 3)."""
        pool: dict[str, list] = {}
        rng = np.random.default_rng([self.seed, 7])
        for clip_id, speaker, shift in self.rows:
            example = store.load_example(self.processed, clip_id, shift, self.sample_rate, self.n_vertices, audio=False)
            frames = np.flatnonzero(example.valid)
            pool.setdefault(speaker, []).extend(example.mesh[rng.choice(frames, min(per_clip, len(frames)), replace=False)])
        return {speaker: np.stack(frames) for speaker, frames in pool.items()}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        clip_id, speaker, shift = self.rows[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        example = store.load_example(self.processed, clip_id, shift, self.sample_rate, self.n_vertices)
        n_frames = len(example.mesh)
        start, length = 0, n_frames
        if n_frames > self.min_subclip_frames and rng.random() >= self.whole_clip_fraction:
            length = int(rng.integers(self.min_subclip_frames, n_frames + 1))
            start = int(rng.integers(0, n_frames - length + 1))
        neutral = self.neutrals[speaker][: self.n_vertices]
        base = neutral
        if self.reference == "random_frame":
            pool = self.reference_pool[speaker]
            base = pool[rng.integers(len(pool))]
        frames = slice(start, start + length)
        offsets = np.nan_to_num(example.mesh[frames] - base).astype(np.float32)              # (T, V, 3)
        loudness = audio_frames.frame_energy(example.audio, self.sample_rate, example.fps, n_frames)
        sample = dict(clip_id=clip_id, speaker_id=self.speakers.index(speaker) if speaker in self.speakers else len(self.speakers),
                      offsets=torch.from_numpy(offsets), valid=torch.from_numpy(example.valid[frames].copy()),
                      silent=torch.from_numpy(silent_frames(loudness)[frames].copy()),
                      reference=torch.from_numpy((base - neutral).astype(np.float32)),
                      base=torch.from_numpy(np.nan_to_num(base).astype(np.float32)))
        if self.features is not None:
            sample["features"] = torch.from_numpy(np.array(self.features.get(example)[frames], np.float32))
        elif self.cut_audio:  # a CNN being trained runs on the sub-clip's own audio: exactly its frames
            audio = self.normalise(example.audio)
            spf = example.samples_per_frame
            first, last = int(round(start * spf)), int(round((start + length) * spf))
            piece = np.zeros(last - first, np.float32)
            available = audio[first:last]
            piece[: len(available)] = available  # the audio may end up to a frame early
            sample.update(audio=torch.from_numpy(piece), start=0, n_clip_frames=length, fps=example.fps)
        else:  # frozen features not cached: computed on the whole clip during the step, then sliced, as the cache does
            sample.update(audio=torch.from_numpy(self.normalise(example.audio)), start=start, n_clip_frames=n_frames,
                          fps=example.fps)
        return sample


def speaker_statistics(processed, clips: pd.DataFrame, neutrals: dict[str, np.ndarray], n_vertices: int
                       ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per speaker, the mean offset from the neutral (V, 3) and the spread of the lips around it (RMS, mesh units).

    Two passes over the clips, holding running sums, not every training frame's offsets (0.4 GB for an hour of one
    speaker): the first sums the offsets (running_sum gives exactly numpy's mean over all frames at once), the
    second keeps only each frame's squared lip distances from that mean (L values a frame)."""
    def offsets_of(row):
        example = store.load_example(processed, row.clip_id, n_vertices=n_vertices, audio=False)
        return example.mesh[example.valid] - neutrals[row.speaker][:n_vertices]

    totals: dict[str, list] = {}  # speaker -> [sum of offsets (V, 3) float32, frames]
    for row in clips.itertuples():
        total = totals.setdefault(row.speaker, [None, 0])
        offsets = offsets_of(row)
        total[0], total[1] = running_sum(total[0], offsets), total[1] + len(offsets)
    mean = {speaker: total / np.float32(frames) for speaker, (total, frames) in totals.items()}
    lips = regions.LIPS if n_vertices >= regions.N_LANDMARKS else slice(None)
    squares: dict[str, list] = {}
    for row in clips.itertuples():
        squares.setdefault(row.speaker, []).append(np.square(offsets_of(row)[:, lips] - mean[row.speaker][lips]).sum(-1))
    scale = {speaker: float(np.sqrt(np.concatenate(parts).mean()) + 1e-6) for speaker, parts in squares.items()}
    return mean, scale


def running_sum(total: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """total + rows.sum(0), adding row after row as numpy's sum over axis 0 of all rows at once does, so the sum
    of many clips' frames equals, bit for bit, the sum of their concatenation, without holding it."""
    return np.add.reduce(rows if total is None else np.concatenate([total[None], rows]), axis=0)


def collate(batch: list[dict]) -> dict:
    """Zero-pad to the longest sample: offsets (B, T, V, 3), mask/silent (B, T), base (B, V, 3) the meshes the offsets
    are from, features (B, T, C) when cached;
    otherwise each sample's whole-clip audio stays a list (the CNN runs per clip, unpadded)."""
    n_frames = max(len(sample["offsets"]) for sample in batch)
    out = dict(offsets=torch.zeros(len(batch), n_frames, *batch[0]["offsets"].shape[1:]),
               mask=torch.zeros(len(batch), n_frames, dtype=torch.bool),
               silent=torch.zeros(len(batch), n_frames, dtype=torch.bool),
               speaker_ids=torch.tensor([s["speaker_id"] for s in batch]),
               reference=torch.stack([s["reference"] for s in batch]), base=torch.stack([s["base"] for s in batch]),
               lengths=[len(s["offsets"]) for s in batch], clip_ids=[s["clip_id"] for s in batch])
    for i, sample in enumerate(batch):
        length = len(sample["offsets"])
        out["offsets"][i, :length] = sample["offsets"]
        out["mask"][i, :length] = sample["valid"]
        out["silent"][i, :length] = sample["silent"]
    if "features" in batch[0]:
        out["features"] = torch.zeros(len(batch), n_frames, batch[0]["features"].shape[1])
        for i, sample in enumerate(batch):
            out["features"][i, : len(sample["features"])] = sample["features"]
    else:
        out.update(audio=[s["audio"] for s in batch], starts=[s["start"] for s in batch],
                   clip_frames=[s["n_clip_frames"] for s in batch], fps=batch[0]["fps"])
    return out


class EpochBatches(torch.utils.data.Sampler):
    """The batches of one epoch: a permutation drawn from (seed, epoch), cut into batches of `batch_size`.

    `skip` batches are left out at the start (resuming mid-epoch). Under DDP each process takes its share of
    every batch (rank::world_size), so the processes together see exactly the single-process batches.
    """

    def __init__(self, n_samples: int, batch_size: int, seed: int, epoch: int = 0, skip: int = 0,
                 rank: int = 0, world_size: int = 1):
        order = np.random.default_rng([seed, epoch, 1]).permutation(n_samples).tolist()
        batches = [order[i: i + batch_size] for i in range(0, n_samples, batch_size)]
        if world_size > 1:  # every process needs a share of every batch; a last batch smaller than that is left out
            batches = [batch for batch in batches if len(batch) >= world_size]
        self.batches = [batch[rank::world_size] for batch in batches[skip:]]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @staticmethod
    def count(n_samples: int, batch_size: int, world_size: int = 1) -> int:
        full, rest = divmod(n_samples, batch_size)
        return full + (rest > 0 and rest >= world_size)
