"""The audio encoder interface (AudioEncoder) and what every encoder shares; the encoders are mel.py, wav2vec2.py
and whisper.py, the registry is the package (a2m_lib.encoders)."""
from __future__ import annotations

import hashlib
from typing import ClassVar

import torch

from ..config import ModelConfig

SPEECH_RMS = 0.05  # Whisper hears normalised audio at this level (about -26 dBFS, ordinary recorded speech)


class EncoderLoadError(OSError):
    """The configured audio encoder cannot be loaded; the message says how to fix it. Never a silent fallback."""


class AudioEncoder:
    """What Audio2Mesh, the dataset, training and prediction know of an encoder (see the docstring of a2m_lib.encoders)."""

    kind: ClassVar[str]
    frozen: bool
    whole_recording: bool = False

    @classmethod
    def build(cls, cfg: ModelConfig) -> "AudioEncoder":
        """A new encoder for training: pretrained weights loaded, or random ones."""
        raise NotImplementedError

    @classmethod
    def rebuild(cls, cfg: ModelConfig, saved: dict) -> "AudioEncoder":
        """The same architecture as a saved model's (from encoder_config()), weights to be loaded after."""
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

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
        raise NotImplementedError

    def encoder_config(self) -> dict:
        return {}



def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
