"""Stage 03: one neutral-expression mesh per speaker; training targets are `mesh - neutral`.

    ranking = neutral.Ranking(processed, accepted)                 # every frame scored, per speaker, once
    ranking.top(12)                                                # the best distinct moments per speaker
    chosen = neutral.choose(run_dir, ranking, cfg.neutral.neutral)  # writes the run's neutral files and their record

The choice (config key neutral.neutral, parsed once as config.NeutralChoice) is one of
    auto                          the best-ranked frame per speaker
    "<clip_id>:<frame>"           that frame, for the clip's speaker (the picker makes these)
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

from . import regions, rundir, store
from .config import NeutralChoice
from .rundir import load_neutral, save_neutral

SCORE_WEIGHTS = {"mouth": 1.0, "energy": 1.0, "eyes": 0.5, "pose": 0.5, "motion": 0.5, "blendshapes": 1.0}
CLOSED_QUANTILE = 0.2  # a speaker's closed frames: the lowest 20% of its inner-lip gap (as metrics.closure_frames)


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
    noise into large scores. A frame whose mouth is open beyond the speaker's closed frames (its lowest
    CLOSED_QUANTILE of the inner-lip gap) ranks after every closed one, whatever its other scores: a neutral
    with the mouth a little open offsets the closures of every prediction (UniTalker's issue 36).
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
    scored["score"] += sum(SCORE_WEIGHTS.values()) * (rank["mouth_opening"] > CLOSED_QUANTILE)
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


class Ranking:
    """Every frame of a run's accepted clips scored for neutrality (score_frames), per speaker, computed once: notebook 03's
    table, the picker and `choose` all read this one ranking. `clips`: each speaker's clips, read lazily."""

    def __init__(self, processed: str | Path, accepted: pd.DataFrame):
        self.processed = processed
        self.clips = load_speaker_clips(processed, accepted)
        self.scored = {speaker: score_frames(frame_measures(clips)) for speaker, clips in self.clips.items()}
        # the speaker's closed mouth: the mean inner-lip gap of its most closed 20% of frames (metrics.closure_frames)
        self.closed_level = {speaker: float(table.mouth_opening[table.mouth_opening <= table.mouth_opening.quantile(
                             CLOSED_QUANTILE)].mean()) for speaker, table in self.scored.items()}

    def closure_error(self, speaker: str, mesh: np.ndarray) -> float:
        """How far a neutral's mouth is open beyond the speaker's closed level (mesh units; 0: closed): a neutral with
        the mouth a little open offsets every prediction's closures (UniTalker's issue 36)."""
        return float(regions.mouth_opening(mesh) - self.closed_level[speaker])

    @property
    def speakers(self) -> list[str]:
        return sorted(self.clips)

    def top(self, top_k: int) -> pd.DataFrame:
        """The `top_k` best distinct moments per speaker (see _spread_out), best first within each speaker."""
        return pd.concat([_spread_out(table, top_k).assign(speaker=speaker) for speaker, table in self.scored.items()],
                         ignore_index=True)[["speaker", *self.scored[next(iter(self.scored))].columns]]

    def owner(self, clip_id: str) -> str | None:
        """The speaker an accepted clip belongs to (None: not an accepted clip of this run)."""
        return next((speaker for speaker, clips in self.clips.items() if clip_id in clips), None)

    def frame(self, clip_id: str, frame: int) -> np.ndarray:
        return self.clips[self.owner(clip_id)][clip_id]["mesh"][frame]


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


def choose(run_dir: str | Path, ranking: Ranking, choice: NeutralChoice | str, only_named: bool = False) -> pd.DataFrame:
    """Decide speakers' neutrals from `choice` (a NeutralChoice, or its config text) and write them: the neutral files
    (rundir.neutral_file), which choice made them (rundir.neutral_choice), and the run record's `neutral` entry.

    Speakers that `choice` does not name get `auto` (a frame picked by hand earlier is kept), unless `only_named`
    (the picker: one speaker's pick changes nothing else). Returns one row per speaker written now."""
    choice = NeutralChoice.parse(choice) if isinstance(choice, str) else choice
    fixed: dict[str, tuple] = {}
    if choice.kind == "file":
        saved = load_neutral(choice.path)
        fixed[str(saved["speaker"])] = (saved["mesh"], str(saved["clip_id"]), int(saved["frame"]), "file", float("nan"))
    elif choice.kind == "frame":
        owner = ranking.owner(choice.clip_id)
        if owner is None:
            raise ValueError(f"neutral '{choice}': clip '{choice.clip_id}' is not among the accepted clips of "
                             f"{rundir.qa_table(run_dir)}; pick a clip_id whose `use` is True there")
        frame_mesh = ranking.frame(choice.clip_id, choice.frame)
        if not np.isfinite(frame_mesh).all():
            raise ValueError(f"neutral '{choice}': frame {choice.frame} of {choice.clip_id} has no face; pick another frame")
        fixed[owner] = (frame_mesh, choice.clip_id, choice.frame, "manual", float("nan"))
    rows = []
    for speaker in (sorted(fixed) if only_named else ranking.speakers):
        existing = rundir.neutral_file(run_dir, speaker)
        saved = load_neutral(existing) if speaker not in fixed and choice.kind == "auto" and existing.exists() else None
        if saved is not None and saved["chosen_by"] == "manual":  # a picker choice outlives re-running the notebook
            rows.append(dict(speaker=speaker, clip_id=saved["clip_id"], frame=saved["frame"], chosen_by="manual (kept)",
                             score=float("nan"), closure_error=ranking.closure_error(speaker, saved["mesh"]),
                             path=str(existing)))
            continue
        if speaker in fixed:
            neutral_mesh, clip_id, frame, chosen_by, score = fixed[speaker]
        elif choice.kind == "mean-closed":
            ranked, clips = ranking.scored[speaker], ranking.clips[speaker]
            best = ranked.head(max(1, len(ranked) // 20))  # the best-scored 5% of frames
            neutral_mesh = np.mean([clips[r.clip_id]["mesh"][r.frame] for r in best.itertuples()], axis=0)
            clip_id, frame, chosen_by, score = "", -1, "mean-closed", float(best.score.mean())
        else:
            top = ranking.scored[speaker].iloc[0]
            clip_id, frame, chosen_by, score = top.clip_id, int(top.frame), "auto", float(top.score)
            neutral_mesh = ranking.clips[speaker][clip_id]["mesh"][frame]
        path = save_neutral(rundir.neutral_file(run_dir, speaker), neutral_mesh, speaker, clip_id, frame, chosen_by, score)
        rows.append(dict(speaker=speaker, clip_id=clip_id, frame=frame, chosen_by=chosen_by, score=score,
                         closure_error=ranking.closure_error(speaker, neutral_mesh), path=str(path)))
    rundir.record_neutral_choice(run_dir, str(choice), rows, replace=not only_named)
    return pd.DataFrame(rows)
