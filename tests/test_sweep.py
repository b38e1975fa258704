"""Sweeps (a2m_lib.sweep) and runs side by side (a2m_lib.compare, notebook 06), here; on SLURM in test_slurm.py."""
import json
import subprocess
import sys

import nbformat
import numpy as np
import pandas as pd
import pytest

from a2m_lib import compare, rundir, sweep
from a2m_lib.config import ConfigError, load_config, write_run_config
from tests.conftest import REPO, SMALL_SCRATCH

pytestmark = pytest.mark.slow  # trains: make test-fast skips it

TINY = {**SMALL_SCRATCH, "train.epochs": 2, "train.batch_size": 2, "train.num_threads": 1}


def sweep_base(base_run, processed, folder):
    """The session's QA decisions and neutrals, with a config that names the session's store."""
    base = rundir.branch(base_run, folder)
    write_run_config(load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(processed)}), base)
    return base


def _args(pairs: dict) -> list[str]:
    return [item for key, value in pairs.items() for item in ("-p", f"{key}={value}")]


def a2m(*args):
    return subprocess.run([sys.executable, "-m", "a2m_lib.cli", *map(str, args)], capture_output=True, text=True)


def test_the_grid_names_its_runs_by_what_varies_and_refuses_bad_settings(base_run, processed, tmp_path):
    base = sweep_base(base_run, processed, tmp_path / "base")
    grid = sweep.parse_grid(["train.lr=1e-3,2e-3", "model.encoder_options.hidden=16,32"])
    assert grid == {"train.lr": [0.001, 0.002], "model.encoder_options.hidden": [16, 32]}
    runs = sweep.plan(REPO / "configs" / "demo.yaml", base, grid, ["train.epochs=1"], tmp_path / "out")
    assert [r.name for r in runs] == ["lr=0.001,hidden=16", "lr=0.001,hidden=32", "lr=0.002,hidden=16", "lr=0.002,hidden=32"]
    assert {r.run_dir.parent for r in runs} == {tmp_path / "out"}
    with pytest.raises(ConfigError, match="train.lrr"):
        sweep.plan(REPO / "configs" / "demo.yaml", base, {"train.lrr": [1]}, None, tmp_path / "bad")
    with pytest.raises(ConfigError, match="key=value1,value2"):
        sweep.parse_grid(["train.lr"])


def test_a_sweep_runs_here_resumes_and_its_runs_compare_side_by_side(base_run, processed, tmp_path):
    base = sweep_base(base_run, processed, tmp_path / "base")
    out = tmp_path / "sweep"
    command = ["sweep", "--config", REPO / "configs" / "demo.yaml", "--base", base, "-g", "train.lr=1e-3,3e-3",
               "--out", out, *_args(TINY)]
    first = a2m(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 runs, 2 to run" in first.stdout
    runs = sorted(out.iterdir())
    assert [r.name for r in runs] == ["lr=0.001", "lr=0.003"]
    for run in runs:  # each branched from the base, with its own config and record
        assert (run / "qa.csv").read_bytes() == (base / "qa.csv").read_bytes()
        assert sweep.finished(run) and json.loads(rundir.record(run).read_text())["status"] == "ok"
        assert load_config(rundir.config(run)).data.processed == str(processed)  # the base's store
    assert load_config(rundir.config(runs[1])).train.lr == pytest.approx(3e-3)
    rundir.metrics(runs[1]).unlink()  # as if its evaluation had died
    again = a2m(*command)
    assert again.returncode == 0 and "2 runs, 1 to run" in again.stdout, again.stderr[-3000:]
    assert a2m(*command).stdout.count("0 to run") == 1
    # side by side: the table (only the setting that differs), the best marked, the CSV, notebook 06 executed
    result = a2m("compare", *runs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train.lr" in result.stdout and "train.epochs" not in result.stdout and "*" in result.stdout
    table = pd.read_csv(out / "compare.csv", index_col="run")
    assert list(table.index) == ["lr=0.001", "lr=0.003"] and "train.lr" in table and "lve" in table
    comparison = compare.Comparison(runs)
    assert comparison.best["lve"] == table.lve.idxmin() and comparison.best["mouth_corr"] == table.mouth_corr.idxmax()
    assert table.loc[comparison.best["lve"], "best_for"].split()[0] == "lve"
    book = nbformat.read(out / "06_compare.ipynb", as_version=4)
    images = [o for c in book.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2 and not [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    seconds, truth, traces = comparison.lip_traces(comparison.shared_clip())
    assert set(traces) == {"lr=0.001", "lr=0.003"} and len(seconds) == len(truth) and not np.allclose(*traces.values())
    # the runs' settings and metrics are TensorBoard HParams too
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(rundir.tensorboard(runs[0])))
    events.Reload()
    assert {"hparam/lve", "hparam/mouth_corr", "hparam/motion_ratio"} <= set(events.Tags()["scalars"])
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # the settings, for the HPARAMS tab
