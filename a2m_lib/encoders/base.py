"""The audio encoder interface (AudioEncoder) and the registry it fills; the encoders are mel.py, wav2vec2.py and
whisper.py, and packaged weights with a pinned SHA-256 are weights.py's.

An encoder is one class: a subclass of AudioEncoder with a `kind` (the value of model.encoder) and an `Options`
dataclass (its own settings, model.encoder_options, checked when the config loads). Defining the class registers
it, so a new encoder, in this package or in a test file, touches nothing else."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

# model.encoder -> its class; filled by AudioEncoder.__init_subclass__ as each encoder class is defined
REGISTRY: dict[str, type["AudioEncoder"]] = {}


class EncoderLoadError(OSError):
    """The configured audio encoder cannot be loaded; the message says how to fix it. Never a silent fallback."""


@dataclass
class NoOptions:
    """An encoder without settings of its own."""


class AudioEncoder:
    """What Audio2Mesh, the dataset, training and prediction know of an encoder (see the docstring of a2m_lib.encoders).

    Subclasses set `kind`, `Options`, `frozen`, and may set `whole_recording`; `weights_sha256` names the pretrained
    weights ('' for weights trained here from random values)."""

    kind: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    former_options: ClassVar[dict[str, str]] = {}  # old flat model.<key> names -> option names (config migration)
    frozen: bool
    whole_recording: bool = False
    weights_sha256: str = ""
    features_in_graph: bool = False  # the ONNX export runs frame_features inside the graph (a2m_lib.onnx_model)
    normalisation: ClassVar[str] = "zero mean, unit variance over the recording (Wav2Vec2's convention)"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind:
            if kind in REGISTRY and REGISTRY[kind].__qualname__ != cls.__qualname__:
                raise ValueError(f"two audio encoders are called '{kind}': {REGISTRY[kind].__qualname__} and {cls.__qualname__}")
            REGISTRY[kind] = cls

    @classmethod
    def build(cls, options) -> "AudioEncoder":
        """A new encoder for training (options: an instance of cls.Options): pretrained weights loaded, or random ones.
        By default the class called with its options; an encoder with pretrained weights loads them here."""
        return cls(options)

    @classmethod
    def rebuild(cls, options, saved: dict) -> "AudioEncoder":
        """The same architecture as a saved model's (from encoder_config()), weights to be loaded after. By default
        build(options): enough for an encoder whose options alone fix its architecture."""
        return cls.build(options)

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    def normalise(self, audio: np.ndarray) -> np.ndarray:
        """A recording's samples as this encoder wants them, before frame_features. By default zero mean and unit
        variance over the recording, Wav2Vec2's convention (its feature extractor's zero_mean_unit_var_norm)."""
        audio = np.asarray(audio, np.float32)
        return ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)).astype(np.float32)

    def frame_features(self, audio: torch.Tensor, sample_rate: int, n_frames: int, fps: float) -> torch.Tensor:
        """One recording's normalised audio (samples,) -> its frame features (n_frames, C)."""
        raise NotImplementedError

    def encode(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Padded frame features (B, T, C), mask (B, T) True on real frames -> (B, T, hidden_size)."""
        raise NotImplementedError

    def features_id(self) -> str:
        """Names what frame_features computes (weights and settings): the feature cache's key."""
        raise NotImplementedError

    def describe(self) -> str:
        """The label in plots and records; it names the weights and their hash."""
        raise NotImplementedError

    def encoder_config(self) -> dict:
        """What a saved model needs, besides the options and the weights, to rebuild this encoder offline."""
        return {}

    def record(self) -> dict:
        """The run record's entry (train_summary.json, metrics.json): kind, weights and their SHA-256."""
        return dict(kind=self.kind, description=self.describe(), weights_sha256=self.weights_sha256 or "none: trained here")


def options_class(kind: str) -> type:
    """The Options dataclass of the encoder that model.encoder names (KeyError: no such encoder)."""
    return REGISTRY[kind].Options


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def state_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's tensors in name order: the hash of weights that did not come from one file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
