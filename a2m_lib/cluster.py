"""Runs on a SLURM cluster: the whole pipeline as a chain of jobs, and a sweep's runs as one job array.

    pipeline = cluster.submit_pipeline(run_dir, extract_tasks=4, train_tasks=2)   # a2m run ... --slurm
    cluster.submit_array("sweep", run_dirs, ["$A2M run --config $RUN/config.yaml --run-dir $RUN --from 04"])

The pipeline's steps, each one job (a job array for extraction), each started by `afterok` on the one before:

    extract   a2m extract --shard i/N into STORE.shards/i, one array task per shard
    merge     a2m merge of the shards into the run's store, then notebook 01 (its record: nothing is extracted again)
    qa        notebooks 02 and 03: QA's decisions, the neutrals
    train     notebook 04 with train.processes = the train tasks: torchrun starts them on the job's node (gloo on
              CPUs, NCCL on GPUs), under srun
    evaluate  notebook 05
    report    after the others have ended, however they ended (afterany): which step failed, and its log

Logs go to the run's slurm/ folder, beside each step's script and a `<step>.ok` once it succeeded; the executed
notebooks and run.json are the run's, as with `a2m run`. A failed step cancels the steps after it
(--kill-on-invalid-dep) and the report names it. Submitting again resumes: steps already ok are not submitted again,
an interrupted training continues from its last checkpoint, extraction redoes only the sources it had not finished.

By hand with sbatch rather than with submitit: every step is an `a2m` command that writes its results into the run,
so no Python function needs pickling to the nodes and no result is fetched back; what is needed is sbatch's job
arrays and dependencies. submitit follows its jobs through sacct, which needs SLURM's accounting database; many
small clusters, and the single-node SLURM of the tests, run without one.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import files, rundir
from .config import Config, run_config, write_run_config

PIPELINE = ("extract", "merge", "qa", "train", "evaluate")


class SlurmError(RuntimeError):
    """sbatch is missing or refused a job; the message says which and why."""


@dataclass
class Step:
    """One job: shell lines run from the project root, with `$A2M` the a2m command and `$RUN` the run folder."""

    name: str
    commands: list[str]
    array: list[str] = field(default_factory=list)  # one task per item, $ITEM in the commands (a job array)
    options: list[str] = field(default_factory=list)  # sbatch options of this step (CPUs, GPUs, time)


def a2m_command() -> str:
    """The a2m of this environment (A2M overrides it, as scripts/slurm/ does)."""
    return os.environ.get("A2M") or str(Path(sys.executable).parent / "a2m")


def script(step: Step, run_dir: Path) -> str:
    """The job script: the step's commands, then its `.ok` marker (a task's own, in an array)."""
    folder = rundir.slurm(run_dir)
    items = " ".join(shlex.quote(item) for item in step.array)
    lines = ["#!/bin/bash", "set -euo pipefail", f"cd {shlex.quote(str(files.PROJECT_ROOT))}",
             f"export A2M={shlex.quote(a2m_command())} RUN={shlex.quote(str(run_dir))}"]
    if step.array:
        lines += [f"ITEMS=({items})", 'ITEM=${ITEMS[$SLURM_ARRAY_TASK_ID]}', 'echo "task $SLURM_ARRAY_TASK_ID: $ITEM"']
    lines += step.commands
    marker = folder / (f"{step.name}-$SLURM_ARRAY_TASK_ID.ok" if step.array else f"{step.name}.ok")
    lines.append(f'date -Is > "{marker}"')
    return "\n".join(lines) + "\n"


def submit(step: Step, run_dir: Path, after: list[str] = (), any_end: bool = False, options: str = "") -> str:
    """sbatch the step (its script kept in the run's slurm/ folder); returns the job id."""
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch is not on PATH: --slurm submits to a SLURM cluster; run without --slurm here")
    folder = rundir.slurm(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = files.write_text(folder / f"{step.name}.sbatch", script(step, Path(run_dir)))
    for stale in folder.glob(f"{step.name}*.ok"):  # a step submitted again must succeed again
        stale.unlink()
    if step.array:
        files.write_text(folder / f"{step.name}.tasks", f"{len(step.array)}\n")
    log = folder / (f"{step.name}-%A_%a.out" if step.array else f"{step.name}-%j.out")
    command = ["sbatch", "--parsable", f"--job-name=a2m-{step.name}", f"--output={log}", *step.options,
               *shlex.split(options or os.environ.get("A2M_SBATCH_OPTIONS", ""))]
    if step.array:
        command.append(f"--array=0-{len(step.array) - 1}")
    if after:
        command += [f"--dependency={'afterany' if any_end else 'afterok'}:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
    result = subprocess.run(command + [str(path)], capture_output=True, text=True)
    if result.returncode:
        raise SlurmError(f"sbatch refused the {step.name} step ({result.stderr.strip()}); its script is {path}")
    return result.stdout.strip().split(";")[0]


def done(run_dir: Path, step: str) -> bool:
    return (rundir.slurm(run_dir) / f"{step}.ok").exists()


def pipeline_steps(cfg: Config, run_dir: Path, extract_tasks: int, train_tasks: int, gpus: bool) -> list[Step]:
    run_config_file = rundir.config("$RUN")  # the run's config.yaml, the shell finding the run in $RUN
    run = f'$A2M run --config "{run_config_file}" --run-dir "$RUN"'
    store = str(cfg.data.processed)
    shards = [str(i) for i in range(max(1, extract_tasks))]
    train_options = [f"--cpus-per-task={max(1, train_tasks)}"] + ([f"--gpus-per-node={train_tasks}"] if gpus else [])
    return [
        Step("extract", [f"$A2M extract {shlex.quote(str(cfg.data.raw))} --out {shlex.quote(store)}.shards/$ITEM "
                         f'--shard $ITEM/{len(shards)} --config "{run_config_file}" --workers ${{SLURM_CPUS_PER_TASK:-1}}'],
             array=shards),
        Step("merge", [f"$A2M merge {shlex.quote(store)}.shards/* --out {shlex.quote(store)}", f"{run} --only 01"]),
        Step("qa", [f"{run} --only 02", f"{run} --only 03"]),
        Step("train", [f"srun {run} --only 04"], options=train_options),
        Step("evaluate", [f"{run} --only 05"]),
    ]


def submit_pipeline(config_path, run_dir, overrides=None, extract_tasks: int = 1, train_tasks: int = 1,
                    gpus: bool = False, options: str = "") -> dict:
    """Submit the steps not yet done, chained, and the report; returns {step: job id}. The run's config is written
    first (train.processes = train_tasks), as `a2m run` writes it."""
    from .config import load_config, parse_overrides

    run_dir = files.project_path(run_dir)
    overrides = {**parse_overrides(overrides), "train.processes": int(train_tasks)}
    cfg = load_config(config_path, overrides)
    saved = rundir.config(run_dir)
    if saved.exists() and run_config(run_dir) != cfg:
        raise SlurmError(f"{saved} holds another config than --config and -p give; resubmit with --config {saved} to "
                         f"resume this run, or use another --run-dir")
    write_run_config(cfg, run_dir)
    jobs, after = {}, []
    for step in pipeline_steps(cfg, run_dir, extract_tasks, train_tasks, gpus):
        if done(run_dir, step.name):
            continue
        jobs[step.name] = submit(step, run_dir, after, options=options)
        after = [jobs[step.name]]
    if jobs:
        report = Step("report", [f"$A2M slurm-report --run-dir \"$RUN\" --jobs {shlex.quote(json.dumps(jobs))}"])
        jobs["report"] = submit(report, run_dir, list(jobs.values()), any_end=True, options=options)
    return jobs


def report(run_dir, jobs: dict) -> dict:
    """Each submitted step's end (ok, failed with its log, or cancelled after an earlier failure), written to the
    run record's `slurm` entry and the slurm/ folder's report.json."""
    run_dir = Path(run_dir)
    steps, failed = {}, None
    for name, job in jobs.items():
        if name == "report":
            continue
        logs = sorted(rundir.slurm(run_dir).glob(f"{name}-{job}*.out"))
        if done(run_dir, name) or _array_done(run_dir, name):
            steps[name] = dict(status="ok", job=job)
        elif logs:
            steps[name] = dict(status="failed", job=job, logs=[str(p) for p in logs])
            failed = failed or name
        else:
            steps[name] = dict(status="cancelled: an earlier step failed", job=job)
    entry = dict(steps=steps, failed=failed, ended=time.strftime("%Y-%m-%dT%H:%M:%S"),
                 message=(f"step {failed} failed; its log: {steps[failed]['logs'][-1]}. Fix it and submit the same "
                          f"command again: the steps that succeeded are not run again") if failed else "every step ok")
    files.write_json(rundir.slurm_report(run_dir), entry)
    rundir.update_record(run_dir, slurm=entry)
    return entry


def _array_done(run_dir: Path, name: str) -> bool:
    """Every task of an array step left its marker; the step's own marker is then written here."""
    tasks = rundir.slurm(run_dir) / f"{name}.tasks"
    if not tasks.exists():
        return False
    n_tasks = int(tasks.read_text())
    if all((rundir.slurm(run_dir) / f"{name}-{i}.ok").exists() for i in range(n_tasks)):
        files.write_text(rundir.slurm(run_dir) / f"{name}.ok", "every task\n")
        return True
    return False


def wait(run_dir, timeout: float = 3600, poll: float = 2.0) -> dict:
    """Block until the pipeline's report is written (for tests and scripts); returns it."""
    path = rundir.slurm_report(Path(run_dir))
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no report in {path.parent} after {timeout:.0f} s; see the logs there and squeue")
        time.sleep(poll)
    return json.loads(path.read_text())
