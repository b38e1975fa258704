"""Shared fixtures: a small synthetic dataset, extracted and QA'd once per session."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from a2m_lib import extract, media, qa, rundir, synth
from a2m_lib.config import load_config

REPO = Path(__file__).resolve().parents[1]
EVAL_MEDIA = REPO.parent / "shared" / "eval_media"


@pytest.fixture(scope="session")
def cfg():
    return load_config(REPO / "configs" / "demo.yaml")


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> Path:
    """2 speakers x 6 clean clips of 3-4 s."""
    raw = tmp_path_factory.mktemp("raw")
    synth.synth_dataset(raw, speakers=2, clips=6, seconds=(3.0, 4.0), seed=7, progress=False)
    return raw


@pytest.fixture(scope="session")
def processed(synthetic_raw, tmp_path_factory, cfg) -> Path:
    out = tmp_path_factory.mktemp("processed")
    extract.extract_store(synthetic_raw, out, cfg.data, cfg.extract, progress=False)
    return out


@pytest.fixture(scope="session")
def qa_run(processed, tmp_path_factory, cfg) -> Path:
    """A run folder holding QA's decisions over `processed` (qa.csv), with the demo's QA settings."""
    run_dir = tmp_path_factory.mktemp("qa_run")
    qa.check_store(processed, cfg.qa, cfg.data.sample_rate, run_dir=run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def accepted(qa_run):
    return rundir.accepted_clips(qa_run)


def require_eval_media(*relative: str) -> list[Path]:
    """Paths inside ../shared/eval_media, or skip the test when it is absent (a user's clone has none)."""
    paths = [EVAL_MEDIA / r for r in relative]
    missing = [p for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"real media not available: {missing[0]}")
    return paths


def ffmpeg(*args):
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-y", *map(str, args)], check=True)
