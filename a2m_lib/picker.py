"""The neutral picker for JupyterLab (notebook 03): ipywidgets over a2m_lib.neutral.

    picker = NeutralPicker(ranking, "runs/x", top_k=8)   # ranking: neutral.Ranking, the one notebook 03 shows
    picker              # displays itself in a notebook

Top candidates per speaker with their frame and mesh (front and side), a scrubber over any clip (it starts
on the first candidate's frame), and "use this frame" buttons that choose it at once through neutral.choose: the neutral
file, choice.json and the run record say `manual`, and `auto` keeps it when the notebook re-runs.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from . import media, regions, rundir
from .config import NeutralChoice
from .neutral import Ranking, choose
from .rundir import load_neutral


def preview_image(clip: dict, frame: int, size: int = 160) -> np.ndarray:
    """RGB preview of one frame: the video frame with its landmarks, the pose-free mesh front and side."""
    meta = clip["meta"]
    image = media.read_frame(meta["source"], float(meta["start"]) + frame / float(meta["fps"]))
    panel = np.full((size, size, 3), 255, np.uint8)
    if image is not None and clip["face_found"][frame]:
        points = clip["landmarks_image"][frame, :, :2]
        (x0, y0), (x1, y1) = points.min(0), points.max(0)
        pad = 0.15 * max(x1 - x0, y1 - y0)
        x0, y0 = int(max(x0 - pad, 0)), int(max(y0 - pad, 0))
        crop = np.ascontiguousarray(image[y0: int(y1 + pad), x0: int(x1 + pad)])
        for x, y in points[regions.LIPS] - (x0, y0):
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
                colour = (220, 40, 40) if index in set(regions.LIPS) else (60, 60, 60)
                cv2.circle(view, (int(x), int(y)), 1, colour, -1)
        views.append(view)
    return np.concatenate([panel] + views, axis=1)


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


class NeutralPicker:
    """ipywidgets picker: see the module docstring."""

    def __init__(self, ranking: Ranking, run_dir, top_k: int = 8):
        import ipywidgets as widgets

        self.run_dir, self.source = Path(run_dir), ranking
        self.clips = ranking.clips
        self.ranking = ranking.top(top_k)
        speakers = sorted(self.clips)
        self.speaker = widgets.Dropdown(options=speakers, description="speaker")
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns="repeat(2, 490px)"))
        # Type to find a clip (a list the browser filters as you type): a drop-down of 1,000 clips is not usable.
        self.clip = widgets.Combobox(description="clip", placeholder="type a clip id", ensure_option=True)
        self.slider = widgets.IntSlider(description="frame", min=0, max=0, continuous_update=False)
        self.scrub_image = widgets.Image(format="png")
        self.scrub_button = widgets.Button(description="use this frame", button_style="primary")
        self.status = widgets.HTML()
        self.buttons: list = []
        self._scrub_start = ("", 0)  # (clip_id, frame) the scrubber shows first
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
        first = candidates.iloc[0] if len(candidates) else None
        options = sorted(self.clips[speaker])
        # the scrubber starts on the best candidate: its clip, at its frame
        self._scrub_start = (first.clip_id, int(first.frame)) if first is not None else (options[0], 0)
        self.clip.options = options
        self.clip.value = self._scrub_start[0]
        self._show_clip()
        self._show_status()

    def _show_clip(self) -> None:
        if self.clip.value not in self.clips[self.speaker.value]:  # half-typed, or another speaker's
            return
        self.slider.max = len(self.clips[self.speaker.value][self.clip.value]["mesh"]) - 1
        frame = self._scrub_start[1] if self.clip.value == self._scrub_start[0] else 0
        if self.slider.value == frame:
            self._show_scrub()  # the slider does not move, so it does not redraw by itself
        self.slider.value = frame

    def _show_scrub(self) -> None:
        clip = self.clips[self.speaker.value][self.clip.value]
        self.scrub_image.value = _png(preview_image(clip, min(self.slider.value, len(clip["mesh"]) - 1)))

    def _show_status(self) -> None:
        path = rundir.neutral_file(self.run_dir, self.speaker.value)
        if path.exists():
            saved = load_neutral(path)
            self.status.value = (f"current neutral for <b>{saved['speaker']}</b>: {saved['clip_id']}:{saved['frame']} "
                                 f"(chosen by {saved['chosen_by']}) — {path}")
        else:
            self.status.value = f"no neutral saved yet for <b>{self.speaker.value}</b>"

    def choose(self, speaker: str, clip_id: str, frame: int) -> Path:
        """Save this frame as the speaker's neutral now (what the buttons call)."""
        if clip_id not in self.clips[speaker]:
            self.status.value = f"<span style='color:red'>'{clip_id}' is not a clip of {speaker}; pick one from the list</span>"
            raise ValueError(f"'{clip_id}' is not an accepted clip of speaker {speaker}")
        if not np.isfinite(self.clips[speaker][clip_id]["mesh"][frame]).all():
            self.status.value = f"<span style='color:red'>{clip_id}:{frame} has no face; pick another frame</span>"
            raise ValueError(f"{clip_id}:{frame} has no face")
        choose(self.run_dir, self.source, NeutralChoice.picked(clip_id, frame), only_named=True)
        self._show_status()
        return rundir.neutral_file(self.run_dir, speaker)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
