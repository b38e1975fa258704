"""a2m_lib.faces: the face that speaks when two are on screen, on real footage (../shared/eval_media; skipped
without it), including two people who were both speaking when filmed, with one voice put under them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from a2m_lib import extract, store
from tests.conftest import EVAL_MEDIA, require_eval_media

pytestmark = pytest.mark.slow  # real footage or real services: minutes, not seconds (make test-fast skips it)

# Sources the store's sync model learns from: real talking heads that share no recording with the composites.
TRAINING = ["lipnet/*.mpg", "real_extra/deep_avsr/*.mp4", "real_extra/spectre/*.mp4", "pcavs/*.mp4"]


@pytest.fixture(scope="module")
def both_speaking(tmp_path_factory, cfg):
    require_eval_media("sadtalker/WDA_KatieHill_000.mp4", "sadtalker/WDA_AlexandriaOcasioCortez_000.mp4", "pcavs")
    from benchmarks.sync import BOTH_SPEAKING, two_face_composites

    raw = tmp_path_factory.mktemp("faces_raw")
    for pattern in TRAINING:
        for video in sorted(EVAL_MEDIA.glob(pattern)):
            (raw / f"{video.parent.name}_{video.stem}").mkdir()
            (raw / f"{video.parent.name}_{video.stem}" / video.name).symlink_to(video)
    truth = two_face_composites(raw, BOTH_SPEAKING)
    out = tmp_path_factory.mktemp("faces_processed")
    manifest = extract.extract_store(raw, out, cfg.data, cfg.extract, progress=False)
    return truth, manifest, out


def _share_on_side(processed: Path, clip_ids, side: str) -> float:
    """The share of the clips' frames whose kept face is on `side` (the composites are two 512-pixel halves)."""
    on_side = []
    for clip_id in clip_ids:
        x = store.load_clip(processed, clip_id, keys=("landmarks_image",))["landmarks_image"][..., 0].mean(axis=1)
        on_side.append((x < 512) if side == "left" else (x >= 512))
    return float(np.concatenate(on_side).mean())


def test_when_both_mouths_move_the_voices_owner_is_kept(both_speaking):
    truth, manifest, processed = both_speaking
    ok = manifest[manifest.status == "ok"]
    training_seconds = ok[~ok.clip_id.str.startswith("two_faces")].n_frames.sum() / 30
    assert training_seconds >= 60, training_seconds  # what the store's sync model needs (sync.SYNC_MIN_TRAINING_SECONDS)
    for name, side in truth.items():  # both orders, either voice
        clips = ok[ok.clip_id.str.startswith(f"two_faces__{name}")]
        assert len(clips) and (clips.face_judge == "store").all(), clips[["clip_id", "face_judge"]]
        share = _share_on_side(processed, clips.clip_id, side)
        assert share >= 0.95, (name, side, share, clips[["face_sync_score", "other_face_sync_score", "reason"]].to_dict())
        assert (clips.face_sync_score > clips.other_face_sync_score).all()
        assert clips.reason.str.contains("the store's sync model").all()


def test_the_face_not_kept_stays_in_the_clip_file(both_speaking):
    truth, manifest, processed = both_speaking
    clip_id = manifest[manifest.clip_id.astype(str).str.startswith("two_faces__")].clip_id.iloc[0]
    clip = store.load_clip(processed, clip_id)
    for key in ("mesh", "landmarks_image", "face_found", "pose_rotation"):
        assert clip[key].shape == clip[f"other_{key}"].shape
    kept, other = clip["landmarks_image"][..., 0].mean(), np.nanmean(clip["other_landmarks_image"][..., 0])
    assert (kept < 512) != (other < 512)  # one face each side
