"""Crash points: a hard crash at a named point of the work, when the environment asks for one (tests only).

    A2M_CRASH_AT="extract.prepare=<source_key>"     the extraction worker preparing that source dies
    A2M_CRASH_AT="train.step=<epoch>:<step>"        training dies right after that step's checkpoint

The process kills itself with SIGKILL, as a crash inside a native library (MediaPipe, FFmpeg) would end it:
no exception handler, `finally` block or atexit hook runs. Tests use this to crash at a known point rather
than by killing a process from outside at a moment chosen by timing, which made a test fail by chance
(a worker killed between two sources held none). Unset, a crash point costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "A2M_CRASH_AT"


def crash_point(where: str, what: str) -> None:
    """Die at once (SIGKILL) if A2M_CRASH_AT is `<where>=<what>`."""
    if os.environ.get(ENV) == f"{where}={what}":
        os.kill(os.getpid(), signal.SIGKILL)
