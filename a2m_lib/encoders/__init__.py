"""Audio encoders: every kind of audio input to Audio2Mesh behind one interface.

    encoder = build_encoder(cfg.model)                   # the class that model.encoder names, with its options
    audio = encoder.normalise(samples)                   # the recording as this encoder wants it
    features = encoder.frame_features(audio, 16000, n_frames, fps)   # (n_frames, C): computed once per clip
    hidden = encoder.encode(features[None], mask)        # (1, n_frames, hidden_size): trained with the head

| model.encoder | frame features                                 | encode                               | pretrained |
|---------------|------------------------------------------------|--------------------------------------|------------|
| mel           | log-mel, 80 bands, standardised per recording  | dilated temporal convolutions        | no         |
| scratch       | a small Wav2Vec2's CNN                         | its transformer (random weights)     | no         |
| wav2vec2      | Wav2Vec2's CNN (AniPortrait)                   | its transformer                      | yes        |
| whisper       | Whisper encoder hidden states, every layer     | layer mix + temporal convolutions    | yes        |

The interface (AudioEncoder, base.py): `Options` (the encoder's own settings, model.encoder_options, checked when
the config loads), `normalise`, `frame_features`, `encode`, `hidden_size`, `frozen` (frame features that no
training changes: cached per clip in the store, keyed by `features_id()`), `whole_recording` (frame features
depend on the whole recording, so prediction computes them once for the whole input), `features_id()`,
`describe()` and `record()` (the label and the run record, naming the weights and their SHA-256),
`encoder_config()` / `rebuild()` (what a saved model needs to be rebuilt offline). Frame i describes the audio
around its centre time (i + 0.5) / fps, except Wav2Vec2's CNN output, which is stretched over the clip as
AniPortrait does (align_corners=True).

A new encoder is one class: subclass AudioEncoder with a `kind` and an `Options` dataclass, in a module of this
package (imported below, whatever its name) or anywhere else that is imported before the config loads (a test
defines one in its own file). Nothing outside this package branches on the encoder's name. Packaged weights with a
pinned SHA-256 are weights.py's, for any encoder; Whisper's sources and loading are documented in whisper.py.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import REGISTRY, AudioEncoder, EncoderLoadError, options_class

for _module in pkgutil.iter_modules(__path__):  # every encoder module registers its classes as it is imported
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "AudioEncoder", "EncoderLoadError", "build_encoder", "rebuild_encoder", "options_class", "options_of"]


def options_of(model_cfg) -> object:
    """The encoder's Options instance from a ModelConfig (its encoder_options dict, checked at config load)."""
    return options_class(model_cfg.encoder)(**model_cfg.encoder_options)


def build_encoder(model_cfg) -> AudioEncoder:
    """The audio encoder that model.encoder names; a pretrained one that cannot be loaded stops the run."""
    return REGISTRY[model_cfg.encoder].build(options_of(model_cfg))


def rebuild_encoder(model_cfg, saved: dict) -> AudioEncoder:
    """The encoder of a saved model (its encoder_config()), ready for its weights."""
    return REGISTRY[model_cfg.encoder].rebuild(options_of(model_cfg), saved)
