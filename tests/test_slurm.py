"""scripts/slurm/: extraction as a SLURM job array on a real single-node SLURM (Debian's slurm-wlm and munge, which
.ci/run installs the way it installs chromium), against a one-process extraction of the same folder."""
from __future__ import annotations

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

from a2m_lib import store

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
