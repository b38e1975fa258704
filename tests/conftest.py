"""Shared fixtures: a small synthetic dataset, extracted and QA'd once per session."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from a2m_lib import extract, media, neutral, qa, rundir, synth
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


@pytest.fixture(scope="session")
def base_run(qa_run, processed, tmp_path_factory) -> Path:
    """A run with what notebooks 02 and 03 leave (QA's decisions and the neutrals): tests start runs from it with
    rundir.branch, as the benchmarks do."""
    run_dir = tmp_path_factory.mktemp("base_run")
    (run_dir / "qa.csv").write_bytes(rundir.qa_table(qa_run).read_bytes())
    neutral.choose(run_dir, neutral.Ranking(processed, rundir.accepted_clips(run_dir)), "auto")
    return run_dir


# A small scratch model for tests that train: -p style overrides on top of configs/demo.yaml
SMALL_SCRATCH = {"model.encoder_options.hidden": 32, "model.encoder_options.layers": 1,
                 "model.encoder_options.conv_channels": 16, "model.latent_dim": 16}


def require_eval_media(*relative: str) -> list[Path]:
    """Paths inside ../shared/eval_media, or skip the test when it is absent (a user's clone has none)."""
    paths = [EVAL_MEDIA / r for r in relative]
    missing = [p for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"real media not available: {missing[0]}")
    return paths


def ffmpeg(*args):
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="session")
def faulty_store(tmp_path_factory, cfg, synthetic_raw):
    """A raw folder of faulty and odd videos (late audio, dropped frames, face gaps, odd formats, bad files),
    extracted and QA'd once: (raw, store, manifest, QA report). test_extract and test_qa read it."""
    raw = tmp_path_factory.mktemp("faulty_raw")
    synth.synth_dataset(raw / "shifted", 1, 2, (4.0, 5.0), seed=11, faults=synth.Faults(audio_offset_frames=6), progress=False)
    synth.synth_dataset(raw / "dropped", 1, 1, (4.0, 4.0), seed=12, faults=synth.Faults(dropped_frames=6), progress=False)
    synth.synth_dataset(raw / "noface", 1, 1, (4.0, 4.0), seed=13, faults=synth.Faults(no_face_frames=30), progress=False)
    synth.synth_dataset(raw / "blink", 1, 1, (4.0, 4.0), seed=14, faults=synth.Faults(no_face_frames=3), progress=False)
    good = sorted(synthetic_raw.rglob("*.mp4"))[0]  # a clean clip
    bad = raw / "bad"
    bad.mkdir()
    (bad / "notes.mp4").write_text("this is not a video")
    (bad / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    ffmpeg("-i", good, "-an", "-c:v", "copy", bad / "silent_film.mp4")
    ffmpeg("-i", good, "-vn", "-c:a", "copy", bad / "audio_only.mp4")
    ffmpeg("-i", good, "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-map", "0:v", "-map", "1:a", "-c:v", "copy",
           "-c:a", "aac", "-shortest", bad / "muted.mp4")
    ffmpeg("-i", good, "-vf", "drawbox=c=gray:t=fill", "-c:a", "copy", bad / "faceless.mp4")
    ffmpeg("-i", good, "-t", "0.2", bad / "tiny.mp4")
    odd = raw / "odd"
    odd.mkdir()
    ffmpeg("-i", good, "-ac", "2", "-ar", "48000", "-c:v", "copy", odd / "stereo48k.mp4")
    ffmpeg("-i", good, "-ac", "2", "-ar", "44100", "-c:v", "copy", odd / "stereo44k.mkv")
    ffmpeg("-i", good, "-vf", "scale=3840:2160", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy", odd / "uhd.mp4")
    for name in ("stereo48k", "stereo44k", "uhd"):  # three copies of one recording: a speaker each, or QA fails two as copies
        (odd / f"{name}.json").write_text(json.dumps({"speaker": f"odd_{name}"}))
    out = tmp_path_factory.mktemp("faulty_processed")
    manifest = extract.extract_store(raw, out, cfg.data, cfg.extract, progress=False)
    return raw, out, manifest, qa.check_store(out, cfg.qa, cfg.data.sample_rate, run_dir=out.parent / f"{out.name}_run")
