"""Worker processes and CPU placement for extraction, and MediaPipe's native log kept out of the record.

    unfinished = run_processes(extract.extract_sequence, jobs, workers=2, on_result=bar.update)

Workers pull jobs from one queue (long and short videos balance out) and each keeps to its own share of
the CPUs. A worker that dies (a crash inside a native library) costs only the jobs it held.

MediaPipe and TensorFlow Lite write their log straight to file descriptor 2, past Python: about 180
lines per demo extraction (`W0000 … inference_feedback_manager.cc`, `INFO: Created TensorFlow Lite XNNPACK
delegate`), which would bury a notebook's record. `native_stderr_to(log)` sends that descriptor to a file
while the work runs; `forward_native_log(log)` then drops the known chatter and passes every other line
(errors, unknown warnings) on to Python's logging, so real problems still reach the user.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import re
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

log = logging.getLogger("a2m")

# Lines of MediaPipe's and TFLite's native log that carry no news for the user.
NATIVE_CHATTER = re.compile(r"^(?:[IW]\d{4} |INFO: |WARNING: All log messages before absl::InitializeLog)")


def available_cpus() -> list[int]:
    """The CPUs this thread may run on; empty where the platform cannot tell or pin (then nothing is pinned)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def keep_to(cpus: set[int] | None) -> None:
    """Keep the calling thread (and the threads and processes it starts later) to `cpus`."""
    if cpus:
        os.sched_setaffinity(0, cpus)  # on Linux, pid 0 is the calling thread, not the whole process


@contextlib.contextmanager
def kept_to(cpus: set[int] | None):
    """The calling thread kept to `cpus` for the duration; afterwards it may run anywhere it could before."""
    before = os.sched_getaffinity(0) if cpus else None
    keep_to(cpus)
    try:
        yield
    finally:
        keep_to(before)


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(CPU for tracking, CPUs for decoding and preparing) out of this process's CPUs; None, None with one CPU.

    FaceMesh runs its graph on several threads; kept to one CPU they hand frames to each other without
    moving between caches: FaceMesh alone makes about 406 frames/s on one CPU and 366 free to move
    (benchmarks/README.md). The decoder threads, which the helper thread starts, and the ffmpeg processes
    for audio get the other CPUs.
    """
    cpus = available_cpus()
    return (None, None) if len(cpus) < 2 else ({cpus[0]}, set(cpus[1:]))


def core_groups(n_workers: int) -> list[set[int] | None]:
    """The CPUs each worker keeps to: the available ones split into `n_workers` groups.

    Without it, every worker would keep its FaceMesh to the same first CPU (see split_cpus): on a 2-core
    machine two workers made 311 frames/s that way, and 446 with one CPU each (benchmarks/README.md).
    With more workers than CPUs, workers share CPUs round-robin.
    """
    cpus = available_cpus()
    if not cpus:
        return [None] * n_workers
    if n_workers >= len(cpus):
        return [{cpus[number % len(cpus)]} for number in range(n_workers)]
    return [set(map(int, group)) for group in np.array_split(cpus, n_workers)]


@contextlib.contextmanager
def native_stderr_to(log_path: str | Path):
    """File descriptor 2 goes to `log_path` for the duration (appended); Python's own stderr stays put.

    Where sys.stderr writes to descriptor 2 (a terminal, pytest), it is pointed at a copy of the original
    descriptor meanwhile, so progress bars and Python warnings still show. In a Jupyter kernel sys.stderr
    is not descriptor 2 and is left alone.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    try:
        uses_fd2 = python_stderr is not None and python_stderr.fileno() == 2
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError
        uses_fd2 = False
    with open(log_path, "ab") as target:
        os.dup2(target.fileno(), 2)
    if uses_fd2:
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(python_stderr, "encoding", None))
    try:
        yield log_path
    finally:
        if uses_fd2:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)


def forward_native_log(log_path: str | Path, delete: bool = True) -> list[str]:
    """Pass the lines of a native log that are not known chatter to logging (warning); return them."""
    log_path = Path(log_path)
    if not log_path.exists():
        return []
    kept = [line.strip() for line in log_path.read_text(errors="replace").splitlines()
            if line.strip() and not NATIVE_CHATTER.match(line)]
    for line in kept:
        log.warning("native log (MediaPipe/FFmpeg): %s", line)
    if delete:
        log_path.unlink(missing_ok=True)
    return kept


def _worker(sequence: Callable[[Iterable], Iterator], job_queue, result_queue, cores: set[int] | None,
            log_path: str | None) -> None:
    """A worker process: run `sequence` over jobs from the shared queue until it hands out None; send back
    each result. `cores`: the CPUs this worker (and the processes it starts, which inherit it) may run on."""
    keep_to(cores)
    if log_path:  # this process's native stderr goes to its own log, which the parent forwards
        with open(log_path, "ab") as target:
            os.dup2(target.fileno(), 2)

    def jobs():
        while (job := job_queue.get()) is not None:
            yield job

    for result in sequence(jobs()):
        result_queue.put(result)


def run_processes(sequence: Callable[[Iterable], Iterator], jobs: list, workers: int,
                  on_result: Callable[[object], None], key: Callable[[object], str],
                  job_key: Callable[[object], str], log_dir: Path | None = None) -> list:
    """Run `sequence` (an importable function: jobs -> results, one per job) on `workers` spawned processes.

    `key(result)` and `job_key(job)` name the job a result belongs to. Returns the jobs left unfinished
    because a worker process died; the other workers carry on with the rest of the queue. With `log_dir`,
    each worker's native stderr goes to log_dir/worker-N.log (see forward_native_log).
    """
    context = multiprocessing.get_context("spawn")  # MediaPipe graphs must not be inherited through fork
    job_queue, result_queue = context.Queue(), context.Queue()
    n_processes = min(workers, len(jobs))
    for job in jobs + [None] * n_processes:
        job_queue.put(job)
    logs = [str(log_dir / f"worker-{number}.log") if log_dir else None for number in range(n_processes)]
    processes = [context.Process(target=_worker, args=(sequence, job_queue, result_queue, cores, logs[number]),
                                 name=f"a2m-worker-{number}")
                 for number, cores in enumerate(core_groups(n_processes))]
    for process in processes:
        process.start()
    finished = set()
    try:
        while len(finished) < len(jobs):
            try:
                result = result_queue.get(timeout=1.0)
            except queue.Empty:
                if not any(process.is_alive() for process in processes):
                    break
                continue
            finished.add(key(result))
            on_result(result)
    finally:
        for process in processes:
            if len(finished) == len(jobs):
                process.join()
            else:
                process.terminate()
        for path in logs:
            if path:
                forward_native_log(path)
    return [job for job in jobs if job_key(job) not in finished]
