"""Runs side by side (a2m compare, notebook 06): one table of held-out metrics with only the settings that differ
between the runs and the best value of each metric marked, the runs' training and validation curves, and the same
held-out clip's lip trace from every run over the truth.

    comparison = compare.Comparison(["runs/sweep/lip_weight=1", "runs/sweep/lip_weight=2"])
    comparison.table                      # one row per run: differing settings, then metrics
    comparison.best                       # metric -> the run that does best on it
    comparison.write_csv("runs/sweep/compare.csv")
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import files, regions, rundir
from .config import flatten, run_config

# The held-out metrics compared, and what "best" means for each: lower, higher, or nearest a target value.
METRICS = {"lve": "lower", "lve_x_mean_offset": "lower", "mouth_corr": "higher", "motion_ratio": 1.0,
           "closure_error": 0.0, "peak_opening_ratio": 1.0, "lip_lag_frames": 0.0}
IGNORED_SETTINGS = ("data.raw", "data.processed", "name", "train.device", "evaluate.device", "train.num_threads",
                    "train.num_workers")


@dataclass
class RunSummary:
    name: str
    run_dir: Path
    settings: dict       # the flattened config
    metrics: dict        # metrics.json
    history: pd.DataFrame


def load_run(run_dir, name: str) -> RunSummary:
    run_dir = Path(run_dir)
    for needed in (rundir.metrics(run_dir), rundir.train_log(run_dir)):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} does not exist: train and evaluate {run_dir} first (a2m run --from 04)")
    settings = flatten(run_config(run_dir).to_dict())
    metrics = json.loads(rundir.metrics(run_dir).read_text())
    return RunSummary(name, run_dir, settings, metrics, pd.read_csv(rundir.train_log(run_dir)))


def _names(run_dirs: list[Path]) -> list[str]:
    """Each run's path below the runs' common folder (its folder name when they share one)."""
    if len(run_dirs) == 1:
        return [run_dirs[0].name]
    common = Path(os.path.commonpath([str(p.resolve()) for p in run_dirs]))
    return [str(p.resolve().relative_to(common)) or p.name for p in run_dirs]


class Comparison:
    """Several runs' settings, held-out metrics and curves (see the module docstring)."""

    def __init__(self, run_dirs: list):
        if not run_dirs:
            raise ValueError("give the runs to compare: a2m compare RUN RUN ...")
        paths = [files.project_path(p) for p in run_dirs]
        self.runs = [load_run(path, name) for path, name in zip(paths, _names(paths))]
        every = set().union(*(run.settings for run in self.runs))
        self.differing = sorted(key for key in every if key not in IGNORED_SETTINGS
                                and len({json.dumps(run.settings.get(key), sort_keys=True) for run in self.runs}) > 1)
        self.table = pd.DataFrame([{**{key: run.settings.get(key) for key in self.differing}, **self._metrics(run)}
                                   for run in self.runs], index=[run.name for run in self.runs])
        self.table.index.name = "run"
        self.best = {metric: self._best(metric) for metric in METRICS if metric in self.table}

    @staticmethod
    def _metrics(run: RunSummary) -> dict:
        model, baselines = run.metrics["model"], run.metrics["baselines"]
        row = {key: model.get(key) for key in METRICS if key in model}
        row["lve_x_mean_offset"] = model["lve"] / baselines["mean_offset"]["lve"]
        row["split"] = f"{run.metrics['split']} ({run.metrics['n_clips']} clips)"
        return {key: row[key] for key in [*METRICS, "split"] if key in row}

    def _best(self, metric: str) -> str:
        values = self.table[metric].astype(float)
        goal = METRICS[metric]
        if goal == "lower":
            return str(values.idxmin())
        if goal == "higher":
            return str(values.idxmax())
        return str((values - goal).abs().idxmin())

    def marked(self) -> pd.DataFrame:
        """The table as text, the best value of each metric marked with '*' (the command line's view)."""
        shown = self.table.copy().astype(object)
        for metric, run in self.best.items():
            for name in shown.index:
                value = self.table.loc[name, metric]
                shown.loc[name, metric] = f"{value:.3f}{'*' if name == run else ''}"
        return shown

    def styled(self):
        """The table for a notebook: the best value of each metric in bold."""
        def bold(column):
            return ["font-weight: bold" if column.name in self.best and name == self.best[column.name] else ""
                    for name in column.index]

        return self.table.style.apply(bold).format({metric: "{:.3f}" for metric in self.best})

    def write_csv(self, path) -> Path:
        """The table, with a column `best_for` naming the metrics each run does best on."""
        table = self.table.copy()
        table["best_for"] = [" ".join(metric for metric, run in self.best.items() if run == name) for name in table.index]
        with files.atomic_path(Path(path)) as tmp:
            table.to_csv(tmp)
        return Path(path)

    def curves(self) -> dict[str, pd.DataFrame]:
        return {run.name: run.history for run in self.runs}

    def shared_clip(self) -> str | None:
        """A held-out clip every run predicted: the first run's median clip by LVE among them (None: no common clip)."""
        predicted = [{p.stem for p in rundir.predictions(run.run_dir).glob("*.npz") if not files.is_part(p)}
                     for run in self.runs]
        common = set.intersection(*predicted) if predicted else set()
        if not common:
            return None
        first = pd.DataFrame(self.runs[0].metrics["per_clip"])
        first = first[first.clip_id.isin(common)].sort_values("model_lve")
        return str(first.clip_id.iloc[len(first) // 2])

    def lip_traces(self, clip_id: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(seconds, the truth's inner-lip gap, {run: the model's gap}) for one held-out clip."""
        traces, truth, seconds = {}, None, None
        for run in self.runs:
            with np.load(rundir.predictions(run.run_dir) / f"{clip_id}.npz") as clip:
                seconds = clip["frames"] / float(clip["fps"])
                truth = regions.mouth_opening(clip["truth"])
                traces[run.name] = regions.mouth_opening(clip["model"])
        return seconds, truth, traces


def evaluated_runs(folder) -> list[Path]:
    """Every run under `folder` (any depth) that has been evaluated: notebook 06 opened by hand compares these."""
    return sorted(path.parent for path in Path(folder).rglob(rundir.metrics(".").name)
                  if rundir.train_log(path.parent).exists())
