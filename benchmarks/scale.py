"""AniPortrait's data size through every stage: wall time, peak memory and items per second of each notebook, for
100 and 1,000 clips of one speaker (GRID s1, ../shared/eval_media/grid_s1), measured side by side in one run.

    .venv/bin/python benchmarks/scale.py [--sizes 100 1000] [--epochs 3] [--keep] [--stages 02 03]

For each size, data/raw/scale-<n>/s1 links every (1000 / n)-th GRID clip (nothing is copied into the repo), and
`a2m run --config configs/grid.yaml` runs each notebook on its own (`--only NN`) into data/processed/scale-<n> and
runs/scale-<n>, so each stage is one process tree to measure. Training runs twice: first computing the frozen
Whisper features into the store's cache, then again from the cache (-p train.resume=false). Fresh stores and runs
unless --keep. `--keep --stages 02 03` measures those notebooks again on the kept stores (QA's cached
measurements removed first, so it measures every clip again) and updates their rows in the results file.

Peak memory is the largest proportional set size (PSS: shared pages split between the processes that share them)
summed over the stage's process tree (the papermill kernel and its workers), sampled every 0.5 s.
Writes benchmarks/scale_results.json and prints the table with the ratios per clip (1,000 against 100).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
GRID = REPO.parent / "shared" / "eval_media" / "grid_s1"
CONFIG = REPO / "configs" / "grid.yaml"
RESULTS = REPO / "benchmarks" / "scale_results.json"

# (name, notebook, extra overrides, what one item is)
STAGES = [("01 extract", "01", [], "clip"), ("02 QA", "02", [], "clip"), ("03 neutral", "03", [], "clip"),
          ("04 train, features computed", "04", [], "clip-epoch"),
          ("04 train, features cached", "04", ["train.resume=false"], "clip-epoch"),
          ("05 evaluate", "05", [], "test clip")]


def link_raw(raw: Path, n: int) -> None:
    videos = sorted(GRID.glob("*.mp4"))
    step = max(1, len(videos) // n)
    (raw / "s1").mkdir(parents=True, exist_ok=True)
    for video in videos[::step][:n]:
        (raw / "s1" / video.name).symlink_to(video)


def tree_pss(process: psutil.Process) -> int:
    """Bytes of PSS over a process and its descendants (those that vanish mid-read are skipped)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(command: list[str], log: Path) -> dict:
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        watched, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            try:
                peak = max(peak, tree_pss(watched))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.5)
    seconds = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {child.returncode}); see {log}")
    return dict(seconds=round(seconds, 1), peak_mb=round(peak / 2 ** 20))


def items(run: Path, processed: Path, notebook: str, epochs: int) -> int:
    if notebook in ("01", "02", "03"):
        return len(pd.read_csv(processed / "manifest.csv"))
    splits = pd.read_csv(run / "splits.csv")
    if notebook == "04":
        return int((splits.split == "train").sum()) * epochs
    return int((splits.split == "test").sum())


def one_size(n: int, epochs: int, keep: bool, only: list[str] | None = None, previous: dict | None = None) -> dict:
    raw, processed, run = (REPO / "data" / "raw" / f"scale-{n}", REPO / "data" / "processed" / f"scale-{n}",
                           REPO / "runs" / f"scale-{n}")
    if not keep:
        for folder in (raw, processed, run):
            shutil.rmtree(folder, ignore_errors=True)
    if not raw.exists():
        link_raw(raw, n)
    run.mkdir(parents=True, exist_ok=True)
    overrides = [f"data.raw={raw}", f"data.processed={processed}", f"train.epochs={epochs}", "train.validate_every=1"]
    rows = list(previous["stages"]) if previous else []
    for name, notebook, extra, unit in STAGES:
        if only and notebook not in only:
            continue
        if notebook == "02":
            shutil.rmtree(processed / "measurements", ignore_errors=True)  # QA measures every clip, as on a new store
        command = [sys.executable, "-m", "a2m_lib.cli", "run", "--config", str(CONFIG), "--run-dir", str(run), "--only", notebook]
        for override in overrides + extra:
            command += ["-p", override]
        print(f"[scale] {n} clips: {name}", flush=True)
        row = dict(stage=name, unit=unit, **measure(command, run / f"bench-{notebook}.log"))
        row["items"] = items(run, processed, notebook, epochs)
        row["items_per_s"] = round(row["items"] / row["seconds"], 2)
        row["ms_per_item"] = round(1000 * row["seconds"] / row["items"], 1)
        rows = [old for old in rows if old["stage"] != name]
        rows.insert([stage for stage, *_ in STAGES].index(name), row)
        print(f"        {row}", flush=True)
    notebooks = {path.name: round(path.stat().st_size / 2 ** 20, 2) for path in sorted((run / "notebooks").glob("*.ipynb"))}
    return dict(clips=n, stages=rows, notebook_mb=notebooks)


def table(results: dict) -> str:
    sizes = sorted(results, key=int)
    small, large = sizes[0], sizes[-1]
    lines = [f"| stage | unit | {' | '.join(f'{s} clips: s / ms per item / peak MB' for s in sizes)} | per item {large} ÷ {small} "
             f"| peak MB {large} ÷ {small} |", "|---" * (4 + len(sizes)) + "|"]
    for i, stage in enumerate(results[small]["stages"]):
        cells = [f"{results[s]['stages'][i]['seconds']} / {results[s]['stages'][i]['ms_per_item']} / "
                 f"{results[s]['stages'][i]['peak_mb']}" for s in sizes]
        big = results[large]["stages"][i]
        lines.append(f"| {stage['stage']} | {stage['unit']} | {' | '.join(cells)} | "
                     f"{big['ms_per_item'] / stage['ms_per_item']:.2f} | {big['peak_mb'] / stage['peak_mb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="reuse the stores and runs of an earlier call")
    parser.add_argument("--stages", nargs="+", default=None, help="with --keep: only these notebooks, e.g. 02 03")
    args = parser.parse_args()
    if not GRID.is_dir():
        raise SystemExit(f"{GRID} not found: this benchmark needs ../shared/eval_media/grid_s1")
    if args.stages and not args.keep:
        raise SystemExit("--stages needs --keep: the other stages' stores and runs must exist")
    results = json.loads(RESULTS.read_text())["sizes"] if args.stages else {}
    for n in args.sizes:
        results[str(n)] = one_size(n, args.epochs, args.keep, args.stages, results.get(str(n)))
        RESULTS.write_text(json.dumps(dict(epochs=args.epochs, sizes=results), indent=1))
    print(table(results))
    for n, result in results.items():
        print(f"{n} clips, executed notebooks (MB): {result['notebook_mb']}")


if __name__ == "__main__":
    main()
