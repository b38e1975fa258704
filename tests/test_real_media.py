"""Extraction and QA on real talking-head clips from ../shared/eval_media (skipped when absent)."""
import subprocess

import pandas as pd
import pytest

from a2m_lib import extract, media, qa

from .conftest import require_eval_media

pytestmark = pytest.mark.real_media
FRONTAL = ["lipnet/GRID_bbaf2n.mpg", "v-express/AOC_gt.mp4", "sadtalker/WDA_AlexandriaOcasioCortez_000.mp4"]
SHIFT_FRAMES = 5


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, cfg):
    sources = require_eval_media(*FRONTAL)
    raw = tmp_path_factory.mktemp("real_raw")
    for source in sources:
        (raw / f"{source.parent.name}_{source.name}").symlink_to(source)
    # A copy of the GRID clip with its audio content 5 frames (at 30 fps) late, same length.
    shifted = raw / "shifted_GRID_bbaf2n.mp4"
    delay_ms = SHIFT_FRAMES * 1000 / cfg.data.fps
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-i", str(sources[0]), "-map", "0:v", "-map", "0:a",
                    "-c:v", "copy", "-af", f"adelay={delay_ms:.3f}:all=1", "-shortest", str(shifted)], check=True)
    out = tmp_path_factory.mktemp("real_processed")
    manifest = extract.extract_store(raw, out, cfg.data, cfg.extract, progress=False)
    return manifest, qa.check_store(out, cfg.qa, cfg.data.sample_rate).table.set_index("clip_id")


def test_faces_are_found_and_frame_counts_match(real_store):
    manifest, table = real_store
    assert (manifest.status == "ok").all(), manifest.reason.tolist()
    for clip_id in table.index.drop("shifted_GRID_bbaf2n"):
        row = table.loc[clip_id]
        assert row.face_missing_frac <= 0.05, (clip_id, row.face_missing_frac)
        assert abs(row.frame_diff) <= 1, (clip_id, row.n_frames, row.expected_frames)


def test_unshifted_clip_is_in_sync(real_store):
    _, table = real_store
    row = table.loc["lipnet_GRID_bbaf2n"]
    assert abs(row.av_offset_frames) <= 1 and row.status == "pass", row.to_dict()
    # The HDTF clips come out at +3 to +4 frames (the mouth moving before the sound, or a real offset in
    # the source): near the limit, so some are flagged. Bound the estimate, not the verdict.
    assert (table.drop(index="shifted_GRID_bbaf2n").av_offset_frames.abs() <= 4).all(), table.av_offset_frames.to_dict()


def test_audio_shifted_by_five_frames_is_flagged(real_store):
    _, table = real_store
    row = table.loc["shifted_GRID_bbaf2n"]
    assert abs(row.av_offset_frames - SHIFT_FRAMES) <= 1, row.to_dict()
    assert row.status == "fail" and "offset" in row.reason
