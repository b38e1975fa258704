"""How much footage does a speaker need? Held-out mouth correlation and LVE against minutes of training footage of
one speaker (GRID s1, ../shared/eval_media/grid_s1), for the mel and the Whisper encoder, on the same held-out clips.

    .venv/bin/python benchmarks/footage_curve.py [--minutes 1 2 5 10 20 0] [--encoders mel whisper] [--steps 1500]

Extracts grid_s1 once (notebooks 01-03 with configs/grid.yaml into runs/grid_s1-base: links under data/raw/grid_s1,
nothing copied into the repo), then for each amount of footage (data.train_minutes; 0 = every training clip) and
encoder trains and evaluates in process on the one split: the val and test clips never change. Every point gets the
same number of optimiser steps (--steps), so a small set is not short of training. Writes
benchmarks/footage_curve_results.json after every point (a rerun skips the points it holds) and
benchmarks/footage_curve.png; notebook 04 shows the curve.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GRID = REPO.parent / "shared" / "eval_media" / "grid_s1"
CONFIG = REPO / "configs" / "grid.yaml"
# The encoders compared: configs/grid.yaml as it is (Whisper), and the mel recipe of configs/real_mel.yaml.
ENCODERS = {"whisper": {}, "mel": {"model.encoder": "mel", "model.encoder_options": {"conv_layers": 5, "conv_hidden": 128,
                                                                                "dropout": 0.2}, "train.augment": True,
                                    "train.lr": 2e-3}}


def link_raw(raw: Path) -> int:
    """data/raw/grid_s1/s1/<id>.mp4 -> the shared clips (one speaker, s1)."""
    (raw / "s1").mkdir(parents=True, exist_ok=True)
    for video in sorted(GRID.glob("*.mp4")):
        link = raw / "s1" / video.name
        if not link.is_symlink():
            link.symlink_to(video)
    return len(list((raw / "s1").glob("*.mp4")))


def prepare(base: Path) -> None:
    """Extraction, QA and neutral selection once, through the notebooks (what `a2m run` does)."""
    from a2m_lib import rundir, runner

    if rundir.qa_table(base).exists() and rundir.neutral_dir(base).is_dir():
        return
    for stage in ("01", "02", "03"):
        runner.run(CONFIG, base, [], only=stage, progress=False)


def one_point(base: Path, encoder: str, minutes: float, steps: int) -> dict:
    from a2m_lib import evaluate, rundir, train
    from a2m_lib.config import load_config
    from a2m_lib.dataset import split_clips

    run = REPO / "runs" / f"grid_s1-curve-{encoder}-{minutes:g}min"
    shutil.rmtree(run, ignore_errors=True)
    rundir.branch(base, run)
    overrides = {**ENCODERS[encoder], "data.train_minutes": float(minutes)}
    cfg = load_config(CONFIG, overrides)
    splits = split_clips(rundir.accepted_clips(run), cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed, cfg.data.split_by,
                         cfg.data.train_minutes, cfg.data.fps)
    n_train = int((splits.split == "train").sum())
    epochs = max(3, math.ceil(steps / math.ceil(n_train / cfg.train.batch_size)))
    cfg = load_config(CONFIG, {**overrides, "train.epochs": epochs, "train.validate_every": max(1, epochs // 10)})
    started = time.time()
    result = train.train(cfg, run, progress=False)
    seconds = time.time() - started
    summary = evaluate.evaluate(cfg, run, progress=False).summary
    model, baselines = summary["model"], summary["baselines"]
    return dict(encoder=encoder, minutes=round(float(splits[splits.split == "train"].n_frames.sum()) / cfg.data.fps / 60, 2),
                asked_minutes=minutes, train_clips=n_train, test_clips=summary["n_clips"], epochs=epochs,
                train_seconds=round(seconds), best_epoch=result.best_epoch, mouth_corr=model["mouth_corr"],
                motion_ratio=model["motion_ratio"], lve=model["lve"], lve_neutral=baselines["neutral"]["lve"],
                lve_mean_offset=baselines["mean_offset"]["lve"],
                lve_x_neutral=summary["lve_ratio_model_to_neutral"], lve_x_mean_offset=summary["lve_ratio_model_to_mean_offset"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 5, 10, 20, 0])
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps per point")
    args = parser.parse_args()
    if not GRID.exists():
        sys.exit(f"{GRID} is absent: this benchmark needs the shared GRID clips")
    from a2m_lib import plots

    print(f"{link_raw(REPO / 'data' / 'raw' / 'grid_s1')} GRID s1 clips linked", flush=True)
    base = REPO / "runs" / "grid_s1-base"
    prepare(base)
    out = REPO / "benchmarks" / "footage_curve_results.json"
    # points already measured with the same number of steps are kept, not trained again (a stopped run resumes)
    earlier = json.loads(out.read_text()) if out.exists() else {}
    rows = earlier.get("rows", []) if earlier.get("steps") == args.steps else []
    for minutes in args.minutes:
        for encoder in args.encoders:
            if any(row["encoder"] == encoder and row["asked_minutes"] == minutes for row in rows):
                continue
            rows.append(one_point(base, encoder, minutes, args.steps))
            print(json.dumps(rows[-1]), flush=True)
            out.write_text(json.dumps(dict(steps=args.steps, config=str(CONFIG.relative_to(REPO)), rows=rows), indent=2))
    figure = plots.footage_curve(rows)
    figure.savefig(REPO / "benchmarks" / "footage_curve.png", dpi=100, bbox_inches="tight")
    print(f"wrote {out} and benchmarks/footage_curve.png")


if __name__ == "__main__":
    main()
