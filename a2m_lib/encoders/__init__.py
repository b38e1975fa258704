"""Audio encoders: every kind of audio input to Audio2Mesh behind one interface.

    encoder = build_encoder(cfg.model)                   # the class that model.encoder names
    features = encoder.frame_features(audio, 16000, n_frames, fps)   # (n_frames, C): computed once per clip
    hidden = encoder.encode(features[None], mask)        # (1, n_frames, hidden_size): trained with the head

| model.encoder | frame features                                 | encode                               | pretrained |
|---------------|------------------------------------------------|--------------------------------------|------------|
| mel           | log-mel, 80 bands, standardised per recording  | dilated temporal convolutions        | no         |
| scratch       | a small Wav2Vec2's CNN                         | its transformer (random weights)     | no         |
| wav2vec2      | Wav2Vec2's CNN (AniPortrait)                   | its transformer                      | yes        |
| whisper       | Whisper encoder hidden states, every layer     | layer mix + temporal convolutions    | yes        |

The interface (AudioEncoder): `frame_features`, `encode`, `hidden_size`, `frozen` (frame features that no
training changes: cached per clip in the store, keyed by `features_id()`), `whole_recording` (frame features
depend on the whole recording, so prediction computes them once for the whole input), `features_id()`,
`describe()` (the label in plots and records), `encoder_config()` / `rebuild()` (what a saved model needs to
be rebuilt offline). Audio comes in normalised to zero mean and unit variance (Wav2Vec2's convention,
a2m_lib.model.normalise_audio). Frame i describes the audio around its centre time (i + 0.5) / fps, except
Wav2Vec2's CNN output, which is stretched over the clip as AniPortrait does (align_corners=True).
Nothing outside this module branches on the encoder's name: a new encoder is one class here and its name in
config.ENCODER_KINDS.
The interface is encoders/base.py; one module per encoder: mel.py, wav2vec2.py (wav2vec2 and scratch),
whisper.py (its weights' sources and loading are documented there). Frame times and audio features per video
frame are a2m_lib.audio_frames'.
"""
from __future__ import annotations

from ..config import ENCODER_KINDS, ModelConfig
from .base import SPEECH_RMS, AudioEncoder, EncoderLoadError
from .mel import MelEncoder
from .wav2vec2 import ScratchEncoder, Wav2Vec2Encoder, scratch_encoder_config
from .whisper import WhisperAudioEncoder

__all__ = ["SPEECH_RMS", "AudioEncoder", "EncoderLoadError", "ENCODERS", "build_encoder", "rebuild_encoder",
           "scratch_encoder_config"]

ENCODERS: dict[str, type] = {cls.kind: cls for cls in (MelEncoder, ScratchEncoder, Wav2Vec2Encoder, WhisperAudioEncoder)}
assert set(ENCODERS) == set(ENCODER_KINDS), "config.ENCODER_KINDS must name exactly the encoders here"


def build_encoder(cfg: ModelConfig) -> AudioEncoder:
    """The audio encoder that model.encoder names; a pretrained one that cannot be loaded stops the run."""
    return ENCODERS[cfg.encoder].build(cfg)


def rebuild_encoder(cfg: ModelConfig, saved: dict) -> AudioEncoder:
    """The encoder of a saved model (its encoder_config()), ready for its weights."""
    return ENCODERS[cfg.encoder].rebuild(cfg, saved)
