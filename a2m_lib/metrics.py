"""Mesh error metrics, as the field defines them, in mesh units (about cm, see a2m_lib.mesh).

Every function takes one clip: prediction and truth as absolute meshes (T, V, 3), and for the motion
metrics the reference mesh (V, 3) the motion is measured from (the speaker's neutral).

    lve          FaceFormer's lip vertex error: per frame, the largest L2 distance over the lip vertices; mean over frames
    lve_sq       the same with the squared distance, as CodeTalker's cal_metric.py computes it (mesh units²)
    mve          mean vertex error: L2 distance averaged over all vertices and frames
    fdd          CodeTalker's upper-face dynamics deviation: per upper-face vertex, the standard deviation over
                 time of the motion's squared norm, averaged over those vertices; truth minus prediction (mesh units²)
    fdd_abs      |fdd| per clip
    mouth_corr   Pearson correlation of the inner-lip gap (landmarks 13-14), prediction against truth; 0 when constant
    motion_ratio the predicted lip motion's standard deviation over time divided by the truth's: 1 = as much
                 movement as the person, 0 = the mouth does not move

The lips' size, closure and timing, on the inner-lip gap (landmarks 13-14) of the clip's frames:
    closure_error       on the frames where the true gap is in its lowest 20% for the clip (the closures: m, b, p
                        and rests), the mean of predicted minus true gap, mesh units: 0 = the mouth closes when the
                        person's does, positive = left open
    peak_opening_ratio  the 90th percentile of the predicted gap over the 90th percentile of the true gap, both
                        measured from the clip's closed level (the mean true gap on those closure frames):
                        1 = opens as wide as the person
    lip_lag_frames      the shift within +-5 frames that maximises the correlation of the predicted and the true gap:
                        0 = in time, positive = the model is late (NaN for a mouth that does not move)

`summarise` averages per-clip values (frame-weighted for the error metrics, per clip for the rest).
"""
from __future__ import annotations

import numpy as np

from .regions import LIPS, UPPER_FACE, mouth_opening

UNITS = {"lve": "mesh units (~cm)", "lve_sq": "mesh units^2", "mve": "mesh units (~cm)", "fdd": "mesh units^2",
         "fdd_abs": "mesh units^2", "mouth_corr": "Pearson r", "motion_ratio": "ratio",
         "closure_error": "mesh units (~cm)", "peak_opening_ratio": "ratio", "lip_lag_frames": "frames"}
CLOSED_QUANTILE, PEAK_QUANTILE, MAX_LAG_FRAMES = 0.2, 0.9, 5
FRAME_WEIGHTED = ("lve", "lve_sq", "mve")


def lip_vertex_error(prediction: np.ndarray, target: np.ndarray) -> float:
    """LVE: per frame, the largest L2 error over the lip vertices; averaged over frames. (T, V, 3) each."""
    per_vertex = np.linalg.norm(prediction[:, LIPS] - target[:, LIPS], axis=-1)  # (T, lips)
    return float(per_vertex.max(axis=1).mean())


def lip_vertex_error_squared(prediction: np.ndarray, target: np.ndarray) -> float:
    per_vertex = np.square(prediction[:, LIPS] - target[:, LIPS]).sum(-1)          # (T, lips)
    return float(per_vertex.max(axis=1).mean())


def mean_vertex_error(prediction: np.ndarray, target: np.ndarray) -> float:
    """MVE: L2 error averaged over all vertices and frames."""
    return float(np.linalg.norm(prediction - target, axis=-1).mean())


def upper_face_dynamics(meshes: np.ndarray, reference: np.ndarray) -> float:
    """Mean over upper-face vertices of the std over time of the motion's squared norm (CodeTalker's FDD term)."""
    motion = np.square(meshes[:, UPPER_FACE] - reference[UPPER_FACE]).sum(-1)      # (T, upper)
    return float(motion.std(axis=0).mean())


def mouth_opening_correlation(prediction: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation of predicted and true inner-lip gaps over frames (lip-sync shape, not size)."""
    predicted, true = mouth_opening(prediction), mouth_opening(target)
    if predicted.std() < 1e-6 or true.std() < 1e-6:  # a constant prediction has no correlation
        return 0.0
    return float(np.corrcoef(predicted, true)[0, 1])


def motion_ratio(prediction: np.ndarray, target: np.ndarray) -> float:
    """sqrt(summed variance over time of the predicted lip vertices / the same for the truth)."""
    true_var = target[:, LIPS].var(axis=0).sum()
    return float(np.sqrt(prediction[:, LIPS].var(axis=0).sum() / true_var)) if true_var > 0 else float("nan")


def closure_frames(true_gap: np.ndarray) -> np.ndarray:
    """The clip's closures: frames whose true inner-lip gap is within its lowest CLOSED_QUANTILE."""
    return true_gap <= np.quantile(true_gap, CLOSED_QUANTILE)


def closure_error(prediction: np.ndarray, target: np.ndarray) -> float:
    """Mean predicted minus true inner-lip gap on the clip's closure frames (mesh units; positive: left open)."""
    predicted, true = mouth_opening(prediction), mouth_opening(target)
    closed = closure_frames(true)
    return float((predicted[closed] - true[closed]).mean())


def peak_opening_ratio(prediction: np.ndarray, target: np.ndarray) -> float:
    """(P90 of the predicted gap - closed level) / (P90 of the true gap - closed level); the closed level is the mean
    true gap on the closure frames. NaN when the truth does not open."""
    predicted, true = mouth_opening(prediction), mouth_opening(target)
    closed_level = true[closure_frames(true)].mean()
    opening = np.quantile(true, PEAK_QUANTILE) - closed_level
    return float((np.quantile(predicted, PEAK_QUANTILE) - closed_level) / opening) if opening > 1e-6 else float("nan")


def lip_lag_frames(prediction: np.ndarray, target: np.ndarray, max_lag: int = MAX_LAG_FRAMES) -> float:
    """The shift s in [-max_lag, max_lag] maximising corr(predicted gap[t + s], true gap[t]) over the frames both
    cover: a model whose mouth follows the person's d frames late gives d. NaN when either gap is constant."""
    predicted, true = mouth_opening(prediction), mouth_opening(target)
    n = len(true)
    best, best_lag = -np.inf, float("nan")
    for lag in range(-max_lag, max_lag + 1):
        first, last = max(0, -lag), min(n, n - lag)  # frames t with both t and t + lag inside the clip
        if last - first < 3:
            continue
        a, b = predicted[first + lag: last + lag], true[first:last]
        if a.std() < 1e-6 or b.std() < 1e-6:
            continue
        r = float(np.corrcoef(a, b)[0, 1])
        if r > best:
            best, best_lag = r, float(lag)
    return best_lag


def clip_metrics(prediction: np.ndarray, target: np.ndarray, reference: np.ndarray) -> dict:
    """Every metric for one clip (valid frames only), plus its frame count."""
    fdd = upper_face_dynamics(target, reference) - upper_face_dynamics(prediction, reference)
    return dict(n_frames=len(target), lve=lip_vertex_error(prediction, target),
                lve_sq=lip_vertex_error_squared(prediction, target), mve=mean_vertex_error(prediction, target),
                fdd=fdd, fdd_abs=abs(fdd), mouth_corr=mouth_opening_correlation(prediction, target),
                motion_ratio=motion_ratio(prediction, target), closure_error=closure_error(prediction, target),
                peak_opening_ratio=peak_opening_ratio(prediction, target), lip_lag_frames=lip_lag_frames(prediction, target))


def summarise(rows: list[dict]) -> dict:
    """Per-clip metric dicts -> one: error metrics weighted by frames, the others averaged over clips."""
    if not rows:
        return {}
    weights = np.array([row["n_frames"] for row in rows], float)
    summary = {"n_clips": len(rows), "n_frames": int(weights.sum())}
    for key in UNITS:
        values = np.array([row[key] for row in rows], float)
        keep = np.isfinite(values)
        if not keep.any():
            summary[key] = float("nan")
        elif key in FRAME_WEIGHTED:
            summary[key] = float(np.average(values[keep], weights=weights[keep]))
        else:
            summary[key] = float(values[keep].mean())
    return summary
