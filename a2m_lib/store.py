"""The clip store: what extraction writes, and the one way every later stage reads it.

Layout of a store (`data.processed`, e.g. data/processed/demo):

    clips/<clip_id>.npz      one clip (keys below), written then renamed: never half-written
    sources/<source>.json    per source video: {"source", "source_hash", "settings", "rows"}; written last,
                             so it marks the source as done. `rows` are its manifest rows
    manifest.csv             every row of sources/*.json (MANIFEST_COLUMNS): one per clip (status ok), per
                             skipped piece (skipped, with the reason), per failed source (failed, with the reason).
                             With several faces on screen: face_choice (one face | speaker: the face whose mouth
                             follows the audio | largest: the largest, most central, the evidence being weak),
                             face_centre ("x,y" source pixels of the face kept), face_sync_score and
                             other_face_sync_score, face_judge (clip | store: which step of a2m_lib.faces decided)
    measurements/<key>.json  QA's per-clip measurements (offset scores, face coverage), cached by the settings
                             that produce them (a2m_lib.qa); decisions are not kept here but in each run
    tmp/                     landmarks of the video being tracked, spooled to disk (deleted when done)

A clip file (`clips/<clip_id>.npz`) holds CLIP_KEYS. Units: mesh units (the reference's outer eye corners
are 9.0 apart, about 1 cm, see a2m_lib.mesh), frames at `fps` from the clip's meta, audio at the store's
`sample_rate` (16 kHz), starting at the clip's first frame.

Runs never write into the store: a run's files are a2m_lib.rundir's. `load_example` turns one row of a run's
qa.csv into what training, evaluation and prediction consume: audio with the run's QA shift applied, the mesh,
the mask of frames with a face, fps, speaker and language.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import files

MANIFEST_COLUMNS = ["clip_id", "speaker", "language", "source", "start", "end", "n_frames", "audio_seconds",
                    "fps", "status", "reason", "settings", "source_hash", "interpolated_frames", "multi_face_frames",
                    "face_choice", "face_centre", "face_sync_score", "other_face_sync_score", "face_judge"]
CLIP_KEYS = {
    "mesh": "(T, 478, 3) float32 pose-free mesh in mesh units (see a2m_lib.mesh); NaN where no face",
    "landmarks_image": "(T, 478, 3) float32 MediaPipe landmarks in source pixels (z on the x scale)",
    "face_found": "(T,) bool, MediaPipe found a face in this frame",
    "interpolated": "(T,) bool, landmarks interpolated across a short detection gap",
    "n_faces": "(T,) int, faces seen",
    "repeated": "(T,) bool, the frame repeats the previous one (source frame rate below data.fps); landmarks copied",
    "pose_scale": "(T,) float32, image -> mesh: mesh = scale * R @ landmark + t",
    "pose_rotation": "(T, 3, 3) float32 R",
    "pose_translation": "(T, 3) float32 t",
    "audio": "(samples,) float32 mono at sample_rate Hz, starting at the clip's first frame",
    "blendshapes": "tasks extractor only: (T, 52) float32 MediaPipe blendshape scores (names in blendshape_names)",
    "transformation_matrix": "tasks extractor only: (T, 4, 4) float32 facial transformation matrix",
    "other_mesh": "clips with two faces (a2m_lib.faces): the face not kept, as other_<key> for each of the seven "
                  "keys from mesh to pose_translation",
    "meta": "JSON string: the clip's manifest row",
}


def clip_path(processed: str | Path, clip_id: str) -> Path:
    return Path(processed) / "clips" / f"{clip_id}.npz"


def save_clip(processed: str | Path, clip_id: str, arrays: dict, row: dict) -> Path:
    """Write one clip (arrays named as in CLIP_KEYS, `row` its manifest row) atomically."""
    path = clip_path(processed, clip_id)
    with files.atomic_path(path) as tmp:
        np.savez(tmp, meta=json.dumps(row), **arrays)
    return path


def load_clip(processed: str | Path, clip_id: str, keys: tuple[str, ...] | None = None) -> dict:
    """One clip of the store as a dict of arrays (keys: CLIP_KEYS, or only `keys`), `meta` parsed."""
    path = clip_path(processed, clip_id)
    if not path.exists():
        raise FileNotFoundError(f"clip {path} does not exist; re-run extraction (notebook 01) for {processed}")
    try:
        with np.load(path) as data:  # members are read only when asked for
            clip = {key: data[key] for key in data.files if keys is None or key in keys or key == "meta"}
        clip["meta"] = json.loads(str(clip["meta"]))
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"clip file {path} is unreadable ({type(error).__name__}: {error}); delete it and "
                         f"re-run extraction, which redoes only what is missing") from error
    return clip


def source_record_path(processed: str | Path, source_key: str) -> Path:
    return Path(processed) / "sources" / f"{source_key}.json"


def write_manifest(processed: str | Path, sources: set[str] | None = None):
    """Rebuild manifest.csv from sources/*.json (so shard folders copied into one store merge). `sources`: the
    source keys of the videos now under data.raw; records of videos no longer there stay on disk (nothing computed
    is lost, and they come back if the video does) but are left out of the manifest, and so out of QA and training."""
    import pandas as pd  # imported where used: extraction workers start faster without pandas

    processed = Path(processed)
    records = [path for path in sorted((processed / "sources").glob("*.json")) if not files.is_part(path)]
    gone = [path.stem for path in records if sources is not None and path.stem not in sources]
    if gone:
        print(f"{len(gone)} video(s) extracted into {processed} are no longer in the raw folder and are left out of "
              f"its manifest: {', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''}")
    rows = [row for path in records if path.stem not in gone for row in json.loads(path.read_text())["rows"]]
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    with files.atomic_path(processed / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False)
    return manifest


def sample_rate(manifest) -> int:
    """The audio rate a store's clips were extracted at (their settings), 16 kHz for a store without clips."""
    rates = {json.loads(text)["sample_rate"] for text in manifest.settings if text}
    if len(rates) > 1:
        raise ValueError(f"the store holds clips extracted at several audio rates ({sorted(rates)}); extract them again "
                         f"with one data.sample_rate")
    return int(rates.pop()) if rates else 16000


def merge_stores(shards: list[str | Path], processed: str | Path) -> None:
    """Copy the clips and source records of shard stores (`a2m extract --shard i/n --out SHARD`, e.g. one per task
    of a cluster job array) into one store; a2m_lib.faces.finalise_store then writes its manifest. A file present in
    two shards must be the same bytes (the same source extracted twice with the same settings); anything else stops
    with both paths."""
    import filecmp
    import shutil

    processed = Path(processed)
    for shard in map(Path, shards):
        if not (shard / "sources").is_dir():
            raise FileNotFoundError(f"{shard} is not a clip store (no sources/ folder); give the --out folders of "
                                    f"`a2m extract --shard`")
        for folder in ("clips", "sources"):
            for path in sorted((shard / folder).glob("*")):
                if files.is_part(path):
                    continue  # an unfinished write: that source was not finished in this shard
                target = processed / folder / path.name
                if target.exists():
                    if not filecmp.cmp(path, target, shallow=False):
                        raise ValueError(f"{path} and {target} differ: two shards extracted one source with different "
                                         f"settings; extract that source again, or merge into an empty store")
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with files.atomic_path(target) as tmp:
                    shutil.copyfile(path, tmp)


def read_manifest(processed: str | Path):
    import pandas as pd

    path = Path(processed) / "manifest.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run extraction (notebook 01 or `a2m extract`) first")
    return pd.read_csv(path, keep_default_na=False)


def expected_frames(n_samples: int, sample_rate: int, fps: float) -> int:
    """Video frames implied by an audio length: ceil(seconds x fps) (rounded first, against float noise)."""
    return math.ceil(round(n_samples / sample_rate * fps, 6))


def shift_audio(audio: np.ndarray, shift_frames: int, samples_per_frame: float) -> np.ndarray:
    """Move the audio `shift_frames` frames earlier (negative: later), keeping its length; QA's correction."""
    shift = int(round(shift_frames * samples_per_frame))
    if shift == 0:
        return audio
    shifted = np.zeros_like(audio)
    if shift > 0:
        shifted[:-shift] = audio[shift:]
    else:
        shifted[-shift:] = audio[:shift]
    return shifted


@dataclass
class Example:
    """One clip as training, evaluation and prediction read it."""

    clip_id: str
    speaker: str
    language: str
    fps: float
    sample_rate: int
    audio: np.ndarray  # (samples,) float32, the run's QA shift applied
    mesh: np.ndarray   # (T, V, 3) float32 pose-free mesh in mesh units; NaN where no face
    valid: np.ndarray  # (T,) bool, frames with a face (interpolated gaps included)

    @property
    def samples_per_frame(self) -> float:
        return self.sample_rate / self.fps


def load_example(processed: str | Path, clip_id: str, audio_shift_frames: int = 0, sample_rate: int = 16000,
                 n_vertices: int | None = None, audio: bool = True) -> Example:
    """Clip `clip_id` with its audio moved `audio_shift_frames` frames earlier (the run's qa.csv column).
    `audio=False` skips reading the audio (Example.audio is then empty)."""
    clip = load_clip(processed, clip_id, keys=("mesh", "audio") if audio else ("mesh",))
    meta = clip["meta"]
    fps = float(meta["fps"])
    mesh = clip["mesh"][:, :n_vertices] if n_vertices else clip["mesh"]
    audio = shift_audio(clip["audio"], int(audio_shift_frames), sample_rate / fps) if audio else np.zeros(0, np.float32)
    return Example(clip_id=clip_id, speaker=str(meta["speaker"]), language=str(meta.get("language") or ""), fps=fps,
                   sample_rate=sample_rate, audio=audio, mesh=mesh, valid=np.isfinite(mesh).all(axis=(1, 2)))
