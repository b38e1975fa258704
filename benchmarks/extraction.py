"""Extraction throughput and memory, measured side by side in one run (not a timed test).

    .venv/bin/python benchmarks/extraction.py [--repeat 2] [--memory-minutes 1 10]

(a)  this pipeline end to end: decode, FaceMesh tracking, pose removal, write (extract.extract_store),
     with 1 worker and with 2 workers
(b)  AniPortrait's way: the MediaPipe Tasks FaceLandmarker in IMAGE mode with blendshapes and
     transformation matrices, one frame at a time (on frames decoded beforehand, so it is not charged
     for decoding)
(c)  the practical limit: legacy FaceMesh tracking alone on frames decoded beforehand, with one face
     (max_num_faces=1) and with the pipeline's setting (extract.max_faces=2)
     decoding alone, for scale
memory: peak RSS of the extraction process for synthetic-length 720p videos of the given minutes.

Uses the real HDTF clips in ../shared/eval_media; the Tasks model file is read from there too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import mediapipe as mp

from a2m_lib import extract, media
from a2m_lib.config import load_config

REPO = Path(__file__).resolve().parents[1]
EVAL_MEDIA = REPO.parent / "shared" / "eval_media"
CLIPS = ["sadtalker/WDA_AlexandriaOcasioCortez_000.mp4", "sadtalker/WDA_KatieHill_000.mp4",
         "aniportrait/pose_ref_video.mp4", "v-express/AOC_gt.mp4"]
TASK_FILE = EVAL_MEDIA / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"


def decoded(paths, fps):
    started = time.perf_counter()
    frames = [list(media.iter_frames(path, fps)) for path in paths]
    return frames, sum(map(len, frames)) / (time.perf_counter() - started)


def facemesh_alone(videos, max_faces: int) -> float:
    count, elapsed = 0, 0.0
    for frames in videos:
        with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=max_faces, refine_landmarks=True) as fm:
            fm.process(frames[0])  # graph start-up is not per-frame work
            started = time.perf_counter()
            for frame in frames:
                fm.process(frame)
            elapsed += time.perf_counter() - started
            count += len(frames)
    return count / elapsed


def tasks_image_mode(videos) -> float | None:
    if not TASK_FILE.exists():
        return None
    from mediapipe.tasks import python as tasks
    from mediapipe.tasks.python import vision

    options = vision.FaceLandmarkerOptions(
        base_options=tasks.BaseOptions(model_asset_path=str(TASK_FILE)), running_mode=vision.RunningMode.IMAGE,
        num_faces=1, output_face_blendshapes=True, output_facial_transformation_matrixes=True)
    count, elapsed = 0, 0.0
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=videos[0][0]))
        for frames in videos:
            started = time.perf_counter()
            for frame in frames:
                landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=frame))
            elapsed += time.perf_counter() - started
            count += len(frames)
    return count / elapsed


def pipeline(raw: Path, workers: int, cfg) -> float:
    out = Path(tempfile.mkdtemp(prefix="a2m_bench_"))
    try:
        started = time.perf_counter()
        manifest = extract.extract_store(raw, out, cfg.data, cfg.extract, workers=workers, progress=False)
        elapsed = time.perf_counter() - started
        return manifest.n_frames.sum() / elapsed
    finally:
        shutil.rmtree(out)


def peak_memory_mb(minutes: float, source: Path, work: Path) -> float:
    """Peak RSS of a child process extracting a 720p video of `minutes` (looped from a real clip)."""
    video = work / f"long_{minutes:g}min" / "long.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(source),
                    "-t", str(minutes * 60), "-vf", "scale=-2:720,pad=1280:720:(ow-iw)/2:0", "-c:v", "libx264",
                    "-preset", "ultrafast", "-c:a", "aac", str(video)], check=True)
    # VmHWM, not ru_maxrss: after fork + exec, ru_maxrss still counts the parent's pages (here, decoded frames).
    code = ("import sys; from a2m_lib import extract; from a2m_lib.config import load_config; "
            "cfg = load_config(); extract.extract_store(sys.argv[1], sys.argv[2], cfg.data, cfg.extract, progress=False); "
            "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")
    result = subprocess.run([sys.executable, "-c", code, str(video.parent), str(work / f"out_{minutes:g}")],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024  # VmHWM is in KiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2, help="copies of each clip in the pipeline runs")
    parser.add_argument("--memory-minutes", type=float, nargs="*", default=[1, 10])
    args = parser.parse_args()
    paths = [EVAL_MEDIA / clip for clip in CLIPS]
    if not all(path.exists() for path in paths):
        sys.exit(f"needs the real clips in {EVAL_MEDIA}")
    cfg = load_config(REPO / "configs" / "demo.yaml")
    work = Path(tempfile.mkdtemp(prefix="a2m_bench_"))
    raw = work / "raw"
    raw.mkdir()
    for copy in range(args.repeat):
        for path in paths:
            shutil.copy(path, raw / f"{copy}_{path.parent.name}_{path.name}")

    videos, decode_fps = decoded(paths, cfg.data.fps)
    results = {"frames": sum(map(len, videos)), "decode_fps": decode_fps}
    results["c_facemesh_1face_fps"] = facemesh_alone(videos, 1)
    results["c_facemesh_2faces_fps"] = facemesh_alone(videos, 2)
    results["b_tasks_image_fps"] = tasks_image_mode(videos)
    results["a_pipeline_1worker_fps"] = pipeline(raw, 1, cfg)
    results["a_pipeline_2workers_fps"] = pipeline(raw, 2, cfg)
    results["a_pipeline_1worker_1face_fps"] = pipeline(raw, 1, replace(cfg, extract=replace(cfg.extract, max_faces=1)))
    a, c1, c2, b = (results[k] for k in ("a_pipeline_1worker_fps", "c_facemesh_1face_fps", "c_facemesh_2faces_fps",
                                         "b_tasks_image_fps"))
    results["ratio_a_to_b"] = a / b if b else None
    results["ratio_a_to_c_1face"] = a / c1
    results["ratio_a_to_c_same_setting"] = a / c2
    results["ratio_a_1face_to_c_1face"] = results["a_pipeline_1worker_1face_fps"] / c1
    results["scaling_2_workers"] = results["a_pipeline_2workers_fps"] / a
    for minutes in args.memory_minutes:
        results[f"peak_rss_mb_{minutes:g}min_720p"] = peak_memory_mb(minutes, paths[2], work)
    shutil.rmtree(work)
    results["machine"] = {"cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
