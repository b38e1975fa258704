"""Lips that close and open as far as the person's: each lip loss term against today's recipe, side by side on one
split of the shared real footage (configs/real.yaml; ../shared/eval_media, as benchmarks/real_footage.py links it).

    .venv/bin/python benchmarks/lips.py [--variants today gap10 ...] [--split-by clip|speaker] [--force]

For every variant: a run branched from the real footage's QA decisions and neutrals (rundir.branch; notebooks 01-03
run once, as real_footage.py does), trained and evaluated in process on the same split, scored at articulation
gain 1 (the model as trained) and at the gain fitted on validation. Each run's held-out LVE against motion ratio as
its predictions are scaled by a gain (evaluate.gain_curve) is the curve a variant must lie below: today's model
scaled to the same motion ratio. Writes benchmarks/lips_results.json (a variant already there is not trained again
unless --force) and benchmarks/lips_<split>.png, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
RESULTS = REPO / "benchmarks" / "lips_results.json"
# today's recipe, as configs/real.yaml was before the lip terms: L1 + lip vertices x2 + velocity 0.5
TODAY = {"train.lip_weight": 2.0, "train.velocity_weight": 0.5, "train.lip_gap_weight": 0.0, "train.closure_weight": 0.0,
         "train.motion_std_weight": 0.0, "train.lip_ccc_weight": 0.0, "evaluate.checkpoint": "best",
         "evaluate.articulation": "auto"}  # the fitted gain applied in the fitted block (real.yaml now predicts at 1)
VARIANTS = {
    "today": {},
    "lip10": {"train.lip_weight": 10.0},                                         # heavier lip vertices
    "gap10": {"train.lip_gap_weight": 10.0},                                     # the lip distances (A2F-3D)
    "gap50": {"train.lip_gap_weight": 50.0},
    "gap10_closure4": {"train.lip_gap_weight": 10.0, "train.closure_weight": 4.0},   # closures weigh 5x
    "std1": {"train.motion_std_weight": 1.0},                                    # the spread over time
    "std5": {"train.motion_std_weight": 5.0},
    "gap10_std1": {"train.lip_gap_weight": 10.0, "train.motion_std_weight": 1.0},
    "gap10_closure4_std1": {"train.lip_gap_weight": 10.0, "train.closure_weight": 4.0, "train.motion_std_weight": 1.0},
    "ccc0.5": {"train.lip_ccc_weight": 0.5},                                     # concordance of the lip distances
    "ccc2": {"train.lip_ccc_weight": 2.0},
    "ccc2_std1": {"train.lip_ccc_weight": 2.0, "train.motion_std_weight": 1.0},
    "today_last": {"evaluate.checkpoint": "last"},                               # the last epoch, not the best val L1
    "std2": {"train.motion_std_weight": 2.0},
    "lip10_std1": {"train.lip_weight": 10.0, "train.motion_std_weight": 1.0},
    "lip10_std1_ccc0.5": {"train.lip_weight": 10.0, "train.motion_std_weight": 1.0, "train.lip_ccc_weight": 0.5},
    # a sharper model rather than a louder one: regularisers against the early memorising (best epochs 6-13 of 60)
    "std1_stretch0.1": {"train.motion_std_weight": 1.0, "train.stretch": 0.1},   # tempo augmentation, +-10%
    "std1_augment": {"train.motion_std_weight": 1.0, "train.augment": True},     # noise, tilt, a masked band
    "std1_dropout0.4": {"train.motion_std_weight": 1.0, "model.encoder_options.dropout": 0.4},
    "std1_wd0.1": {"train.motion_std_weight": 1.0, "train.weight_decay": 0.1},
    # heavier lips dilute the spread term (lip10_std1 moves as little as today): more spread with them
    "lip10_std3": {"train.lip_weight": 10.0, "train.motion_std_weight": 3.0},
    "lip10_std5": {"train.lip_weight": 10.0, "train.motion_std_weight": 5.0},
    # the head's size and reach, for a sharper model: half the width, a shorter or longer receptive field, a slower
    # learning rate, Whisper's last layer instead of the learned mix
    "std1_hidden64": {"train.motion_std_weight": 1.0, "model.encoder_options.conv_hidden": 64},
    "std1_kernel3": {"train.motion_std_weight": 1.0, "model.encoder_options.conv_kernel": 3},   # 15 frames
    "std1_conv5": {"train.motion_std_weight": 1.0, "model.encoder_options.conv_layers": 5},     # 125 frames
    "std1_lr3e-4": {"train.motion_std_weight": 1.0, "train.lr": 3.0e-4},
    "std1_last": {"train.motion_std_weight": 1.0, "model.encoder_options.layers": "last"},
}
# The recipes the variants run on: the shared real footage (many speakers, seconds each), and GRID s1 (one speaker,
# 40 minutes, benchmarks/footage_curve.py's base run and its 8 epochs of about 100 steps).
RECIPES = {"real": dict(config=REPO / "configs" / "real.yaml", base="lips-base", overrides={}),
           "grid": dict(config=REPO / "configs" / "grid.yaml", base="grid_s1-base", overrides={"train.epochs": 8})}
SHIPPED = "std1"  # what configs/real.yaml and configs/grid.yaml keep
KEYS = ("lve", "mouth_corr", "motion_ratio", "closure_error", "peak_opening_ratio", "lip_lag_frames")


def prepare_base(recipe: str) -> Path:
    """The recipe's base run: its footage extracted, QA'd and its neutrals chosen, once (notebooks 01-03)."""
    from a2m_lib import runner

    base = REPO / "runs" / RECIPES[recipe]["base"]
    if not (base / "qa.csv").exists() or not (base / "neutral").is_dir():
        if recipe == "real":
            import real_footage

            real_footage.build_raw(REPO / "data" / "raw" / "real")
        else:
            import footage_curve

            footage_curve.link_raw(REPO / "data" / "raw" / "grid_s1")
        for stage in ("01", "02", "03"):
            runner.run(RECIPES[recipe]["config"], base, [], only=stage, progress=False)
    return base


def one_variant(base: Path, name: str, split_by: str, recipe: str = "real") -> dict:
    from a2m_lib import config, evaluate, rundir, train

    run = REPO / "runs" / f"lips-{recipe}-{split_by}-{name}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    rundir.branch(base, run)
    cfg = config.load_config(RECIPES[recipe]["config"], {**TODAY, **RECIPES[recipe]["overrides"], **VARIANTS[name],
                                                         "data.split_by": split_by})
    config.write_run_config(cfg, run)
    train.train(cfg, run, progress=False)
    evaluate.evaluate(cfg, run, progress=False)  # evaluate.articulation: auto (the fitted gain)
    return summarise(run, name)


def summarise(run: Path, name: str) -> dict:
    """A variant's row, from its run folder alone (metrics.json, train_summary.json, the prediction files)."""
    from a2m_lib import evaluate, rundir

    fitted = json.loads(rundir.metrics(run).read_text())
    result = json.loads(rundir.train_summary(run).read_text())
    curve = evaluate.gain_curve(rundir.predictions(run))
    unscaled, model = fitted["model_unscaled"], fitted["model"]
    return dict(overrides=VARIANTS[name], train_seconds=round(result["seconds"]), best_epoch=result["best_epoch"], run=str(run),
                gain1={key: unscaled[key] for key in KEYS}, fitted={key: model[key] for key in KEYS},
                articulation=fitted["articulation"], baselines={b: {key: v[key] for key in KEYS}
                                                               for b, v in fitted["baselines"].items()},
                curve=curve.round(5).to_dict("list"),
                per_speaker={s: {key: v["model"][key] for key in KEYS} | {"n_clips": v["model"]["n_clips"]}
                             for s, v in fitted["per_speaker"].items()}, n_clips=fitted["n_clips"])


def lve_at_motion(curve: dict, motion: float) -> float:
    """The LVE of a gain curve at a motion ratio, linearly interpolated."""
    import numpy as np

    return float(np.interp(motion, curve["motion_ratio"], curve["lve"]))


def table(rows: dict) -> str:
    today = rows.get("today")
    neutral, mean_offset = (next(iter(rows.values()))["baselines"][b]["lve"] for b in ("neutral", "mean_offset"))
    lines = ["| variant | LVE | x mean offset | today scaled to this motion | mouth corr | motion ratio | closure_error | "
             "peak_opening_ratio | lip_lag_frames | fitted gain |", "|---|" + "---|" * 9]
    for name, row in rows.items():
        g = row["gain1"]
        scaled = lve_at_motion(today["curve"], g["motion_ratio"]) if today else float("nan")
        lines.append(f"| {name} | {g['lve']:.3f} | {g['lve'] / mean_offset:.2f} | {scaled:.3f} | {g['mouth_corr']:.2f} | "
                     f"{g['motion_ratio']:.2f} | {g['closure_error']:.3f} | {g['peak_opening_ratio']:.2f} | "
                     f"{g['lip_lag_frames']:+.2f} | {row['articulation']['default']:g} |")
    lines.append(f"| baselines: neutral / mean offset | {neutral:.3f} / {mean_offset:.3f} | | | | | | | | |")
    return "\n".join(lines)


TITLES = {"clip": "shared real footage, by clip, 9 clips", "speaker": "leave-speakers-out, 14 clips of 10 new speakers",
          "grid-clip": "GRID s1, 8 epochs, 93 held-out clips"}


def readme_block(results: dict) -> str:
    """benchmarks/README.md's LIPS_BENCH block: each split's table, and the by-clip curves at fixed motion ratios."""
    parts = []
    for key, title in TITLES.items():
        rows = {name: results[key][name] for name in VARIANTS if name in results.get(key, {})}
        if not rows:
            continue
        parts.append(table(rows).replace("| variant |", f"| variant ({title}) |", 1)
                     .replace(f"| {SHIPPED} |", f"| **{SHIPPED}** (shipped) |"))
        if key == "clip":
            motions = (0.6, 0.7, 0.85, 1.0)
            lines = ["LVE at a fixed motion ratio, each variant's predictions scaled by a gain (the curves):", "",
                     "| variant | motion 0.6 | 0.7 | 0.85 | 1.0 |", "|---|---|---|---|---|"]
            lines += [f"| {name} | " + " | ".join(f"{lve_at_motion(row['curve'], m):.3f}" for m in motions) + " |"
                      for name, row in rows.items()]
            target = 0.95 * next(iter(rows.values()))["baselines"]["mean_offset"]["lve"]
            lines.append("| target: ≤ 0.95 × mean offset | " + " | ".join([f"{target:.3f}"] * len(motions)) + " |")
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def write_readme_block(results: dict) -> None:
    path = REPO / "benchmarks" / "README.md"
    text = path.read_text()
    start, end = "<!-- LIPS_BENCH -->\n", "\n<!-- /LIPS_BENCH -->"
    head, rest = text.split(start, 1)
    path.write_text(head + start + readme_block(results) + end + rest.split(end, 1)[1])


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.4))
    colours = plt.get_cmap("tab20").colors
    for number, (name, row) in enumerate(rows.items()):
        curve = row["curve"]
        style = {"today": dict(color="black", linewidth=2.4), SHIPPED: dict(color="tab:red", linewidth=2.4)}.get(
            name, dict(color=colours[number % len(colours)], linewidth=0.9, alpha=0.8))
        axis.plot(curve["motion_ratio"], curve["lve"], label=name + (" (shipped)" if name == SHIPPED else ""), **style)
        axis.plot(row["gain1"]["motion_ratio"], row["gain1"]["lve"], "o", color=style["color"])
    mean_offset = next(iter(rows.values()))["baselines"]["mean_offset"]["lve"]
    axis.axhline(0.95 * mean_offset, color="grey", linestyle=":", label="0.95 x mean-offset baseline")
    axis.axvspan(0.85, 1.15, color="green", alpha=0.07, label="target motion ratio")
    lowest = min(min(row["curve"]["lve"]) for row in rows.values())
    axis.set_ylim(lowest * 0.97, lowest * 1.45)
    axis.set(xlabel="motion ratio (predicted / true lip motion)", ylabel="held-out LVE (mesh units)", xlim=(0.3, 1.4),
             title="each run scaled by a gain (dots: as trained); lower at the same motion is better")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--split-by", default="clip", choices=["clip", "speaker"])
    parser.add_argument("--recipe", default="real", choices=list(RECIPES))
    parser.add_argument("--force", action="store_true", help="train variants already in the results again")
    parser.add_argument("--collect", action="store_true", help="rebuild the rows of runs already made, without training")
    args = parser.parse_args()
    import real_footage

    from a2m_lib import rundir

    if not real_footage.SHARED.exists():
        sys.exit(f"{real_footage.SHARED} is absent: this benchmark needs the shared real footage")
    base = None if args.collect else prepare_base(args.recipe)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    key = args.split_by if args.recipe == "real" else f"{args.recipe}-{args.split_by}"
    rows = results.setdefault(key, {})
    for name in args.variants:
        run = REPO / "runs" / f"lips-{args.recipe}-{args.split_by}-{name}"
        if args.collect:
            if rundir.metrics(run).exists():
                rows[name] = summarise(run, name)
            continue
        if name in rows and not args.force:
            continue
        rows[name] = one_variant(base, name, args.split_by, args.recipe)
        RESULTS.write_text(json.dumps(results, indent=1))  # after each variant: a crash keeps the ones done
        print(f"{name}: {json.dumps(rows[name]['gain1'])}", flush=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    write_readme_block(results)
    ordered = {name: rows[name] for name in VARIANTS if name in rows}
    print(table(ordered))
    plot(ordered, REPO / "benchmarks" / f"lips_{key}.png")


if __name__ == "__main__":
    main()
