"""Mesh error metrics, in mesh units (about cm, see a2m_lib.mesh)."""
from __future__ import annotations

import numpy as np

from .regions import LIPS, mouth_opening


def lip_vertex_error(prediction: np.ndarray, target: np.ndarray) -> float:
    """LVE: per frame, the largest L2 error over the lip vertices; averaged over frames. (T, V, 3) each."""
    per_vertex = np.linalg.norm(prediction[:, LIPS] - target[:, LIPS], axis=-1)  # (T, lips)
    return float(per_vertex.max(axis=1).mean())


def mean_vertex_error(prediction: np.ndarray, target: np.ndarray) -> float:
    """MVE: L2 error averaged over all vertices and frames."""
    return float(np.linalg.norm(prediction - target, axis=-1).mean())


def mouth_opening_correlation(prediction: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation of predicted and true inner-lip gaps over frames (lip-sync shape, not size)."""
    predicted, true = mouth_opening(prediction), mouth_opening(target)
    if predicted.std() < 1e-6 or true.std() < 1e-6:  # a constant prediction has no correlation
        return 0.0
    return float(np.corrcoef(predicted, true)[0, 1])
