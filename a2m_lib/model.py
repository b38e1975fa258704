"""Audio2Mesh, as in AniPortrait: Wav2Vec2 CNN features resampled to the video frame rate, the
Wav2Vec2 transformer, then a linear in/out head predicting per-frame offsets from the neutral mesh.

    model = Audio2Mesh(cfg.model)                 # encoder from cfg.model.encoder (hub id or local dir)
    offsets = model(audio, n_frames)              # (B, samples) -> (B, n_frames, V, 3)
    model.save_pretrained("runs/x/model")         # weights + config, loadable without any hub
    model = Audio2Mesh.from_pretrained("runs/x/model")
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
import numpy as np
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from .config import ModelConfig


def normalise_audio(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per clip: what Wav2Vec2's feature extractor does before the model."""
    return Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm([audio.astype(np.float32)], attention_mask=None)[0]


def scratch_encoder_config(cfg: ModelConfig) -> Wav2Vec2Config:
    """A small Wav2Vec2 for offline runs (demo, tests) where no pretrained weights can be downloaded."""
    channels = cfg.scratch_conv_channels
    return Wav2Vec2Config(
        hidden_size=cfg.scratch_hidden, num_hidden_layers=cfg.scratch_layers, num_attention_heads=4,
        intermediate_size=2 * cfg.scratch_hidden, conv_dim=(channels,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0, vocab_size=32,
    )


def load_encoder(cfg: ModelConfig) -> Wav2Vec2Model:
    if cfg.encoder == "scratch":
        return Wav2Vec2Model(scratch_encoder_config(cfg))
    try:
        return Wav2Vec2Model.from_pretrained(cfg.encoder)
    except OSError as error:
        raise OSError(
            f"cannot load the audio encoder '{cfg.encoder}': {error}. Download it once on a machine with "
            f"network access (save_pretrained) and set model.encoder to that local folder, or use "
            f"model.encoder=scratch for an untrained small encoder"
        ) from error


class Audio2Mesh(nn.Module):
    def __init__(self, cfg: ModelConfig, encoder: Wav2Vec2Model | None = None):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder if encoder is not None else load_encoder(cfg)
        self.encoder.config.mask_time_prob = 0.0  # SpecAugment off: frames must stay aligned with meshes
        if cfg.freeze_feature_encoder:
            self.encoder.freeze_feature_encoder()
        hidden = self.encoder.config.hidden_size
        self.in_fn = nn.Linear(hidden, cfg.latent_dim)
        self.out_fn = nn.Linear(cfg.latent_dim, cfg.n_vertices * 3)
        # Zero init: an untrained model predicts the neutral face, which is the baseline to beat.
        nn.init.zeros_(self.out_fn.weight)
        nn.init.zeros_(self.out_fn.bias)

    def encode(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        features = self.encoder.feature_extractor(audio)                 # (B, C, T_audio) at ~50 Hz
        features = F.interpolate(features, size=n_frames, mode="linear", align_corners=True)  # (B, C, T)
        hidden, _ = self.encoder.feature_projection(features.transpose(1, 2))  # (B, T, hidden)
        if self.cfg.only_last_features:
            return self.encoder.encoder(hidden).last_hidden_state          # (B, T, hidden)
        # transformers 5 records per-layer outputs only at the top-level model, so collect them with hooks.
        layer_outputs = []
        hooks = [layer.register_forward_hook(lambda _m, _i, out: layer_outputs.append(out[0] if isinstance(out, tuple) else out))
                 for layer in self.encoder.encoder.layers]
        try:
            self.encoder.encoder(hidden)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack(layer_outputs).mean(0)                          # (B, T, hidden), mean over layers

    def forward(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:  # audio: (B, samples) at 16 kHz
        hidden = self.encode(audio, n_frames)                              # (B, T, hidden)
        offsets = self.out_fn(self.in_fn(hidden))                          # (B, T, V*3)
        return offsets.view(audio.shape[0], n_frames, self.cfg.n_vertices, 3)

    def saved_state(self) -> dict:
        """Everything needed to rebuild this model offline: weights, model config, encoder config."""
        return dict(model=self.state_dict(), model_config=dataclasses.asdict(self.cfg),
                    encoder_config=self.encoder.config.to_dict())

    @classmethod
    def from_saved(cls, saved: dict) -> "Audio2Mesh":
        """Inverse of saved_state (also reads training checkpoints, which extend it)."""
        encoder = Wav2Vec2Model(Wav2Vec2Config.from_dict(saved["encoder_config"]))
        model = cls(ModelConfig(**saved["model_config"]), encoder=encoder)
        model.load_state_dict(saved["model"])
        return model

    def save_pretrained(self, directory: str | Path) -> None:
        """model.pt (saved_state) written atomically, plus a readable config.json; mirrors from_pretrained."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "model.pt.part"
        torch.save(self.saved_state(), tmp)
        tmp.replace(directory / "model.pt")
        saved = self.saved_state()
        del saved["model"]
        (directory / "config.json").write_text(json.dumps(saved, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "Audio2Mesh":
        path = Path(directory) / "model.pt"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; save a model there with save_pretrained first")
        return cls.from_saved(torch.load(path, map_location=map_location, weights_only=False))


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available here; use train.device=auto or cpu")
    return torch.device(name)
