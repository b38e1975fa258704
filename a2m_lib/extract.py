"""Stage 01: videos -> clip store of pose-free MediaPipe meshes and 16 kHz mono audio.

    manifest = extract.extract_store("data/raw/demo", "data/processed/demo", cfg.data, cfg.extract)

Layout of the clip store (`data.processed`):

    clips/<clip_id>.npz     one file per clip (see CLIP_KEYS), written then renamed: never half-written
    failed/<source>.json    one record per source file that produced no clip, with the reason
    manifest.csv            one row per clip and per failed source, rebuilt from the two folders above

A source whose clip file already exists with the same source hash and extractor settings is skipped,
so an interrupted extraction resumes where it stopped.
"""
from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import multiprocessing
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import media, mesh
from .config import DataConfig, ExtractConfig

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m4v"}
MANIFEST_COLUMNS = ["clip_id", "speaker", "language", "source", "start", "end", "n_frames", "audio_seconds",
                    "fps", "status", "reason", "settings", "source_hash"]
CLIP_KEYS = {
    "mesh": "(T, 478, 3) float32 pose-free mesh in mesh units (see a2m_lib.mesh); NaN where no face",
    "landmarks_image": "(T, 478, 3) float32 MediaPipe landmarks in pixels (z on the x scale)",
    "face_found": "(T,) bool, MediaPipe found a face in this frame",
    "pose_scale": "(T,) float32, image -> mesh: mesh = scale * R @ landmark + t",
    "pose_rotation": "(T, 3, 3) float32 R",
    "pose_translation": "(T, 3) float32 t",
    "audio": "(samples,) float32 mono at sample_rate Hz",
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


def find_sources(raw_dir: str | Path) -> list[tuple[Path, str]]:
    """Video files under raw_dir as (path, speaker); `raw_dir/<speaker>/<file>` names the speaker."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw video folder {raw_dir} does not exist; set data.raw to a folder of videos")
    sources = []
    for path in sorted(raw_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and ".part" not in path.suffixes:
            relative = path.relative_to(raw_dir)
            speaker = relative.parts[0] if len(relative.parts) > 1 else "default"
            sources.append((path, speaker))
    return sources


def source_id(path: Path, raw_dir: Path) -> str:
    return "__".join(path.relative_to(raw_dir).with_suffix("").parts)


def settings_key(data_cfg: DataConfig, extract_cfg: ExtractConfig) -> str:
    return json.dumps({"fps": data_cfg.fps, "sample_rate": data_cfg.sample_rate, **asdict(extract_cfg)}, sort_keys=True)


def track_video(path: Path, fps: float, extract_cfg: ExtractConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stream frames at `fps` through FaceMesh tracking: (T, 478, 3) pixels (NaN where no face), (T,) found."""
    landmarks, found = [], []
    n_points = mesh.N_LANDMARKS_REFINED if extract_cfg.refine_landmarks else mesh.N_LANDMARKS
    with mesh.FaceTracker(extract_cfg.refine_landmarks, False, extract_cfg.min_detection_confidence,
                          extract_cfg.min_tracking_confidence) as tracker:
        for frame in media.iter_frames(path, fps):
            height, width = frame.shape[:2]
            shrink = extract_cfg.max_side_px / max(height, width)
            small = cv2.resize(frame, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA) if shrink < 1 else frame
            points = tracker(small)
            if points is None:
                landmarks.append(np.full((n_points, 3), np.nan, np.float32))
                found.append(False)
            else:
                landmarks.append(points / min(shrink, 1.0))
                found.append(True)
    if not landmarks:
        raise ExtractionError("no video frames could be decoded")
    return np.stack(landmarks).astype(np.float32), np.array(found)


def extract_clip(path: Path, speaker: str, clip_id: str, out_dir: Path, data_cfg: DataConfig,
                 extract_cfg: ExtractConfig, source_hash: str) -> dict:
    """Extract one source file into clips/<clip_id>.npz; return its manifest row. Raises ExtractionError."""
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
    if float(np.sqrt(np.mean(audio ** 2))) < 1e-4:
        raise ExtractionError("the audio track is silent (RMS < 1e-4)")
    landmarks, found = track_video(path, data_cfg.fps, extract_cfg)
    if not found.any():
        raise ExtractionError(f"MediaPipe found no face in any of {len(found)} frames")

    n_frames = len(found)
    meshes = np.full_like(landmarks, np.nan)
    scales = np.full(n_frames, np.nan, np.float32)
    rotations = np.full((n_frames, 3, 3), np.nan, np.float32)
    translations = np.full((n_frames, 3), np.nan, np.float32)
    reference = mesh.reference_mesh()[: landmarks.shape[1]]
    for t in np.flatnonzero(found):
        meshes[t], scales[t], rotations[t], translations[t] = mesh.remove_pose(landmarks[t], reference)

    row = dict(clip_id=clip_id, speaker=speaker, language="", source=str(path), start=0.0,
               end=round(n_frames / data_cfg.fps, 4), n_frames=n_frames,
               audio_seconds=round(len(audio) / data_cfg.sample_rate, 6), fps=data_cfg.fps, status="ok", reason="",
               settings=settings_key(data_cfg, extract_cfg), source_hash=source_hash)
    clips_dir = out_dir / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    tmp = clips_dir / f"{clip_id}.part.npz"
    np.savez(tmp, mesh=meshes, landmarks_image=landmarks, face_found=found, pose_scale=scales,
             pose_rotation=rotations, pose_translation=translations, audio=audio, meta=json.dumps(row))
    tmp.replace(clips_dir / f"{clip_id}.npz")
    return row


def _extract_one(job: tuple) -> dict:
    """Worker entry: never raises, so one bad file cannot stop the others."""
    path, speaker, clip_id, out_dir, data_cfg, extract_cfg = job
    source_hash = ""
    try:
        source_hash = file_hash(path)
        return extract_clip(path, speaker, clip_id, out_dir, data_cfg, extract_cfg, source_hash)
    except (ExtractionError, media.MediaError) as error:
        reason = str(error)
    except Exception as error:  # noqa: BLE001 - any other failure is recorded per file, with its type
        reason = f"{type(error).__name__}: {error}"
    row = dict(clip_id="", speaker=speaker, language="", source=str(path), start=np.nan, end=np.nan, n_frames=0,
               audio_seconds=np.nan, fps=data_cfg.fps, status="failed", reason=reason,
               settings=settings_key(data_cfg, extract_cfg), source_hash=source_hash)
    failed_dir = out_dir / "failed"
    failed_dir.mkdir(parents=True, exist_ok=True)
    media.write_json_atomic(failed_dir / f"{clip_id}.json", row)
    return row


def load_clip(out_dir: str | Path, clip_id: str) -> dict:
    """One clip of the store as a dict of arrays (keys: CLIP_KEYS), `meta` parsed."""
    path = Path(out_dir) / "clips" / f"{clip_id}.npz"
    with np.load(path) as data:
        clip = {key: data[key] for key in data.files}
    clip["meta"] = json.loads(str(clip["meta"]))
    return clip


def _is_done(out_dir: Path, clip_id: str, settings: str, source_hash_fn) -> bool:
    clip_path = out_dir / "clips" / f"{clip_id}.npz"
    if not clip_path.exists():
        return False
    try:
        with np.load(clip_path) as data:
            meta = json.loads(str(data["meta"]))
    except Exception:  # noqa: BLE001 - an unreadable clip file is simply extracted again
        return False
    return meta.get("settings") == settings and meta.get("source_hash") == source_hash_fn()


def write_manifest(out_dir: str | Path) -> pd.DataFrame:
    """Rebuild manifest.csv from clips/ and failed/ (so shards written separately merge)."""
    out_dir = Path(out_dir)
    rows = []
    for clip_path in sorted((out_dir / "clips").glob("*.npz")):
        if ".part" in clip_path.suffixes:
            continue
        with np.load(clip_path) as data:
            rows.append(json.loads(str(data["meta"])))
    clip_sources = {row["source"] for row in rows}
    for failed_path in sorted((out_dir / "failed").glob("*.json")):
        row = json.loads(failed_path.read_text())
        if row["source"] not in clip_sources:
            rows.append(row)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    tmp = out_dir / "manifest.csv.part"
    manifest.to_csv(tmp, index=False)
    tmp.replace(out_dir / "manifest.csv")
    return manifest


def extract_store(raw_dir: str | Path, out_dir: str | Path, data_cfg: DataConfig, extract_cfg: ExtractConfig,
                  workers: int = 1, shard: tuple[int, int] = (0, 1), progress: bool = True) -> pd.DataFrame:
    """Extract every video under raw_dir (this shard's share) into the clip store; return the manifest."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index, count = shard
    settings = settings_key(data_cfg, extract_cfg)
    jobs = []
    for number, (path, speaker) in enumerate(find_sources(raw_dir)):
        if number % count != index:
            continue
        clip_id = source_id(path, raw_dir)
        if _is_done(out_dir, clip_id, settings, lambda: file_hash(path)):
            continue
        (out_dir / "failed" / f"{clip_id}.json").unlink(missing_ok=True)
        jobs.append((path, speaker, clip_id, out_dir, data_cfg, extract_cfg))
    started = time.time()
    if workers <= 1:
        for job in tqdm(jobs, desc="extract", disable=not progress):
            _extract_one(job)
    else:
        # spawn: MediaPipe graphs must not be inherited through fork
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            for _ in tqdm(pool.map(_extract_one, jobs), total=len(jobs), desc="extract", disable=not progress):
                pass
    manifest = write_manifest(out_dir)
    if progress:
        print(f"extracted {len(jobs)} new source(s) in {time.time() - started:.1f} s; "
              f"{(manifest.status == 'ok').sum()} clips, {(manifest.status == 'failed').sum()} failed sources")
    return manifest


def plot_clip(processed: str | Path, clip_id: str):
    """A frame with its landmarks, the pose-free mesh from the front and the side, and the mouth over time."""
    import matplotlib.pyplot as plt

    clip = load_clip(processed, clip_id)
    meta = clip["meta"]
    frame_index = int(np.argmax(clip["face_found"]))
    frame = None
    for index, image in enumerate(media.iter_frames(meta["source"], meta["fps"])):
        if index == frame_index + int(round(float(meta["start"]) * float(meta["fps"]))):
            frame = image
            break
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
