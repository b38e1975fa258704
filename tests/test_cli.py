"""The a2m command line on a tiny synthetic set: synth -> extract -> qa."""
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # the command line end to end: make test-fast skips it


def a2m(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "a2m_lib.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_synth_extract_qa_from_the_command_line(tmp_path):
    result = a2m("synth", tmp_path / "raw", "--speakers", "1", "--clips", "2", "--seconds", "3-3.5", "--seed", "4",
                 "--audio-offset-frames", "7")
    assert result.returncode == 0, result.stderr
    (tmp_path / "raw" / "spk0" / "broken.mp4").write_text("not a video")
    result = a2m("extract", tmp_path / "raw", "--out", tmp_path / "store", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "FAILED" in result.stderr and "broken.mp4" in result.stderr and "not a readable media file" in result.stderr
    manifest = pd.read_csv(tmp_path / "store" / "manifest.csv", keep_default_na=False)
    assert sorted(manifest.status) == ["failed", "ok", "ok"]
    result = a2m("qa", tmp_path / "store", "--run-dir", tmp_path / "run", "-p", "qa.max_offset_frames=3")
    assert result.returncode == 2 and "give --config CONFIG" in result.stderr  # a new run says where it starts from
    result = a2m("qa", tmp_path / "store", "--run-dir", tmp_path / "run", "--config", "configs/demo.yaml",
                 "-p", "qa.max_offset_frames=3")
    assert result.returncode == 0, result.stderr
    assert "0 of 2 clips pass" in result.stdout
    assert not (tmp_path / "store" / "qa.csv").exists()  # decisions belong to the run, not the shared store
    table = pd.read_csv(tmp_path / "run" / "qa.csv", keep_default_na=False)
    assert (table.av_offset_frames - 7).abs().max() <= 1
    # the run keeps its config: read back as it is, and a -p that would change it stops with the key named
    again = a2m("qa", tmp_path / "store", "--run-dir", tmp_path / "run")
    assert again.returncode == 0, again.stderr
    changed = a2m("qa", tmp_path / "store", "--run-dir", tmp_path / "run", "-p", "qa.max_offset_frames=5")
    assert changed.returncode == 2 and "qa.max_offset_frames" in changed.stderr and "config.yaml" in changed.stderr


def test_bad_arguments_are_clear_errors(tmp_path):
    result = a2m("extract", tmp_path / "nowhere", "--out", tmp_path / "store")
    assert result.returncode == 2 and "does not exist" in result.stderr and "data.raw" in result.stderr
    result = a2m("qa", tmp_path, "--run-dir", tmp_path / "run", "--config", "configs/demo.yaml")
    assert result.returncode == 2 and "manifest.csv does not exist" in result.stderr
    result = a2m("evaluate", "--run-dir", tmp_path / "nowhere")
    assert result.returncode == 2 and "does not exist" in result.stderr and "--config" in result.stderr
