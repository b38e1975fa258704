"""model.encoder: wav2vec2 (AniPortrait's: a pretrained Wav2Vec2, its CNN frozen and its output stretched over the
clip) and scratch (a small Wav2Vec2 from random weights)."""
from __future__ import annotations

import hashlib

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from ..audio_frames import interpolate_frames
from ..config import ModelConfig
from .base import AudioEncoder, EncoderLoadError, short_hash

class Wav2Vec2Encoder(Wav2Vec2Model, AudioEncoder):
    """A transformers Wav2Vec2Model (AniPortrait's encoder), so its weights keep their names: `audio_encoder.*`.

    Frame features are the CNN's output stretched to the clip's frames; `encode` runs the feature projection
    and the transformer (SpecAugment never applies: the top-level forward, which masks, is not called)."""

    kind, whole_recording = "wav2vec2", False

    @classmethod
    def build(cls, cfg):
        try:
            encoder = cls.from_pretrained(cfg.pretrained or "facebook/wav2vec2-base-960h")
        except OSError as error:
            raise EncoderLoadError(
                f"cannot load the audio encoder model.pretrained='{cfg.pretrained}' ({error}). Save it once on a "
                f"machine with network access (Wav2Vec2Model.from_pretrained('facebook/wav2vec2-base-960h')."
                f"save_pretrained('models/w2v2')), copy that folder here and set -p model.pretrained=models/w2v2; or "
                f"use weights that install with a2m: -p model.encoder=whisper -p model.pretrained=tiny.en; or none: "
                f"-p model.encoder=mel") from None
        return encoder._setup(cfg)

    @classmethod
    def rebuild(cls, cfg, saved):
        return cls(Wav2Vec2Config.from_dict(saved))._setup(cfg)

    def _setup(self, cfg: ModelConfig) -> "Wav2Vec2Encoder":
        self.a2m_cfg = cfg
        if cfg.freeze_feature_encoder:
            self.freeze_feature_encoder()
        return self

    @property
    def frozen(self) -> bool:
        return self.a2m_cfg.freeze_feature_encoder

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def frame_features(self, audio, sample_rate, n_frames, fps):
        cnn = self.feature_extractor(audio[None])[0]                                       # (C, T_audio) at ~50 Hz
        return interpolate_frames(cnn, n_frames)                                           # (n_frames, C)

    def encode(self, features, mask):
        hidden, _ = self.feature_projection(features)                                      # (B, T, hidden)
        if self.a2m_cfg.only_last_features:
            return self.encoder(hidden, attention_mask=mask).last_hidden_state
        # transformers records hidden states only at the top-level model, whose CNN output we must resample
        # first: collect what it would return (the first layer's input, then every layer's output) with hooks.
        states: list[torch.Tensor] = []
        hooks = [self.encoder.layers[0].register_forward_pre_hook(lambda _m, args, *_: states.append(args[0]))]
        hooks += [layer.register_forward_hook(lambda _m, _i, out: states.append(out[0] if isinstance(out, tuple) else out))
                  for layer in self.encoder.layers]
        try:
            self.encoder(hidden, attention_mask=mask)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack(states).mean(0)                                                 # (B, T, hidden)

    def features_id(self):
        weights = hashlib.sha256()
        for name, tensor in sorted(self.feature_extractor.state_dict().items()):
            weights.update(name.encode())
            weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return short_hash(f"cnn:{weights.hexdigest()}")

    def describe(self):
        return f"wav2vec2 (pretrained): {self.a2m_cfg.pretrained or 'facebook/wav2vec2-base-960h'}"

    def encoder_config(self):
        return self.config.to_dict()


def scratch_encoder_config(cfg: ModelConfig) -> Wav2Vec2Config:
    """A small Wav2Vec2 for offline runs (demo, tests) where no pretrained weights are wanted."""
    channels = cfg.scratch_conv_channels
    return Wav2Vec2Config(
        hidden_size=cfg.scratch_hidden, num_hidden_layers=cfg.scratch_layers, num_attention_heads=4,
        intermediate_size=2 * cfg.scratch_hidden, conv_dim=(channels,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0, vocab_size=32,
    )


class ScratchEncoder(Wav2Vec2Encoder):
    """A small Wav2Vec2 from random weights: the demo's encoder, labelled untrained."""

    kind = "scratch"

    @classmethod
    def build(cls, cfg):
        return cls(scratch_encoder_config(cfg))._setup(cfg)

    def describe(self):
        return "scratch: a small Wav2Vec2 trained from random weights (untrained, no pretraining)"

