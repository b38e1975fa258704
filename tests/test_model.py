"""a2m_lib.model: the encoder's names and loading, shapes, padding, saving and loading, refused pickles."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Model

from a2m_lib import config, model, rundir, train
from a2m_lib.config import ConfigError, ModelConfig, load_config
from a2m_lib.encoders import EncoderLoadError
from a2m_lib.encoders.wav2vec2 import ScratchEncoder
from a2m_lib.model import Audio2Mesh, resolve_device
from tests.conftest import REPO

TINY = dict(hidden=32, layers=2, conv_channels=16)


def w2v2(path, latent_dim: int = 16, **options) -> ModelConfig:
    return ModelConfig(encoder="wav2vec2", encoder_options=dict(pretrained=str(path), **options), latent_dim=latent_dim)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny Wav2Vec2 saved locally: the real from_pretrained(path) code path, without any hub."""
    path = tmp_path_factory.mktemp("tiny_wav2vec2")
    torch.manual_seed(0)
    Wav2Vec2Model(ScratchEncoder.architecture(ScratchEncoder.Options(**TINY))).save_pretrained(path)
    return path


def _features(model, seconds, n_frames, seed=0):
    audio = torch.from_numpy(model.normalise(np.random.default_rng(seed).normal(size=int(16000 * seconds))))
    return model.frame_features(audio, n_frames)


def test_encoder_loads_from_a_local_pretrained_folder(tiny_checkpoint):
    model = Audio2Mesh(w2v2(tiny_checkpoint))
    reference = Wav2Vec2Model.from_pretrained(tiny_checkpoint)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.audio_encoder.state_dict()[name], tensor), name
    # AniPortrait freezes the CNN feature encoder; the transformer and head train
    assert not any(p.requires_grad for p in model.audio_encoder.feature_extractor.parameters())
    assert all(p.requires_grad for p in model.audio_encoder.encoder.parameters())


def test_state_dict_uses_aniportraits_names(tiny_checkpoint):
    model = Audio2Mesh(w2v2(tiny_checkpoint))
    names = set(model.state_dict())
    assert {"in_fn.weight", "in_fn.bias", "out_fn.weight", "out_fn.bias"} <= names
    assert {f"audio_encoder.{n}" for n in Wav2Vec2Model.from_pretrained(tiny_checkpoint).state_dict()} == names - {
        "in_fn.weight", "in_fn.bias", "out_fn.weight", "out_fn.bias"}
    assert model.out_fn.weight.shape == (468 * 3, 16)


def test_missing_encoder_gives_a_clear_error_and_no_fallback(tmp_path):
    with pytest.raises(EncoderLoadError, match="model.encoder_options.pretrained.*save_pretrained.*model.encoder=mel"):
        Audio2Mesh(w2v2(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="model.encoder_options.pretrained"):
        load_config(None, {"model.encoder": "facebook/wav2vec2-base-960h"})


def test_forward_shapes_and_zero_init(tiny_checkpoint):
    model = Audio2Mesh(w2v2(tiny_checkpoint))
    features = _features(model, 1.0, 30)
    assert features.shape == (30, 16)  # the CNN output resampled to 30 frames
    offsets = model(torch.stack([features, features]), torch.ones(2, 30, dtype=torch.bool))
    assert offsets.shape == (2, 30, 468, 3)
    assert torch.count_nonzero(offsets) == 0  # starts at the reference face


def test_mean_of_hidden_states_is_what_transformers_returns(tiny_checkpoint):
    """Without resampling (n_frames = the CNN's own length), averaging must equal the top-level model's
    output_hidden_states=True average, embedding output included, as AniPortrait computes it."""
    model = Audio2Mesh(w2v2(tiny_checkpoint, only_last_features=False)).eval()
    audio = torch.from_numpy(model.normalise(np.random.default_rng(1).normal(size=16000)))[None]
    with torch.no_grad():
        reference = model.audio_encoder(audio, output_hidden_states=True)
        expected = torch.stack(reference.hidden_states).mean(0)
        n_frames = expected.shape[1]
        features = model.frame_features(audio[0], n_frames)[None]
        got = model.audio_encoder.encode(features, torch.ones(1, n_frames, dtype=torch.bool))
        model.audio_encoder.options = dataclasses.replace(model.audio_encoder.options, only_last_features=True)
        got_last = model.audio_encoder.encode(features, torch.ones(1, n_frames, dtype=torch.bool))
    assert len(reference.hidden_states) == model.audio_encoder.config.num_hidden_layers + 1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_last, reference.last_hidden_state, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("encoder, options", [("scratch", dict(only_last_features=False, **TINY)), ("mel", dict(conv_hidden=32)),
                                              ("whisper", dict(conv_hidden=32)),
                                              ("whisper", dict(conv_hidden=32, finetune_layers=1))],
                         ids=["scratch", "mel", "whisper", "whisper-ft1"])
def test_a_padded_clip_gives_what_it_gives_alone(encoder, options):
    torch.manual_seed(0)
    model = Audio2Mesh(ModelConfig(encoder=encoder, encoder_options=options, latent_dim=16)).eval()
    torch.nn.init.normal_(model.out_fn.weight)
    short, long = _features(model, 1.0, 30, seed=2), _features(model, 2.0, 60, seed=3)
    padded = torch.zeros(2, 60, short.shape[1])
    padded[0, :30], padded[1] = short, long
    mask = torch.zeros(2, 60, dtype=torch.bool)
    mask[0, :30], mask[1] = True, True
    with torch.no_grad():
        alone = model(short[None].float(), torch.ones(1, 30, dtype=torch.bool))[0]
        batched = model(padded, mask)[0, :30]
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


def test_mel_encoder_features_are_log_mel_at_the_frame_rate():
    """A second of silence (faint noise), then a second of a 1 kHz tone: the tone's frames are loud in the mel band
    that holds 1 kHz and in no band far from it, the silent ones are not, and the frames follow the time axis."""
    import librosa

    model = Audio2Mesh(ModelConfig(encoder="mel", encoder_options=dict(bands=40, conv_hidden=32), latent_dim=16))
    rng = np.random.default_rng(0)
    audio = np.concatenate([1e-4 * rng.normal(size=16000), 0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)])
    features = model.frame_features(torch.from_numpy(model.normalise(audio)), 60).numpy()      # (60, 40)
    assert features.shape == (60, 40) and model.frozen_features
    centres = librosa.mel_frequencies(40 + 2, fmax=8000)[1:-1]
    tone_band = int(np.argmin(np.abs(centres - 1000)))
    silent, tone = features[3:27], features[33:57]  # clear of the edge where the tone starts
    # standardised per band over the recording: half silence, half tone puts the tone's band near +1 and -1
    assert (tone[:, tone_band] > silent[:, tone_band] + 1.5).all()
    assert (np.abs(tone.argmax(1) - tone_band) <= 2).all()  # the loudest band is the tone's (a window leaks a band)
    far = np.abs(np.arange(40) - tone_band) > 6
    assert (tone[:, far] < 0).all()  # bands far from 1 kHz do not rise with the tone


def test_speaker_embedding_and_dynamic_reference_change_the_output():
    cfg = ModelConfig(encoder="mel", encoder_options=dict(conv_hidden=32), latent_dim=16, speaker_embedding=True,
                      reference="random_frame")
    model = Audio2Mesh(cfg, speakers=["a", "b"]).eval()
    torch.nn.init.normal_(model.out_fn.weight)
    features, mask = _features(model, 1.0, 30)[None].repeat(2, 1, 1), torch.ones(2, 30, dtype=torch.bool)
    reference = torch.zeros(2, 468, 3)
    reference[1] = 0.5
    with torch.no_grad():
        by_speaker = model(features, mask, torch.tensor([0, 1]), torch.zeros(2, 468, 3))
        by_reference = model(features, mask, torch.tensor([0, 0]), reference)
    assert not torch.allclose(by_speaker[0], by_speaker[1]) and not torch.allclose(by_reference[0], by_reference[1])
    with pytest.raises(ValueError, match="unknown speaker 'c'"):
        model.predict(np.zeros(16000, np.float32), 30, speaker="c", reference=np.zeros((468, 3)))


def test_save_and_load_pretrained_are_symmetric(tiny_checkpoint, tmp_path):
    torch.manual_seed(1)
    model = Audio2Mesh(dataclasses.replace(w2v2(tiny_checkpoint), speaker_embedding=True), speakers=["x", "y"])
    torch.nn.init.normal_(model.out_fn.weight)
    model.save_pretrained(tmp_path / "a2m")
    loaded = Audio2Mesh.from_pretrained(tmp_path / "a2m")
    audio = np.random.default_rng(0).normal(size=8000).astype(np.float32)
    model.eval()
    assert loaded.speakers == ["x", "y"]
    np.testing.assert_allclose(model.predict(audio, 15, speaker="y"), loaded.predict(audio, 15, speaker="y"), atol=1e-6)


def test_device_auto_and_audio_normalisation():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    normalised = _tiny_model().normalise(np.random.default_rng(0).normal(3, 5, 1000).astype(np.float32))
    assert abs(normalised.mean()) < 1e-4 and abs(normalised.std() - 1) < 1e-3


def test_a_pretrained_style_encoder_round_trips(tmp_path):
    """Hub checkpoints such as wav2vec2-base-960h have SpecAugment on (masked_spec_embed in their weights)."""
    from transformers import Wav2Vec2Config

    from a2m_lib.model import load_model

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                            conv_dim=(16,) * 7, mask_time_prob=0.05)
    Wav2Vec2Model(config).save_pretrained(tmp_path / "hub_like")
    model = Audio2Mesh(w2v2(tmp_path / "hub_like"))
    assert "audio_encoder.masked_spec_embed" in model.state_dict()
    model.save_pretrained(tmp_path / "saved")
    loaded = load_model(tmp_path / "saved")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def _tiny_model() -> model.Audio2Mesh:
    torch.manual_seed(0)
    return model.Audio2Mesh(config.ModelConfig(encoder="scratch", encoder_options=dict(hidden=32, layers=1, conv_channels=16),
                                               latent_dim=16))


def test_shared_model_is_safetensors_and_json(tmp_path):
    from safetensors.torch import load_file

    tiny = _tiny_model()
    tiny.save_pretrained(tmp_path / "shared")
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["config.json", "model.safetensors"]
    weights = load_file(tmp_path / "shared" / "model.safetensors")  # outside a2m: no code, no a2m import needed
    described = json.loads((tmp_path / "shared" / "config.json").read_text())
    assert described["model_config"]["latent_dim"] == 16 and "mesh units" in described["units"]
    assert torch.equal(weights["out_fn.weight"], tiny.state_dict()["out_fn.weight"])
    loaded = model.load_model(tmp_path / "shared")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny.state_dict().values()))


@pytest.mark.slow
def test_a_crafted_checkpoint_is_refused_by_every_loader_and_runs_nothing(tmp_path, processed, base_run):
    marker = tmp_path / "pwned"
    tiny = _tiny_model()
    crafted = dict(tiny.describe(), model=tiny.state_dict(), payload=_RunsCode(marker))
    run_dir = rundir.branch(base_run, tmp_path / "run")
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        torch.save(crafted, run_dir / "checkpoints" / name)
    (tmp_path / "shared").mkdir()
    torch.save(crafted, tmp_path / "shared" / "model.pt")  # a pickled model where a shared model should be

    with pytest.raises(model.UnsafeModelFileError, match=r"refused to load .*best\.pt.*could run code"):
        model.load_model(run_dir / "checkpoints" / "best.pt")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        model.load_model(tmp_path / "shared")
    # evaluation
    from a2m_lib import evaluate

    cfg = config.load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(processed)})
    config.write_run_config(cfg, run_dir)
    with pytest.raises(model.UnsafeModelFileError):
        evaluate.evaluate(cfg, run_dir, progress=False)
    # resuming training
    with pytest.raises(model.UnsafeModelFileError, match="last.pt"):
        train.train(dataclasses.replace(cfg, model=tiny.cfg), run_dir, progress=False)
    # a2m predict (--run and --checkpoint) and the AniPortrait export
    from a2m_lib import predict

    with pytest.raises(model.UnsafeModelFileError):
        predict.prepare(run_dir, None, None, "spk0", None)  # the run's config.yaml names its checkpoint
    with pytest.raises(model.UnsafeModelFileError):
        predict.prepare(None, run_dir / "checkpoints" / "last.pt", run_dir / "neutral" / "spk0.npz", None, None)
    with pytest.raises(model.UnsafeModelFileError):
        predict.export_aniportrait(run_dir, tmp_path / "export")
    result = subprocess.run([sys.executable, "-m", "a2m_lib.cli", "predict", str(REPO / "README.md"), "--run-dir", str(run_dir),
                             "--out", str(tmp_path / "x.npz")], capture_output=True, text=True)
    assert result.returncode != 0 and "refused to load" in result.stderr
    assert not marker.exists()
    assert not subprocess.run(["grep", "-rn", "weights_only=False", str(REPO / "a2m_lib")], capture_output=True).stdout


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
