"""Stage 01: videos -> clip store of pose-free MediaPipe meshes and 16 kHz mono audio.

    manifest = extract.extract_store("data/raw/demo", "data/processed/demo", cfg.data, cfg.extract)

Per source video: audio is decoded on the video's clock (stream start times honoured), frames are
resampled to `data.fps` by timestamp and streamed through MediaPipe FaceMesh in tracking mode. Face
gaps of up to `extract.max_gap_frames` are interpolated and marked; longer gaps end a clip. Videos
longer than `extract.segment_max_seconds` are cut into clips at speech pauses.

Layout of the clip store (`data.processed`):

    clips/<clip_id>.npz     one file per clip (see CLIP_KEYS), written then renamed: never half-written
    sources/<source>.json   per source: its hash, the settings, and its manifest rows (clips, skipped
                            pieces, or the failure), written last, so it marks the source as done
    manifest.csv            all rows of sources/*.json: one per clip, per skipped piece, per failed source
    tmp/                    landmarks of the video being tracked, spooled to disk (deleted when done)

A source whose record has the same source hash and extractor settings is skipped, so an interrupted
extraction resumes where it stopped, and shards run on several machines merge by copying folders.

Optional metadata: `RAW_DIR/metadata.csv` (columns `file`, relative to RAW_DIR, and `speaker` and/or
`language`) or a sidecar `<video>.json` with those keys. Otherwise `RAW_DIR/<speaker>/<file>` names the speaker.
"""
from __future__ import annotations

import collections
import concurrent.futures as futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import queue
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from tqdm.auto import tqdm

from . import media, mesh
from .config import DataConfig, ExtractConfig

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m4v"}
MANIFEST_COLUMNS = ["clip_id", "speaker", "language", "source", "start", "end", "n_frames", "audio_seconds",
                    "fps", "status", "reason", "settings", "source_hash", "interpolated_frames", "multi_face_frames"]
CLIP_KEYS = {
    "mesh": "(T, 478, 3) float32 pose-free mesh in mesh units (see a2m_lib.mesh); NaN where no face",
    "landmarks_image": "(T, 478, 3) float32 MediaPipe landmarks in source pixels (z on the x scale)",
    "face_found": "(T,) bool, MediaPipe found a face in this frame",
    "interpolated": "(T,) bool, landmarks interpolated across a short detection gap",
    "n_faces": "(T,) int, faces seen; the largest, most central one was used",
    "repeated": "(T,) bool, the frame repeats the previous one (source frame rate below data.fps); landmarks copied",
    "pose_scale": "(T,) float32, image -> mesh: mesh = scale * R @ landmark + t",
    "pose_rotation": "(T, 3, 3) float32 R",
    "pose_translation": "(T, 3) float32 t",
    "audio": "(samples,) float32 mono at sample_rate Hz, starting at the clip's first frame",
    "blendshapes": "tasks extractor only: (T, 52) float32 MediaPipe blendshape scores (names in blendshape_names)",
    "transformation_matrix": "tasks extractor only: (T, 4, 4) float32 facial transformation matrix",
    "meta": "JSON string: the clip's manifest row",
}


class ExtractionError(RuntimeError):
    """A source file that yields no clip; the message says why."""


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


def _tracker(fps: float, cfg: ExtractConfig, background=None):
    if cfg.extractor == "tasks":
        return mesh.TasksTracker(cfg.task_file, fps, cfg.max_faces, cfg.min_detection_confidence,
                                 cfg.min_tracking_confidence)
    if cfg.extractor != "facemesh":
        raise ValueError(f"extract.extractor '{cfg.extractor}' is not known; use facemesh or tasks")
    return mesh.FaceTracker(cfg.refine_landmarks, False, cfg.min_detection_confidence, cfg.min_tracking_confidence,
                            cfg.max_faces, background=background)


def track_video(frames: media.FrameReader, fps: float, extract_cfg: ExtractConfig, spool: Path, background=None):
    """Run the face tracker over a video's frames (a started FrameReader), spooling landmarks to disk.

    Landmarks go to the file `spool` as they come (5.7 kB a frame) and are read back clip by clip
    (SpooledLandmarks), so memory does not grow with the video's length. A frame whose pixels repeat the
    previous frame's (a 25 fps source at 30 fps) gets the previous frame's result instead of a second
    tracker call: the face did not move, so neither do its landmarks.
    Returns the (T, N, 3) landmarks in source pixels (NaN where no face), (T,) found, (T,) number of faces,
    and extras: `repeated` (T,), plus for the tasks extractor blendshapes (T, 52), transformation_matrix
    (T, 4, 4) and blendshape_names.
    """
    n_faces, repeats, blendshapes, matrices = [], [], [], []
    tasks = extract_cfg.extractor == "tasks"
    n_points = mesh.N_LANDMARKS_REFINED if extract_cfg.refine_landmarks or tasks else mesh.N_LANDMARKS
    missing = np.full((n_points, 3), np.nan, np.float32)
    no_blendshapes, no_matrix = np.full(52, np.nan, np.float32), np.full((4, 4), np.nan, np.float32)
    spool.parent.mkdir(parents=True, exist_ok=True)
    with _tracker(fps, extract_cfg, background) as tracker, open(spool, "wb") as spooled:
        for frame, repeated in frames:
            repeated = repeated and bool(n_faces)
            if not repeated:
                height, width = frame.shape[:2]
                shrink = min(1.0, extract_cfg.max_side_px / max(height, width))
                if shrink < 1:
                    frame = cv2.resize(frame, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
                points, count, *task_outputs = tracker.track(frame)
                row = (missing if points is None else (points / shrink).astype(np.float32)).tobytes()
            spooled.write(row)
            n_faces.append(count)
            repeats.append(repeated)
            if tasks:
                blendshapes.append(task_outputs[0] if points is not None else no_blendshapes)
                matrices.append(task_outputs[1] if points is not None else no_matrix)
        names = getattr(tracker, "blendshape_names", [])
    if not n_faces:
        raise ExtractionError("no video frames could be decoded")
    extras = {"repeated": np.array(repeats)}
    if tasks:
        extras.update(blendshapes=np.stack(blendshapes), transformation_matrix=np.stack(matrices),
                      blendshape_names=np.array(names))
    n_faces = np.array(n_faces)
    return SpooledLandmarks(spool, len(n_faces), n_points), n_faces > 0, n_faces, extras


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


def frame_energy(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    """Log RMS loudness per video frame, (n_frames,): frame t covers [t, t+1) / fps.

    numpy, not librosa.feature.rms: importing librosa.feature costs about 2 s per process (numba),
    which would dominate a worker's first clip.
    """
    hop = sample_rate / fps
    starts = np.round(np.arange(n_frames) * hop).astype(int)
    inside = starts < len(audio)
    power = np.zeros(n_frames)
    bounds = np.append(starts[inside], len(audio))
    for first in range(0, int(inside.sum()), 9000):  # 5 minutes at a time: no full-length temporary
        block = bounds[first: first + 9001]
        squares = np.square(audio[block[0]: block[-1]], dtype=np.float32)
        sums = np.add.reduceat(squares, block[:-1] - block[0]) if len(squares) else np.zeros(len(block) - 1)
        power[first: first + len(block) - 1] = sums / np.maximum(np.diff(block), 1)
    return np.log(np.sqrt(power) + 1e-5)


def plan_clips(found: np.ndarray, energy: np.ndarray, fps: float, cfg: ExtractConfig) -> tuple[list, list]:
    """Where clips start and end, in frames: ([(start, end)], [(start, end, reason)] of skipped pieces).

    Face tracks are split at gaps longer than max_gap_frames. A track longer than segment_max_seconds
    is cut at its quietest frame inside each allowed window (a pause in speech, if there is one).
    A video that fits in one clip is kept whole, however short (QA judges it); pieces of longer
    videos shorter than segment_min_seconds are skipped with a reason.
    """
    n_frames = len(found)
    min_frames = int(round(cfg.segment_min_seconds * fps))
    max_frames = int(round(cfg.segment_max_seconds * fps))
    found_at = np.flatnonzero(found)
    runs, skipped = [], []
    start = found_at[0]
    for before, after in zip(found_at[:-1], found_at[1:]):
        if after - before - 1 > cfg.max_gap_frames:
            runs.append((start, before + 1))
            skipped.append((before + 1, after, f"no face for {after - before - 1} frames (> extract.max_gap_frames)"))
            start = after
    runs.append((start, found_at[-1] + 1))
    whole_video = len(runs) == 1 and n_frames <= max_frames
    if whole_video:
        return [(0, n_frames)], [(int(a), int(b), reason) for a, b, reason in skipped]  # edge frames without a face stay NaN; QA counts them
    clips = []
    for run_start, run_end in runs:
        position = run_start
        while run_end - position > max_frames:
            window = energy[position + min_frames: position + max_frames + 1]
            cut = position + min_frames + int(np.argmin(window))
            clips.append((position, cut))
            position = cut
        if run_end - position >= min_frames:
            clips.append((position, run_end))
        else:
            skipped.append((position, run_end, f"{(run_end - position) / fps:.2f} s piece is shorter than "
                                               f"extract.segment_min_seconds={cfg.segment_min_seconds}"))
    return [(int(a), int(b)) for a, b in clips], [(int(a), int(b), reason) for a, b, reason in skipped]


def _interpolate_gaps(landmarks: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of landmarks across interior detection gaps; returns (landmarks, interpolated)."""
    interpolated = np.zeros(len(found), bool)
    found_at = np.flatnonzero(found)
    gaps = np.setdiff1d(np.arange(found_at[0], found_at[-1] + 1), found_at) if len(found_at) > 1 else []
    if len(gaps) == 0:
        return landmarks, interpolated
    filled = landmarks.copy()
    from scipy.interpolate import interp1d

    filled[gaps] = interp1d(found_at, landmarks[found_at], axis=0)(gaps)
    interpolated[gaps] = True
    return filled, interpolated


def pose_reference(cfg: ExtractConfig, n_points: int) -> np.ndarray:
    """The mesh every frame is aligned to: the user's canonical model if given, else the built-in one."""
    if cfg.canonical_model:
        return mesh.load_canonical_model(cfg.canonical_model, n_points)
    return mesh.reference_mesh()[:n_points]


def _save_clip(out_dir: Path, clip_id: str, row: dict, landmarks: np.ndarray, found: np.ndarray,
               interpolated: np.ndarray, n_faces: np.ndarray, audio: np.ndarray, reference: np.ndarray,
               extras: dict) -> None:
    n_frames = len(found)
    usable = found | interpolated
    meshes = np.full_like(landmarks, np.nan)
    scales = np.full(n_frames, np.nan, np.float32)
    rotations = np.full((n_frames, 3, 3), np.nan, np.float32)
    translations = np.full((n_frames, 3), np.nan, np.float32)
    if usable.any():
        meshes[usable], scales[usable], rotations[usable], translations[usable] = mesh.remove_pose_batch(
            landmarks[usable], reference)
    clips_dir = out_dir / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    tmp = clips_dir / f"{clip_id}.part.npz"
    np.savez(tmp, mesh=meshes, landmarks_image=landmarks, face_found=found, interpolated=interpolated,
             n_faces=n_faces, pose_scale=scales, pose_rotation=rotations, pose_translation=translations,
             audio=audio, meta=json.dumps(row), **extras)
    tmp.replace(clips_dir / f"{clip_id}.npz")


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


def _prepare(job: tuple) -> dict:
    """What can start before the previous source is done: its hash, stream checks, audio and frame decoder.

    Never raises; a failure comes back as `error`, to be recorded against the file.
    """
    source, _, data_cfg, _ = job
    prepared = dict(job=job, source_hash="", audio=None, frames=None, error=None)
    try:
        prepared["source_hash"] = file_hash(source["path"])
        prepared["audio"] = checked_audio(source["path"], data_cfg)
        prepared["frames"] = media.FrameReader(source["path"], data_cfg.fps)
    except Exception as error:  # noqa: BLE001 - see _error_reason
        prepared["error"] = _error_reason(error)
    return prepared


def _track_prepared(prepared: dict, background=None) -> None:
    """Run the face tracker over a prepared source: all the tracking thread does. Never raises."""
    source, out_dir, data_cfg, extract_cfg = prepared["job"]
    prepared["spool"] = out_dir / "tmp" / f"{source['source_key']}.landmarks.f32"
    try:
        if prepared["error"] is None:
            prepared["tracks"] = track_video(prepared["frames"], data_cfg.fps, extract_cfg, prepared["spool"], background)
    except Exception as error:  # noqa: BLE001 - see _error_reason
        prepared["error"] = _error_reason(error)
    finally:
        if prepared["frames"] is not None:
            prepared["frames"].close()


def _finish_prepared(prepared: dict) -> list[dict]:
    """Cut, align and save a tracked source's clips; write its record last. Never raises: one bad file cannot
    stop the others."""
    source, out_dir, data_cfg, extract_cfg = prepared["job"]
    try:
        if prepared["error"]:
            raise ExtractionError(prepared["error"])
        rows = _clips_from_tracks(source, out_dir, data_cfg, extract_cfg, prepared["source_hash"], prepared["audio"],
                                  prepared["tracks"], prepared["frames"].decode_errors)
    except Exception as error:  # noqa: BLE001 - see _error_reason
        rows = [_failure_row(source, data_cfg, extract_cfg, prepared["source_hash"], _error_reason(error))]
    finally:
        if prepared.get("spool"):
            prepared["spool"].unlink(missing_ok=True)
    record = dict(source=str(source["path"]), source_hash=prepared["source_hash"],
                  settings=settings_key(data_cfg, extract_cfg), rows=rows)
    (out_dir / "sources").mkdir(parents=True, exist_ok=True)
    media.write_json_atomic(out_dir / "sources" / f"{source['source_key']}.json", record)
    return rows


def extract_sequence(jobs: Iterable[tuple]) -> Iterator[list[dict]]:
    """Extract sources one after another, yielding each one's manifest rows in order.

    The tracking thread only tracks. Helper threads, kept to the other CPUs, prepare the next source (hash,
    audio, the first decoded frames), run the checks for a second face, and cut, align and save the source
    tracked before. Written by hand because a source's start-up and saving cost some 0.1 s, about 40 frames
    of FaceMesh time, and the reference data are short clips: done beside the tracking, they cost little.
    """
    jobs = iter(jobs)
    tracking_cpus, decoding_cpus = _split_cpus()

    def prepare_next():
        job = next(jobs, None)
        return None if job is None else helper.submit(_prepare, job)

    with futures.ThreadPoolExecutor(3, thread_name_prefix="a2m-helper", initializer=_keep_to, initargs=(decoding_cpus,)) \
            as helper, _kept_to(tracking_cpus):
        upcoming, finishing = prepare_next(), collections.deque()
        try:
            while upcoming is not None:
                prepared = upcoming.result()
                upcoming = prepare_next()
                _track_prepared(prepared, background=helper)
                finishing.append(helper.submit(_finish_prepared, prepared))
                while finishing and finishing[0].done():
                    yield finishing.popleft().result()
            while finishing:
                yield finishing.popleft().result()
        finally:  # stopped early: do not leave the next source's decoder running (saving still completes)
            if upcoming is not None and (frames := upcoming.result()["frames"]) is not None:
                frames.close()


def _split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(CPU for tracking, CPUs for decoding and preparing) out of this process's CPUs; None, None with one CPU.

    FaceMesh runs its graph on several threads; kept to one CPU they hand frames to each other without
    moving between caches: FaceMesh alone makes about 406 frames/s on one CPU and 366 free to move
    (benchmarks/README.md). The decoder threads, which the helper thread starts, and the ffmpeg processes
    for audio get the other CPUs.
    """
    cpus = _available_cpus()
    return (None, None) if len(cpus) < 2 else ({cpus[0]}, set(cpus[1:]))


def _available_cpus() -> list[int]:
    """The CPUs this thread may run on; empty where the platform cannot tell or pin (then nothing is pinned)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _keep_to(cpus: set[int] | None) -> None:
    """Keep the calling thread (and the threads and processes it starts later) to `cpus`."""
    if cpus:
        os.sched_setaffinity(0, cpus)  # on Linux, pid 0 is the calling thread, not the whole process


@contextlib.contextmanager
def _kept_to(cpus: set[int] | None):
    """The calling thread kept to `cpus` for the duration; afterwards it may run anywhere it could before."""
    before = os.sched_getaffinity(0) if cpus else None
    _keep_to(cpus)
    try:
        yield
    finally:
        _keep_to(before)


def _worker(job_queue, result_queue, cores: set[int] | None = None) -> None:
    """A worker process: extract sources from the shared queue until it hands out None; send back their rows.

    `cores`: the CPUs this worker (and the ffmpeg decoders it starts, which inherit it) may run on.
    """
    _keep_to(cores)

    def jobs():
        while (job := job_queue.get()) is not None:
            yield job

    for rows in extract_sequence(jobs()):
        result_queue.put(rows)


def _clips_from_tracks(source: dict, out_dir: Path, data_cfg: DataConfig, extract_cfg: ExtractConfig,
                       source_hash: str, audio: np.ndarray, tracks: tuple, decode_errors: int) -> list[dict]:
    path = source["path"]
    landmarks, found, n_faces, extras = tracks
    reference = pose_reference(extract_cfg, landmarks.shape[1])
    if not found.any():
        raise ExtractionError(f"MediaPipe found no face in any of {len(found)} frames")

    fps, samples_per_frame = data_cfg.fps, data_cfg.sample_rate / data_cfg.fps
    energy = frame_energy(audio, data_cfg.sample_rate, fps, len(found))
    clips, skipped = plan_clips(found, energy, fps, extract_cfg)
    common = dict(speaker=source["speaker"], language=source["language"], source=str(path), fps=fps,
                  settings=settings_key(data_cfg, extract_cfg), source_hash=source_hash)
    rows = []
    for number, (start, end) in enumerate(clips):
        clip_id = source["source_key"] if len(clips) == 1 else f"{source['source_key']}_{number:03d}"
        piece_landmarks, interpolated = _interpolate_gaps(landmarks[start:end], found[start:end])
        if len(clips) == 1 and (start, end) == (0, len(found)):
            piece_audio = audio  # the whole video: keep all of its audio, so QA sees any length mismatch
        else:
            piece_audio = audio[int(round(start * samples_per_frame)): int(round(end * samples_per_frame))]
        row = dict(common, clip_id=clip_id, start=round(start / fps, 4), end=round(end / fps, 4), n_frames=end - start,
                   audio_seconds=round(len(piece_audio) / data_cfg.sample_rate, 6), status="ok", reason="",
                   interpolated_frames=int(interpolated.sum()), multi_face_frames=int((n_faces[start:end] > 1).sum()))
        notes = [f"{row['multi_face_frames']} frames showed several faces; the largest, most central was used"] \
            if row["multi_face_frames"] else []
        if decode_errors:
            notes.append(f"the source has {decode_errors} damaged video packets, skipped (the frame before "
                         "them stands in for theirs)")
        row["reason"] = "; ".join(notes)
        piece_extras = {key: value if key == "blendshape_names" else value[start:end] for key, value in extras.items()}
        _save_clip(out_dir, clip_id, row, piece_landmarks, found[start:end], interpolated, n_faces[start:end],
                   piece_audio, reference, piece_extras)
        rows.append(row)
    for start, end, reason in skipped:
        rows.append(dict(common, clip_id="", start=round(start / fps, 4), end=round(end / fps, 4), n_frames=end - start,
                         audio_seconds=np.nan, status="skipped", reason=reason, interpolated_frames=0, multi_face_frames=0))
    if not clips:
        raise ExtractionError("no clip long enough: " + "; ".join(reason for *_, reason in skipped))
    return rows


def _failure_row(source: dict, data_cfg: DataConfig, extract_cfg: ExtractConfig, source_hash: str, reason: str) -> dict:
    return dict(clip_id="", speaker=source["speaker"], language=source["language"], source=str(source["path"]),
                start=np.nan, end=np.nan, n_frames=0, audio_seconds=np.nan, fps=data_cfg.fps, status="failed",
                reason=reason, settings=settings_key(data_cfg, extract_cfg), source_hash=source_hash,
                interpolated_frames=0, multi_face_frames=0)


def load_clip(out_dir: str | Path, clip_id: str) -> dict:
    """One clip of the store as a dict of arrays (keys: CLIP_KEYS), `meta` parsed."""
    path = Path(out_dir) / "clips" / f"{clip_id}.npz"
    if not path.exists():
        raise FileNotFoundError(f"clip {path} does not exist; re-run extraction (notebook 01) for {out_dir}")
    try:
        with np.load(path) as data:
            clip = {key: data[key] for key in data.files}
        clip["meta"] = json.loads(str(clip["meta"]))
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"clip file {path} is unreadable ({type(error).__name__}: {error}); delete it and "
                         f"re-run extraction, which redoes only what is missing") from error
    return clip


def _is_done(out_dir: Path, source: dict, settings: str) -> bool:
    record_path = out_dir / "sources" / f"{source['source_key']}.json"
    if not record_path.exists():
        return False
    record = json.loads(record_path.read_text())
    if record["settings"] != settings or record["source_hash"] != file_hash(source["path"]):
        return False
    return all((out_dir / "clips" / f"{row['clip_id']}.npz").exists() for row in record["rows"] if row["clip_id"])


def write_manifest(out_dir: str | Path) -> pd.DataFrame:
    """Rebuild manifest.csv from sources/*.json (so shards written separately merge)."""
    out_dir = Path(out_dir)
    rows = [row for record_path in sorted((out_dir / "sources").glob("*.json"))
            for row in json.loads(record_path.read_text())["rows"]]
    import pandas as pd

    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    tmp = out_dir / "manifest.csv.part"
    manifest.to_csv(tmp, index=False)
    tmp.replace(out_dir / "manifest.csv")
    return manifest


def _core_groups(n_workers: int) -> list[set[int] | None]:
    """The CPUs each worker keeps to: the available ones split into `n_workers` groups.

    Without it, every worker would keep its FaceMesh to the same first CPU (see _split_cpus): on a 2-core
    machine two workers made 311 frames/s that way, and 446 with one CPU each (benchmarks/README.md).
    With more workers than CPUs, workers share CPUs round-robin.
    """
    cpus = _available_cpus()
    if not cpus:
        return [None] * n_workers
    if n_workers >= len(cpus):
        return [{cpus[number % len(cpus)]} for number in range(n_workers)]
    return [set(map(int, group)) for group in np.array_split(cpus, n_workers)]


def _run_workers(jobs: list[tuple], workers: int, bar) -> list[str]:
    """Run jobs on `workers` processes that pull from one queue (so long and short videos balance out).

    Returns the sources left unfinished because a worker process died (a crash inside a native library);
    the other workers carry on with the rest of the queue.
    """
    context = multiprocessing.get_context("spawn")  # MediaPipe graphs must not be inherited through fork
    job_queue, result_queue = context.Queue(), context.Queue()
    n_processes = min(workers, len(jobs))
    for job in jobs + [None] * n_processes:
        job_queue.put(job)
    processes = [context.Process(target=_worker, args=(job_queue, result_queue, cores), name=f"a2m-extract-{number}")
                 for number, cores in enumerate(_core_groups(n_processes))]
    for process in processes:
        process.start()
    finished = set()
    try:
        while len(finished) < len(jobs):
            try:
                rows = result_queue.get(timeout=1.0)
            except queue.Empty:
                if not any(process.is_alive() for process in processes):
                    break
                continue
            finished.add(rows[0]["source"])
            bar.update()
    finally:
        for process in processes:
            if len(finished) == len(jobs):
                process.join()
            else:
                process.terminate()
    return [str(job[0]["path"]) for job in jobs if str(job[0]["path"]) not in finished]


def extract_store(raw_dir: str | Path, out_dir: str | Path, data_cfg: DataConfig, extract_cfg: ExtractConfig,
                  workers: int | None = None, shard: tuple[int, int] = (0, 1), progress: bool = True) -> pd.DataFrame:
    """Extract every video under raw_dir (this shard's share) into the clip store; return the manifest.

    `workers`: processes (default `extract_cfg.workers`; 0 = one per CPU).
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
    sources = [s for number, s in enumerate(find_sources(raw_dir)) if number % count == index]
    jobs = [(s, out_dir, data_cfg, extract_cfg) for s in sources if not _is_done(out_dir, s, settings)]
    workers = extract_cfg.workers if workers is None else workers
    if workers <= 0:
        workers = len(_available_cpus()) or os.cpu_count() or 1
    started = time.time()
    bar = tqdm(total=len(jobs), desc="extract", unit="video", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        for _ in extract_sequence(jobs):
            bar.update()
        unfinished = []
    else:
        unfinished = _run_workers(jobs, workers, bar)
    bar.close()
    manifest = write_manifest(out_dir)
    if unfinished:
        raise RuntimeError(f"an extraction worker process died; {len(unfinished)} source(s) were not finished: "
                           f"{', '.join(unfinished[:5])}{' ...' if len(unfinished) > 5 else ''}. Everything else is "
                           "saved: run the same command again to resume, with --workers 1 to see the error of a file "
                           "that keeps failing")
    if progress:
        counts = manifest.status.value_counts().to_dict()
        print(f"extracted {len(jobs)} new source(s) of {len(sources)} in {time.time() - started:.1f} s; "
              f"{counts.get('ok', 0)} clips, {counts.get('skipped', 0)} skipped pieces, {counts.get('failed', 0)} failed sources")
    return manifest


def plot_clip(processed: str | Path, clip_id: str):
    """A frame with its landmarks, the pose-free mesh from the front and the side, and the mouth over time."""
    import matplotlib.pyplot as plt

    clip = load_clip(processed, clip_id)
    meta = clip["meta"]
    frame_index = int(np.argmax(clip["face_found"]))
    frame = media.read_frame(meta["source"], float(meta["start"]) + frame_index / float(meta["fps"]))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), gridspec_kw={"width_ratios": [1, 1, 1, 2]})
    if frame is not None:
        axes[0].imshow(frame)
    points = clip["landmarks_image"][frame_index]
    axes[0].scatter(points[:, 0], points[:, 1], s=0.3, color="lime")
    axes[0].set(title=f"frame {frame_index} + landmarks")
    shape = clip["mesh"][frame_index]
    axes[1].scatter(shape[:, 0], shape[:, 1], s=0.5)
    axes[1].set(title="pose-free mesh, front", xlabel="x")
    axes[2].scatter(shape[:, 2], shape[:, 1], s=0.5)
    axes[2].set(title="side", xlabel="z")
    for axis in axes[:3]:
        axis.set_aspect("equal")
        axis.invert_yaxis() if axis is not axes[0] else None
    t = np.arange(len(clip["mesh"])) / float(meta["fps"])
    axes[3].plot(t, mesh.mouth_opening(clip["mesh"]), label="inner-lip gap (mesh units)")
    axes[3].fill_between(t, 0, (~clip["face_found"]) * np.nanmax(mesh.mouth_opening(clip["mesh"])), color="tab:red",
                         alpha=0.3, label="no face")
    axes[3].set(xlabel="seconds", title=clip_id)
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    return fig
