"""Audio2Mesh, as in AniPortrait: Wav2Vec2 CNN features resampled to the video frame rate, the
Wav2Vec2 transformer, then a linear in/out head predicting per-frame offsets from the neutral mesh.

    model = Audio2Mesh(cfg.model)                 # encoder from cfg.model.encoder (hub id or local dir)
    offsets = model(audio, n_frames)              # (B, samples) -> (B, n_frames, V, 3)
    model.save_pretrained("runs/x/model")         # model.safetensors + config.json, loadable without any hub
    model = load_model("runs/x/model")            # ... or a training checkpoint, runs/x/checkpoints/best.pt

Loading never runs code. A shared model is safetensors weights plus a JSON config; a training
checkpoint is read with `torch.load(weights_only=True)`, which unpickles only tensors and plain values.
Anything else is refused with UnsafeModelFileError, naming the file. Outside a2m:
`safetensors.torch.load_file("model.safetensors")` and `json.load(open("config.json"))`.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
import numpy as np
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from . import files
from .config import ModelConfig

WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"
MESH_UNITS = "mesh units (~cm): pose-free MediaPipe meshes, outer eye corners 9.0 apart (a2m_lib.mesh)"


class UnsafeModelFileError(ValueError):
    """A model file that could only be loaded by running code from it (arbitrary unpickling)."""


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

    def describe(self) -> dict:
        """The JSON config saved beside the weights: enough to rebuild this model offline."""
        return dict(format="a2m-audio2mesh", model_config=dataclasses.asdict(self.cfg),
                    encoder_config=self.encoder.config.to_dict(), outputs="offsets from the neutral mesh, (T, V, 3)",
                    units=MESH_UNITS)

    @classmethod
    def from_state(cls, description: dict, weights: dict[str, torch.Tensor]) -> "Audio2Mesh":
        """Rebuild from describe() and a state dict: the one constructor behind every loader."""
        encoder = Wav2Vec2Model(Wav2Vec2Config.from_dict(description["encoder_config"]))
        model = cls(ModelConfig(**description["model_config"]), encoder=encoder)
        model.load_state_dict(weights)
        return model

    def save_pretrained(self, directory: str | Path) -> Path:
        """model.safetensors + config.json (each written atomically); mirrors from_pretrained."""
        directory = Path(directory)
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        with files.atomic_path(directory / WEIGHTS_NAME) as tmp:
            safetensors.torch.save_file(weights, str(tmp), metadata={"format": "pt"})
        files.write_json(directory / CONFIG_NAME, self.describe())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "Audio2Mesh":
        directory = Path(directory)
        weights_path, config_path = directory / WEIGHTS_NAME, directory / CONFIG_NAME
        if not weights_path.exists() or not config_path.exists():
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME} and {CONFIG_NAME}; save a model there with "
                                    f"save_pretrained (older pickled model.pt files are not read: they could run code)")
        weights = safetensors.torch.load_file(str(weights_path), device=str(map_location))
        return cls.from_state(json.loads(config_path.read_text()), weights)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A training checkpoint (model, optimiser, progress, config) read without running any code from it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; run training (notebook 04) first")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).split("\n")[0]
        raise UnsafeModelFileError(
            f"refused to load {path}: it holds more than tensors and plain values, and unpickling it could run code "
            f"({reason}). a2m writes no such files; use a checkpoint written by a2m or a save_pretrained folder "
            f"(model.safetensors + config.json)") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Audio2Mesh:
    """A trained model, in eval mode on `device`, from a save_pretrained folder or a training checkpoint."""
    path = Path(path)
    if path.is_dir():
        model = Audio2Mesh.from_pretrained(path, map_location="cpu")
    else:
        state = load_checkpoint(path)
        model = Audio2Mesh.from_state(state, state["model"])
    return model.to(device).eval()


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available here; use train.device=auto or cpu")
    return torch.device(name)
