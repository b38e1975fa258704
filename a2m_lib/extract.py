"""Stage 01: videos -> clip store of pose-free MediaPipe meshes and 16 kHz mono audio.

    manifest = extract.extract_store("data/raw/demo", "data/processed/demo", cfg.data, cfg.extract)

Per source video: audio is decoded on the video's clock (stream start times honoured), frames are
resampled to `data.fps` by timestamp and streamed through MediaPipe FaceMesh in tracking mode. Face
gaps of up to `extract.max_gap_frames` are interpolated and marked; longer gaps end a clip. Videos
longer than `extract.segment_max_seconds` are cut into clips at speech pauses (a2m_lib.clips); with two faces
on screen, the face that speaks is kept (a2m_lib.faces). The store's layout and clip schema are in
a2m_lib.store; the worker processes and CPU placement in a2m_lib.workers.

A source whose record has the same source hash and extractor settings is skipped, so an interrupted
extraction resumes where it stopped. Shards (`--shard i/n`) run on several machines merge with `a2m merge`
(store.merge_stores); scripts/slurm/ runs them as a SLURM job array.

Optional metadata: `RAW_DIR/metadata.csv` (columns `file`, relative to RAW_DIR, and `speaker` and/or
`language`) or a sidecar `<video>.json` with those keys. Otherwise `RAW_DIR/<speaker>/<file>` names the speaker.
"""
from __future__ import annotations

import collections
import concurrent.futures as futures
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from tqdm.auto import tqdm

from . import clips, faces, faults, files, media, regions, store, trackers
from .clips import ExtractionError
from . import workers as worker_processes
from .config import DataConfig, ExtractConfig

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m4v"}


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _metadata_table(raw_dir: Path) -> dict[str, dict]:
    table_path = raw_dir / "metadata.csv"
    if not table_path.exists():
        return {}
    import pandas as pd  # imported where used: extraction workers start faster without pandas and scipy

    table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    if "file" not in table.columns:
        raise ValueError(f"{table_path} needs a 'file' column (paths relative to {raw_dir}), plus speaker and/or language")
    return {row["file"]: {k: v for k, v in row.items() if k in ("speaker", "language") and v} for _, row in table.iterrows()}


def find_sources(raw_dir: str | Path) -> list[dict]:
    """Video files under raw_dir as dicts: path, source_key, speaker, language."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw video folder {raw_dir} does not exist; set data.raw to a folder of videos")
    table = _metadata_table(raw_dir)
    sources = []
    for path in sorted(raw_dir.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in VIDEO_SUFFIXES or ".part" in path.suffixes:
            continue
        relative = path.relative_to(raw_dir)
        info = {"speaker": relative.parts[0] if len(relative.parts) > 1 else "default", "language": ""}
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            info.update({k: v for k, v in json.loads(sidecar.read_text()).items() if k in ("speaker", "language")})
        info.update(table.get(relative.as_posix(), {}))
        sources.append(dict(path=path, source_key="__".join(relative.with_suffix("").parts), **info))
    return sources


def settings_key(data_cfg: DataConfig, extract_cfg: ExtractConfig) -> str:
    """The settings a clip depends on (not `workers`, which changes only the speed)."""
    settings = {key: value for key, value in asdict(extract_cfg).items() if key != "workers"}
    return json.dumps({"fps": data_cfg.fps, "sample_rate": data_cfg.sample_rate, **settings}, sort_keys=True)


def _tracker(fps: float, extract_cfg: ExtractConfig, background=None):
    if extract_cfg.extractor == "tasks":
        return trackers.TasksTracker(extract_cfg.task_file, fps, extract_cfg.max_faces, extract_cfg.min_detection_confidence,
                                 extract_cfg.min_tracking_confidence)
    if extract_cfg.extractor != "facemesh":
        raise ValueError(f"extract.extractor '{extract_cfg.extractor}' is not known; use facemesh or tasks")
    return trackers.FaceTracker(extract_cfg.refine_landmarks, False, extract_cfg.min_detection_confidence, extract_cfg.min_tracking_confidence,
                            extract_cfg.max_faces, background=background)


def track_video(frames: media.FrameReader, fps: float, extract_cfg: ExtractConfig, spool: Path, background=None):
    """Run the face tracker over a video's frames (a started FrameReader), spooling landmarks to disk.

    Landmarks go to the file `spool` as they come (5.7 kB a frame) and are read back clip by clip
    (SpooledLandmarks), so memory does not grow with the video's length. A frame whose pixels repeat the
    previous frame's (a 25 fps source at 30 fps) gets the previous frame's result instead of a second
    tracker call: the face did not move, so neither do its landmarks.
    Returns the (T, N, 3) landmarks in source pixels (NaN where no face), (T,) found, (T,) number of faces,
    extras: `repeated` (T,), plus for the tasks extractor blendshapes (T, 52), transformation_matrix
    (T, 4, 4) and blendshape_names; and the second face's landmarks (the tracker's `second_face`, spooled
    beside the first from the frame it first appears; None for a video that never shows two faces).
    """
    n_faces, repeats, blendshapes, matrices = [], [], [], []
    tasks = extract_cfg.extractor == "tasks"
    n_points = regions.N_LANDMARKS_REFINED if extract_cfg.refine_landmarks or tasks else regions.N_LANDMARKS
    missing = np.full((n_points, 3), np.nan, np.float32)
    no_blendshapes, no_matrix = np.full(52, np.nan, np.float32), np.full((4, 4), np.nan, np.float32)
    spool.parent.mkdir(parents=True, exist_ok=True)
    missing_row = missing.tobytes()
    second_spool, second, second_row = spool.with_suffix(".second.f32"), None, missing_row
    with _tracker(fps, extract_cfg, background) as tracker, open(spool, "wb") as spooled:
        try:
            for frame, repeated in frames:
                repeated = repeated and bool(n_faces)
                if not repeated:
                    height, width = frame.shape[:2]
                    shrink = min(1.0, extract_cfg.max_side_px / max(height, width))
                    if shrink < 1:
                        frame = cv2.resize(frame, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
                    points, count, *task_outputs = tracker.track(frame)
                    row = missing_row if points is None else (points / shrink).astype(np.float32).tobytes()
                    other = tracker.second_face
                    if other is not None and second is None:  # the first frame with two faces
                        second = open(second_spool, "wb")
                        second.write(missing_row * len(n_faces))
                    if second is not None:
                        second_row = missing_row if other is None else (other / shrink).astype(np.float32).tobytes()
                spooled.write(row)
                if second is not None:
                    second.write(second_row)
                n_faces.append(count)
                repeats.append(repeated)
                if tasks:
                    blendshapes.append(task_outputs[0] if points is not None else no_blendshapes)
                    matrices.append(task_outputs[1] if points is not None else no_matrix)
        finally:
            if second is not None:
                second.close()
        names = getattr(tracker, "blendshape_names", [])
    if not n_faces:
        raise ExtractionError("no video frames could be decoded")
    extras = {"repeated": np.array(repeats)}
    if tasks:
        extras.update(blendshapes=np.stack(blendshapes), transformation_matrix=np.stack(matrices),
                      blendshape_names=np.array(names))
    n_faces = np.array(n_faces)
    second_face = SpooledLandmarks(second_spool, len(n_faces), n_points) if second is not None else None
    return SpooledLandmarks(spool, len(n_faces), n_points), n_faces > 0, n_faces, extras, second_face


class SpooledLandmarks:
    """Landmarks spooled to a file, read back a slice of frames at a time: `spooled[start:end]` -> array.

    Plain reads rather than np.memmap: pages of a mapping count towards the process's resident memory
    once touched, and every frame gets touched on the way to its clip.
    """

    def __init__(self, path: Path, n_frames: int, n_points: int):
        self.path, self.shape = path, (n_frames, n_points, 3)

    def __getitem__(self, frames: slice) -> np.ndarray:
        start, stop, _ = frames.indices(self.shape[0])
        frame_bytes = self.shape[1] * 3 * 4
        data = np.fromfile(self.path, np.float32, count=(stop - start) * self.shape[1] * 3, offset=start * frame_bytes)
        return data.reshape(-1, self.shape[1], 3)


def checked_audio(path: Path, data_cfg: DataConfig) -> np.ndarray:
    """The source's audio at data.sample_rate, after checking that it has the streams a clip needs."""
    try:
        streams = media.probe_streams(path)
    except media.MediaError as error:
        raise ExtractionError(str(error).split(": ", 1)[-1]) from error
    if not streams["has_video"]:
        raise ExtractionError("no video stream (audio-only file?)")
    if not streams["has_audio"]:
        raise ExtractionError("no audio track; the model needs speech aligned with the face")
    audio = media.read_audio(path, data_cfg.sample_rate)
    if audio.size == 0:
        raise ExtractionError("the audio track decodes to zero samples")
    if np.sqrt(np.dot(audio, audio) / audio.size) < 1e-4:  # dot: no temporary copy of a long track
        raise ExtractionError("the audio track is silent (RMS < 1e-4)")
    return audio


def _error_reason(error: Exception) -> str:
    if isinstance(error, (ExtractionError, media.MediaError)):
        return str(error)
    return f"{type(error).__name__}: {error}"  # any other failure is recorded per file, with its type


@dataclass
class Job:
    """One source to extract, and the settings it is extracted with (picklable: sent to worker processes)."""

    source: dict  # path, source_key, speaker, language (find_sources)
    out_dir: Path
    data_cfg: DataConfig
    extract_cfg: ExtractConfig


@dataclass
class SourceState:
    """A source on its way through prepare -> track -> finish; `error` set means it will be recorded as failed."""

    job: Job
    source_hash: str = ""
    audio: np.ndarray | None = None
    frames: media.FrameReader | None = None
    spool: Path | None = None
    tracks: tuple | None = None  # (SpooledLandmarks, found, n_faces, extras, second face) from track_video
    error: str | None = None


def _prepare(job: Job) -> SourceState:
    """What can start before the previous source is done: its hash, stream checks, audio and frame decoder.

    Never raises; a failure comes back as `error`, to be recorded against the file.
    """
    state = SourceState(job)
    faults.crash_point("extract.prepare", job.source["source_key"])
    try:
        state.source_hash = file_hash(job.source["path"])
        state.audio = checked_audio(job.source["path"], job.data_cfg)
        state.frames = media.FrameReader(job.source["path"], job.data_cfg.fps)
    except Exception as error:  # noqa: BLE001 - see _error_reason
        state.error = _error_reason(error)
    return state


def _track(state: SourceState, background=None) -> None:
    """Run the face tracker over a prepared source: all the tracking thread does. Never raises."""
    job = state.job
    state.spool = job.out_dir / "tmp" / f"{job.source['source_key']}.landmarks.f32"
    try:
        if state.error is None:
            state.tracks = track_video(state.frames, job.data_cfg.fps, job.extract_cfg, state.spool, background)
    except Exception as error:  # noqa: BLE001 - see _error_reason
        state.error = _error_reason(error)
    finally:
        if state.frames is not None:
            state.frames.close()


def _finish(state: SourceState) -> list[dict]:
    """Cut, align and save a tracked source's clips; write its record last. Never raises: one bad file cannot
    stop the others."""
    job = state.job
    try:
        if state.error:
            raise ExtractionError(state.error)
        rows = clips.clips_from_tracks(job, settings_key(job.data_cfg, job.extract_cfg), state.source_hash, state.audio,
                                       state.tracks, state.frames.decode_errors)
    except Exception as error:  # noqa: BLE001 - see _error_reason
        rows = [_failure_row(job, state.source_hash, _error_reason(error))]
    finally:
        if state.spool is not None:
            state.spool.unlink(missing_ok=True)
            state.spool.with_suffix(".second.f32").unlink(missing_ok=True)
    record = dict(source=str(job.source["path"]), source_hash=state.source_hash,
                  settings=settings_key(job.data_cfg, job.extract_cfg), rows=rows)
    files.write_json(store.source_record_path(job.out_dir, job.source["source_key"]), record)
    return rows


def extract_sequence(jobs: Iterable[Job]) -> Iterator[list[dict]]:
    """Extract sources one after another, yielding each one's manifest rows in order.

    The tracking thread only tracks. Helper threads, kept to the other CPUs, prepare the next source (hash,
    audio, the first decoded frames), run the checks for a second face, and cut, align and save the source
    tracked before. Written by hand because a source's start-up and saving cost some 0.1 s, about 40 frames
    of FaceMesh time, and the reference data are short clips: done beside the tracking, they cost little.
    """
    jobs = iter(jobs)
    tracking_cpus, decoding_cpus = worker_processes.split_cpus()

    def prepare_next():
        job = next(jobs, None)
        return None if job is None else helper.submit(_prepare, job)

    with futures.ThreadPoolExecutor(3, thread_name_prefix="a2m-helper", initializer=worker_processes.keep_to,
                                    initargs=(decoding_cpus,)) as helper, worker_processes.kept_to(tracking_cpus):
        upcoming, finishing = prepare_next(), collections.deque()
        try:
            while upcoming is not None:
                state = upcoming.result()
                upcoming = prepare_next()
                _track(state, background=helper)
                finishing.append(helper.submit(_finish, state))
                while finishing and finishing[0].done():
                    yield finishing.popleft().result()
            while finishing:
                yield finishing.popleft().result()
        finally:  # stopped early: do not leave the next source's decoder running (saving still completes)
            if upcoming is not None and (frames := upcoming.result().frames) is not None:
                frames.close()


def _failure_row(job: Job, source_hash: str, reason: str) -> dict:
    return dict(clip_id="", speaker=job.source["speaker"], language=job.source["language"],
                source=str(job.source["path"]), start=np.nan, end=np.nan, n_frames=0, audio_seconds=np.nan,
                fps=job.data_cfg.fps, status="failed", reason=reason,
                settings=settings_key(job.data_cfg, job.extract_cfg), source_hash=source_hash,
                interpolated_frames=0, multi_face_frames=0)


def _is_done(out_dir: Path, source: dict, settings: str) -> bool:
    record_path = store.source_record_path(out_dir, source["source_key"])
    if not record_path.exists():
        return False
    record = json.loads(record_path.read_text())
    if record["settings"] != settings or record["source_hash"] != file_hash(source["path"]):
        return False
    return all(store.clip_path(out_dir, row["clip_id"]).exists() for row in record["rows"] if row["clip_id"])


def extract_store(raw_dir: str | Path, out_dir: str | Path, data_cfg: DataConfig, extract_cfg: ExtractConfig,
                  workers: int | None = None, shard: tuple[int, int] = (0, 1), progress: bool = True):
    """Extract every video under raw_dir (this shard's share) into the clip store; return the manifest.

    `workers`: processes (default `extract_cfg.workers`; 0 = one per CPU). MediaPipe's native log goes to
    a file and only its lines that are not known chatter reach Python's logging (a2m_lib.workers).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index, count = shard
    settings = settings_key(data_cfg, extract_cfg)
    for needed in (extract_cfg.task_file if extract_cfg.extractor == "tasks" else "", extract_cfg.canonical_model):
        if needed and not Path(needed).is_file():  # a setting error, not a per-file one: stop before any work
            raise FileNotFoundError(f"{needed} does not exist (extract.task_file / extract.canonical_model)")
    if extract_cfg.extractor == "tasks" and not extract_cfg.task_file:
        raise FileNotFoundError("extract.extractor=tasks needs extract.task_file: the path to a FaceLandmarker .task file")
    found = find_sources(raw_dir)
    sources = [s for number, s in enumerate(found) if number % count == index]
    jobs = [Job(s, out_dir, data_cfg, extract_cfg) for s in sources if not _is_done(out_dir, s, settings)]
    n_workers = extract_cfg.workers if workers is None else workers
    if n_workers <= 0:
        n_workers = len(worker_processes.available_cpus()) or os.cpu_count() or 1
    started = time.time()
    log_dir = out_dir / "tmp"
    with worker_processes.native_stderr_to(log_dir / "native.log") as native_log:
        bar = tqdm(total=len(jobs), desc="extract", unit="video", disable=not progress)
        if n_workers <= 1 or len(jobs) <= 1:
            for _ in extract_sequence(jobs):
                bar.update()
            unfinished = []
        else:
            unfinished = worker_processes.run_processes(
                extract_sequence, jobs, n_workers, on_result=lambda _: bar.update(), key=lambda rows: rows[0]["source"],
                job_key=lambda job: str(job.source["path"]), log_dir=log_dir)
        bar.close()
    worker_processes.forward_native_log(native_log)
    manifest = faces.finalise_store(out_dir, {s["source_key"] for s in found})
    if unfinished:
        paths = [str(job.source["path"]) for job in unfinished]
        raise RuntimeError(f"an extraction worker process died; {len(paths)} source(s) were not finished: "
                           f"{', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''}. Everything else is "
                           "saved: run the same command again to resume, with --workers 1 to see the error of a file "
                           "that keeps failing")
    if progress:
        counts = manifest.status.value_counts().to_dict()
        print(f"extracted {len(jobs)} new source(s) of {len(sources)} in {time.time() - started:.1f} s; "
              f"{counts.get('ok', 0)} clips, {counts.get('skipped', 0)} skipped pieces, {counts.get('failed', 0)} failed sources")
    return manifest

