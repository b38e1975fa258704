"""model.encoder: mel. Log-mel frames standardised per recording, then residual dilated temporal convolutions
(TemporalConvs, which the Whisper encoder also uses as its head). No pretrained weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..audio_frames import MEL_HOP_SECONDS, MEL_WINDOW_SECONDS, log_mel
from .base import AudioEncoder, short_hash


@dataclass
class HeadOptions:
    """The temporal convolution head's sizes (mel and whisper): receptive field 1 + (kernel - 1) * (2^layers - 1)."""

    conv_hidden: int = 256
    conv_layers: int = 4  # residual dilated convolutions, dilation 1, 2, 4, ...
    conv_kernel: int = 5
    dropout: float = 0.0  # inside the convolution head

    def __post_init__(self):
        from ..config import check

        check(self.conv_hidden >= 1 and self.conv_layers >= 0 and self.conv_kernel % 2 == 1,
              "model.encoder_options.conv_*", (self.conv_hidden, self.conv_layers, self.conv_kernel),
              "conv_hidden >= 1, conv_layers >= 0 and an odd conv_kernel")
        check(0 <= self.dropout < 1, "model.encoder_options.dropout", self.dropout, "0 <= dropout < 1")


class TemporalConvs(nn.Module):
    """Frame features -> a stack of residual dilated 1-D convolutions over time (dilation 1, 2, 4, ...).

    Padded frames are zeroed before every convolution, so a clip padded in a batch gives what it gives alone.
    No normalisation across the channels of a frame before the first layer: mel frames are already standardised
    per band over the recording, and a per-frame norm would erase loudness, the strongest cue for an open or
    closed mouth."""

    def __init__(self, in_size: int, hidden: int, layers: int, kernel: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(in_size, hidden)
        self.convs = nn.ModuleList(
            nn.Conv1d(hidden, hidden, kernel, dilation=2 ** i, padding=(kernel - 1) // 2 * 2 ** i)
            for i in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, C), (B, T)
        keep = mask[..., None].to(features.dtype)
        hidden = self.proj(features) * keep                                                 # (B, T, hidden)
        for conv, norm in zip(self.convs, self.norms):
            update = conv((hidden * keep).transpose(1, 2)).transpose(1, 2)                  # (B, T, hidden)
            hidden = hidden + self.dropout(F.gelu(norm(update)))
        return hidden * keep


class MelEncoder(TemporalConvs, AudioEncoder):
    """Log-mel frames standardised per recording -> temporal convolutions. No pretrained weights."""

    kind, frozen, whole_recording = "mel", True, True  # standardised over the whole recording

    @dataclass
    class Options(HeadOptions):
        bands: int = 80  # librosa log-mel bands at the video frame rate

    former_options = {"mel_bands": "bands", "mel_hidden": "conv_hidden", "mel_layers": "conv_layers",
                      "mel_kernel": "conv_kernel"}

    def __init__(self, options: "MelEncoder.Options"):
        super().__init__(options.bands, options.conv_hidden, options.conv_layers, options.conv_kernel, options.dropout)
        self.options = options

    @property
    def hidden_size(self) -> int:
        return self.options.conv_hidden

    def frame_features(self, audio, sample_rate, n_frames, fps):
        mel = log_mel(audio.detach().cpu().numpy(), sample_rate, self.options.bands, n_frames, fps, standardise=True)
        return torch.from_numpy(mel).to(audio.device)

    def encode(self, features, mask):
        return self(features, mask)

    def features_id(self):
        return short_hash(f"mel-by-time-standardised:{self.options.bands}:{MEL_HOP_SECONDS}:{MEL_WINDOW_SECONDS}")

    def describe(self):
        return "mel: log-mel + temporal convolutions (no pretraining)"
