"""Evaluation, prediction and export: metrics with known answers, scores from files, a2m predict, renders, the
AniPortrait export."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from a2m_lib import evaluate, media, metrics, neutral, predict, regions, render, rundir, store, train
from a2m_lib.config import ModelConfig, load_config
from a2m_lib.model import Audio2Mesh

REPO = Path(__file__).resolve().parents[1]


def _talking(n_frames=60, seed=0):
    """A reference face and a sequence whose lips and brows move."""
    rng = np.random.default_rng(seed)
    reference = np.load(REPO / "a2m_lib" / "assets" / "reference_mesh.npy")[:468].astype(np.float64)
    truth = np.repeat(reference[None], n_frames, 0)
    lower = reference[regions.LIPS, 1] > reference[[13, 14], 1].mean()  # the lower lip opens the mouth
    truth[:, regions.LIPS[lower], 1] += 0.5 * (1 + np.sin(np.linspace(0, 6, n_frames)))[:, None]
    truth[:, regions.UPPER_FACE] += 0.05 * rng.normal(size=(n_frames, len(regions.UPPER_FACE), 3))
    return reference, truth


def test_metrics_have_the_known_answers():
    reference, truth = _talking()
    same = metrics.clip_metrics(truth, truth, reference)
    assert same["lve"] == same["lve_sq"] == same["mve"] == same["fdd"] == 0
    assert same["mouth_corr"] == pytest.approx(1) and same["motion_ratio"] == pytest.approx(1)
    shifted = metrics.clip_metrics(truth + [0.3, 0.4, 0.0], truth, reference)  # 0.5 units away everywhere
    assert shifted["lve"] == pytest.approx(0.5) and shifted["mve"] == pytest.approx(0.5)
    assert shifted["lve_sq"] == pytest.approx(0.25) and shifted["mouth_corr"] == pytest.approx(1)
    frozen = metrics.clip_metrics(np.broadcast_to(reference, truth.shape), truth, reference)
    assert frozen["motion_ratio"] == 0 and frozen["mouth_corr"] == 0
    assert frozen["fdd"] == pytest.approx(metrics.upper_face_dynamics(truth, reference)) == frozen["fdd_abs"]
    double = metrics.clip_metrics(reference + 2 * (truth - reference), truth, reference)
    assert double["motion_ratio"] == pytest.approx(2)


def _prediction_file(folder, clip_id, speaker, truth, reference, model_mesh):
    n_frames = len(truth)
    np.savez(folder / f"{clip_id}.npz", model=model_mesh, truth=truth, neutral=reference,
             baseline_mean_offset=np.broadcast_to(reference + 0.01, truth.shape),
             baseline_nearest_audio=np.broadcast_to(reference, truth.shape), random_reference=reference + 0.02,
             model_random_reference=model_mesh + 0.02, frames=np.arange(n_frames), fps=30.0, clip_id=clip_id,
             speaker=speaker, language="en")


def test_scores_come_from_the_prediction_files_alone(tmp_path):
    reference, truth = _talking()
    _prediction_file(tmp_path, "a", "s1", truth, reference, truth)                                   # perfect
    _prediction_file(tmp_path, "b", "s2", truth, reference, np.broadcast_to(reference, truth.shape))  # frozen
    summary = evaluate.score(tmp_path)
    assert summary["n_clips"] == 2 and set(summary["baselines"]) == {"neutral", "mean_offset", "nearest_audio"}
    assert summary["per_speaker"]["s1"]["model"]["lve"] == 0 and summary["per_speaker"]["s2"]["model"]["motion_ratio"] == 0
    assert set(summary["per_language"]) == {"en"} and {"lve", "lve_sq", "mve", "fdd", "fdd_abs"} <= set(summary["model"])
    assert summary["model"]["lve"] == pytest.approx(summary["baselines"]["neutral"]["lve"] / 2)
    frozen_only = tmp_path / "frozen"
    frozen_only.mkdir()
    _prediction_file(frozen_only, "b", "s2", truth, reference, np.broadcast_to(reference, truth.shape))
    failures = evaluate.score(frozen_only)["failures"]
    assert any("neutral baseline on lve" in f for f in failures) and any("mouth_corr" in f for f in failures)


@pytest.fixture(scope="module")
def trained_run(processed, qa_run, accepted, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained")
    shutil.copy(qa_run / "qa.csv", run_dir / "qa.csv")
    neutral.resolve(processed, accepted, "auto", run_dir)
    cfg = load_config(REPO / "configs" / "demo.yaml", {
        "data.processed": str(processed), "train.epochs": 2, "model.scratch_hidden": 32, "model.scratch_layers": 1,
        "model.scratch_conv_channels": 16, "model.latent_dim": 16})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    train.train(cfg, run_dir, progress=False)
    return run_dir, cfg


@pytest.mark.slow
def test_evaluation_writes_predictions_then_metrics_and_renders(trained_run):
    run_dir, cfg = trained_run
    result = evaluate.evaluate(cfg, run_dir, progress=False)
    files = sorted(result.predictions.glob("*.npz"))
    assert len(files) == result.summary["n_clips"] >= 2
    assert evaluate.score(result.predictions)["model"] == result.summary["model"]  # recomputed without the model
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["baselines"]["neutral"]["lve"] > 0 and "random_frame" in saved["reference_tests"]
    assert saved["units"]["lve"].startswith("mesh units")
    clip = result.load(result.per_clip.clip_id[0])
    assert clip["model"].shape == clip["truth"].shape and clip["neutral"].shape == (468, 3)
    video = render.render_prediction_file(files[0], cfg.data.processed, run_dir / "renders" / "x.mp4")
    assert media.probe_streams(video) == {"has_video": True, "has_audio": True}
    n_frames = sum(1 for _ in media.iter_frames(video, clip["fps"]))
    assert abs(n_frames - len(store.load_clip(cfg.data.processed, str(clip["clip_id"]), keys=("mesh",))["mesh"])) <= 1


def _a2m(*args):
    return subprocess.run([sys.executable, "-m", "a2m_lib.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_predict_reads_any_audio_and_says_what_is_wrong(trained_run, synthetic_raw, tmp_path):
    run_dir, _ = trained_run
    source = sorted(synthetic_raw.rglob("*.mp4"))[0]
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-i", str(source), "-vn", "-ac", "2", "-ar", "44100",
                    str(tmp_path / "speech.mp3")], check=True)
    result = _a2m("predict", tmp_path / "speech.mp3", "--run", run_dir, "--speaker", "spk1", "--out", tmp_path / "out.npz",
                  "--smooth", "5", "--video", tmp_path / "out.mp4")
    assert result.returncode == 0, result.stderr
    assert "real-time factor" in result.stdout
    with np.load(tmp_path / "out.npz") as out:
        seconds = len(media.read_audio(tmp_path / "speech.mp3")) / 16000
        assert out["verts"].shape == (store.expected_frames(int(seconds * 16000), 16000, 30), 468, 3) and out["fps"] == 30
    assert media.probe_streams(tmp_path / "out.mp4")["has_audio"]
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-i", str(source), "-an", "-c:v", "copy",
                    str(tmp_path / "silent.mp4")], check=True)
    (tmp_path / "empty.wav").write_bytes(b"")
    for bad, expected in ((tmp_path / "silent.mp4", "has no audio stream"), (tmp_path / "empty.wav", "not a readable"),
                          (tmp_path / "nowhere.wav", "does not exist")):
        result = _a2m("predict", bad, "--run", run_dir, "--speaker", "spk0", "--out", tmp_path / "bad.npz")
        assert result.returncode != 0 and expected in result.stderr and str(bad) in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    result = _a2m("predict", tmp_path / "speech.mp3", "--run", run_dir, "--speaker", "nobody", "--out", tmp_path / "bad.npz")
    assert result.returncode != 0 and "nobody" in result.stderr and "spk0" in result.stderr


def test_long_audio_in_windows_has_no_seam():
    torch.manual_seed(0)
    model = Audio2Mesh(ModelConfig(encoder="mel", conv_hidden=32, latent_dim=16)).eval()
    torch.nn.init.normal_(model.out_fn.weight, std=0.1)
    t = np.arange(16000 * 12) / 16000
    audio = (np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    audio += 0.05 * np.random.default_rng(0).normal(size=len(t)).astype(np.float32)
    one_pass = model.predict(audio, 360)  # 12 s fit in one 20 s window
    windowed = model.predict(audio, 360, window_seconds=6, overlap_seconds=3)
    difference = np.abs(windowed - one_pass) / one_pass.std()  # an untrained model: its output jitters every frame
    assert difference.mean() < 0.01 and difference.max() < 0.25


@pytest.mark.slow
def test_export_loads_strictly_into_aniportraits_layout(trained_run, tmp_path):
    run_dir, _ = trained_run
    settings = predict.export_aniportrait(run_dir, tmp_path / "export")
    section = settings["a2m_model"]
    assert section["out_dim"] == 1404 and "only_last_fetures" in section

    class Audio2MeshModel(nn.Module):  # AniPortrait's layout (src/audio_models/model.py)
        def __init__(self, config):
            super().__init__()
            self.audio_encoder = Wav2Vec2Model(Wav2Vec2Config.from_pretrained(config["model_path"]))
            self.in_fn = nn.Linear(self.audio_encoder.config.hidden_size, config["latent_dim"])
            self.out_fn = nn.Linear(config["latent_dim"], config["out_dim"])

    theirs = Audio2MeshModel(section)
    theirs.load_state_dict(torch.load(settings["a2m_ckpt"], weights_only=True), strict=True)
    mel_run = tmp_path / "mel"
    (mel_run / "checkpoints").mkdir(parents=True)
    mel = Audio2Mesh(ModelConfig(encoder="mel", conv_hidden=32, latent_dim=16))
    torch.save(dict(mel.describe(), model=mel.state_dict()), mel_run / "checkpoints" / "best.pt")
    with pytest.raises(predict.ExportError, match="not a Wav2Vec2Model.*mel: log-mel"):
        predict.export_aniportrait(mel_run, tmp_path / "no")


@pytest.mark.slow
def test_evaluate_on_another_store_from_the_command_line(trained_run, processed):
    run_dir, _ = trained_run
    result = _a2m("evaluate", run_dir, "--data", processed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out" in result.stdout and "LVE model" in result.stdout
    other = run_dir / f"eval_{processed.name}"
    saved = json.loads((other / "metrics.json").read_text())
    assert saved["n_clips"] == len(rundir.accepted_clips(other)) and (other / "neutral" / "spk0.npz").exists()
