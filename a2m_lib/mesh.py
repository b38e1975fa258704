"""MediaPipe face-mesh geometry: landmark sets, FaceMesh tracking and head-pose removal.

Mesh unit: pose-free meshes live in the frame of `reference_mesh()`, scaled so the outer eye
corners (landmarks 33 and 263) are 9.0 units apart, about the adult outer-canthal distance in cm.
So one mesh unit is roughly one centimetre. Axes follow the image: x right, y down, z away.
"""
from __future__ import annotations

import functools
from pathlib import Path

import mediapipe as mp
import numpy as np
from scipy.spatial.transform import Rotation

N_LANDMARKS_REFINED = 478
N_LANDMARKS = 468  # AniPortrait's set: the refined mesh without the 10 iris points

LIP_VERTICES = np.array(sorted({i for edge in mp.solutions.face_mesh.FACEMESH_LIPS for i in edge}))
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
MOUTH_CORNERS = (61, 291)
EYE_LIDS = ((159, 145), (386, 374))  # (upper, lower) per eye
EYE_CORNERS_OUTER = (33, 263)
CHIN, FOREHEAD = 152, 10
# Forehead, nose bridge, eye corners and temples: points that speech does not move.
STABLE_VERTICES = np.array([10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 33, 133, 362, 263,
                            127, 356, 234, 454, 21, 251, 103, 332, 109, 338, 67, 297])
EYE_CORNER_UNITS = 9.0

_ASSETS = Path(__file__).parent / "assets"


def landmarks_to_array(face_landmarks, width: int, height: int) -> np.ndarray:
    """MediaPipe normalised landmarks -> (N, 3) pixels; z uses the x scale, as MediaPipe documents."""
    return np.array([[p.x * width, p.y * height, p.z * width] for p in face_landmarks.landmark], dtype=np.float32)


class FaceTracker:
    """MediaPipe FaceMesh in tracking (video) mode: `tracker(frame_rgb)` -> (478, 3) pixels or None.

    With `max_faces` > 1, `track` also says how many faces were seen. The face it returns is the one
    nearest to the previously returned face; when there is none, the largest and most central face.
    """

    def __init__(self, refine_landmarks: bool = True, static: bool = False,
                 min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5, max_faces: int = 1):
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static, max_num_faces=max_faces, refine_landmarks=refine_landmarks,
            min_detection_confidence=min_detection_confidence, min_tracking_confidence=min_tracking_confidence)
        self._previous_centre: np.ndarray | None = None

    def track(self, frame_rgb: np.ndarray) -> tuple[np.ndarray | None, int]:
        result = self._mesh.process(frame_rgb)
        if not result.multi_face_landmarks:
            self._previous_centre = None
            return None, 0
        height, width = frame_rgb.shape[:2]
        faces = [landmarks_to_array(face, width, height) for face in result.multi_face_landmarks]
        centres = np.array([face[:, :2].mean(0) for face in faces])
        if self._previous_centre is not None:
            chosen = int(np.argmin(np.linalg.norm(centres - self._previous_centre, axis=1)))
        else:
            areas = np.array([np.prod(np.ptp(face[:, :2], axis=0)) for face in faces])
            off_centre = np.linalg.norm(centres - (width / 2, height / 2), axis=1) / np.hypot(width, height)
            chosen = int(np.argmax(areas * (1 - off_centre)))
        self._previous_centre = centres[chosen]
        return faces[chosen], len(faces)

    def __call__(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        return self.track(frame_rgb)[0]

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fit_similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity with target ~= scale * rotation @ source + translation.

    Rotation comes from scipy's Kabsch solver; scale and translation follow in closed form.
    """
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_c, target_c = source - source_mean, target - target_mean
    rotation, _ = Rotation.align_vectors(target_c, source_c)
    rotated = rotation.apply(source_c)
    scale = float((target_c * rotated).sum() / (source_c ** 2).sum())
    matrix = rotation.as_matrix()
    translation = target_mean - scale * matrix @ source_mean
    return scale, matrix, translation


def remove_pose(landmarks: np.ndarray, reference: np.ndarray | None = None):
    """(N, 3) image-space landmarks -> (pose-free mesh in mesh units, scale, rotation, translation)."""
    reference = reference_mesh() if reference is None else reference
    scale, rotation, translation = fit_similarity(landmarks[STABLE_VERTICES], reference[STABLE_VERTICES])
    mesh = scale * landmarks @ rotation.T + translation
    return mesh.astype(np.float32), scale, rotation, translation


def canonicalise(landmarks: np.ndarray) -> np.ndarray:
    """Put one face's landmarks upright, centred and scaled to mesh units (used to build the reference)."""
    eye_line = landmarks[EYE_CORNERS_OUTER[1]] - landmarks[EYE_CORNERS_OUTER[0]]
    up = landmarks[FOREHEAD] - landmarks[CHIN]
    rotation, _ = Rotation.align_vectors([[1, 0, 0], [0, -1, 0]], [eye_line, up], weights=[np.inf, 1])
    upright = rotation.apply(landmarks - landmarks[STABLE_VERTICES].mean(0))
    scale = EYE_CORNER_UNITS / np.linalg.norm(upright[EYE_CORNERS_OUTER[1]] - upright[EYE_CORNERS_OUTER[0]])
    return (upright * scale).astype(np.float32)


def build_reference_mesh() -> np.ndarray:
    """Derive the canonical reference from the face in scikit-image's astronaut photo (offline, fixed)."""
    from skimage import data

    with FaceTracker(refine_landmarks=True, static=True) as tracker:
        landmarks = tracker(data.astronaut())
    if landmarks is None:
        raise RuntimeError("MediaPipe found no face in skimage.data.astronaut(); the mediapipe install is broken")
    return canonicalise(landmarks)


@functools.lru_cache(maxsize=1)
def reference_mesh() -> np.ndarray:
    """The fixed (478, 3) reference every pose-free mesh is aligned to (stored; rebuilt by build_reference_mesh)."""
    return np.load(_ASSETS / "reference_mesh.npy")


def mouth_opening(meshes: np.ndarray) -> np.ndarray:
    """Inner-lip gap in mesh units, (..., N, 3) -> (...)."""
    return np.linalg.norm(meshes[..., LOWER_INNER_LIP, :] - meshes[..., UPPER_INNER_LIP, :], axis=-1)


def eye_opening(meshes: np.ndarray) -> np.ndarray:
    """Mean upper-to-lower eyelid gap of both eyes in mesh units, (..., N, 3) -> (...)."""
    gaps = [np.linalg.norm(meshes[..., lower, :] - meshes[..., upper, :], axis=-1) for upper, lower in EYE_LIDS]
    return (gaps[0] + gaps[1]) / 2
