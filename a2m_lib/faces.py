"""Which face of a clip speaks, when two are on screen (extraction with extract.max_faces: 2).

    use_second, face, why = faces.choose_in_clip(first, second, audio, sample_rate, fps, reference)   # per clip
    manifest = faces.finalise_store(processed)                   # after extraction: the store's sync model decides

Two steps, because the first alone is fooled when both mouths move:
1. **In the clip** (`choose_in_clip`, while a worker extracts it): a face's sync score is the best score over all
   lags of a2m_lib.sync's per-clip regression (mean R^2 of its mouth distances predicted from the audio). A
   listening face loses clearly. But a regression fitted on the clip itself fits any moving mouth: two people
   who were both speaking when filmed, put side by side with one voice, score 0.45 against 0.44, and the
   largest, most central face was kept whichever voice it was.
2. **In the store** (`judge_store`, at the end of extraction and of `a2m merge`): both faces of every such clip
   are scored by a model that did not see the clip: the store's sync model (a2m_lib.sync, as QA uses for
   offsets), a ridge regression of the mouth from ±4 frames of 40 mel bands, learned on the one-face clips of
   every other source. A face's score is the best correlation of that model's prediction with its mouth over
   the lags within SPEAKER_MAX_LAG_SECONDS. The other face replaces the kept one when it scores STORE_MIN_MARGIN higher. With fewer than
   SYNC_MIN_TRAINING_SECONDS of other sources to learn from, step 1's choice stands.
Both faces of a candidate clip are kept in its file (CLIP_KEYS, and the same keys prefixed `other_`), so step 2
swaps them without decoding the video again. The manifest says which step decided (`face_judge`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import files, mesh, store, sync

SPEAKER_MIN_PRESENCE = 0.9  # a second face is a candidate in a clip when it is seen on this share of its frames
SPEAKER_MIN_MARGIN = 0.05   # in the clip: the second face is kept when its R^2 beats the first face's by this much
STORE_MIN_MARGIN = 0.05     # in the store: correlation by which the other face must beat the kept one
# In the store, a face's score is its best over the lags within this much of sync: the other face's mouth, with a
# 3 s clip's 31 lags to choose from, finds a chance peak somewhere (0.36 at +15 frames, against 0.26 for the
# speaker's within ±4, measured); the speaker's own peak sits within a few frames, as QA's offsets do.
SPEAKER_MAX_LAG_SECONDS = 0.25
FACE_KEYS = ("mesh", "landmarks_image", "face_found", "interpolated", "pose_scale", "pose_rotation", "pose_translation")


def face_arrays(landmarks: np.ndarray, found: np.ndarray, interpolated: np.ndarray, reference: np.ndarray) -> dict:
    """One face's FACE_KEYS arrays of a clip: its landmarks (gaps already filled) and their pose-free meshes."""
    n_frames = len(found)
    usable = found | interpolated
    arrays = dict(mesh=np.full_like(landmarks, np.nan), landmarks_image=landmarks, face_found=found,
                  interpolated=interpolated, pose_scale=np.full(n_frames, np.nan, np.float32),
                  pose_rotation=np.full((n_frames, 3, 3), np.nan, np.float32),
                  pose_translation=np.full((n_frames, 3), np.nan, np.float32))
    if usable.any():
        (arrays["mesh"][usable], arrays["pose_scale"][usable], arrays["pose_rotation"][usable],
         arrays["pose_translation"][usable]) = mesh.remove_pose_batch(landmarks[usable], reference)
    return arrays


def choose_in_clip(first: np.ndarray, second: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float,
                   reference: np.ndarray) -> tuple[bool, dict, str]:
    """Step 1 for one clip's two faces (landmarks, NaN where unseen): (keep the second, manifest columns, why)."""
    scores = []
    for landmarks in (first, second):
        seen = np.isfinite(landmarks[:, 0, 0])
        meshes = np.full_like(landmarks, np.nan)
        meshes[seen] = mesh.remove_pose_batch(landmarks[seen], reference)[0]
        scores.append(float(sync.clip_lag_scores(meshes, audio, sample_rate, fps).max()))
    use_second = scores[1] - scores[0] >= SPEAKER_MIN_MARGIN
    kept, other = (scores[1], scores[0]) if use_second else (scores[0], scores[1])
    return use_second, *_verdict(kept, other, kept - other >= SPEAKER_MIN_MARGIN, "clip")


def _verdict(kept: float, other: float, speaks: bool, judge: str) -> tuple[dict, str]:
    face = dict(face_choice="speaker" if speaks else "largest", face_sync_score=round(kept, 4),
                other_face_sync_score=round(other, 4), face_judge=judge)
    why = ("its mouth follows the audio" if speaks else
           "the largest, most central: neither mouth follows the audio clearly better")
    model = "the store's sync model" if judge == "store" else "the clip's own regression"
    return face, f"{why} ({model}: {kept:.2f} vs {other:.2f})"


def note(row: dict, why: str) -> str:
    return f"{row['multi_face_frames']} frames showed several faces; kept the face at {row['face_centre']} px, {why}"


def centre(landmarks: np.ndarray) -> str:
    """Where a face is: the median centre of its landmarks over the frames, "x,y" in source pixels."""
    seen = np.isfinite(landmarks[:, 0, 0])
    if not seen.any():
        return ""
    x, y = np.median(landmarks[seen, :, :2].mean(axis=1), axis=0)
    return f"{x:.0f},{y:.0f}"


def finalise_store(processed, sources: set[str] | None = None):
    """What ends every extraction and every merge of shard stores: the manifest, then step 2 (judge_store) at the
    store's own sample rate, then the manifest again if a clip changed face. Returns the manifest. `sources`: the
    source keys of the videos now in the raw folder (store.write_manifest)."""
    manifest = store.write_manifest(processed, sources)
    if judge_store(processed, store.sample_rate(manifest)):  # the store's sync model changed a face kept
        print(f"{processed}: the store's sync model chose the other face in some clips (manifest column face_judge)")
        manifest = store.write_manifest(processed, sources)
    return manifest


def judge_store(processed, sample_rate: int) -> int:
    """Step 2 over a store (module docstring): rewrites the clips whose other face speaks, and the records of the
    candidate clips whose verdict changed; returns how many clips changed face (finalise_store rebuilds the manifest).
    Run after every extraction (a resumed one too), it writes nothing when the verdicts stand."""
    processed = Path(processed)
    manifest = store.read_manifest(processed)
    clips = manifest[(manifest.status == "ok") & manifest.clip_id.astype(str).ne("")]
    candidates = clips[clips.face_choice.isin(["speaker", "largest"]).to_numpy()]
    if candidates.empty:
        return 0
    # The equations of every one-face clip, summed; and those of the candidates' own sources, to leave them out
    # (kept for those sources only: 1 MB each).
    total, own, skip, candidate_sources = None, {}, set(candidates.clip_id), set(candidates.source)
    for row in clips.itertuples():
        if row.clip_id in skip:
            continue
        clip = store.load_clip(processed, row.clip_id, keys=("audio", "mesh"))
        part = sync.normal_equations(*sync.sync_features(clip, sample_rate), 0)  # one-face clips: taken as in sync
        total = sync.add_sums(total, part)
        if row.source in candidate_sources:
            own[row.source] = sync.add_sums(own.get(row.source), part)
    if total is None:
        return 0
    changed = 0
    for row in candidates.itertuples():
        weights = sync.left_out_weights(total, own.get(row.source), sync.SYNC_MIN_TRAINING_SECONDS * float(row.fps))
        if weights is None:
            continue
        clip = store.load_clip(processed, row.clip_id)
        if "other_mesh" not in clip:
            continue  # extracted before both faces were kept: step 1's choice stands
        audio = sync.sync_features(clip, sample_rate)[0]
        near = slice(sync.MAX_LAG_FRAMES - round(SPEAKER_MAX_LAG_SECONDS * row.fps),
                     sync.MAX_LAG_FRAMES + round(SPEAKER_MAX_LAG_SECONDS * row.fps) + 1)
        kept, other = (float(sync.sync_lag_scores(audio, sync.sync_features(dict(clip, mesh=clip[key]), sample_rate)[1],
                                                  weights)[near].max()) for key in ("mesh", "other_mesh"))
        swap = other - kept >= STORE_MIN_MARGIN
        if swap:
            for key in FACE_KEYS:
                clip[key], clip[f"other_{key}"] = clip[f"other_{key}"], clip[key]
            kept, other = other, kept
            changed += 1
        face, why = _verdict(kept, other, kept - other >= STORE_MIN_MARGIN, "store")
        before = clip.pop("meta")
        meta = dict(before, **face, face_centre=centre(clip["landmarks_image"]),
                    interpolated_frames=int(clip["interpolated"].sum()))
        meta["reason"] = "; ".join([note(meta, why)] + [  # the other notes (damaged packets) stay
            part for part in str(meta["reason"]).split("; ")
            if part and "showed several faces" not in part and not part.startswith("kept the face at")])
        if swap or any(meta[key] != before.get(key) for key in ("face_choice", "face_sync_score",
                                                                 "other_face_sync_score", "face_judge", "reason")):
            store.save_clip(processed, row.clip_id, clip, meta)  # judged as before: nothing is written again
            _update_record(processed, meta)
    return changed


def _update_record(processed, row: dict) -> None:
    """Put a clip's new manifest row into its source's record (sources/<key>.json), which the manifest is built from."""
    clip_id = row["clip_id"]
    for key in (clip_id, clip_id.rsplit("_", 1)[0]):  # a source cut into several clips names them <key>_NNN
        path = store.source_record_path(processed, key)
        record = json.loads(path.read_text()) if path.exists() else {"rows": []}
        if any(r.get("clip_id") == clip_id for r in record["rows"]):
            record["rows"] = [dict(r, **row) if r.get("clip_id") == clip_id else r for r in record["rows"]]
            files.write_json(path, record)
            return
    raise FileNotFoundError(f"no record in {Path(processed) / 'sources'} lists clip {clip_id}; re-run extraction")
