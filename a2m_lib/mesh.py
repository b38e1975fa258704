"""Face-mesh geometry: head-pose removal against the fixed reference mesh, and the reference itself. No MediaPipe
here (the trackers are a2m_lib.trackers), so rendering and evaluation import it without loading MediaPipe.

Mesh unit: pose-free meshes live in the frame of `reference_mesh()`, scaled so the outer eye
corners (landmarks 33 and 263) are 9.0 units apart, about the adult outer-canthal distance in cm.
So one mesh unit is roughly one centimetre. Axes follow the image: x right, y down, z away.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from . import regions
from .regions import CHIN, EYE_CORNERS_OUTER, FOREHEAD, N_LANDMARKS_REFINED, STABLE

EYE_CORNER_UNITS = 9.0

_ASSETS = Path(__file__).parent / "assets"


def load_canonical_model(path: str | Path, n_points: int = N_LANDMARKS_REFINED) -> np.ndarray:
    """MediaPipe's canonical face model (.obj, cm, y up, z towards the viewer) as a pose-removal reference
    in this module's axes (y down, z away), (n_points, 3). Points the file lacks (the iris) are 0: the
    fit uses STABLE only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"canonical model {path} does not exist; point extract.canonical_model at "
                                "MediaPipe's canonical_face_model.obj, or leave it empty for the built-in reference")
    vertices = np.array([[float(v) for v in line.split()[1:4]] for line in path.read_text().splitlines()
                         if line.startswith("v ")], np.float32)
    reference = np.zeros((n_points, 3), np.float32)
    count = min(len(vertices), n_points)
    reference[:count] = vertices[:count] * np.array([1, -1, -1], np.float32)
    return reference


def remove_pose(landmarks: np.ndarray, reference: np.ndarray | None = None):
    """One frame: (N, 3) image-space landmarks -> (pose-free mesh in mesh units, scale, rotation, translation)."""
    meshes, scales, rotations, translations = remove_pose_batch(landmarks[None], reference)
    return meshes[0], float(scales[0]), rotations[0], translations[0]


def remove_pose_batch(landmarks: np.ndarray, reference: np.ndarray | None = None):
    """remove_pose for (T, N, 3) at once: (meshes, scales (T,), rotations (T, 3, 3), translations (T, 3)).

    The least-squares similarity (Umeyama) mapping each frame's STABLE onto the reference's, written
    out with a batched SVD: scipy's solver (Rotation.align_vectors) takes one frame per call, and at 0.14 ms
    a frame costs a twentieth of FaceMesh's budget.
    """
    reference = reference_mesh() if reference is None else reference
    source = landmarks[:, STABLE].astype(np.float64)                  # (T, K, 3)
    target = reference[STABLE].astype(np.float64)                     # (K, 3)
    source_mean, target_mean = source.mean(1, keepdims=True), target.mean(0)
    source_c, target_c = source - source_mean, target - target_mean
    covariance = np.einsum("kj,tki->tji", target_c, source_c)                 # (T, 3, 3) = sum target_c source_c^T
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(u @ vt))                                      # no reflections
    u[:, :, 2] *= sign[:, None]
    singular[:, 2] *= sign
    rotations = u @ vt                                                          # (T, 3, 3)
    scales = singular.sum(1) / (source_c ** 2).sum((1, 2))                     # (T,)
    translations = target_mean - scales[:, None] * np.einsum("tij,tj->ti", rotations, source_mean[:, 0])
    meshes = scales[:, None, None] * np.einsum("tij,tnj->tni", rotations, landmarks) + translations[:, None]
    return meshes.astype(np.float32), scales.astype(np.float32), rotations.astype(np.float32), translations.astype(np.float32)


def canonicalise(landmarks: np.ndarray) -> np.ndarray:
    """Put one face's landmarks upright, centred and scaled to mesh units (used to build the reference)."""
    eye_line = landmarks[EYE_CORNERS_OUTER[1]] - landmarks[EYE_CORNERS_OUTER[0]]
    up = landmarks[FOREHEAD] - landmarks[CHIN]
    rotation, _ = Rotation.align_vectors([[1, 0, 0], [0, -1, 0]], [eye_line, up], weights=[np.inf, 1])
    upright = rotation.apply(landmarks - landmarks[STABLE].mean(0))
    scale = EYE_CORNER_UNITS / np.linalg.norm(upright[EYE_CORNERS_OUTER[1]] - upright[EYE_CORNERS_OUTER[0]])
    return (upright * scale).astype(np.float32)


@functools.lru_cache(maxsize=1)
def reference_mesh() -> np.ndarray:
    """The fixed (478, 3) reference every pose-free mesh is aligned to (stored; rebuilt by trackers.build_reference_mesh)."""
    return np.load(_ASSETS / "reference_mesh.npy")


@functools.lru_cache(maxsize=1)
def mesh_edges() -> np.ndarray:
    """(E, 2) vertex pairs of a triangulation of the reference face (front projection), built once: the wireframe
    that renders and the viewer draw."""
    from scipy.spatial import Delaunay

    reference = reference_mesh()[: regions.N_LANDMARKS]
    triangles = Delaunay(reference[:, :2]).simplices
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    length = np.linalg.norm(reference[edges[:, 0]] - reference[edges[:, 1]], axis=1)
    return edges[length < 1.5]  # drop long edges across the mouth and around the outline

