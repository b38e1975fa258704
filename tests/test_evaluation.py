"""Evaluation, prediction and export: metrics with known answers, scores from files, a2m predict, renders, the
AniPortrait export."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from a2m_lib import evaluate, media, metrics, predict, regions, rundir, store, train
from a2m_lib.config import ModelConfig, load_config, write_run_config
from a2m_lib.model import Audio2Mesh, articulate
from tests.conftest import SMALL_SCRATCH

MEL = ModelConfig(encoder="mel", encoder_options=dict(conv_hidden=32), latent_dim=16)

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


def _with_gap(reference: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """(T, V, 3) meshes whose inner-lip gap (13-14) is exactly `gap`: the lower inner lip placed below the upper."""
    meshes = np.repeat(reference[None], len(gap), 0).copy()
    meshes[:, regions.LOWER_INNER_LIP] = reference[regions.UPPER_INNER_LIP] + np.asarray(gap)[:, None] * [0, 1, 0]
    return meshes


def test_the_lip_metrics_on_constructed_signals():
    """closure_error, peak_opening_ratio and lip_lag_frames (metrics.py) on gaps built to give a known answer."""
    reference, _ = _talking()
    t = np.arange(150)
    gap = np.clip(np.sin(2 * np.pi * t / 37) + 0.3 * np.sin(2 * np.pi * t / 11), 0, None)  # closed a third of the time
    truth = _with_gap(reference, gap)
    assert metrics.closure_error(truth, truth) == 0 and metrics.lip_lag_frames(truth, truth) == 0
    assert metrics.peak_opening_ratio(truth, truth) == pytest.approx(1)
    for delay in (-3, 2, 4):  # a copy `delay` frames late (negative: early)
        assert metrics.lip_lag_frames(_with_gap(reference, np.roll(gap, delay)), truth) == delay
    closed_level = gap[metrics.closure_frames(gap)].mean()
    half = _with_gap(reference, closed_level + 0.5 * (gap - closed_level))  # half the movement, from the closed level
    assert metrics.peak_opening_ratio(half, truth) == pytest.approx(0.5)
    never_closes = _with_gap(reference, np.maximum(gap, 0.4))  # stops 0.4 units short of closing
    assert metrics.closure_error(never_closes, truth) == pytest.approx(0.4)
    assert metrics.closure_error(_with_gap(reference, gap + 0.25), truth) == pytest.approx(0.25)
    still = np.broadcast_to(reference, truth.shape)
    assert np.isnan(metrics.lip_lag_frames(still, truth))  # a mouth that does not move has no lag
    row = metrics.clip_metrics(never_closes, truth, reference)
    assert {"closure_error", "peak_opening_ratio", "lip_lag_frames"} <= set(row) <= set(metrics.UNITS) | {"n_frames"}


def test_the_articulation_gain_scales_movement_around_its_mean_and_is_fitted_by_lve():
    reference, truth = _talking()
    offsets = (truth - reference).astype(np.float32)
    assert articulate(offsets, 1.0) is offsets
    doubled = articulate(offsets, 2.0)
    np.testing.assert_allclose(doubled.mean(0), offsets.mean(0), atol=1e-5)  # the mean shape stays
    np.testing.assert_allclose(doubled - doubled.mean(0), 2 * (offsets - offsets.mean(0)), atol=1e-5)
    # a model that moves 0.6 times as far as the person: the gain with the lowest LVE is 1/0.6
    mean = offsets.mean(0)
    shy = mean + 0.6 * (offsets - mean)
    errors = evaluate.gain_errors(shy, reference, truth)
    assert evaluate.ARTICULATION_GAINS[int(np.argmin(errors))] == pytest.approx(1 / 0.6, abs=0.03)


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
def trained_run(processed, base_run, tmp_path_factory):
    run_dir = rundir.branch(base_run, tmp_path_factory.mktemp("trained"))
    cfg = load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(processed), "train.epochs": 2, **SMALL_SCRATCH})
    write_run_config(cfg, run_dir)
    train.train(cfg, run_dir, progress=False)
    return run_dir, cfg


@pytest.mark.slow
def test_evaluation_writes_predictions_then_metrics_and_renders(trained_run):
    run_dir, cfg = trained_run
    result = evaluate.evaluate(cfg, run_dir, progress=False)
    files = sorted(result.predictions.glob("*.npz"))
    assert len(files) == result.summary["n_clips"] >= 2
    assert evaluate.score(result.predictions)["model"] == result.summary["model"]  # recomputed without the model
    saved = json.loads(rundir.metrics(run_dir).read_text())
    assert saved["baselines"]["neutral"]["lve"] > 0 and "random_frame" in saved["reference_tests"]
    assert saved["units"]["lve"].startswith("mesh units") and saved["units"]["lip_lag_frames"] == "frames"
    assert {"closure_error", "peak_opening_ratio", "lip_lag_frames"} <= set(saved["model"])
    # the articulation gain: fitted per speaker on validation, recorded in the run, applied to `model` only
    fitted = json.loads(rundir.articulation(run_dir).read_text())
    assert saved["articulation"] == fitted and fitted["source"].startswith("fitted on")  # demo.yaml: auto
    assert fitted["default"] in evaluate.ARTICULATION_GAINS and "model_unscaled" in saved
    clip = result.load(result.per_clip.clip_id[0])
    assert clip["model"].shape == clip["truth"].shape and clip["neutral"].shape == (468, 3)
    np.testing.assert_allclose(clip["model"], clip["neutral"] + articulate(clip["model_unscaled"] - clip["neutral"],
                                                                            float(clip["articulation"])), atol=1e-5)
    renders = evaluate.render_clips(result, cfg, run_dir, progress=False)
    assert sorted(renders) == ["best", "median", "worst"]
    assert all(r["video"].parent == r["view"].parent == rundir.renders(run_dir) for r in renders.values())
    video = renders["best"]["video"]
    assert media.probe_streams(video) == {"has_video": True, "has_audio": True}
    n_frames = sum(1 for _ in media.iter_frames(video, clip["fps"]))
    best = result.load(video.stem)
    assert abs(n_frames - len(store.load_clip(cfg.data.processed, str(best["clip_id"]), keys=("mesh",))["mesh"])) <= 1
    assert evaluate.gain_curve(result.predictions).motion_ratio.is_monotonic_increasing


def _a2m(*args):
    return subprocess.run([sys.executable, "-m", "a2m_lib.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_predict_reads_any_audio_and_says_what_is_wrong(trained_run, synthetic_raw, tmp_path):
    run_dir, _ = trained_run
    source = sorted(synthetic_raw.rglob("*.mp4"))[0]
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-i", str(source), "-vn", "-ac", "2", "-ar", "44100",
                    str(tmp_path / "speech.mp3")], check=True)
    result = _a2m("predict", tmp_path / "speech.mp3", "--run-dir", run_dir, "--speaker", "spk1", "--out", tmp_path / "out.npz",
                  "--smooth", "5", "--video", tmp_path / "out.mp4", "--articulation", "1")
    assert result.returncode == 0, result.stderr
    assert "real-time factor" in result.stdout
    louder = _a2m("predict", tmp_path / "speech.mp3", "--run-dir", run_dir, "--speaker", "spk1", "--out",
                  tmp_path / "louder.npz", "--smooth", "5", "--articulation", "1.5")
    assert louder.returncode == 0 and "articulation gain 1.5" in louder.stdout, louder.stderr
    with np.load(tmp_path / "out.npz") as plain, np.load(tmp_path / "louder.npz") as scaled:
        ratio = metrics.motion_ratio(scaled["verts"], plain["verts"])
        assert ratio == pytest.approx(1.5, rel=1e-3) and float(scaled["articulation"]) == 1.5
    with np.load(tmp_path / "out.npz") as out:
        seconds = len(media.read_audio(tmp_path / "speech.mp3")) / 16000
        assert out["verts"].shape == (store.expected_frames(int(seconds * 16000), 16000, 30), 468, 3) and out["fps"] == 30
    assert media.probe_streams(tmp_path / "out.mp4")["has_audio"]
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-i", str(source), "-an", "-c:v", "copy",
                    str(tmp_path / "silent.mp4")], check=True)
    (tmp_path / "empty.wav").write_bytes(b"")
    for bad, expected in ((tmp_path / "silent.mp4", "has no audio stream"), (tmp_path / "empty.wav", "not a readable"),
                          (tmp_path / "nowhere.wav", "does not exist")):
        result = _a2m("predict", bad, "--run-dir", run_dir, "--speaker", "spk0", "--out", tmp_path / "bad.npz")
        assert result.returncode != 0 and expected in result.stderr and str(bad) in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    result = _a2m("predict", tmp_path / "speech.mp3", "--run-dir", run_dir, "--speaker", "nobody", "--out", tmp_path / "bad.npz")
    assert result.returncode != 0 and "nobody" in result.stderr and "spk0" in result.stderr


def test_long_audio_in_windows_has_no_seam():
    torch.manual_seed(0)
    model = Audio2Mesh(MEL).eval()
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
    mel = Audio2Mesh(MEL)
    torch.save(dict(mel.describe(), model=mel.state_dict()), mel_run / "checkpoints" / "best.pt")
    with pytest.raises(predict.ExportError, match="not a Wav2Vec2Model.*mel: log-mel"):
        predict.export_aniportrait(mel_run, tmp_path / "no")


@pytest.mark.slow
def test_evaluate_on_another_store_from_the_command_line(trained_run, processed):
    run_dir, _ = trained_run
    result = _a2m("evaluate", "--run-dir", run_dir, "--data", processed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out" in result.stdout and "LVE model" in result.stdout
    other = rundir.other_store(run_dir, processed)
    saved = json.loads(rundir.metrics(other).read_text())
    assert saved["n_clips"] == len(rundir.accepted_clips(other)) and (other / "neutral" / "spk0.npz").exists()
