"""Audio per video frame: the one home of every audio feature read at the video frame rate, and of its timing.

Timing: video frame t (at fps) stands for the time around its centre, (t + 0.5) / fps seconds from the clip's
first sample. Every function here reads audio at those centre times, so a feature of frame t describes the same
instant in QA's sync measurements, in the encoders' frame features, in evaluation's nearest-audio baseline and in
prediction.

    log_mel(audio, 16000, 80, n_frames, fps)                 # the mel encoder's input (and Whisper's windows' reads)
    standardised_log_mel(audio, 16000, n_frames, fps)        # evaluation's nearest-audio baseline
    band_energies(audio, 16000, fps, n_frames, n_bands=40)   # QA's sync model (a2m_lib.sync)
    frame_energy(audio, 16000, fps, n_frames)                # loudness: extraction's cuts, silence in training
    read_at_frames(states, rate, n_frames, fps)              # any sequence at `rate` per second, at the frames
    interpolate_frames(features, n_frames)                   # Wav2Vec2's CNN stretched over the clip (AniPortrait)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MEL_HOP_SECONDS, MEL_WINDOW_SECONDS = 0.01, 0.025


def interpolate_frames(features: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(C, T_audio) -> (n_frames, C): linear, align_corners=True, as AniPortrait resamples the CNN output."""
    import torch.nn.functional as F  # torch where used: extraction workers import this module for frame_energy

    return F.interpolate(features[None], size=n_frames, mode="linear", align_corners=True)[0].T


def read_at_frames(states: torch.Tensor, rate: float, n_frames: int, fps: float, start: float = 0.0) -> torch.Tensor:
    """(T_audio, ...) states at `rate` per second, state k centred at (k + 0.5) / rate s after `start`, read by
    linear interpolation at each video frame's centre time (i + 0.5) / fps -> (n_frames, ...)."""
    import torch

    where = ((torch.arange(n_frames, dtype=torch.float64) + 0.5) / fps - start) * rate - 0.5
    where = where.clamp(0, len(states) - 1)
    low = where.floor().long()
    high = (low + 1).clamp(max=len(states) - 1)
    weight = (where - low).to(states.dtype).view(-1, *([1] * (states.dim() - 1))).to(states.device)
    return states[low] * (1 - weight) + states[high] * weight


def log_mel(audio: np.ndarray, sample_rate: int, n_mels: int, n_frames: int, fps: float = 30.0,
            standardise: bool = False) -> np.ndarray:
    """(samples,) -> (n_frames, n_mels) float32: log-mel energies every 10 ms (25 ms windows), read at each video
    frame's centre time, (t + 0.5) / fps. By time rather than by stretching the whole clip: a window of a long
    recording then gives exactly the frames of a single pass (see Audio2Mesh.predict). `standardise`: each band
    to zero mean and unit variance over the recording (removes microphone and room colouring)."""
    import librosa

    hop = int(MEL_HOP_SECONDS * sample_rate)
    power = librosa.feature.melspectrogram(
        y=audio.astype(np.float32), sr=sample_rate, n_fft=int(MEL_WINDOW_SECONDS * sample_rate), hop_length=hop,
        n_mels=n_mels, fmin=40, fmax=sample_rate // 2 - 400)                       # (mels, 1 + samples // hop)
    mel = np.log(power + 1e-6).T                                                    # frame k centred at k * hop
    where = (np.arange(n_frames) + 0.5) / fps * sample_rate / hop
    if standardise:
        mel = (mel - mel.mean(0)) / (mel.std(0) + 1e-3)
    columns = np.arange(len(mel))
    return np.stack([np.interp(where, columns, band) for band in mel.T], axis=1).astype(np.float32)


def standardised_log_mel(audio: np.ndarray, sample_rate: int, n_frames: int, fps: float) -> np.ndarray:
    """40-band log-mel per video frame, each band standardised over the clip (loudness and channel differences
    removed): what evaluation's nearest-audio baseline compares."""
    mel = log_mel(audio, sample_rate, 40, n_frames, fps)
    return ((mel - mel.mean(0)) / (mel.std(0) + 1e-5)).astype(np.float32)


def band_energies(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int, n_bands: int = 8,
                  fmax: float = 4000) -> np.ndarray:
    """Log mel-band energies (80 Hz to fmax) per video frame, (n_frames, n_bands).

    librosa centres frame k at k * hop; video frame k is centred at (k + 0.5) * hop, so the audio is
    advanced by half a hop first. Without that, every lag came out half a frame late.
    """
    import librosa

    hop = int(round(sample_rate / fps))
    audio = audio[hop // 2:]
    power = librosa.feature.melspectrogram(y=audio, sr=sample_rate, n_fft=1024, hop_length=hop, n_mels=n_bands,
                                           fmin=80, fmax=min(fmax, sample_rate // 2))
    energies = np.log(power + 1e-6).T
    return np.pad(energies, ((0, max(0, n_frames - len(energies))), (0, 0)), mode="edge")[:n_frames]


def frame_energy(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    """Log RMS loudness per video frame, (n_frames,): frame t covers [t, t+1) / fps.

    numpy, not librosa.feature.rms: importing librosa.feature costs about 2 s per process (numba),
    which would dominate a worker's first clip.
    """
    hop = sample_rate / fps
    starts = np.round(np.arange(n_frames) * hop).astype(int)
    inside = starts < len(audio)
    power = np.zeros(n_frames)
    bounds = np.append(starts[inside], len(audio))
    for first in range(0, int(inside.sum()), 9000):  # 5 minutes at a time: no full-length temporary
        block = bounds[first: first + 9001]
        squares = np.square(audio[block[0]: block[-1]], dtype=np.float32)
        sums = np.add.reduceat(squares, block[:-1] - block[0]) if len(squares) else np.zeros(len(block) - 1)
        power[first: first + len(block) - 1] = sums / np.maximum(np.diff(block), 1)
    return np.log(np.sqrt(power) + 1e-5)
