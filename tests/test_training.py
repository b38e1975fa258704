"""Training done properly: honest resume, feature cache, NaN guard, DDP, reproducibility, the collapse warning."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from a2m_lib import rundir, train
from a2m_lib.config import load_config
from a2m_lib.model import load_checkpoint, load_model
from tests.conftest import SMALL_SCRATCH

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = {**SMALL_SCRATCH, "train.batch_size": 2, "train.num_threads": 1}


def _cfg(processed, **overrides):
    return load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(processed), **SMALL, **overrides})


def _cli_train(run_dir, processed, overrides: dict, **popen):
    command = [sys.executable, "-m", "a2m_lib.cli", "train", "--config", str(REPO / "configs" / "demo.yaml"),
               "--run-dir", str(run_dir)]
    for key, value in {"data.processed": str(processed), **SMALL, **overrides}.items():
        command += ["-p", f"{key}={value}"]
    return command


def test_killed_mid_epoch_and_rerun_gives_the_uninterrupted_weights(processed, base_run, tmp_path):
    settings = {"train.epochs": 3, "train.checkpoint_every": 1}
    whole = rundir.branch(base_run, tmp_path / "whole")
    subprocess.run(_cli_train(whole, processed, settings), check=True, capture_output=True)
    killed = rundir.branch(base_run, tmp_path / "killed")
    # the training process dies (SIGKILL) right after the checkpoint of epoch 1, step 2: a known point, not a moment
    # found by polling from outside (a2m_lib.faults)
    crashed = subprocess.run(_cli_train(killed, processed, settings), capture_output=True,
                             env=dict(os.environ, A2M_CRASH_AT="train.step=1:2"))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    last = killed / "checkpoints" / "last.pt"
    interrupted = load_checkpoint(last)
    progress = interrupted["state"]
    assert (progress["epoch"], progress["step"], progress["finished"]) == (1, 2, False), "killed mid-epoch"
    result = subprocess.run(_cli_train(killed, processed, settings), capture_output=True, text=True)
    assert result.returncode == 0 and "at epoch 1, step 2" in result.stdout, result.stderr[-2000:]
    for name in ("last.pt", "best.pt"):
        a, b = (load_checkpoint(run / "checkpoints" / name)["model"] for run in (whole, killed))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    pd.testing.assert_frame_equal(pd.read_csv(whole / "train_log.csv").drop(columns="seconds"),
                                  pd.read_csv(killed / "train_log.csv").drop(columns="seconds"))


def test_finished_runs_train_afresh_and_changed_configs_refuse_to_resume(processed, base_run, tmp_path):
    run_dir = rundir.branch(base_run, tmp_path / "run")
    first = train.train(_cfg(processed, **{"train.epochs": 1}), run_dir, progress=False)
    again = train.train(_cfg(processed, **{"train.epochs": 1}), run_dir, progress=False)  # --from 04 on a finished run
    assert len(again.history) == 1 and again.history.train_loss[0] == first.history.train_loss[0]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    state["finished"] = state["state"]["finished"] = False  # as if it had been interrupted
    torch.save(state, run_dir / "checkpoints" / "last.pt")
    with pytest.raises(train.ResumeRefused, match=r"train\.lr \(0\.001 -> 0\.0001\).*train\.resume=false"):
        train.train(_cfg(processed, **{"train.epochs": 1, "train.lr": 1e-4}), run_dir, progress=False)
    fresh = train.train(_cfg(processed, **{"train.epochs": 1, "train.lr": 1e-4, "train.resume": False}), run_dir,
                        progress=False)
    assert len(fresh.history) == 1


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(processed, base_run, tmp_path, monkeypatch):
    run_dir = rundir.branch(base_run, tmp_path / "run")
    train.train(_cfg(processed, **{"train.epochs": 1}), run_dir, progress=False)
    good = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    real_total = train.total_loss
    calls = []

    def poisoned(*args):
        calls.append(1)
        return real_total(*args) * (float("nan") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(train, "total_loss", poisoned)
    with pytest.raises(train.TrainingDiverged, match="became nan at epoch 0, step 2.*last.pt keeps"):
        train.train(_cfg(processed, **{"train.epochs": 2, "train.resume": False, "train.checkpoint_every": 1}),
                    run_dir, progress=False)
    kept = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in kept["model"].values() if t.is_floating_point())
    assert kept["state"]["step"] == 2 and not all(torch.equal(good[k], kept["model"][k]) for k in good)


@pytest.mark.parametrize("encoder, options", [("scratch", dict(hidden=32, layers=1, conv_channels=16)),
                                              ("mel", dict(conv_hidden=32)), ("whisper", dict(conv_hidden=32))])
def test_the_feature_cache_gives_the_loss_curve_of_recomputing(processed, base_run, tmp_path, encoder, options):
    curves = []
    for cached in (True, False):
        run_dir = rundir.branch(base_run, tmp_path / f"cache{cached}")
        cfg = _cfg(processed, **{"train.epochs": 2, "model.encoder": encoder, "model.encoder_options": options,
                                 "train.cache_features": cached})
        curves.append(train.train(cfg, run_dir, progress=False).history[["train_loss", "val_loss"]].to_numpy())
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-4, atol=1e-6)
    assert list((processed / "features").iterdir()), "the cache lives in the store"


def test_two_processes_with_ddp_agree_with_one(processed, base_run, tmp_path):
    settings = {"train.epochs": 2, "train.batch_size": 4, "data.val_fraction": 0.2}
    single = rundir.branch(base_run, tmp_path / "single")
    subprocess.run(_cli_train(single, processed, settings), check=True, capture_output=True)
    double = rundir.branch(base_run, tmp_path / "ddp")
    command = _cli_train(double, processed, settings)
    command[1:3] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "a2m_lib.cli"]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (pd.read_csv(run / "train_log.csv") for run in (single, double))
    np.testing.assert_allclose(one.train_loss, two.train_loss, rtol=1e-4)
    np.testing.assert_allclose(one.val_loss, two.val_loss, rtol=1e-4)


def test_same_config_seed_and_data_give_the_same_metrics(processed, base_run, tmp_path):
    from a2m_lib import evaluate

    metrics = []
    for name in ("a", "b"):
        run_dir = rundir.branch(base_run, tmp_path / name)
        cfg = _cfg(processed, **{"train.epochs": 2})
        train.train(cfg, run_dir, progress=False)
        metrics.append(evaluate.evaluate(cfg, run_dir, progress=False).summary["model"])
    assert metrics[0] == metrics[1]


def test_collapse_is_reported_loudly(processed, base_run, tmp_path):
    run_dir = rundir.branch(base_run, tmp_path / "run")
    with pytest.warns(UserWarning, match="COLLAPSE"):
        result = train.train(_cfg(processed, **{"train.epochs": 1, "train.lr": 1e-6}), run_dir, progress=False)
    assert result.collapsed and result.motion_ratio < 0.3
    assert "COLLAPSE" in (run_dir / "train_summary.json").read_text()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    log = pd.read_csv(run_dir / "train_log.csv")
    assert {"val_loss[speaker=spk0]", "val_loss[speaker=spk1]", "val_motion_ratio", "lr"} <= set(log.columns)


def test_real_recipes_train_offline_and_the_pretrained_one_never_falls_back(processed, base_run, tmp_path):
    """configs/real.yaml (Whisper tiny.en, installed with a2m), configs/real_mel.yaml (mel) and configs/real_w2v.yaml
    (pretrained wav2vec2, here a tiny locally saved one)."""
    from transformers import Wav2Vec2Model

    from a2m_lib.encoders import EncoderLoadError
    from a2m_lib.encoders.wav2vec2 import ScratchEncoder

    tiny = tmp_path / "tiny_w2v2"
    Wav2Vec2Model(ScratchEncoder.architecture(ScratchEncoder.Options(hidden=32, layers=1, conv_channels=16))).save_pretrained(tiny)
    small = {"data.processed": str(processed), "train.epochs": 1, "model.latent_dim": 16}
    for recipe, extra in (("real.yaml", {"model.encoder_options.conv_hidden": 32}),
                          ("real_mel.yaml", {"model.encoder_options.conv_hidden": 32}),
                          ("real_w2v.yaml", {"model.encoder_options.pretrained": str(tiny)})):
        run_dir = rundir.branch(base_run, tmp_path / recipe)
        cfg = load_config(REPO / "configs" / recipe, {**small, **extra})
        result = train.train(cfg, run_dir, progress=False)
        assert len(result.history) == 1 and load_model(run_dir / "checkpoints" / "last.pt").cfg.encoder == cfg.model.encoder
    with pytest.raises(EncoderLoadError, match="model.encoder=mel"):
        train.train(load_config(REPO / "configs" / "real_w2v.yaml", {**small, "model.encoder_options.pretrained": str(tmp_path / "absent")}),
                    rundir.branch(base_run, tmp_path / "absent_run"), progress=False)


def test_a_dynamic_reference_model_is_trained_and_evaluated_with_both_references(processed, base_run, tmp_path):
    from a2m_lib import evaluate

    run_dir = rundir.branch(base_run, tmp_path / "run")
    cfg = _cfg(processed, **{"train.epochs": 2, "model.reference": "random_frame", "model.speaker_embedding": True})
    train.train(cfg, run_dir, progress=False)
    model = load_model(run_dir / "checkpoints" / "best.pt")
    assert model.cfg.reference == "random_frame" and model.speakers == ["spk0", "spk1"]
    summary = evaluate.evaluate(cfg, run_dir, progress=False).summary
    assert summary["reference"] == "random_frame"
    tests = summary["reference_tests"]
    assert {"neutral", "random_frame", "random_frame_no_motion"} <= set(tests)
    # given a random frame as its reference, the model moves from it with the speech: better than holding that frame
    # still (measured 0.777 against 0.802 LVE after 2 epochs, 3%; a model that predicts no offsets ties). Bound: 1%.
    assert tests["random_frame"]["lve"] < 0.99 * tests["random_frame_no_motion"]["lve"]


def test_tempo_augmentation_resamples_audio_features_and_meshes_together():
    lengths = [40, 25]
    ramp = torch.arange(40, dtype=torch.float32)
    features = torch.zeros(2, 40, 3)
    features[0, :, 0], features[1, :25, 0] = ramp, ramp[:25]
    target = features[..., None].repeat(1, 1, 1, 3)[:, :, :2]                     # (B, T, V=2, 3): the same ramp
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0], mask[1, :25] = True, True
    generator = torch.Generator().manual_seed(0)
    out_features, out_target, out_mask, out_silent = train.stretch_batch(features, target, mask, mask.clone(), lengths, 0.2, generator)
    factors = torch.exp(torch.empty(2).uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(0)))  # the draw it made
    assert out_mask.sum(1).tolist() == [max(2, round(n * float(f))) for n, f in zip(lengths, factors)]
    for i, length in enumerate(lengths):
        new = int(out_mask[i].sum())
        assert abs(np.log(new / length)) <= 0.2 + 1 / length                      # a tempo within the range
        values = out_features[i, :new, 0]
        torch.testing.assert_close(values, torch.linspace(0, length - 1, new))  # still the same ramp, end to end
        torch.testing.assert_close(out_target[i, :new, 0, 2], values)           # the meshes move with the audio
        assert not out_mask[i, new:].any() and out_silent[i, :new].all()
