"""Stage 03: one neutral-expression mesh per speaker; training targets are `mesh - neutral`.

    ranking = neutral.rank_candidates(processed, accepted)        # scored frames, best first
    chosen = neutral.resolve(processed, accepted, "auto", out_dir)  # writes out_dir/<speaker>.npz

`neutral` (config key neutral.neutral, papermill parameter `neutral`) is one of
    auto                          the best-ranked frame per speaker
    "<clip_id>:<frame>"           that frame, for the clip's speaker
    path/to/neutral.npz           a saved neutral (any speaker's file; its speaker key says whose)
    mean-closed                   the mean of the speaker's closed-mouth, low-energy frames (reference option)

With `auto`, a speaker whose saved neutral was picked by hand (the picker, `chosen_by = manual`) keeps it.
Each neutral file holds: mesh (478, 3), speaker, clip_id, frame, chosen_by (auto | manual | file | mean-closed), score.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from . import extract, mesh

SCORE_WEIGHTS = {"mouth": 1.0, "energy": 1.0, "eyes": 0.5, "pose": 0.5, "motion": 0.5, "blendshapes": 1.0}


def frame_features(clips: dict[str, dict]) -> pd.DataFrame:
    """Per-frame neutrality features of one speaker's clips (NaN frames dropped)."""
    rows = []
    all_meshes = np.concatenate([clip["mesh"] for clip in clips.values()])
    # Expression energy is measured from the median *resting* shape: the median over the quarter of
    # frames with the most closed mouth. The median over all frames would be half-way into speech.
    openings = mesh.mouth_opening(all_meshes)
    resting = all_meshes[openings <= np.nanquantile(openings, 0.25)]
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
            "mouth_opening": mesh.mouth_opening(meshes),
            "expression_energy": np.linalg.norm(meshes[:, :mesh.N_LANDMARKS] - median_shape[:mesh.N_LANDMARKS], axis=-1).mean(-1),
            "eye_opening": mesh.eye_opening(meshes),
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


def load_speaker_clips(processed: str | Path, accepted: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """{speaker: {clip_id: clip}} for the accepted clips."""
    by_speaker: dict[str, dict[str, dict]] = {}
    for row in accepted.itertuples():
        by_speaker.setdefault(row.speaker, {})[row.clip_id] = extract.load_clip(processed, row.clip_id)
    return by_speaker


def rank_candidates(processed: str | Path, accepted: pd.DataFrame, top_k: int | None = None,
                    clips: dict | None = None) -> pd.DataFrame:
    """Scored frames of every speaker, best first within each speaker; with `top_k`, that many distinct
    moments per speaker (see _spread_out)."""
    clips = clips or load_speaker_clips(processed, accepted)
    tables = []
    for speaker, speaker_clips in clips.items():
        ranked = score_frames(frame_features(speaker_clips))
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


def save_neutral(path: str | Path, neutral_mesh: np.ndarray, speaker: str, clip_id: str, frame: int,
                 chosen_by: str, score: float = float("nan")) -> Path:
    """Write one speaker's neutral atomically; it carries where it came from and who chose it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.npz")
    np.savez(tmp, mesh=neutral_mesh.astype(np.float32), speaker=speaker, clip_id=clip_id, frame=int(frame),
             chosen_by=chosen_by, score=float(score))
    tmp.replace(path)
    return path


def load_neutral(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"neutral file {path} does not exist; run neutral selection (notebook 03) first")
    with np.load(path) as data:
        return {key: (data[key].item() if data[key].ndim == 0 else data[key]) for key in data.files}


def load_neutrals(neutral_dir: str | Path) -> dict[str, np.ndarray]:
    """{speaker: (478, 3) neutral mesh} from a run's neutral/ folder."""
    neutral_dir = Path(neutral_dir)
    found = {p.stem: load_neutral(p)["mesh"] for p in sorted(neutral_dir.glob("*.npz")) if ".part" not in p.suffixes}
    if not found:
        raise FileNotFoundError(f"no neutral files in {neutral_dir}; run neutral selection (notebook 03) first")
    return found


def resolve(processed: str | Path, accepted: pd.DataFrame, choice: str, out_dir: str | Path,
            clips: dict | None = None) -> pd.DataFrame:
    """Decide every speaker's neutral from `choice` (see module doc) and write out_dir/<speaker>.npz.

    Speakers that `choice` does not name fall back to auto. Returns one row per speaker saying what was used.
    """
    out_dir = Path(out_dir)
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
        existing = out_dir / f"{speaker}.npz"
        saved = load_neutral(existing) if speaker not in fixed and choice == "auto" and existing.exists() else None
        if saved is not None and saved["chosen_by"] == "manual":  # a picker choice outlives re-running the notebook
            rows.append(dict(speaker=speaker, clip_id=saved["clip_id"], frame=saved["frame"], chosen_by="manual (kept)",
                             score=float("nan"), path=str(existing)))
            continue
        if speaker in fixed:
            neutral_mesh, clip_id, frame, chosen_by, score = fixed[speaker]
        else:
            ranked = score_frames(frame_features(speaker_clips))
            if choice == "mean-closed":
                best = ranked.head(max(1, len(ranked) // 20))  # the best-scored 5% of frames
                neutral_mesh = np.mean([speaker_clips[r.clip_id]["mesh"][r.frame] for r in best.itertuples()], axis=0)
                clip_id, frame, chosen_by, score = "", -1, "mean-closed", float(best.score.mean())
            else:
                top = ranked.iloc[0]
                clip_id, frame, chosen_by, score = top.clip_id, int(top.frame), "auto", float(top.score)
                neutral_mesh = speaker_clips[clip_id]["mesh"][frame]
        path = save_neutral(out_dir / f"{speaker}.npz", neutral_mesh, speaker, clip_id, frame, chosen_by, score)
        rows.append(dict(speaker=speaker, clip_id=clip_id, frame=frame, chosen_by=chosen_by, score=score, path=str(path)))
    table = pd.DataFrame(rows)
    (out_dir / "choice.json").write_text(json.dumps({"neutral": choice, "speakers": rows}, indent=2))
    return table


def plot_neutrals(neutral_dir: str | Path):
    """Each speaker's neutral mesh from the front and the side, titled with where it came from."""
    import matplotlib.pyplot as plt

    paths = sorted(p for p in Path(neutral_dir).glob("*.npz") if ".part" not in p.suffixes)
    fig, axes = plt.subplots(len(paths), 2, figsize=(6, 3.2 * len(paths)), squeeze=False)
    for row, path in zip(axes, paths):
        saved = load_neutral(path)
        shape = saved["mesh"]
        row[0].scatter(shape[:, 0], shape[:, 1], s=0.5)
        row[0].scatter(*shape[mesh.LIP_VERTICES][:, :2].T, s=3, color="tab:red")
        row[1].scatter(shape[:, 2], shape[:, 1], s=0.5)
        row[0].set_title(f"{saved['speaker']}: {saved['clip_id']}:{saved['frame']} ({saved['chosen_by']}), front", fontsize=9)
        row[1].set_title("side", fontsize=9)
        for axis in row:
            axis.set_aspect("equal")
            axis.invert_yaxis()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- the picker

def preview_image(clip: dict, frame: int, size: int = 160) -> np.ndarray:
    """RGB preview of one frame: the video frame with its landmarks, the pose-free mesh front and side."""
    import cv2

    from . import media

    meta = clip["meta"]
    image = media.read_frame(meta["source"], float(meta["start"]) + frame / float(meta["fps"]))
    panel = np.full((size, size, 3), 255, np.uint8)
    if image is not None and clip["face_found"][frame]:
        points = clip["landmarks_image"][frame, :, :2]
        (x0, y0), (x1, y1) = points.min(0), points.max(0)
        pad = 0.15 * max(x1 - x0, y1 - y0)
        x0, y0 = int(max(x0 - pad, 0)), int(max(y0 - pad, 0))
        crop = np.ascontiguousarray(image[y0: int(y1 + pad), x0: int(x1 + pad)])
        for x, y in points[mesh.LIP_VERTICES] - (x0, y0):
            cv2.circle(crop, (int(x), int(y)), 1, (255, 40, 40), -1)
        panel = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    views = []
    shape = clip["mesh"][frame]
    for axes in ((0, 1), (2, 1)):  # front (x, y) and side (z, y)
        view = np.full((size, size, 3), 255, np.uint8)
        if np.isfinite(shape).all():
            xy = shape[:, axes]
            xy = (xy - xy.mean(0)) / (np.ptp(xy, axis=0).max() + 1e-9) * 0.9 * size + size / 2
            for index, (x, y) in enumerate(xy):
                colour = (220, 40, 40) if index in set(mesh.LIP_VERTICES) else (60, 60, 60)
                cv2.circle(view, (int(x), int(y)), 1, colour, -1)
        views.append(view)
    return np.concatenate([panel] + views, axis=1)


def _png(image: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


class NeutralPicker:
    """ipywidgets picker for JupyterLab: top candidates per speaker, a scrubber over any clip, and a
    "use this frame" button that writes out_dir/<speaker>.npz at once (chosen_by = manual).

        picker = NeutralPicker(processed, accepted, "runs/x/neutral", top_k=8)
        picker              # displays itself in a notebook
    """

    def __init__(self, processed, accepted: pd.DataFrame, out_dir, top_k: int = 8, clips: dict | None = None):
        import ipywidgets as widgets

        self.out_dir = Path(out_dir)
        self.clips = clips or load_speaker_clips(processed, accepted)
        self.ranking = rank_candidates(processed, accepted, top_k=top_k, clips=self.clips)
        speakers = sorted(self.clips)
        self.speaker = widgets.Dropdown(options=speakers, description="speaker")
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns="repeat(2, 490px)"))
        self.clip = widgets.Dropdown(description="clip")
        self.slider = widgets.IntSlider(description="frame", min=0, max=0, continuous_update=False)
        self.scrub_image = widgets.Image(format="png")
        self.scrub_button = widgets.Button(description="use this frame", button_style="primary")
        self.status = widgets.HTML()
        self.buttons: list = []
        self.speaker.observe(lambda _: self._show_speaker(), names="value")
        self.clip.observe(lambda _: self._show_clip(), names="value")
        self.slider.observe(lambda _: self._show_scrub(), names="value")
        self.scrub_button.on_click(lambda _: self.choose(self.speaker.value, self.clip.value, self.slider.value))
        self.widget = widgets.VBox([self.speaker, self.status, widgets.HTML("<b>top candidates</b>"), self.grid,
                                    widgets.HTML("<b>scrub any clip</b>"), self.clip, self.slider, self.scrub_image,
                                    self.scrub_button])
        self._show_speaker()

    def _show_speaker(self) -> None:
        import ipywidgets as widgets

        speaker = self.speaker.value
        candidates = self.ranking[self.ranking.speaker == speaker]
        cells, self.buttons = [], []
        for rank, row in enumerate(candidates.itertuples(), start=1):
            button = widgets.Button(description="use this frame")
            button.on_click(lambda _, c=row.clip_id, f=int(row.frame): self.choose(speaker, c, f))
            self.buttons.append(button)
            image = widgets.Image(value=_png(preview_image(self.clips[speaker][row.clip_id], int(row.frame))), format="png")
            cells.append(widgets.VBox([image, widgets.HTML(f"#{rank} {row.clip_id}:{row.frame} · score {row.score:.2f}"), button]))
        self.grid.children = cells
        self.clip.options = sorted(self.clips[speaker])
        self._show_clip()
        self._show_status()

    def _show_clip(self) -> None:
        if self.clip.value is None:
            return
        self.slider.max = len(self.clips[self.speaker.value][self.clip.value]["mesh"]) - 1
        self._show_scrub()

    def _show_scrub(self) -> None:
        clip = self.clips[self.speaker.value][self.clip.value]
        self.scrub_image.value = _png(preview_image(clip, min(self.slider.value, len(clip["mesh"]) - 1)))

    def _show_status(self) -> None:
        path = self.out_dir / f"{self.speaker.value}.npz"
        if path.exists():
            saved = load_neutral(path)
            self.status.value = (f"current neutral for <b>{saved['speaker']}</b>: {saved['clip_id']}:{saved['frame']} "
                                 f"(chosen by {saved['chosen_by']}) — {path}")
        else:
            self.status.value = f"no neutral saved yet for <b>{self.speaker.value}</b>"

    def choose(self, speaker: str, clip_id: str, frame: int) -> Path:
        """Save this frame as the speaker's neutral now (what the buttons call)."""
        frame_mesh = self.clips[speaker][clip_id]["mesh"][frame]
        if not np.isfinite(frame_mesh).all():
            self.status.value = f"<span style='color:red'>{clip_id}:{frame} has no face; pick another frame</span>"
            raise ValueError(f"{clip_id}:{frame} has no face")
        path = save_neutral(self.out_dir / f"{speaker}.npz", frame_mesh, speaker, clip_id, frame, "manual")
        self._show_status()
        return path

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
