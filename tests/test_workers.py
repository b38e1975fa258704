"""a2m_lib.workers: CPU placement, worker processes, MediaPipe's native log."""

import os
import shutil
import sys

import pytest

from a2m_lib import extract, workers


def test_native_log_chatter_is_dropped_and_real_lines_reach_logging(tmp_path, caplog):
    with workers.native_stderr_to(tmp_path / "native.log") as log_path:
        os.write(2, b"W0000 00:00:1 123 inference_feedback_manager.cc:114] Feedback manager requires a model\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E0000 00:00:1 123 calculator_graph.cc:887] something real broke\n")
        print("python's own stderr still shows", file=sys.stderr)
    with caplog.at_level("WARNING", logger="a2m"):
        kept = workers.forward_native_log(log_path)
    assert kept == ["E0000 00:00:1 123 calculator_graph.cc:887] something real broke"]
    assert "something real broke" in caplog.text and "XNNPACK" not in caplog.text
    assert not log_path.exists()


def test_core_groups_give_each_worker_its_own_cpus(monkeypatch):
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {4, 5, 6, 7})
    assert workers.core_groups(1) == [{4, 5, 6, 7}]
    assert workers.core_groups(2) == [{4, 5}, {6, 7}]
    assert workers.core_groups(4) == [{4}, {5}, {6}, {7}]
    assert workers.core_groups(5) == [{4}, {5}, {6}, {7}, {4}]


@pytest.mark.slow
def test_tracking_and_decoding_get_their_own_cpus_and_the_caller_gets_its_own_back(monkeypatch, synthetic_raw, tmp_path, cfg):
    before = os.sched_getaffinity(0)
    source = sorted(synthetic_raw.rglob("*.mp4"))[4]
    (tmp_path / "raw").mkdir()
    shutil.copy(source, tmp_path / "raw" / source.name)
    extract.extract_store(tmp_path / "raw", tmp_path / "out", cfg.data, cfg.extract, workers=1, progress=False)
    assert os.sched_getaffinity(0) == before  # a notebook kernel is not left on one CPU
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {2, 3, 5})
    assert workers.split_cpus() == ({2}, {3, 5})
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {3})
    assert workers.split_cpus() == (None, None)
