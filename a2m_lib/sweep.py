"""Sweeps: the grid of runs that `-g key=v1,v2` settings make, each branched from one base run's QA decisions and
neutrals (rundir.branch) and sharing its clip store and feature cache, each with its own config.yaml and record.

    a2m sweep --config configs/real.yaml --base runs/real -g train.lip_weight=1,2,4 \\
              -g model.encoder_options.conv_hidden=64,128 [-p key=value ...] [--out DIR] [--slurm]

Here the runs train and evaluate one after another (notebooks 04-05, as `a2m run --from 04`); with --slurm they are
one job array, one run per task (a2m_lib.cluster). A second call runs only the runs that are missing or unfinished,
here or on the cluster; a run whose saved config differs from what the sweep now asks stops the sweep, named.
`a2m compare DIR/*` (or notebook 06) shows the runs side by side.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from . import files, rundir
from .config import ConfigError, load_config, parse_overrides, run_config, write_run_config


@dataclass
class SweepRun:
    name: str            # the folder's name: the settings that vary, short keys
    run_dir: Path
    settings: dict       # dotted key -> value (the -g values of this run)


def parse_grid(items: list[str]) -> dict[str, list]:
    """["train.lip_weight=1,2,4"] -> {"train.lip_weight": [1.0, 2.0, 4.0]}: each value parsed as an override is."""
    grid = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[1]:
            raise ConfigError(f"-g '{item}' must look like key=value1,value2, e.g. -g train.lip_weight=1,2,4")
        key, values = item.split("=", 1)
        grid[key.strip()] = [parse_overrides([f"{key.strip()}={value}"])[key.strip()] for value in values.split(",")]
    return grid


def _short(keys: list[str]) -> dict[str, str]:
    """Each key's last part, or the whole key where two would share it."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def plan(config_path, base, grid: dict[str, list], fixed=None, out=None) -> list[SweepRun]:
    """Every combination of the grid's values, as runs under `out` (default runs/<base>-sweep), checked: each
    combination's config loads (a bad key or value stops the sweep before any run starts)."""
    base = files.project_path(base)
    out = files.project_path(out) if out else base.parent / f"{base.name}-sweep"
    short = _short(list(grid))
    runs = []
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values))
        name = ",".join(f"{short[key]}={value:g}" if isinstance(value, float) else f"{short[key]}={value}"
                        for key, value in settings.items())
        runs.append(SweepRun(name.replace("/", "_"), out / name.replace("/", "_"), settings))
        load_config(config_path, {**shared_store(base), **parse_overrides(fixed), **settings})
    return runs


def shared_store(base: Path) -> dict:
    """The base run's clip store (its QA decisions name that store's clips): every run of the sweep reads it, and
    shares its feature cache."""
    if not rundir.config(base).exists():
        return {}
    cfg = run_config(base)
    return {"data.raw": cfg.data.raw, "data.processed": cfg.data.processed}


def prepare(run: SweepRun, config_path, base: Path, fixed=None) -> None:
    """Branch the run from the base (QA decisions, neutrals) and write its config.yaml; a run already there must
    have the same config."""
    cfg = load_config(config_path, {**shared_store(base), **parse_overrides(fixed), **run.settings})
    if rundir.config(run.run_dir).exists():
        if run_config(run.run_dir) != cfg:
            raise ConfigError(f"{run.run_dir} holds a run with another config than this sweep asks for; remove it, or "
                              f"give the sweep another --out")
        return
    rundir.branch(base, run.run_dir)
    write_run_config(cfg, run.run_dir)


def finished(run_dir: Path) -> bool:
    """Trained and evaluated: notebooks 04 and 05 ok in run.json, and metrics.json written."""
    path = rundir.record(run_dir)
    if not path.exists() or not rundir.metrics(run_dir).exists():
        return False
    notebooks = json.loads(path.read_text()).get("notebooks", {})
    return all(notebooks.get(name, {}).get("status") == "ok" for name in ("04_train", "05_evaluate"))


def run(config_path, base, grid: dict[str, list], fixed=None, out=None, slurm: bool = False,
        sbatch_options: str = "", progress: bool = True) -> dict:
    """Plan, prepare and run (or submit) the runs that are not finished; returns what was done."""
    from . import runner

    base = files.project_path(base)
    for needed in (rundir.qa_table(base), rundir.neutral_dir(base)):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} does not exist: a sweep branches from a base run that has run notebooks "
                                    f"02 and 03 (a2m run --config CONFIG --run-dir {base} --only 02, then --only 03)")
    runs = plan(config_path, base, grid, fixed, out)
    for sweep_run in runs:
        prepare(sweep_run, config_path, base, fixed)
    todo = [r for r in runs if not finished(r.run_dir)]
    summary = dict(out=str(runs[0].run_dir.parent), runs=[r.name for r in runs], to_run=[r.name for r in todo])
    if not todo:
        return summary
    if slurm:
        from . import cluster

        step = cluster.Step("sweep", [f'$A2M run --config "{rundir.config("$ITEM")}" --run-dir "$ITEM" --from 04'],
                            array=[str(r.run_dir) for r in todo])
        summary["job"] = cluster.submit(step, runs[0].run_dir.parent, options=sbatch_options)
        return summary
    for sweep_run in todo:
        print(f"[a2m sweep] {sweep_run.name}", flush=True)
        runner.run(rundir.config(sweep_run.run_dir), sweep_run.run_dir, stage_from="04", progress=progress)
    return summary
