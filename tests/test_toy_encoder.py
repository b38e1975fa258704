"""An encoder is one class: defined here, in the test's own file, it is accepted by the config, checks its own
options, trains, is saved and loaded back, and predicts through the one inference path, with nothing else touched."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from a2m_lib import encoders, rundir, train
from a2m_lib.config import ConfigError, check, load_config, write_run_config
from a2m_lib.encoders import AudioEncoder
from a2m_lib.encoders.base import short_hash
from a2m_lib.model import load_model
from tests.conftest import REPO


class LoudnessEncoder(nn.Module, AudioEncoder):
    """Frame features: the RMS of each frame's samples in `bands` pieces; encode: a linear layer and a tanh."""

    kind, frozen, whole_recording = "toy_loudness", True, False

    @dataclass
    class Options:
        bands: int = 4
        hidden: int = 16

        def __post_init__(self):
            check(self.bands >= 1, "model.encoder_options.bands", self.bands, "at least 1")

    def __init__(self, options):
        super().__init__()
        self.options = options
        self.linear = nn.Linear(options.bands, options.hidden)

    @property
    def hidden_size(self):
        return self.options.hidden

    def frame_features(self, audio, sample_rate, n_frames, fps):
        per_band = max(1, int(sample_rate / fps) // self.options.bands)
        samples = torch.nn.functional.pad(audio, (0, max(0, n_frames * self.options.bands * per_band - len(audio))))
        pieces = samples[: n_frames * self.options.bands * per_band].view(n_frames, self.options.bands, per_band)
        return pieces.square().mean(-1).sqrt()                                                  # (n_frames, bands)

    def encode(self, features, mask):
        return torch.tanh(self.linear(features)) * mask[..., None]

    def features_id(self):
        return short_hash(f"toy:{self.options.bands}")

    def describe(self):
        return f"toy loudness in {self.options.bands} bands"


def test_defining_the_class_is_all_it_takes():
    assert encoders.REGISTRY["toy_loudness"] is LoudnessEncoder
    cfg = load_config(None, {"model.encoder": "toy_loudness", "model.encoder_options": {"bands": 8}})
    assert cfg.model.encoder_options == {"bands": 8, "hidden": 16}  # its defaults filled in, its own checks run
    with pytest.raises(ConfigError, match="model.encoder_options.bands.*at least 1"):
        load_config(None, {"model.encoder": "toy_loudness", "model.encoder_options": {"bands": 0}})


@pytest.mark.slow
def test_the_toy_encoder_trains_saves_and_predicts(base_run, processed, tmp_path):
    run = rundir.branch(base_run, tmp_path / "run")
    cfg = load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(processed), "model.encoder": "toy_loudness",
                                                       "model.encoder_options": {"bands": 4}, "model.latent_dim": 16,
                                                       "train.epochs": 3, "train.lr": 1e-2})
    write_run_config(cfg, run)
    result = train.train(cfg, run, progress=False)
    assert result.encoder == "toy loudness in 4 bands" and np.isfinite(result.best_val_loss)
    assert list((processed / "features").glob("*")), "its frozen features went to the store's cache"
    model = load_model(rundir.checkpoint(run, "last"))
    assert isinstance(model.audio_encoder, LoudnessEncoder) and model.audio_encoder.options.bands == 4
    audio = np.random.default_rng(0).normal(size=32000).astype(np.float32)
    offsets = model.predict(audio, 60, speaker="spk0")
    assert offsets.shape == (60, 468, 3) and np.abs(offsets).max() > 0  # trained: it moves
    assert model.audio_encoder.record()["weights_sha256"].startswith("none")
