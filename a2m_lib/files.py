"""Files that are never half-written, and paths that resolve the same from any working folder.

Every writer in a2m writes to `<stem>.part<suffix>` beside the target and renames it into place
(`os.replace` is atomic on one file system), so a crash leaves either the old file or the new one,
never a torn one. A leftover `.part` file is harmless: readers skip names with a `.part` suffix.

    with atomic_path("runs/x/metrics.json") as tmp:   # tmp = runs/x/metrics.part.json
        tmp.write_text(...)
    write_json("runs/x/run.json", record)

Relative paths in configs, notebook parameters and the command line's config values resolve against
the project root (`project_path`), so a notebook opened in JupyterLab from `notebooks/` reads the same
files as `a2m run` from the checkout.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

# The checkout that holds configs/ and notebooks/. A2M_PROJECT_ROOT moves it (a copy of the project).
PROJECT_ROOT = Path(os.environ.get("A2M_PROJECT_ROOT") or Path(__file__).resolve().parents[1])


def project_path(path: str | Path) -> Path:
    """`path` if absolute, else the same path under the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def part_path(path: Path) -> Path:
    """The temporary name a file is written under before it is renamed to `path`."""
    return path.with_name(f"{path.stem}.part{path.suffix}")


def is_part(path: Path) -> bool:
    return ".part" in path.suffixes


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(path)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str))


def sha256(path: str | Path) -> str | None:
    """Hex digest of a file's bytes, None if it does not exist (recorded in run.json)."""
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def benchmark_results(name: str) -> dict | None:
    """A benchmark's saved results, benchmarks/<name>_results.json under the project root (None when it has not been
    run): reference points the notebooks compare a run with."""
    path = project_path(Path("benchmarks") / f"{name}_results.json")
    return json.loads(path.read_text()) if path.exists() else None
