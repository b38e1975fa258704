"""model.encoder: wav2vec2 (AniPortrait's: a pretrained Wav2Vec2, its CNN frozen and its output stretched over the
clip), hubert (the same with a HuBERT) and scratch (a small Wav2Vec2 from random weights).

Written against what Wav2Vec2, HuBERT and WavLM share in transformers (`feature_extractor`, `feature_projection`,
`encoder`), not against Wav2Vec2's extras: the CNN is frozen by switching off its gradients (HuBERT's model has no
`freeze_feature_encoder`), and the projection's output is taken whether it returns a pair (Wav2Vec2) or one
tensor (HuBERT)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import HubertModel, Wav2Vec2Config, Wav2Vec2Model

from ..audio_frames import interpolate_frames
from ..config import path_field
from .base import AudioEncoder, EncoderLoadError, short_hash, state_sha256
from .weights import files_sha256, folder_weights

DEFAULT_WEIGHTS = "facebook/wav2vec2-base-960h"


class SpeechTransformerEncoder(AudioEncoder):
    """What the transformers speech models share, as an encoder: the CNN's output stretched over the clip's frames
    (frame_features), then the feature projection and the transformer (encode; SpecAugment never applies: the
    top-level forward, which masks, is not called). A subclass inherits from the transformers model too, so its weights
    keep their names (`audio_encoder.*`, as AniPortrait's), and sets `kind`, `Options` and `DEFAULT_WEIGHTS`."""

    whole_recording, features_in_graph = False, True  # the CNN and the stretch to the frames export to ONNX
    DEFAULT_WEIGHTS = ""

    @classmethod
    def build(cls, options):
        try:
            encoder = cls.from_pretrained(options.pretrained)
        except OSError as error:
            raise EncoderLoadError(
                f"cannot load the audio encoder model.encoder_options.pretrained='{options.pretrained}' ({error}). Save it "
                f"once on a machine with network access ({cls.__mro__[1].__name__}.from_pretrained("
                f"'{cls.DEFAULT_WEIGHTS}').save_pretrained('models/{cls.kind}')), copy that folder here and set -p "
                f"model.encoder_options.pretrained=models/{cls.kind}; or use weights that install with a2m: -p "
                f"model.encoder=whisper; or none: -p model.encoder=mel") from None
        folder = Path(options.pretrained)
        weights = folder_weights(folder) if folder.is_dir() else []
        encoder.weights_sha256 = files_sha256(weights) if weights else state_sha256(encoder)
        return encoder._setup(options)

    @classmethod
    def rebuild(cls, options, saved):
        config = saved.get("model_config", saved)  # a2m saved the bare transformers config before
        encoder = cls(cls.config_class.from_dict(config))
        encoder.weights_sha256 = saved.get("weights_sha256", "")
        return encoder._setup(options)

    def _setup(self, options):
        self.options = options
        if options.freeze_feature_encoder:  # by hand: HuBERT's model has no freeze_feature_encoder()
            for parameter in self.feature_extractor.parameters():
                parameter.requires_grad = False
            if hasattr(self.feature_extractor, "_requires_grad"):
                self.feature_extractor._requires_grad = False  # Wav2Vec2's CNN then also skips its backward pass
        return self

    @property
    def frozen(self) -> bool:
        return self.options.freeze_feature_encoder

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def frame_features(self, audio, sample_rate, n_frames, fps):
        cnn = self.feature_extractor(audio[None])[0]                                       # (C, T_audio) at ~50 Hz
        return interpolate_frames(cnn, n_frames)                                           # (n_frames, C)

    def encode(self, features, mask):
        projected = self.feature_projection(features)
        hidden = projected[0] if isinstance(projected, tuple) else projected  # Wav2Vec2: (hidden, normed); HuBERT: hidden
        if self.options.only_last_features:
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
        return short_hash(f"cnn:{state_sha256(self.feature_extractor)}")

    def describe(self):
        return f"{self.kind} (pretrained): {self.options.pretrained}, sha256 {self.weights_sha256[:12]}"

    def encoder_config(self):
        return dict(model_config=self.config.to_dict(), weights_sha256=self.weights_sha256)


@dataclass
class PretrainedOptions:
    """The options of a pretrained transformers speech encoder."""

    pretrained: str = path_field(DEFAULT_WEIGHTS, "if_exists")  # a hub id (with a network) or a save_pretrained folder
    freeze_feature_encoder: bool = True  # AniPortrait freezes the CNN (its output is then cached)
    only_last_features: bool = True  # last hidden state (AniPortrait's inference config); False: mean of all


class Wav2Vec2Encoder(Wav2Vec2Model, SpeechTransformerEncoder):
    """A transformers Wav2Vec2Model: AniPortrait's encoder (facebook/wav2vec2-base-960h)."""

    kind, DEFAULT_WEIGHTS, Options = "wav2vec2", DEFAULT_WEIGHTS, PretrainedOptions


class HubertEncoder(HubertModel, SpeechTransformerEncoder):
    """A transformers HubertModel (e.g. facebook/hubert-base-ls960, which some speech-driven face models use)."""

    kind, DEFAULT_WEIGHTS = "hubert", "facebook/hubert-base-ls960"

    @dataclass
    class Options(PretrainedOptions):
        pretrained: str = path_field("facebook/hubert-base-ls960", "if_exists")


class ScratchEncoder(Wav2Vec2Encoder):
    """A small Wav2Vec2 from random weights, for offline runs (the demo, tests): labelled untrained."""

    kind = "scratch"

    @dataclass
    class Options:
        hidden: int = 128
        layers: int = 2
        conv_channels: int = 64
        freeze_feature_encoder: bool = True  # the demo trains its CNN too (false): a frozen random CNN holds it back
        only_last_features: bool = True

    former_options = {"scratch_hidden": "hidden", "scratch_layers": "layers", "scratch_conv_channels": "conv_channels"}

    @staticmethod
    def architecture(options) -> Wav2Vec2Config:
        channels = options.conv_channels
        return Wav2Vec2Config(
            hidden_size=options.hidden, num_hidden_layers=options.layers, num_attention_heads=4,
            intermediate_size=2 * options.hidden, conv_dim=(channels,) * 7,
            conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
            layerdrop=0.0, mask_time_prob=0.0, vocab_size=32,
        )

    @classmethod
    def build(cls, options):
        return cls(cls.architecture(options))._setup(options)

    def describe(self):
        return "scratch: a small Wav2Vec2 trained from random weights (untrained, no pretraining)"
