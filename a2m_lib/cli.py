"""The `a2m` command line: run (here or --slurm), demo, synth, extract, merge, qa, train, evaluate, predict,
export-aniportrait, sweep, compare.

Every command that acts on a run names it with --run-dir and reads its config.yaml (config.command_config): a run
without one starts from --config and -p, which are written there; a run with one is not changed by them."""
from __future__ import annotations

import argparse
import os
import json
import sys
import time
from pathlib import Path

from . import rundir
from .config import ConfigError, NeutralChoice, command_config, load_config


def _stage_of(text: str) -> str:
    return text.zfill(2)


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    index, count = int(index), int(count or 1)
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: want i/n with 0 <= i < n, e.g. 0/4")
    return index, count


def cmd_run(args) -> int:
    from . import runner

    if args.slurm:
        return _run_on_slurm(args)
    record = runner.run(args.config, args.run_dir, args.param, stage_from=args.stage_from, only=args.only)
    _print_record(record)
    return 0


def _run_on_slurm(args) -> int:
    from . import cluster, files

    if args.stage_from or args.only:
        raise ValueError("--slurm runs the whole pipeline (the steps already done are skipped); drop --from / --only")
    run_dir = files.project_path(args.run_dir or Path("runs") / load_config(args.config, args.param).name)
    jobs = cluster.submit_pipeline(args.config, run_dir, args.param, args.extract_tasks, args.train_tasks, args.gpus,
                                   args.sbatch)
    if not jobs:
        print(f"{run_dir}: every step is done already (see {rundir.slurm(run_dir)})")
        return 0
    print(f"{run_dir}: submitted " + ", ".join(f"{step} (job {job})" for step, job in jobs.items()))
    print(f"logs and scripts in {rundir.slurm(run_dir)}; the report job writes {rundir.slurm_report(run_dir)}")
    if args.wait:
        report = cluster.wait(run_dir)
        print(report["message"])
        return 0 if report["failed"] is None else 1
    return 0


def cmd_slurm_report(args) -> int:
    from . import cluster

    report = cluster.report(args.run_dir, json.loads(args.jobs))
    for step, entry in report["steps"].items():
        print(f"  {step:10s} {entry['status']} (job {entry['job']})")
    print(report["message"])
    return 0 if report["failed"] is None else 1


def cmd_sweep(args) -> int:
    from . import sweep

    grid = sweep.parse_grid(args.grid)
    done = sweep.run(args.config, args.base, grid, args.param, args.out, args.slurm, args.sbatch)
    print(f"{done['out']}: {len(done['runs'])} runs, {len(done['to_run'])} to run"
          + (f" (job array {done['job']})" if "job" in done else ""))
    print(f"compare them: a2m compare {done['out']}/*")
    return 0


def cmd_compare(args) -> int:
    from . import compare, files, runner

    comparison = compare.Comparison(args.runs)
    out = files.project_path(args.out or Path(os.path.commonpath([str(files.project_path(r)) for r in args.runs])))
    if len(args.runs) == 1:
        out = files.project_path(args.out or args.runs[0])
    csv = comparison.write_csv(out / "compare.csv")
    print(comparison.marked().to_string())
    print("(*: the best run on that metric)")
    notebook = runner.compare(args.runs, out) if args.notebook else None
    print(f"table: {csv}" + (f"; notebook: {notebook}" if notebook else ""))
    return 0


def _print_record(record: dict) -> None:
    for name, entry in record["notebooks"].items():
        print(f"  {name:28s} {entry['status']:8s} {entry['seconds'] or 0:8.1f} s")


def cmd_train(args) -> int:
    from . import train

    cfg = command_config(args.run_dir, args.config, args.param)
    result = train.train(cfg, args.run_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best epoch {result.best_epoch}, val L1 {result.best_val_loss:.4f}, {result.seconds:.0f} s on {result.device}")
    return 0


def cmd_evaluate(args) -> int:
    from . import evaluate, neutral, qa

    run_dir = Path(args.run_dir)
    cfg = command_config(run_dir, args.config, args.param)
    data_run = None
    if args.data:  # another clip store: its own QA decisions and neutrals, kept inside this run
        data_run = rundir.other_store(run_dir, args.data)
        qa.check_store(args.data, cfg.qa, cfg.data.sample_rate, run_dir=data_run)
        neutral.choose(data_run, neutral.Ranking(args.data, rundir.accepted_clips(data_run)), NeutralChoice.parse("auto"))
    result = evaluate.evaluate(cfg, run_dir, split=args.split, checkpoint=args.checkpoint, data=args.data, data_run=data_run)
    print(evaluate.report(result.summary))
    print(f"predictions in {result.predictions}; metrics in {rundir.metrics(data_run or run_dir)}")
    if args.render and data_run is None:
        for label, written in evaluate.render_clips(result, cfg, run_dir).items():
            print(f"{label} clip: {written['video']} and its 3D view {written['view']}")
    return 0


def cmd_predict(args) -> int:
    from . import predict

    if args.onnx:
        if args.run_dir or args.checkpoint or args.neutral or args.reference:
            raise ValueError("--onnx takes the model, its neutrals and gains from the file: drop --run-dir, --checkpoint, "
                             "--neutral and --reference")
        inputs = predict.prepare_onnx(args.onnx, args.speaker, args.articulation)
    else:
        inputs = predict.prepare(args.run_dir, args.checkpoint, args.neutral, args.speaker, args.reference, args.articulation)
    if args.fps:
        inputs.fps = args.fps
    result = predict.predict_audio(audio_path=args.audio, out_path=args.out, smooth_frames=args.smooth,
                                   video_path=args.video, **vars(inputs))
    print(f"{result.path}: {len(result.verts)} frames at {result.fps:g} fps from {result.audio_seconds:.1f} s of audio "
          f"in {result.seconds:.2f} s (real-time factor {result.real_time_factor:.0f}x), articulation gain "
          f"{inputs.articulation:g}")
    return 0


def cmd_export_onnx(args) -> int:
    from . import onnx_model

    metadata = onnx_model.export_onnx(args.run_dir, args.out, args.checkpoint)
    print(f"wrote {args.out}: opset {metadata['opset']}, inputs {', '.join(metadata['inputs'])}; encoder features "
          f"{metadata['features']}; speakers {', '.join(metadata['speakers'])}")
    return 0


def cmd_view(args) -> int:
    from . import viewer

    out = viewer.write_html(args.prediction, args.out)
    print(f"wrote {out}: open it in a browser (no server needed)")
    return 0


def cmd_export(args) -> int:
    from . import predict

    settings = predict.export_aniportrait(args.run_dir, args.out_dir, args.checkpoint)
    print(f"wrote {settings['a2m_ckpt']} and {Path(args.out_dir) / 'inference_audio.yaml'}")
    return 0


def cmd_demo(args) -> int:
    from . import runner, synth

    started = time.time()
    cfg = load_config(runner.REPO_ROOT / "configs" / "demo.yaml", args.param)
    print(f"[a2m] synthesising {args.speakers} speakers x {args.clips} clips into {cfg.data.raw}", flush=True)
    synth.synth_dataset(cfg.data.raw, speakers=args.speakers, clips=args.clips, seconds=(3.0, 6.0), seed=cfg.seed)
    record = runner.run(runner.REPO_ROOT / "configs" / "demo.yaml", args.run_dir, args.param)
    _print_record(record)
    metrics_path = rundir.metrics(args.run_dir)
    metrics = json.loads(metrics_path.read_text())  # what notebook 05 wrote
    model_lve, neutral_lve = metrics["model"]["lve"], metrics["baselines"]["neutral"]["lve"]
    print(f"[a2m] demo done in {time.time() - started:.0f} s. Held-out lip vertex error: model {model_lve:.3f}, "
          f"neutral baseline {neutral_lve:.3f} (ratio {model_lve / neutral_lve:.2f}). See {metrics_path} and "
          f"{rundir.notebooks(args.run_dir) / '05_evaluate.ipynb'}")
    return 0


def cmd_synth(args) -> int:
    from . import synth

    faults = synth.Faults(args.audio_offset_frames, args.dropped_frames, args.no_face_frames)
    paths = synth.synth_dataset(args.out_dir, args.speakers, args.clips, args.seconds, args.seed, args.face,
                                fps=args.fps, faults=faults)
    print(f"wrote {len(paths)} clips under {args.out_dir}")
    return 0


def cmd_extract(args) -> int:
    from . import extract

    overrides = list(args.param) + [f"data.fps={args.fps}"] if args.fps else list(args.param)
    cfg = load_config(args.config, overrides)
    manifest = extract.extract_store(args.raw_dir, args.out, cfg.data, cfg.extract, workers=args.workers, shard=args.shard)
    failed = manifest[manifest.status == "failed"]
    for row in failed.itertuples():
        print(f"FAILED {row.source}: {row.reason}", file=sys.stderr)
    return 0


def cmd_merge(args) -> int:
    from . import faces, store

    store.merge_stores(args.shards, args.out)
    manifest = faces.finalise_store(args.out)  # the whole store's sync model judges two faces, at the store's audio rate
    print(f"{args.out}: {len(manifest)} clips from {manifest.source.nunique()} sources, merged from {len(args.shards)} shard(s)")
    return 0


def cmd_qa(args) -> int:
    from . import qa

    cfg = command_config(args.run_dir, args.config, list(args.param) + [f"data.processed={Path(args.processed).resolve()}"])
    report = qa.check_store(cfg.data.processed, cfg.qa, cfg.data.sample_rate, run_dir=args.run_dir)
    print(report.table.to_string(index=False))
    print(f"{len(report.accepted)} of {len(report.table)} clips pass; decisions in {report.table_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2m", description="Audio2Mesh research workbench")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_params(sub):
        sub.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. -p train.lr=1e-4 (repeatable)")
        return sub

    run = with_params(commands.add_parser("run", help="run notebooks 01-05 with papermill"))
    run.add_argument("--config", required=True, help="YAML config, e.g. configs/demo.yaml")
    run.add_argument("--run-dir", default=None, help="run directory (default runs/<config name>)")
    stages = run.add_mutually_exclusive_group()
    stages.add_argument("--from", dest="stage_from", type=_stage_of, help="re-run from this stage on, e.g. 04")
    stages.add_argument("--only", type=_stage_of, help="re-run only this stage, e.g. 05")
    run.add_argument("--slurm", action="store_true", help="submit the whole pipeline to SLURM as a chain of jobs")
    run.add_argument("--extract-tasks", type=int, default=1, help="--slurm: extraction's job array tasks")
    run.add_argument("--train-tasks", type=int, default=1, help="--slurm: training processes (torchrun, one node)")
    run.add_argument("--gpus", action="store_true", help="--slurm: a GPU per training process (NCCL)")
    run.add_argument("--sbatch", default="", help="--slurm: more sbatch options for every job, e.g. '--partition=cpu'")
    run.add_argument("--wait", action="store_true", help="--slurm: wait for the pipeline and print its report")
    run.set_defaults(func=cmd_run)

    sweep = with_params(commands.add_parser("sweep", help="a grid of runs from a base run's QA decisions and neutrals"))
    sweep.add_argument("--config", required=True)
    sweep.add_argument("--base", required=True, help="the run whose QA decisions, neutrals and store every run uses")
    sweep.add_argument("-g", "--grid", action="append", required=True, metavar="KEY=V1,V2",
                       help="a setting to vary, e.g. -g train.lip_weight=1,2,4 (repeatable: every combination)")
    sweep.add_argument("--out", default=None, help="the folder of the sweep's runs (default runs/<base>-sweep)")
    sweep.add_argument("--slurm", action="store_true", help="one SLURM job array, one run per task")
    sweep.add_argument("--sbatch", default="", help="--slurm: more sbatch options, e.g. '--partition=gpu --gpus=1'")
    sweep.set_defaults(func=cmd_sweep)

    compare = commands.add_parser("compare", help="runs side by side: metrics, curves, one clip's lip trace")
    compare.add_argument("runs", nargs="+")
    compare.add_argument("--out", default=None, help="where compare.csv and the notebook go (default: the runs' folder)")
    compare.add_argument("--no-notebook", dest="notebook", action="store_false", help="the table only")
    compare.set_defaults(func=cmd_compare)

    report = commands.add_parser("slurm-report", help="(the pipeline's last job) which step ended how")
    report.add_argument("--run-dir", required=True)
    report.add_argument("--jobs", required=True, help="the submitted jobs, as JSON {step: job id}")
    report.set_defaults(func=cmd_slurm_report)

    def on_a_run(sub, required: bool = True):
        sub.add_argument("--run-dir", required=required, help="the run: runs/<id> (its config is what the command reads)")
        sub.add_argument("--config", default=None, help="a run without a config of its own starts from this one (and -p)")
        return with_params(sub)

    train = on_a_run(commands.add_parser(
        "train", help="train the run (its QA decisions and neutrals come from notebooks 02-03); runs under torchrun"))
    train.set_defaults(func=cmd_train)

    evaluate = on_a_run(commands.add_parser("evaluate", help="predictions, metrics and renders for a trained run"))
    evaluate.add_argument("--split", default=None, help="test | val | train (default evaluate.split)")
    evaluate.add_argument("--checkpoint", default=None, help="best | last (default evaluate.checkpoint)")
    evaluate.add_argument("--data", default=None, help="evaluate on every accepted clip of another clip store")
    evaluate.add_argument("--no-render", dest="render", action="store_false", help="skip the best/median/worst videos")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="meshes for new audio (any file ffmpeg reads)")
    predict.add_argument("audio")
    predict.add_argument("--run-dir", default=None, help="a trained run: its config, checkpoint, neutrals and gain")
    predict.add_argument("--checkpoint", default=None, help="a checkpoint or save_pretrained folder (with --neutral)")
    predict.add_argument("--onnx", default=None, help="an a2m export-onnx file, run by onnxruntime")
    predict.add_argument("--neutral", default=None, help="a neutral .npz (a run's neutral file of the speaker)")
    predict.add_argument("--speaker", default=None)
    predict.add_argument("--reference", default=None, help="CLIP:FRAME of the run's store as the reference face")
    predict.add_argument("--out", required=True, help="OUT.npz: verts (T, V, 3), fps")
    predict.add_argument("--video", default=None, help="also render OUT.mp4 with the audio")
    predict.add_argument("--smooth", type=int, default=0, help="Savitzky-Golay window in frames (0: none)")
    predict.add_argument("--fps", type=float, default=None, help="default: the run's data.fps")
    predict.add_argument("--articulation", type=float, default=None,
                         help="gain on the movement around its mean (default: the run's fitted gain for the speaker; 1 "
                              "= as trained)")
    predict.set_defaults(func=cmd_predict)

    onnx = commands.add_parser("export-onnx", help="the run's model as one ONNX file (onnxruntime, engines)")
    onnx.add_argument("--run-dir", required=True)
    onnx.add_argument("--out", required=True, help="MODEL.onnx")
    onnx.add_argument("--checkpoint", default="best")
    onnx.set_defaults(func=cmd_export_onnx)

    view = commands.add_parser("view", help="one HTML file: a prediction's meshes in 3D, with its sound")
    view.add_argument("prediction", help="an a2m predict OUT.npz, or a clip's prediction file of a run's evaluation")
    view.add_argument("--out", required=True, help="VIEW.html")
    view.set_defaults(func=cmd_view)

    export = commands.add_parser("export-aniportrait", help="the model as AniPortrait's audio2mesh.pt + inference yaml")
    export.add_argument("--run-dir", required=True)
    export.add_argument("out_dir")
    export.add_argument("--checkpoint", default="best")
    export.set_defaults(func=cmd_export)

    demo = with_params(commands.add_parser("demo", help="synthesise sample data and run configs/demo.yaml"))
    demo.add_argument("--run-dir", default="runs/demo")
    demo.add_argument("--speakers", type=int, default=2)
    demo.add_argument("--clips", type=int, default=30, help="clips per speaker")
    demo.set_defaults(func=cmd_demo)

    synth = commands.add_parser("synth", help="write a synthetic talking-head dataset")
    synth.add_argument("out_dir")
    synth.add_argument("--speakers", type=int, default=1)
    synth.add_argument("--clips", type=int, default=10, help="clips per speaker")
    synth.add_argument("--seconds", type=_range, default=(3.0, 6.0), help="clip length range, e.g. 3-6")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--face", default=None, help="face photo (default: skimage's astronaut)")
    synth.add_argument("--fps", type=float, default=30.0)
    synth.add_argument("--audio-offset-frames", type=int, default=0, help="fault: audio k frames late (negative: early)")
    synth.add_argument("--dropped-frames", type=int, default=0, help="fault: drop n video frames")
    synth.add_argument("--no-face-frames", type=int, default=0, help="fault: n consecutive frames without a face")
    synth.set_defaults(func=cmd_synth)

    extract = with_params(commands.add_parser("extract", help="videos -> clip store (landmarks, pose-free meshes, audio)"))
    extract.add_argument("raw_dir")
    extract.add_argument("--out", required=True, help="clip store folder, e.g. data/processed/NAME")
    extract.add_argument("--config", default=None)
    extract.add_argument("--fps", type=float, default=None)
    extract.add_argument("--workers", type=int, default=None, help="processes (default: extract.workers, 0: one per CPU)")
    extract.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: process every n-th source from the i-th")
    extract.set_defaults(func=cmd_extract)

    merge = commands.add_parser("merge", help="shard stores of `a2m extract --shard` -> one clip store")
    merge.add_argument("shards", nargs="+", help="the shards' --out folders")
    merge.add_argument("--out", required=True, help="the merged clip store, e.g. data/processed/NAME")
    merge.set_defaults(func=cmd_merge)

    qa = on_a_run(commands.add_parser("qa", help="alignment QA of a clip store -> the run's QA table"))
    qa.add_argument("processed", help="the clip store (the run's data.processed)")
    qa.set_defaults(func=cmd_qa)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"a2m: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # RunError and friends: the message already says what and where
        print(f"a2m: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
