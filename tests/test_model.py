import dataclasses

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Model

from a2m_lib.config import ModelConfig
from a2m_lib.dataset import collate
from a2m_lib.model import Audio2Mesh, normalise_audio, resolve_device, scratch_encoder_config
from a2m_lib.train import masked_l1


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny Wav2Vec2 saved locally: the real from_pretrained(path) code path, without any hub."""
    path = tmp_path_factory.mktemp("tiny_wav2vec2")
    cfg = ModelConfig(encoder="scratch", scratch_hidden=32, scratch_layers=1, scratch_conv_channels=16)
    torch.manual_seed(0)
    Wav2Vec2Model(scratch_encoder_config(cfg)).save_pretrained(path)
    return path


def test_encoder_loads_from_a_local_pretrained_folder(tiny_checkpoint):
    cfg = ModelConfig(encoder=str(tiny_checkpoint), latent_dim=16, n_vertices=468)
    model = Audio2Mesh(cfg)
    reference = Wav2Vec2Model.from_pretrained(tiny_checkpoint)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name
    # AniPortrait freezes the CNN feature encoder; the transformer and head train
    assert not any(p.requires_grad for p in model.encoder.feature_extractor.parameters())
    assert all(p.requires_grad for p in model.encoder.encoder.parameters())


def test_missing_encoder_gives_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot load the audio encoder.*model.encoder"):
        Audio2Mesh(ModelConfig(encoder=str(tmp_path / "nowhere")))


def test_forward_shapes_and_zero_init(tiny_checkpoint):
    model = Audio2Mesh(ModelConfig(encoder=str(tiny_checkpoint), latent_dim=16))
    audio = torch.randn(2, 16000)  # 1 s
    offsets = model(audio, 30)
    assert offsets.shape == (2, 30, 468, 3)
    assert torch.count_nonzero(offsets) == 0  # starts at the neutral face
    model.cfg = dataclasses.replace(model.cfg, only_last_features=True)
    assert model(audio, 17).shape == (2, 17, 468, 3)


def test_save_and_load_pretrained_are_symmetric(tiny_checkpoint, tmp_path):
    torch.manual_seed(1)
    model = Audio2Mesh(ModelConfig(encoder=str(tiny_checkpoint), latent_dim=16))
    torch.nn.init.normal_(model.out_fn.weight)
    model.save_pretrained(tmp_path / "a2m")
    loaded = Audio2Mesh.from_pretrained(tmp_path / "a2m")
    audio = torch.randn(1, 8000)
    model.eval(), loaded.eval()
    assert torch.allclose(model(audio, 15), loaded(audio, 15))


def test_masked_l1_ignores_padding():
    prediction, target = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    target[1, 2:] = 100.0
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    assert masked_l1(prediction, target, mask).item() == pytest.approx(1.0)


def test_collate_keeps_audio_aligned_with_frames():
    spf = 16000 / 30
    batch = [dict(audio=torch.ones(int(round(10 * spf))), offsets=torch.ones(10, 468, 3), valid=torch.ones(10, dtype=torch.bool),
                  clip_id="a", samples_per_frame=spf),
             dict(audio=torch.ones(int(round(25 * spf))), offsets=torch.ones(25, 468, 3), valid=torch.ones(25, dtype=torch.bool),
                  clip_id="b", samples_per_frame=spf)]
    out = collate(batch)
    assert out["n_frames"] == 25 and out["audio"].shape == (2, int(round(25 * spf)))
    assert out["mask"].sum().item() == 35 and out["offsets"][0, 10:].abs().sum() == 0


def test_device_auto_and_audio_normalisation():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    normalised = normalise_audio(np.random.default_rng(0).normal(3, 5, 1000).astype(np.float32))
    assert abs(normalised.mean()) < 1e-4 and abs(normalised.std() - 1) < 1e-3
