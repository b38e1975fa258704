"""End to end through papermill: the five notebooks on a tiny synthetic set."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from a2m_lib import files, runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(synthetic_raw, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    overrides = [f"data.raw={synthetic_raw}", f"data.processed={work / 'processed'}", "train.epochs=40",
                 "train.batch_size=2"]
    record = runner.run(runner.REPO_ROOT / "configs" / "demo.yaml", work / "runs" / "tiny", overrides, progress=False)
    return work / "runs" / "tiny", record, overrides


def test_all_notebooks_run_and_leave_a_record(demo_run):
    run_dir, record, _ = demo_run
    assert record["status"] == "ok"
    assert list(record["notebooks"]) == ["01_extract", "02_alignment_qa", "03_neutral_selection", "04_train", "05_evaluate"]
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["config"]["train"]["epochs"] == 40 and saved["seed"] == 0
    assert saved["git_commit"] and saved["packages"]["torch"].startswith("2.13") and saved["data_manifest_sha256"]
    assert saved["started"] <= saved["ended"]
    assert saved["neutral"]["neutral"] == "auto" and {r["speaker"] for r in saved["neutral"]["speakers"]} == {"spk0", "spk1"}
    assert all(entry["status"] == "ok" and entry["seconds"] > 0 for entry in saved["notebooks"].values())
    assert saved["qa_table_sha256"] == files.sha256(run_dir / "qa.csv")  # the decisions training read
    assert (run_dir / "qa.csv").exists() and not (run_dir.parents[1] / "processed" / "qa.csv").exists()
    for name in record["notebooks"]:
        book = nbformat.read(run_dir / "notebooks" / f"{name}.ipynb", as_version=4)
        streams = "".join(o.get("text", "") for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
        assert "inference_feedback_manager" not in streams and "XNNPACK" not in streams, f"{name}: native log in the record"
        injected = [c for c in book.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and "run_dir" in injected[0].source and "train.epochs" not in injected[0].source
        assert any(o.get("output_type") == "display_data" for c in book.cells for o in c.get("outputs", [])), \
            f"{name} shows no plot or table"
    for fixed in ("checkpoints/last.pt", "checkpoints/best.pt", "neutral/spk0.npz", "neutral/spk1.npz", "metrics.json"):
        assert (run_dir / fixed).exists(), fixed
    from a2m_lib.config import config_from_dict, load_config
    assert load_config(run_dir / "config.yaml") == config_from_dict(saved["config"])  # the run can be repeated


def test_every_stage_read_the_overrides_from_the_run_config(demo_run):
    """The hand-off: `a2m run -p ...` resolves the config once into the run; papermill passes only run_dir."""
    import pandas as pd

    from a2m_lib import rundir
    from a2m_lib.config import load_config
    from a2m_lib.model import load_checkpoint

    run_dir, _, overrides = demo_run
    cfg = load_config(rundir.config(run_dir))
    assert cfg.train.epochs == 40 and cfg.train.batch_size == 2 and str(cfg.data.processed).endswith("processed")
    assert (Path(cfg.data.processed) / "manifest.csv").exists()  # 01 extracted into the overridden store ...
    assert len(rundir.accepted_clips(run_dir))  # ... 02 and 03 read it ...
    history = pd.read_csv(run_dir / "train_log.csv")
    assert history.epoch.max() == 39  # ... 04 trained the overridden 40 epochs ...
    saved = load_checkpoint(rundir.checkpoint(run_dir, "last"))
    assert saved["config"]["train"]["batch_size"] == 2 and saved["config"]["data"]["processed"] == str(cfg.data.processed)
    metrics = json.loads(rundir.metrics(run_dir).read_text())
    assert metrics["n_clips"] == (rundir.read_splits(run_dir).split == "test").sum()  # ... and 05 scored that split


def test_the_model_beats_the_baselines_and_notebook_05_shows_renders(demo_run):
    run_dir, _, _ = demo_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_clips"] >= 2
    # Bounds from this run with seeds 0, 1 and 2 (2026-11-30; the seed also changes the split): LVE 0.38-0.43 x the
    # neutral baseline's, mouth correlation 0.938-0.953, motion ratio 0.88-0.93. Their margins, in seed spreads (the
    # width of that range): LVE 0.5 is 0.07 above the worst seed, 1.4 spreads (the tightest bound: a model half as
    # good as the neutral baseline fails it); correlation 0.85 is 5.9 spreads below; motion 0.7 and 1.3 are 3.6 and
    # 7.4 spreads outside. Noise does not cross them; a model that stops following the audio does.
    assert metrics["model"]["lve"] <= 0.5 * metrics["baselines"]["neutral"]["lve"], metrics
    assert metrics["model"]["lve"] < metrics["baselines"]["mean_offset"]["lve"] and not metrics["failures"], metrics["failures"]
    assert metrics["model"]["mouth_corr"] > 0.85 and 0.7 < metrics["model"]["motion_ratio"] < 1.3, metrics["model"]
    assert len(list((run_dir / "predictions").glob("*.npz"))) == metrics["n_clips"]
    book = nbformat.read(run_dir / "notebooks" / "05_evaluate.ipynb", as_version=4)
    videos = [o for c in book.cells for o in c.get("outputs", []) if "<video" in str(o.get("data", {}).get("text/html", ""))]
    assert len(videos) == 3 and len(list((run_dir / "renders").glob("*.mp4"))) == min(3, metrics["n_clips"])  # best, median, worst


def test_only_reruns_one_stage_in_place(demo_run):
    run_dir, _, overrides = demo_run
    before = (run_dir / "checkpoints" / "best.pt").stat().st_mtime_ns
    record = runner.run(runner.REPO_ROOT / "configs" / "demo.yaml", run_dir, overrides, only="05", progress=False)
    assert record["notebooks"]["05_evaluate"]["status"] == "ok"
    assert "01_extract" in record["notebooks"]  # earlier stages stay in the record
    assert (run_dir / "checkpoints" / "best.pt").stat().st_mtime_ns == before


def test_a_failing_notebook_stops_the_run_and_names_itself(demo_run, tmp_path):
    run_dir, _, overrides = demo_run
    bad_run = tmp_path / "bad"
    command = [sys.executable, "-m", "a2m_lib.cli", "run", "--config", str(runner.REPO_ROOT / "configs" / "demo.yaml"),
               "--run-dir", str(bad_run), "--from", "02", "-p", "neutral.neutral=no_such_clip:3"]  # 02: the run needs its own QA table
    for item in overrides:
        command += ["-p", item]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0
    assert "03_neutral_selection.ipynb failed" in result.stderr and "no_such_clip" in result.stderr
    executed = nbformat.read(bad_run / "notebooks" / "03_neutral_selection.ipynb", as_version=4)
    assert any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))
    record = json.loads((bad_run / "run.json").read_text())
    assert record["status"] == "failed" and record["notebooks"]["03_neutral_selection"]["status"] == "failed"
    assert "04_train" not in record["notebooks"]


def test_unknown_config_key_fails_before_any_notebook(tmp_path):
    result = subprocess.run([sys.executable, "-m", "a2m_lib.cli", "run", "--config", "configs/demo.yaml",
                             "--run-dir", str(tmp_path / "r"), "-p", "train.epoch=3"], capture_output=True, text=True,
                            cwd=runner.REPO_ROOT)
    assert result.returncode == 2 and "train.epochs" in result.stderr
    assert not (tmp_path / "r" / "notebooks").exists()
