"""Stage 03: one neutral-expression mesh per speaker; training targets are `mesh - neutral`.

    ranking = neutral.rank_candidates(processed, accepted)        # scored frames, best first
    chosen = neutral.resolve(processed, accepted, "auto", run_dir)  # writes run_dir/neutral/<speaker>.npz

`neutral` (config key neutral.neutral, papermill parameter `neutral`) is one of
    auto                          the best-ranked frame per speaker
    "<clip_id>:<frame>"           that frame, for the clip's speaker
    path/to/neutral.npz           a saved neutral (any speaker's file; its speaker key says whose)
    mean-closed                   the mean of the speaker's closed-mouth, low-energy frames (reference option)

With `auto`, a speaker whose saved neutral was picked by hand (the picker, `chosen_by = manual`) keeps it.
Each neutral file holds: mesh (478, 3), speaker, clip_id, frame, chosen_by (auto | manual | file | mean-closed), score.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from . import files, regions, rundir, store
from .rundir import load_neutral, save_neutral

SCORE_WEIGHTS = {"mouth": 1.0, "energy": 1.0, "eyes": 0.5, "pose": 0.5, "motion": 0.5, "blendshapes": 1.0}


def frame_measures(clips: dict[str, dict]) -> pd.DataFrame:
    """Per-frame neutrality features of one speaker's clips (NaN frames dropped)."""
    rows = []
    # Expression energy is measured from the median *resting* shape: the median over the quarter of
    # frames with the most closed mouth. The median over all frames would be half-way into speech.
    # Clip by clip, holding only the resting frames, not every frame's mesh (0.4 GB for an hour).
    openings = {clip_id: regions.mouth_opening(clip["mesh"]) for clip_id, clip in clips.items()}
    closed = np.nanquantile(np.concatenate(list(openings.values())), 0.25)
    resting = np.concatenate([clips[clip_id]["mesh"][opening <= closed] for clip_id, opening in openings.items()])
    median_shape = np.nanmedian(resting, axis=0)
    for clip_id, clip in clips.items():
        meshes = clip["mesh"]
        found = clip["face_found"] & np.isfinite(meshes).all(axis=(1, 2))
        velocity = np.zeros(len(meshes))
        velocity[1:-1] = np.linalg.norm(meshes[2:] - meshes[:-2], axis=-1).mean(-1) / 2
        velocity[[0, -1]] = np.nan  # no two-sided neighbourhood: never choose clip ends
        yaw_pitch_roll = np.full((len(meshes), 3), np.nan)
        if found.any():
            yaw_pitch_roll[found] = Rotation.from_matrix(clip["pose_rotation"][found]).as_euler("yxz", degrees=True)
        columns = {}
        if "blendshapes" in clip:  # tasks extractor: expression scores straight from MediaPipe
            names = list(clip["blendshape_names"])
            expressive = [i for i, name in enumerate(names) if name != "_neutral"]
            columns["blendshape_energy"] = clip["blendshapes"][:, expressive].sum(1)
        rows.append(pd.DataFrame({
            "clip_id": clip_id,
            "frame": np.arange(len(meshes)),
            "mouth_opening": regions.mouth_opening(meshes),
            "expression_energy": np.linalg.norm(meshes[:, :regions.N_LANDMARKS] - median_shape[:regions.N_LANDMARKS], axis=-1).mean(-1),
            "eye_opening": regions.eye_opening(meshes),
            # rotation image -> canonical; its angle is the head's deviation from the reference pose
            "head_angle_deg": np.linalg.norm(yaw_pitch_roll, axis=-1),
            "motion": velocity,
            **columns,
        })[found])
    return pd.concat(rows, ignore_index=True).dropna()


def score_frames(features: pd.DataFrame) -> pd.DataFrame:
    """Lower score = more neutral: a weighted sum of each feature's percentile rank within the speaker.

    Ranks, not z-scores: a feature that barely varies (eyes that never blink) must not turn its
    noise into large scores.
    """
    scored = features.copy()
    rank = {name: features[name].rank(pct=True) for name in
            ("mouth_opening", "expression_energy", "eye_opening", "head_angle_deg", "motion")}
    scored["score"] = (SCORE_WEIGHTS["mouth"] * rank["mouth_opening"]
                       + SCORE_WEIGHTS["energy"] * rank["expression_energy"]
                       + SCORE_WEIGHTS["eyes"] * (1 - rank["eye_opening"])
                       + SCORE_WEIGHTS["pose"] * rank["head_angle_deg"]
                       + SCORE_WEIGHTS["motion"] * rank["motion"])
    if "blendshape_energy" in features:
        scored["score"] += SCORE_WEIGHTS["blendshapes"] * features["blendshape_energy"].rank(pct=True)
    return scored.sort_values("score").reset_index(drop=True)


class ClipsOnDisk(Mapping):
    """A speaker's clips by id, read from the store when asked for, the last CACHED_CLIPS kept. Holding every clip
    of an hour of footage (1,000 clips) would take 1.3 GB in notebook 03; ranking reads each clip once anyway."""

    CACHED_CLIPS = 32

    def __init__(self, processed: str | Path, clip_ids: list[str]):
        self.clip_ids = list(clip_ids)
        self._known = set(self.clip_ids)
        self._load = functools.lru_cache(maxsize=self.CACHED_CLIPS)(lambda clip_id: store.load_clip(processed, clip_id))

    def __getitem__(self, clip_id: str) -> dict:
        if clip_id not in self._known:
            raise KeyError(clip_id)
        return self._load(clip_id)

    def __contains__(self, clip_id) -> bool:  # without reading the clip (Mapping's default would)
        return clip_id in self._known

    def __iter__(self):
        return iter(self.clip_ids)

    def __len__(self) -> int:
        return len(self.clip_ids)


def load_speaker_clips(processed: str | Path, accepted: pd.DataFrame) -> dict[str, ClipsOnDisk]:
    """{speaker: {clip_id: clip}} for the accepted clips, each speaker's read lazily (ClipsOnDisk)."""
    return {speaker: ClipsOnDisk(processed, group.clip_id) for speaker, group in accepted.groupby("speaker", sort=False)}


def rank_candidates(processed: str | Path, accepted: pd.DataFrame, top_k: int | None = None,
                    clips: dict | None = None) -> pd.DataFrame:
    """Scored frames of every speaker, best first within each speaker; with `top_k`, that many distinct
    moments per speaker (see _spread_out)."""
    clips = clips or load_speaker_clips(processed, accepted)
    tables = []
    for speaker, speaker_clips in clips.items():
        ranked = score_frames(frame_measures(speaker_clips))
        ranked.insert(0, "speaker", speaker)
        tables.append(_spread_out(ranked, top_k) if top_k else ranked)
    return pd.concat(tables, ignore_index=True)


def _spread_out(ranked: pd.DataFrame, top_k: int, min_gap_frames: int = 15) -> pd.DataFrame:
    """The best `top_k` rows, skipping frames within `min_gap_frames` of a better one in the same clip,
    so the candidates shown are different moments rather than neighbours of one frame."""
    kept: list[int] = []
    for index, row in enumerate(ranked.itertuples()):
        if all(ranked.clip_id.iat[k] != row.clip_id or abs(ranked.frame.iat[k] - row.frame) >= min_gap_frames for k in kept):
            kept.append(index)
            if len(kept) == top_k:
                break
    return ranked.iloc[kept]


def resolve(processed: str | Path, accepted: pd.DataFrame, choice: str, run_dir: str | Path,
            clips: dict | None = None) -> pd.DataFrame:
    """Decide every speaker's neutral from `choice` (see module doc) and write the run's neutral files
    (rundir.neutral_file), and which choice made them (rundir.neutral_choice).

    Speakers that `choice` does not name fall back to auto. Returns one row per speaker saying what was used.
    """
    clips = clips or load_speaker_clips(processed, accepted)
    fixed: dict[str, tuple] = {}
    choice = str(choice).strip()
    if choice.endswith(".npz"):
        saved = load_neutral(choice)
        fixed[str(saved["speaker"])] = (saved["mesh"], str(saved["clip_id"]), int(saved["frame"]), "file", float("nan"))
    elif ":" in choice:
        clip_id, frame_text = choice.rsplit(":", 1)
        owner = [speaker for speaker, speaker_clips in clips.items() if clip_id in speaker_clips]
        if not owner:
            raise ValueError(f"neutral '{choice}': clip '{clip_id}' is not among the accepted clips; "
                             "pick a clip_id from qa.csv with status pass")
        frame_mesh = clips[owner[0]][clip_id]["mesh"][int(frame_text)]
        if not np.isfinite(frame_mesh).all():
            raise ValueError(f"neutral '{choice}': frame {frame_text} of {clip_id} has no face; pick another frame")
        fixed[owner[0]] = (frame_mesh, clip_id, int(frame_text), "manual", float("nan"))
    elif choice not in ("auto", "mean-closed"):
        raise ValueError(f"neutral '{choice}' not understood; use auto, mean-closed, '<clip_id>:<frame>' or a .npz path")

    rows = []
    for speaker, speaker_clips in clips.items():
        existing = rundir.neutral_file(run_dir, speaker)
        saved = load_neutral(existing) if speaker not in fixed and choice == "auto" and existing.exists() else None
        if saved is not None and saved["chosen_by"] == "manual":  # a picker choice outlives re-running the notebook
            rows.append(dict(speaker=speaker, clip_id=saved["clip_id"], frame=saved["frame"], chosen_by="manual (kept)",
                             score=float("nan"), path=str(existing)))
            continue
        if speaker in fixed:
            neutral_mesh, clip_id, frame, chosen_by, score = fixed[speaker]
        else:
            ranked = score_frames(frame_measures(speaker_clips))
            if choice == "mean-closed":
                best = ranked.head(max(1, len(ranked) // 20))  # the best-scored 5% of frames
                neutral_mesh = np.mean([speaker_clips[r.clip_id]["mesh"][r.frame] for r in best.itertuples()], axis=0)
                clip_id, frame, chosen_by, score = "", -1, "mean-closed", float(best.score.mean())
            else:
                top = ranked.iloc[0]
                clip_id, frame, chosen_by, score = top.clip_id, int(top.frame), "auto", float(top.score)
                neutral_mesh = speaker_clips[clip_id]["mesh"][frame]
        path = save_neutral(rundir.neutral_file(run_dir, speaker), neutral_mesh, speaker, clip_id, frame, chosen_by, score)
        rows.append(dict(speaker=speaker, clip_id=clip_id, frame=frame, chosen_by=chosen_by, score=score, path=str(path)))
    table = pd.DataFrame(rows)
    files.write_json(rundir.neutral_choice(run_dir), {"neutral": choice, "speakers": rows})
    return table
