"""Training and inference throughput, measured side by side in one run (ratios, not timed tests).

    .venv/bin/python benchmarks/training.py [--quick]

Needs the demo's store and run (make demo): data/processed/demo and runs/demo.
1. Frozen-CNN cache: training steps per second with the CNN output cached per clip against recomputing the
   CNN on every step (AniPortrait's way), for a wav2vec2-base-sized encoder with random weights and for the
   demo's encoder; the losses after the same steps are printed beside them.
2. Peak resident memory while training on 1 h of clips (600 synthetic clips of 6 s written straight into a
   store: random meshes and noise audio; the data path is what is measured).
3. `a2m predict` on 60 s of audio: real-time factor from the loaded model to the written file, and the whole
   process; for the demo model and a wav2vec2-base-sized one. Rendering speed in frames per second.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from a2m_lib import config, files, predict, render, rundir, store, train  # noqa: E402
from a2m_lib.model import Audio2Mesh, load_model  # noqa: E402


def prepared_run(run_dir: Path, demo_run: Path) -> Path:
    return rundir.branch(demo_run, run_dir)


def base_sized_encoder(folder: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(folder)  # wav2vec2-base: 12 layers, 768 wide, random weights
    return folder


def cache_speedup(work: Path, demo_run: Path, processed: str, epochs: int) -> list[dict]:
    rows = []
    encoders = {"wav2vec2-base-sized (random)": {"model.encoder": "wav2vec2", "model.latent_dim": 512, "model.encoder_options": {
                    "pretrained": str(base_sized_encoder(work / "w2v2-base")), "only_last_features": True,
                    "freeze_feature_encoder": True}},
                "demo (scratch, CNN frozen)": {"model.encoder": "scratch", "model.encoder_options.freeze_feature_encoder": True}}
    for name, settings in encoders.items():
        for cached in (True, False):
            run_dir = prepared_run(work / f"{name[:6]}-{cached}", demo_run)
            shutil.rmtree(Path(processed) / "features", ignore_errors=True)  # the cache is built inside the measurement
            cfg = config.load_config(REPO / "configs" / "demo.yaml", {
                "data.processed": processed, "train.epochs": epochs, "train.cache_features": cached,
                "train.validate_every": 1000, **settings})
            started = time.time()
            result = train.train(cfg, run_dir, progress=False)
            seconds = result.history.seconds.to_numpy()
            rows.append(dict(encoder=name, cache=cached, first_epoch_s=round(seconds[0], 1),
                             later_epoch_s=round(float(np.mean(seconds[1:])), 1) if len(seconds) > 1 else np.nan,
                             total_s=round(time.time() - started, 1), final_train_loss=round(result.history.train_loss.iloc[-1], 5)))
            print(rows[-1], flush=True)
    return rows


def synthetic_hour(folder: Path, clips: int = 600, seconds: float = 6.0) -> Path:
    """A store of `clips` clips of `seconds` (random meshes, noise audio), with a run holding its QA table and neutral."""
    rng = np.random.default_rng(0)
    reference = np.load(REPO / "a2m_lib" / "assets" / "reference_mesh.npy").astype(np.float32)
    n_frames, rows = int(seconds * 30), []
    for number in range(clips):
        clip_id = f"hour__{number:04d}"
        mesh = reference + 0.05 * rng.normal(size=(n_frames, 478, 3)).astype(np.float32)
        row = dict(clip_id=clip_id, speaker="hour", language="en", source="synthetic", start=0, end=seconds,
                   n_frames=n_frames, audio_seconds=seconds, fps=30.0, status="ok", reason="", settings="", source_hash="",
                   interpolated_frames=0, multi_face_frames=0)
        store.save_clip(folder / "store", clip_id, dict(mesh=mesh, audio=rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32),
                                                        face_found=np.ones(n_frames, bool)), row)
        rows.append(dict(clip_id=clip_id, speaker="hour", language="en", n_frames=n_frames, status="pass", audio_shift_frames=0))
    run_dir = folder / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(run_dir / "qa.csv", index=False)
    store.save_neutral(run_dir / "neutral" / "hour.npz", reference, "hour", "hour__0000", 0, "auto")
    return folder


def peak_memory(folder: Path) -> float:
    """Peak RSS (GB) of a child process that trains one epoch of the mel recipe on the synthetic hour."""
    code = (f"import resource, sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from a2m_lib import config, train\n"
            f"cfg = config.load_config({str(REPO / 'configs' / 'real_mel.yaml')!r}, {{'data.processed': {str(folder / 'store')!r}, "
            "'train.epochs': 1, 'data.val_fraction': 0.02, 'data.test_fraction': 0.02})\n"
            f"train.train(cfg, {str(folder / 'run')!r}, progress=False)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def prediction_speed(work: Path, demo_run: Path) -> list[dict]:
    t = np.arange(60 * 16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2.5 * t) > 0)).astype(np.float32)
    wav = work / "speech60.wav"
    import soundfile

    soundfile.write(wav, audio, 16000)
    base_dir = work / "base-model"
    if not base_dir.exists():
        model = Audio2Mesh(config.ModelConfig(encoder="wav2vec2", pretrained=str(base_sized_encoder(work / "w2v2-base"))),
                           speakers=["spk0"])
        model.save_pretrained(base_dir)
    rows = []
    for name, checkpoint in (("demo model", demo_run / "checkpoints" / "best.pt"), ("wav2vec2-base-sized", base_dir)):
        model = load_model(checkpoint)
        base = rundir.load_neutral(demo_run / "neutral" / "spk0.npz")["mesh"][:468]
        result = predict.predict_audio(model, wav, work / "out.npz", base, 30.0, speaker="spk0")
        started = time.time()
        subprocess.run([sys.executable, "-m", "a2m_lib.cli", "predict", str(wav), "--checkpoint", str(checkpoint),
                        "--neutral", str(demo_run / "neutral" / "spk0.npz"), "--speaker", "spk0", "--out", str(work / "out2.npz")],
                       check=True, capture_output=True, cwd=REPO)
        whole = time.time() - started
        rows.append(dict(model=name, audio_s=60, predict_s=round(result.seconds, 2), rtf=round(result.real_time_factor, 1),
                         whole_process_s=round(whole, 1), whole_process_rtf=round(60 / whole, 1)))
        print(rows[-1], flush=True)
    verts = result.verts[:180]
    started = time.time()
    render.render_meshes(work / "render.mp4", {"truth": verts, "model": verts}, 30.0, audio[: 6 * 16000], side_view=True)
    rows.append(dict(model="render 6 s (2 meshes, front + side)", frames=180, seconds=round(time.time() - started, 2),
                     fps=round(180 / (time.time() - started), 1)))
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2 epochs for the cache comparison, skip the 1 h memory run")
    parser.add_argument("--skip-cache", action="store_true", help="leave out the cache comparison (the slowest part)")
    args = parser.parse_args()
    demo_run, processed = REPO / "runs" / "demo", str(REPO / "data" / "processed" / "demo")
    if not (demo_run / "checkpoints" / "best.pt").exists():
        sys.exit("run `make demo` first: the benchmark uses its store and run")
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="a2m-bench-"))
    results = {} if args.skip_cache else {"cache": cache_speedup(work, demo_run, processed, 2 if args.quick else 3)}
    if not args.quick:
        results["peak_rss_gb_1h"] = peak_memory(synthetic_hour(work / "hour"))
        print("peak RSS training on 1 h of clips:", results["peak_rss_gb_1h"], "GB", flush=True)
    results["prediction"] = prediction_speed(work, demo_run)
    files.write_json(REPO / "benchmarks" / "training_results.json", results)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
