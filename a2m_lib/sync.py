"""How well a clip's mouth follows its audio, at every audio/video lag: the measurements behind QA's offsets
(a2m_lib.qa, which documents the method and the decisions) and extraction's choice of the face that speaks.

    scores = sync.clip_lag_scores(clip["mesh"], clip["audio"], sample_rate, fps)  # per-clip regression
    lag, confidence = sync.peak(scores)     # positive lag = audio late
    scores = sync.store_sync_scores(features, by_source, offsets, min_frames)    # the store model

Lags run from -MAX_LAG_FRAMES to MAX_LAG_FRAMES; a score array has one entry per lag.
"""
from __future__ import annotations

import numpy as np

from . import audio_frames, regions

MAX_LAG_FRAMES = 15
PEAK_SHOULDER = 3  # lags within this distance of the best one are its shoulders, not rivals
SYNC_CONTEXT_FRAMES = 4  # audio frames each side of the mouth frame the store model sees
SYNC_MEL_BANDS = 40
SYNC_RIDGE = 1.0  # ridge penalty per training frame (features are standardised)
SYNC_ITERATIONS = 2
SYNC_MIN_TRAINING_SECONDS = 60.0  # other sources' audio the store model needs; less: per-clip regression


def _interpolate_nan(values: np.ndarray) -> np.ndarray:
    good = np.isfinite(values)
    if good.sum() < 2:
        return np.nan_to_num(values)
    return np.interp(np.arange(len(values)), np.flatnonzero(good), values[good])




def mouth_features(meshes: np.ndarray) -> np.ndarray:
    """Five mouth distances per frame, (T, 5), gaps (no face) filled by linear interpolation."""
    columns = [np.linalg.norm(meshes[:, a] - meshes[:, b], axis=-1) for a, b in regions.MOUTH_DISTANCES]
    return np.stack([_interpolate_nan(column) for column in columns], axis=1)


def clip_lag_scores(meshes: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float) -> np.ndarray:
    """The per-clip regression's score of every lag for a clip's meshes (T, N, 3) and its audio.

    At each lag a small ridge regression fitted on this clip alone predicts each mouth distance from the
    mel-band energies of the shifted audio; the lag's score is the mean R^2. Several bands matter:
    loudness alone cannot tell an open "a" from a spread "i", the formants can. Every lag is scored on the
    same central frames (an overlap that shrinks with the lag would favour the extreme lags, since the fit
    is in-sample), and scores are smoothed over neighbouring lags.
    """
    # Ridge regression written out with numpy (three lines) rather than adding scikit-learn for it.
    mouth = mouth_features(meshes)
    energies = audio_frames.band_energies(audio, sample_rate, fps, len(meshes))
    frames = np.arange(MAX_LAG_FRAMES, len(mouth) - MAX_LAG_FRAMES)
    scores = []
    for lag in range(-MAX_LAG_FRAMES, MAX_LAG_FRAMES + 1):
        design = np.c_[energies[frames + lag], np.ones(len(frames))]
        gram = design.T @ design + 0.1 * np.eye(design.shape[1])
        targets = mouth[frames]
        residual = targets - design @ np.linalg.solve(gram, design.T @ targets)
        scores.append(np.mean(1 - residual.var(0) / (targets.var(0) + 1e-12)))
    return np.convolve(np.array(scores), [0.25, 0.5, 0.25], mode="same")


def peak(scores: np.ndarray) -> tuple[int, float]:
    """(lag of the best score, confidence: the best score minus the best rival more than PEAK_SHOULDER lags away)."""
    best = int(np.argmax(scores))
    rivals = np.abs(np.arange(len(scores)) - best) > PEAK_SHOULDER
    return best - (len(scores) - 1) // 2, float(scores[best] - scores[rivals].max())


def _standardise(values: np.ndarray) -> np.ndarray:
    return (values - values.mean(0)) / (values.std(0) + 1e-6)


def sync_features(clip: dict, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """What the store model reads of one clip: (audio (T, SYNC_MEL_BANDS), mouth (T, 5)), each standardised
    over the clip, so no speaker's voice or face size sets the scale."""
    n_frames = int(clip["meta"]["n_frames"])
    energies = audio_frames.band_energies(clip["audio"], sample_rate, float(clip["meta"]["fps"]), n_frames,
                             n_bands=SYNC_MEL_BANDS, fmax=7600)
    return _standardise(energies).astype(np.float32), _standardise(mouth_features(clip["mesh"])).astype(np.float32)


def _design(energies: np.ndarray) -> np.ndarray:
    """The store model's input per frame: the bands of ±SYNC_CONTEXT_FRAMES frames, and a constant.
    Built when used rather than kept, so the features of a store stay 9 times smaller."""
    n_frames, k = len(energies), SYNC_CONTEXT_FRAMES
    padded = np.pad(energies, ((k, k), (0, 0)), mode="edge")
    return np.concatenate([padded[i:i + n_frames] for i in range(2 * k + 1)] + [np.ones((n_frames, 1), np.float32)],
                          axis=1)


def _overlap(n_frames: int, lag: int) -> np.ndarray:
    """Mouth frames t whose audio frame t + lag exists."""
    return np.arange(max(0, -lag), min(n_frames, n_frames - lag))


def normal_equations(audio: np.ndarray, mouth: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray, int]:
    frames = _overlap(len(mouth), lag)
    design = _design(audio)[frames + lag].astype(np.float64)
    return design.T @ design, design.T @ mouth[frames], len(frames)


def sync_lag_scores(audio: np.ndarray, mouth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The store model's score of every lag for one clip: the correlation of the mouth predicted from the
    audio shifted by the lag with the measured mouth, over the frames both cover, averaged over distances."""
    predicted = _design(audio) @ weights
    scores = []
    for lag in range(-MAX_LAG_FRAMES, MAX_LAG_FRAMES + 1):
        frames = _overlap(len(mouth), lag)
        scores.append(np.mean(_standardise(predicted[frames + lag]) * _standardise(mouth[frames])))
    return np.array(scores)


def add_sums(first: tuple | None, second: tuple) -> tuple:
    """Normal equations (gram, moment, frames) added."""
    return second if first is None else tuple(a + b for a, b in zip(first, second))


def left_out_weights(total: tuple, own: tuple | None, min_frames: float) -> np.ndarray | None:
    """The store model learned on every source but one (leave-source-out): the normal equations of all sources
    minus that source's own, ridge-regularised; None when fewer than `min_frames` frames remain to learn from.
    The one fit behind QA's offsets (store_sync_scores) and the face that speaks (a2m_lib.faces.judge_store)."""
    gram, moment, n_frames = total if own is None else (t - o for t, o in zip(total, own))
    if n_frames < min_frames:
        return None
    return np.linalg.solve(gram + SYNC_RIDGE * n_frames * np.eye(len(gram)), moment)


def store_sync_scores(features: dict, by_source: dict, offsets: dict, min_frames: float) -> dict:
    """Lag scores of every clip from the store model (see a2m_lib.qa's docstring), or None for the clips of
    a source whose other sources hold fewer than min_frames frames to learn from.

    features: clip_id -> sync_features; by_source: source -> its clip_ids; offsets: source -> initial offset.
    The equations of all sources are summed, so leaving a source out is a subtraction, not a refit. A source's own
    sums are computed again when it is left out rather than kept: 1 MB each, 1 GB for 1,000 one-clip sources.
    """
    scores: dict[str, np.ndarray | None] = {}

    def source_sums(source: str) -> tuple:
        parts = [normal_equations(*features[c], offsets[source]) for c in by_source[source]]
        return tuple(sum(part[i] for part in parts) for i in range(3))

    for _ in range(SYNC_ITERATIONS):
        total = (0, 0, 0)
        for source in by_source:  # the order, and so the rounding, of summing every source's sums at once
            total = add_sums(total, source_sums(source))
        for source, clip_ids in by_source.items():
            weights = left_out_weights(total, source_sums(source), min_frames)
            scores.update({c: None if weights is None else sync_lag_scores(*features[c], weights) for c in clip_ids})
        offsets = {source: peak(pool([(scores[c], len(features[c][1])) for c in clip_ids]))[0]
                   if scores[clip_ids[0]] is not None else offsets[source] for source, clip_ids in by_source.items()}
    return scores


def pool(curves: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """The frame-weighted mean of several clips' lag scores."""
    return sum(curve * n for curve, n in curves) / sum(n for _, n in curves)
