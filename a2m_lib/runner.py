"""Run the five notebooks in order with papermill and keep a record of the run.

    a2m run --config configs/demo.yaml --run-dir runs/demo -p train.lr=1e-4 [--from 04 | --only 05]

Each executed notebook is written to runs/<id>/notebooks/, the resolved config to runs/<id>/config.yaml
(`a2m run --config runs/<id>/config.yaml` repeats the run). runs/<id>/run.json is rewritten after every
notebook, so a crash leaves an accurate record: the resolved config, seed, git commit, package
versions, start/end times, each notebook's status and duration, the SHA-256 of the store's manifest
and of the run's own QA table (runs/<id>/qa.csv, the accepted clips training read), and the neutral
used for each speaker.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import papermill
from papermill.exceptions import PapermillExecutionError

from . import files, rundir
from .config import load_config, parse_overrides, write_run_config

REPO_ROOT = files.PROJECT_ROOT
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
RECORDED_PACKAGES = ["a2m", "torch", "transformers", "mediapipe", "numpy", "librosa", "papermill", "opencv-contrib-python",
                     "scikit-image", "pandas", "matplotlib", "ipywidgets"]


class RunError(RuntimeError):
    """A notebook failed; the message names it, the failing cell's error, and where the executed copy is."""


def takes_a_run(notebook: Path) -> bool:
    """A notebook of one run's sequence: its parameters cell names `run_dir` (06 compares several runs instead)."""
    cells = json.loads(notebook.read_text())["cells"]
    return any("parameters" in cell.get("metadata", {}).get("tags", []) and "run_dir =" in "".join(cell["source"])
               for cell in cells)


def notebooks() -> list[Path]:
    """The run's notebooks, in data-flow order (01-05)."""
    found = [path for path in sorted(NOTEBOOK_DIR.glob("0[1-9]_*.ipynb")) if takes_a_run(path)]
    if not found:
        raise FileNotFoundError(f"no notebooks in {NOTEBOOK_DIR}; is this a full checkout of the a2m repo?")
    return found


def execute(notebook: Path, output: Path, parameters: dict, progress: bool = False) -> None:
    """papermill, with this environment's Python as the kernel (also when the venv is not activated)."""
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                               progress_bar=progress, cwd=os.getcwd())


def compare(run_dirs: list, out: str | Path) -> Path:
    """Notebook 06 on these runs, executed into OUT/06_compare.ipynb (the table's CSV beside it)."""
    out = files.project_path(out)
    output = out / "06_compare.ipynb"
    try:
        execute(NOTEBOOK_DIR / "06_compare.ipynb", output, dict(runs=[str(files.project_path(r)) for r in run_dirs],
                                                                 out=str(out)))
    except PapermillExecutionError as error:
        raise RunError(f"notebook 06_compare.ipynb failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                       f"The executed notebook, with the traceback, is {output}") from None
    return output


def select(stage_from: str | None = None, only: str | None = None) -> list[Path]:
    """All notebooks, those from stage `stage_from` on (e.g. "04"), or only stage `only` (e.g. "05")."""
    every = notebooks()
    prefixes = [path.name[:2] for path in every]
    for given in (stage_from, only):
        if given is not None and given.zfill(2)[:2] not in prefixes:
            raise ValueError(f"no notebook numbered {given}; choose one of {', '.join(prefixes)}")
    if only is not None:
        return [path for path in every if path.name.startswith(only.zfill(2))]
    if stage_from is not None:
        return [path for path in every if path.name[:2] >= stage_from.zfill(2)]
    return every


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def data_hashes(processed: str | Path, run_dir: Path) -> dict:
    """What the run read: the store's manifest and the run's own QA decisions (None until written)."""
    return dict(data_manifest_sha256=files.sha256(Path(processed) / "manifest.csv"),
                qa_table_sha256=files.sha256(rundir.qa_table(run_dir)))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(config_path: str | Path, run_dir: str | Path | None = None, overrides=None,
        stage_from: str | None = None, only: str | None = None, progress: bool = True) -> dict:
    """Execute the selected notebooks in order; return the run record (also in run_dir/run.json)."""
    overrides = parse_overrides(overrides)
    cfg = load_config(config_path, overrides)  # fail here, before any notebook, on a bad key or value
    run_dir = Path(run_dir) if run_dir else files.project_path(Path("runs") / cfg.name)
    rundir.notebooks(run_dir).mkdir(parents=True, exist_ok=True)
    record_path = rundir.record(run_dir)
    record = json.loads(record_path.read_text()) if record_path.exists() and (stage_from or only) else {}
    record.update(
        config_path=str(config_path), overrides=overrides, config=cfg.to_dict(), seed=cfg.seed,
        git_commit=git_commit(), packages=package_versions(), platform=platform.platform(),
        command=" ".join(sys.argv), started=_now(), ended=None, status="running",
        **data_hashes(cfg.data.processed, run_dir),
    )
    record.setdefault("notebooks", {})
    files.write_json(record_path, record)
    # The hand-off: every notebook reads the resolved config from the run (config.run_config); and
    # `a2m run --config runs/<id>/config.yaml` repeats this run.
    write_run_config(cfg, run_dir)
    parameters = dict(run_dir=str(run_dir.resolve()))
    for notebook in select(stage_from, only):
        output = rundir.notebooks(run_dir) / notebook.name
        entry = dict(status="running", started=_now(), seconds=None, output=str(output))
        record["notebooks"][notebook.stem] = entry
        files.write_json(record_path, record)
        started = time.time()
        print(f"[a2m] {notebook.name} -> {output}", flush=True)
        try:
            execute(notebook, output, parameters, progress)
        except PapermillExecutionError as error:
            entry.update(status="failed", seconds=round(time.time() - started, 2),
                         error=f"cell {error.exec_count}: {error.ename}: {error.evalue}")
            record.update(status="failed", ended=_now(), **data_hashes(cfg.data.processed, run_dir))
            files.write_json(record_path, record)
            raise RunError(f"notebook {notebook.name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                           f"The executed notebook, with the traceback, is {output}") from None
        entry.update(status="ok", seconds=round(time.time() - started, 2))
        record.update(data_hashes(cfg.data.processed, run_dir))
        choice = rundir.neutral_choice(run_dir)
        if choice.exists():  # which neutral each speaker got, and who chose it
            record["neutral"] = json.loads(choice.read_text())
        summary = rundir.train_summary(run_dir)
        if summary.exists():  # best epoch, encoder, and the collapse warning if any
            record["training"] = json.loads(summary.read_text())
        files.write_json(record_path, record)
    record.update(status="ok", ended=_now())
    files.write_json(record_path, record)
    return record
