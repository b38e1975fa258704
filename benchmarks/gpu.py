"""The GPU path against the CPU, side by side in one run: the GRID s1 recipe (configs/grid.yaml, Whisper tiny.en
features from the store's cache) trained on each device for the same epochs, then evaluated on the same held-out
clips. Prints seconds per epoch and the held-out metrics per device, and their ratios.

    .venv/bin/python benchmarks/gpu.py [--epochs 5] [--devices cuda cpu] [--base runs/grid_s1-base]

Needs a prepared grid_s1 run (notebooks 01-03: `benchmarks/footage_curve.py` or `a2m run --config configs/grid.yaml
--only 01` ... `--only 03` leave runs/grid_s1-base) and its store. The first device to train fills the feature cache
(`data/processed/grid_s1/features/`); the timing of each device is taken on a second, cached pass, so both read the
same cached features. train.precision stays `auto`: bf16 autocast on CUDA, fp32 on the CPU.
Writes benchmarks/gpu_results.json. Without CUDA it says so and stops: the script is ready for a GPU machine.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "grid.yaml"
RESULTS = REPO / "benchmarks" / "gpu_results.json"
METRICS = ("mouth_corr", "lve", "motion_ratio")


def one_device(device: str, base: Path, epochs: int) -> dict:
    from a2m_lib import evaluate, train
    from a2m_lib.config import load_config

    run = REPO / "runs" / f"grid_s1-gpu-{device.replace(':', '')}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    shutil.copy(base / "qa.csv", run / "qa.csv")
    shutil.copytree(base / "neutral", run / "neutral")
    cfg = load_config(CONFIG, {"train.device": device, "evaluate.device": device, "train.epochs": epochs,
                               "train.validate_every": epochs})
    started = time.perf_counter()
    result = train.train(cfg, run, progress=True)
    seconds = time.perf_counter() - started
    summary = evaluate.evaluate(cfg, run, progress=True).summary
    return dict(device=str(result.device), epochs=epochs, train_seconds=round(seconds, 1),
                seconds_per_epoch=round(seconds / epochs, 2), best_val_loss=round(result.best_val_loss, 5),
                model={key: summary["model"][key] for key in METRICS},
                baselines={name: {key: values.get(key) for key in METRICS} for name, values in summary["baselines"].items()},
                test_clips=summary["n_clips"])


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    parser.add_argument("--base", type=Path, default=REPO / "runs" / "grid_s1-base")
    args = parser.parse_args()
    if any(d.startswith("cuda") for d in args.devices) and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this benchmark compares a GPU with the CPU; run it on a GPU machine "
                         "(or pass --devices cpu to time the CPU alone)")
    if not (args.base / "qa.csv").exists():
        raise SystemExit(f"{args.base}/qa.csv not found: run notebooks 01-03 of configs/grid.yaml first "
                         f"(benchmarks/footage_curve.py does)")
    one_device(args.devices[0], args.base, 1)  # fills the feature cache, so the timed runs below read the same files
    results = {device: one_device(device, args.base, args.epochs) for device in args.devices}
    if torch.cuda.is_available():
        results["gpu_name"] = torch.cuda.get_device_name()
    RESULTS.write_text(json.dumps(results, indent=1))
    devices = args.devices
    print(f"| | {' | '.join(devices)} |\n|---|{'---|' * len(devices)}")
    for key in ("seconds_per_epoch", "best_val_loss"):
        print(f"| {key} | {' | '.join(str(results[d][key]) for d in devices)} |")
    for key in METRICS:
        print(f"| held-out {key} | {' | '.join(str(results[d]['model'][key]) for d in devices)} |")
    if len(devices) == 2:
        print(f"time per epoch, {devices[1]} / {devices[0]}: "
              f"{results[devices[1]]['seconds_per_epoch'] / results[devices[0]]['seconds_per_epoch']:.1f}x")


if __name__ == "__main__":
    main()
