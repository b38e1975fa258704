"""a2m_lib.qa: offsets, dropped frames, corrections, and decisions kept per run."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from a2m_lib import config, files, neutral, qa, rundir, runner, store, train
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # needs an extracted store: make test-fast skips it


def test_clean_clips_pass_qa(qa_run):
    table = pd.read_csv(qa_run / "qa.csv", keep_default_na=False)
    assert list(table.columns) == qa.QA_COLUMNS
    assert (table.status == "pass").all(), table[table.status != "pass"].reason.tolist()
    assert (table.av_offset_frames.abs() <= 1).all()


def test_qa_flags_offset_and_dropped_frames(faulty_store):
    _, _, _, report = faulty_store
    table = report.table.set_index("clip_id")
    shifted = table[table.index.str.startswith("shifted")]
    assert (shifted.status == "fail").all()
    assert (shifted.av_offset_frames - 6).abs().max() <= 1, shifted.av_offset_frames.tolist()
    dropped = table.loc[table.index.str.startswith("dropped")].iloc[0]
    assert dropped.status == "fail" and dropped.frame_diff <= -5 and "expected" in dropped.reason


def test_qa_can_correct_a_confident_offset(faulty_store, cfg, tmp_path):
    from dataclasses import replace

    _, out, _, _ = faulty_store
    corrected = qa.check_store(out, replace(cfg.qa, correct_offset=True), cfg.data.sample_rate, run_dir=tmp_path).table.set_index("clip_id")
    shifted = corrected[corrected.index.str.startswith("shifted")]
    assert (shifted.status == "pass").all() and (shifted.audio_shift_frames == shifted.av_offset_frames).all()
    assert shifted.reason.str.contains("corrected").all()
    clip = store.load_clip(out, shifted.index[0])
    spf = 16000 / 30
    moved = store.shift_audio(clip["audio"], 6, spf)
    np.testing.assert_array_equal(moved[: 1000], clip["audio"][int(6 * spf): int(6 * spf) + 1000])
    assert len(moved) == len(clip["audio"])
    example = store.load_example(out, shifted.index[0], 6)  # what training and evaluation read
    np.testing.assert_array_equal(example.audio, moved)


def test_two_runs_with_other_qa_settings_keep_their_own_decisions(faulty_store_for_runs, tmp_path, cfg):
    out = faulty_store_for_runs
    strict = config.load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(out), "qa.max_offset_frames": 3})
    lenient = config.load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(out), "qa.max_offset_frames": 8})
    first = qa.check_store(out, strict.qa, strict.data.sample_rate, run_dir=tmp_path / "strict", progress=False)
    second = qa.check_store(out, lenient.qa, lenient.data.sample_rate, run_dir=tmp_path / "lenient", progress=False)
    assert first.measured_clips > 0 and second.measured_clips == 0  # measurements come from the store's cache
    assert not (out / "qa.csv").exists()
    strict_set, lenient_set = set(rundir.accepted_clips(tmp_path / "strict").clip_id), set(rundir.accepted_clips(tmp_path / "lenient").clip_id)
    assert strict_set < lenient_set  # the 6-frame offset clips pass only with the lenient threshold
    trained_on = {}
    for name, run_cfg in (("strict", strict), ("lenient", lenient)):
        run_dir = tmp_path / name
        run_cfg = dataclasses.replace(run_cfg, train=dataclasses.replace(run_cfg.train, epochs=1),
                                      model=dataclasses.replace(run_cfg.model, latent_dim=16))
        neutral.choose(run_dir, neutral.Ranking(out, rundir.accepted_clips(run_dir)), "auto")
        train.train(run_cfg, run_dir, progress=False)
        trained_on[name] = set(pd.read_csv(run_dir / "splits.csv").clip_id)
        assert runner.data_hashes(out, run_dir)["qa_table_sha256"] == files.sha256(run_dir / "qa.csv")
    assert trained_on["strict"] == strict_set and trained_on["lenient"] == lenient_set
    assert rundir.accepted_clips(tmp_path / "strict").clip_id.tolist() == sorted(strict_set)  # untouched by the other run


@pytest.fixture(scope="module")
def faulty_store_for_runs(tmp_path_factory, synthetic_raw, cfg):
    """Four clean clips plus two whose audio is 6 frames late."""
    from a2m_lib import extract, synth

    raw = tmp_path_factory.mktemp("two_runs_raw")
    for clip in sorted((synthetic_raw / "spk0").glob("*.mp4"))[:4]:
        (raw / "spk0").mkdir(exist_ok=True)
        (raw / "spk0" / clip.name).symlink_to(clip)
    synth.synth_dataset(raw / "late", 1, 2, (4.0, 5.0), seed=11, faults=synth.Faults(audio_offset_frames=6), progress=False)
    out = tmp_path_factory.mktemp("two_runs_store")
    extract.extract_store(raw, out, cfg.data, cfg.extract, progress=False)
    return out
