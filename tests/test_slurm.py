"""scripts/slurm/: extraction as a SLURM job array on a real single-node SLURM (Debian's slurm-wlm and munge, which
.ci/run installs the way it installs chromium), against a one-process extraction of the same folder."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from a2m_lib import rundir, store

pytestmark = pytest.mark.slow  # real footage or real services: minutes, not seconds (make test-fast skips it)

REPO = Path(__file__).resolve().parents[1]
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munged, slurmctld and slurmd for one node (this machine, 2 CPUs), all under a temporary folder; yields the
    environment that points sbatch at it."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge "
                    f"(.ci/run does this)")
    if os.geteuid() != 0:
        pytest.skip("a single-node SLURM started by a test runs its daemons as root; this test runs as another user")
    home = Path("/tmp") / f"a2m-slurm-{os.getpid()}"  # short: munge's socket path must fit in 108 bytes
    shutil.rmtree(home, ignore_errors=True)
    (home / "state").mkdir(parents=True)
    (home / "spool").mkdir()
    key = home / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    node = socket.gethostname().split(".")[0]
    conf = home / "slurm.conf"
    conf.write_text(f"""ClusterName=a2mtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={home}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={home}/state
SlurmdSpoolDir={home}/spool
SlurmctldPidFile={home}/slurmctld.pid
SlurmdPidFile={home}/slurmd.pid
SlurmctldLogFile={home}/slurmctld.log
SlurmdLogFile={home}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(conf))
    subprocess.run(["munged", f"--key-file={key}", f"--socket={home}/munge.sock", f"--pid-file={home}/munged.pid",
                    f"--log-file={home}/munged.log", f"--seed-file={home}/munge.seed"], check=True)
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
    subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env)
    try:
        deadline = time.monotonic() + 60  # the node registers within seconds
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                logs = "\n".join((home / name).read_text()[-2000:] for name in ("slurmctld.log", "slurmd.log")
                                 if (home / name).exists())
                pytest.fail(f"the test's SLURM node did not come up within 60 s:\n{logs}")
            time.sleep(1)
        yield env
    finally:
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = home / f"{name}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
        shutil.rmtree(home, ignore_errors=True)


def test_a_job_array_extracts_the_same_store_as_one_process(slurm, synthetic_raw, processed, tmp_path):
    """3 array tasks over the session's 12 synthetic videos, then the merge job; against the one-process store
    (conftest's `processed`, the same demo config)."""
    env = dict(slurm, A2M=str(Path(sys.executable).parent / "a2m"), SBATCH_WAIT="1",
               EXTRACT_SBATCH_OPTIONS="--cpus-per-task=1 --mem=1G --time=00:20:00")
    merged = tmp_path / "store"
    result = subprocess.run([str(REPO / "scripts" / "slurm" / "extract.sh"), str(synthetic_raw), str(merged), "3",
                             "--config", str(REPO / "configs" / "demo.yaml")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(path.read_text()[-1500:] for path in sorted((tmp_path / "logs" / "slurm").glob("*.out")))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs}"
    shards = sorted(path.name for path in (tmp_path / "store.shards").iterdir())
    assert shards == ["0", "1", "2"], shards
    assert all(len(store.read_manifest(tmp_path / "store.shards" / shard)) == 4 for shard in shards)  # 12 / 3
    assert "shard 2/3" in logs
    expected = store.read_manifest(processed).sort_values("clip_id").reset_index(drop=True)
    got = store.read_manifest(merged).sort_values("clip_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    for clip_id in expected.clip_id:
        mine, theirs = store.load_clip(merged, clip_id), store.load_clip(processed, clip_id)
        np.testing.assert_allclose(mine["mesh"], theirs["mesh"], atol=1e-5)
        np.testing.assert_array_equal(mine["audio"], theirs["audio"])


def test_merging_shards_that_disagree_names_both_files(tmp_path, processed):
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(processed, first)
    shutil.copytree(processed, second)
    clip = sorted((second / "clips").glob("*.npz"))[0]
    clip.write_bytes(clip.read_bytes()[:-1] + b"x")
    with pytest.raises(ValueError, match=f"{clip.name}.* differ"):
        store.merge_stores([first, second], tmp_path / "merged")


# ------------------------------------------------------------------ the whole pipeline and sweeps on SLURM
# A small demo recipe. The articulation gain is fixed at 1: a fitted gain is the argmin over a grid, which turns
# differences of 1e-6 between DDP and one process into a step of 0.05 in the gain.
PIPELINE = {"train.epochs": 2, "train.batch_size": 4, "data.val_fraction": 0.2, "train.num_threads": 1,
            "model.encoder_options.hidden": 32, "model.encoder_options.layers": 1,
            "model.encoder_options.conv_channels": 16, "model.latent_dim": 16, "evaluate.articulation": 1}
METRICS = ("lve", "mve", "mouth_corr", "motion_ratio", "closure_error", "peak_opening_ratio")


def _params(pairs: dict) -> list[str]:
    return [item for key, value in pairs.items() for item in ("-p", f"{key}={value}")]


def test_the_whole_pipeline_as_a_chain_of_jobs_gives_what_one_process_gives(slurm, synthetic_raw, tmp_path):
    """Extraction as a 2-task array and the merge, QA and neutrals, training on 2 processes (torchrun under srun,
    gloo), evaluation, then the report; against `a2m run` in one process on the same videos. The held-out metrics
    agree within the DDP test's tolerance (relative 1e-4; test_training: two processes against one)."""
    env = dict(slurm, A2M=str(Path(sys.executable).parent / "a2m"), A2M_SBATCH_OPTIONS="--mem=1500M --time=00:30:00")
    common = ["--config", str(REPO / "configs" / "demo.yaml"), "-p", f"data.raw={synthetic_raw}", *_params(PIPELINE)]
    cluster_run = tmp_path / "cluster_run"
    submitted = subprocess.run([sys.executable, "-m", "a2m_lib.cli", "run", *common, "-p",
                                f"data.processed={tmp_path / 'cluster_store'}", "--run-dir", str(cluster_run),
                                "--slurm", "--extract-tasks", "2", "--train-tasks", "2", "--wait"],
                               env=env, capture_output=True, text=True, timeout=1500)
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-1500:]}" for p in sorted(rundir.slurm(cluster_run).glob("*.out")))
    assert submitted.returncode == 0, f"{submitted.stdout}\n{submitted.stderr}\n{logs}"
    assert "every step ok" in submitted.stdout
    record = json.loads(rundir.record(cluster_run).read_text())
    assert [name for name, entry in record["notebooks"].items() if entry["status"] == "ok"] == \
        ["01_extract", "02_alignment_qa", "03_neutral_selection", "04_train", "05_evaluate"]
    assert record["slurm"]["failed"] is None and set(record["slurm"]["steps"]) == {"extract", "merge", "qa", "train", "evaluate"}
    assert "nproc_per_node=2" in (rundir.notebooks(cluster_run) / "04_train.ipynb").read_text()  # torchrun, 2 processes
    assert sorted(p.name for p in (tmp_path / "cluster_store.shards").iterdir()) == ["0", "1"]
    # the same run in one process, here
    local_run = tmp_path / "local_run"
    local = subprocess.run([sys.executable, "-m", "a2m_lib.cli", "run", *common, "-p",
                            f"data.processed={tmp_path / 'local_store'}", "--run-dir", str(local_run)],
                           capture_output=True, text=True, timeout=1500)
    assert local.returncode == 0, local.stderr[-3000:]
    mine, theirs = (json.loads(rundir.metrics(run).read_text()) for run in (cluster_run, local_run))
    assert mine["n_clips"] == theirs["n_clips"] and mine["per_clip"][0]["clip_id"] == theirs["per_clip"][0]["clip_id"]
    for key in METRICS:
        assert mine["model"][key] == pytest.approx(theirs["model"][key], rel=1e-4, abs=1e-6), key
    # submitting again resumes: every step is done, nothing is submitted
    again = subprocess.run([sys.executable, "-m", "a2m_lib.cli", "run", "--config", str(rundir.config(cluster_run)),
                            "--run-dir", str(cluster_run), "--slurm", "--extract-tasks", "2", "--train-tasks", "2"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "every step is done already" in again.stdout, again.stderr[-2000:]


def test_a_failed_step_stops_the_chain_and_the_report_names_it(slurm, synthetic_raw, tmp_path):
    env = dict(slurm, A2M=str(Path(sys.executable).parent / "a2m"), A2M_SBATCH_OPTIONS="--mem=1500M --time=00:30:00")
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "a2m_lib.cli", "run", "--config", str(REPO / "configs" / "demo.yaml"),
                             "-p", f"data.raw={synthetic_raw}", "-p", f"data.processed={tmp_path / 'store'}",
                             *_params(PIPELINE), "-p", "neutral.neutral=no_such_clip:3",  # notebook 03 fails
                             "--run-dir", str(run), "--slurm", "--wait"], env=env, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(rundir.slurm_report(run).read_text())
    assert report["failed"] == "qa" and "qa-" in report["message"] and report["steps"]["extract"]["status"] == "ok"
    assert report["steps"]["train"]["status"].startswith("cancelled") and "no_such_clip" in Path(
        report["steps"]["qa"]["logs"][-1]).read_text()
    assert not rundir.checkpoint(run, "last").exists()


def test_a_sweep_as_a_job_array_gives_the_runs_made_here(slurm, base_run, processed, tmp_path):
    from a2m_lib import sweep
    from a2m_lib.config import load_config, write_run_config

    base = rundir.branch(base_run, tmp_path / "base")
    write_run_config(load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(processed)}), base)
    env = dict(slurm, A2M=str(Path(sys.executable).parent / "a2m"))
    summaries = {}
    for where in ("slurm", "here"):
        command = [sys.executable, "-m", "a2m_lib.cli", "sweep", "--config", str(REPO / "configs" / "demo.yaml"),
                   "--base", str(base), "-g", "train.lr=1e-3,3e-3", "--out", str(tmp_path / where), *_params(PIPELINE)]
        result = subprocess.run(command + (["--slurm", "--sbatch", "--mem=1500M --time=00:30:00"] if where == "slurm" else []),
                                env=env, capture_output=True, text=True, timeout=1500)
        assert result.returncode == 0, result.stderr[-3000:]
        runs = sorted(p for p in (tmp_path / where).iterdir() if p.name != "slurm")
        deadline = time.monotonic() + 1200
        while not all(sweep.finished(run) for run in runs):
            assert time.monotonic() < deadline, "\n".join(p.read_text()[-1500:] for p in (tmp_path / where / "slurm").glob("*.out"))
            time.sleep(2)
        summaries[where] = {run.name: json.loads(rundir.metrics(run).read_text())["model"] for run in runs}
    assert list(summaries["slurm"]) == list(summaries["here"]) == ["lr=0.001", "lr=0.003"]
    assert len(list((tmp_path / "slurm" / "slurm").glob("sweep-*.out"))) == 2  # one task per run
    for name, metrics in summaries["slurm"].items():
        for key in METRICS:
            assert metrics[key] == pytest.approx(summaries["here"][name][key], rel=1e-4, abs=1e-6), (name, key)
