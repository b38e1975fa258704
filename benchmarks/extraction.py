"""Extraction throughput and memory, measured side by side in one run (not a timed test).

    .venv/bin/python benchmarks/extraction.py [--repeat 3] [--rounds 3] [--memory-minutes 1 10]

(a)  this pipeline end to end: decode, FaceMesh tracking, pose removal, write (extract.extract_store),
     with 1 worker and with 2 workers; and per core: 1 process pinned to one core, then 2 processes
     (shards 0/2 and 1/2) pinned to one core each
(b)  AniPortrait's way: the MediaPipe Tasks FaceLandmarker in IMAGE mode with blendshapes and
     transformation matrices, one frame at a time. Two versions: inference alone, on frames decoded
     beforehand (not charged for decoding), and AniPortrait's preprocessing loop end to end (its input
     is a folder of PNG frames, written beforehand: read each PNG, detect, convert the landmarks, save
     the landmarks, blendshapes and matrix as .npy files)
(c)  the practical limit: legacy FaceMesh tracking alone on frames decoded beforehand, with one face
     (max_num_faces=1) and with max_num_faces=2; also pinned to one core
     decoding alone, for scale
Every rate is measured `--rounds` times, interleaved, and the median is reported.
memory: peak RSS of the extraction process for synthetic-length 720p videos of the given minutes.

Uses the real HDTF clips in ../shared/eval_media; the Tasks model file is read from there too.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np

from a2m_lib import extract, media
from a2m_lib.config import load_config

REPO = Path(__file__).resolve().parents[1]
EVAL_MEDIA = REPO.parent / "shared" / "eval_media"
CLIPS = ["sadtalker/WDA_AlexandriaOcasioCortez_000.mp4", "sadtalker/WDA_KatieHill_000.mp4",
         "aniportrait/pose_ref_video.mp4", "v-express/AOC_gt.mp4"]
CLIP_30FPS = "v-express/AOC_gt.mp4"
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


def tasks_aniportrait_loop(png_dirs: list[Path]) -> float | None:
    """AniPortrait's preprocessing loop, end to end, on its input format (PNG frames written beforehand)."""
    if not TASK_FILE.exists():
        return None
    from mediapipe.tasks import python as tasks
    from mediapipe.tasks.python import vision

    options = vision.FaceLandmarkerOptions(
        base_options=tasks.BaseOptions(model_asset_path=str(TASK_FILE)), running_mode=vision.RunningMode.IMAGE,
        num_faces=1, output_face_blendshapes=True, output_facial_transformation_matrixes=True)
    out = Path(tempfile.mkdtemp(prefix="a2m_bench_b_"))
    count = 0
    try:
        with vision.FaceLandmarker.create_from_options(options) as landmarker:
            started = time.perf_counter()
            for png_dir in png_dirs:
                for png in sorted(png_dir.glob("*.png")):
                    image = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
                    result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
                    count += 1
                    if not result.face_landmarks:
                        continue
                    landmarks = np.array([[p.x, p.y, p.z] for p in result.face_landmarks[0]])
                    np.save(out / f"{png.stem}_lmks.npy", landmarks.astype(np.float32))
                    np.save(out / f"{png.stem}_trans_mat.npy", np.asarray(result.facial_transformation_matrixes[0], np.float32))
                    np.save(out / f"{png.stem}_bs.npy", np.array([c.score for c in result.face_blendshapes[0]][1:], np.float32))
            return count / (time.perf_counter() - started)
    finally:
        shutil.rmtree(out)


def write_pngs(videos, work: Path) -> list[Path]:
    dirs = []
    for number, frames in enumerate(videos):
        folder = work / f"png_{number}"
        folder.mkdir()
        for index, frame in enumerate(frames):
            cv2.imwrite(str(folder / f"{index:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        dirs.append(folder)
    return dirs


def facemesh_alone_on_core(core: int, paths) -> float:
    """(c) in a child process pinned to one core (the parent's own threads stay out of its way)."""
    code = ("import sys, os; sys.path.insert(0, sys.argv[1]); from benchmarks.extraction import *; "
            "paths = sys.argv[2:]; videos, _ = decoded(paths, 30); print(facemesh_alone(videos, 1))")
    result = subprocess.run([sys.executable, "-c", code, str(REPO), *map(str, paths)], capture_output=True, text=True,
                            check=True, preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    return float(result.stdout.strip().splitlines()[-1])


def pipeline_on_cores(raw: Path, cores: list[int]) -> float:
    """One extraction process per core, pinned there with its ffmpeg decoders, each taking shard i/n.

    Rate = all frames / (last end - first start), timed inside the processes, so interpreter start-up
    (about 1 s, the same for every process) is left out.
    """
    out = Path(tempfile.mkdtemp(prefix="a2m_bench_pinned_"))
    code = ("import sys, time; from a2m_lib import extract; from a2m_lib.config import load_config; "
            "cfg = load_config(sys.argv[1]); i, n = map(int, sys.argv[4].split('/')); started = time.time(); "
            "m = extract.extract_store(sys.argv[2], sys.argv[3], cfg.data, cfg.extract, shard=(i, n), progress=False); "
            "print(started, time.time(), int(m[m.status == 'ok'].n_frames.sum()))")
    try:
        processes = [subprocess.Popen(
            [sys.executable, "-c", code, str(REPO / "configs" / "demo.yaml"), str(raw), str(out / f"shard{number}"),
             f"{number}/{len(cores)}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=lambda core=core: os.sched_setaffinity(0, {core})) for number, core in enumerate(cores)]
        reports = [process.communicate()[0].strip().splitlines()[-1].split() for process in processes]
        starts, ends, frames = zip(*[(float(a), float(b), int(c)) for a, b, c in reports])
        return sum(frames) / (max(ends) - min(starts))
    finally:
        shutil.rmtree(out)


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
    parser.add_argument("--repeat", type=int, default=3, help="copies of each clip in the pipeline runs")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each rate; the median is reported")
    parser.add_argument("--memory-minutes", type=float, nargs="*", default=[1, 10])
    args = parser.parse_args()
    paths = [EVAL_MEDIA / clip for clip in CLIPS]
    if not all(path.exists() for path in paths):
        sys.exit(f"needs the real clips in {EVAL_MEDIA}")
    cfg = load_config(REPO / "configs" / "demo.yaml")
    cfg_1face = replace(cfg, extract=replace(cfg.extract, max_faces=1))
    work = Path(tempfile.mkdtemp(prefix="a2m_bench_"))
    raw = work / "raw"
    raw.mkdir()
    for copy in range(args.repeat):
        for path in paths:
            shutil.copy(path, raw / f"{copy}_{path.parent.name}_{path.name}")
    # The one source already at 30 fps (29.97): no repeated frames for the pipeline to skip.
    raw_30 = work / "raw_30fps"
    raw_30.mkdir()
    for copy in range(4 * args.repeat):
        shutil.copy(EVAL_MEDIA / CLIP_30FPS, raw_30 / f"{copy}.mp4")

    videos, decode_fps = decoded(paths, cfg.data.fps)
    png_dirs = write_pngs(videos, work)
    two_cores = len(os.sched_getaffinity(0)) >= 2
    measures = {
        "c_facemesh_1face_fps": lambda: facemesh_alone(videos, 1),
        "c_facemesh_2faces_fps": lambda: facemesh_alone(videos, 2),
        "c_facemesh_1face_one_core_fps": lambda: facemesh_alone_on_core(0, paths),
        "b_tasks_image_inference_fps": lambda: tasks_image_mode(videos),
        "b_tasks_aniportrait_loop_fps": lambda: tasks_aniportrait_loop(png_dirs),
        "a_pipeline_1worker_fps": lambda: pipeline(raw, 1, cfg),
        "a_pipeline_1worker_1face_fps": lambda: pipeline(raw, 1, cfg_1face),
        "a_pipeline_1worker_30fps_source_fps": lambda: pipeline(raw_30, 1, cfg),
        "c_facemesh_one_core_30fps_source_fps": lambda: facemesh_alone_on_core(0, [EVAL_MEDIA / CLIP_30FPS]),
        "a_pipeline_2workers_fps": lambda: pipeline(raw, 2, cfg),
        "a_pipeline_one_core_fps": lambda: pipeline_on_cores(raw, [0]),
        "a_pipeline_two_cores_fps": (lambda: pipeline_on_cores(raw, [0, 1])) if two_cores else (lambda: None),
    }
    pipeline(raw, 1, cfg)  # warm-up: first-call costs (imports, caches) are not throughput
    samples = {name: [] for name in measures}
    for _ in range(args.rounds):
        for name, measure in measures.items():
            samples[name].append(measure())
    results = {"frames": sum(map(len, videos)), "pipeline_frames": args.repeat * sum(map(len, videos)),
               "decode_fps": decode_fps}
    results.update({name: statistics.median(values) if None not in values else None for name, values in samples.items()})
    a, a1, a2 = results["a_pipeline_1worker_fps"], results["a_pipeline_1worker_1face_fps"], results["a_pipeline_2workers_fps"]
    c1, b, b_loop = results["c_facemesh_1face_fps"], results["b_tasks_image_inference_fps"], results["b_tasks_aniportrait_loop_fps"]
    results["ratio_a_to_b_inference"] = a / b if b else None
    results["ratio_a_to_b_aniportrait_loop"] = a / b_loop if b_loop else None
    best_c = max(c1, results["c_facemesh_1face_one_core_fps"])  # FaceMesh is faster kept to one core
    results["ratio_a_to_c"] = a / best_c
    results["ratio_a_1face_to_c"] = a1 / best_c
    results["ratio_a_to_c_30fps_source"] = (results["a_pipeline_1worker_30fps_source_fps"]
                                            / results["c_facemesh_one_core_30fps_source_fps"])
    results["ratio_a_to_c_one_core"] = results["a_pipeline_one_core_fps"] / results["c_facemesh_1face_one_core_fps"]
    results["scaling_1_to_2_workers"] = a2 / a
    if two_cores:
        results["scaling_1_to_2_cores_pinned"] = results["a_pipeline_two_cores_fps"] / results["a_pipeline_one_core_fps"]
    results["samples"] = {name: [round(v, 1) if v else v for v in values] for name, values in samples.items()}
    for minutes in args.memory_minutes:
        results[f"peak_rss_mb_{minutes:g}min_720p"] = peak_memory_mb(minutes, paths[2], work)
    shutil.rmtree(work)
    results["machine"] = {"cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
