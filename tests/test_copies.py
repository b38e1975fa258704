"""a2m_lib.copies: copies of one recording among a speaker's clips are failed, naming the original."""

import shutil

import pytest

from a2m_lib import extract, qa
from tests.conftest import ffmpeg

pytestmark = pytest.mark.slow  # extracts and re-encodes videos: make test-fast skips it


def test_a_reencoded_copy_of_a_video_is_failed_naming_the_original(synthetic_raw, tmp_path, cfg):
    speaker = tmp_path / "raw" / "spk0"
    speaker.mkdir(parents=True)
    first, second = sorted((synthetic_raw / "spk0").glob("*.mp4"))[:2]
    shutil.copy(first, speaker / "a.mp4")
    shutil.copy(second, speaker / "b.mp4")
    # the same recording published again: cropped, re-encoded, its audio at another bitrate
    ffmpeg("-i", first, "-vf", "crop=iw-16:ih-16", "-b:a", "64k", speaker / "c_copy.mp4")
    extract.extract_store(tmp_path / "raw", tmp_path / "out", cfg.data, cfg.extract, workers=1, progress=False)
    table = qa.check_store(tmp_path / "out", cfg.qa, run_dir=tmp_path / "run", progress=False).table.set_index("clip_id")
    copy = table.loc["spk0__c_copy"]
    assert copy.duplicate_of == "spk0__a" and copy.status == "fail" and "a copy of clip spk0__a" in copy.reason
    assert not copy.use and table.loc[["spk0__a", "spk0__b"]].status.eq("pass").all()
