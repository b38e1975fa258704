"""MediaPipe face trackers: FaceMesh in tracking (video) mode (FaceTracker), the Tasks FaceLandmarker (TasksTracker),
which face to follow when several are on screen (choose_face, other_face), and the reference mesh built from
scikit-image's astronaut photo (build_reference_mesh). Geometry is a2m_lib.mesh.
"""
from __future__ import annotations

from pathlib import Path

import mediapipe as mp
import numpy as np

from .mesh import canonicalise



def landmarks_to_array(face_landmarks, width: int, height: int) -> np.ndarray:
    """MediaPipe normalised landmarks -> (N, 3) pixels; z uses the x scale, as MediaPipe documents.

    FaceMesh landmarks serialise as 17 bytes each (x, y, z as tagged float32), so the protobuf bytes are
    read as one array: 20x faster than a Python loop over 478 points, which matters at 300 frames/s.
    Anything laid out otherwise (visibility set, say) takes the loop.
    """
    raw = np.frombuffer(face_landmarks.SerializeToString(), np.uint8)
    count = len(face_landmarks.landmark)
    if raw.size == 17 * count and count and raw[0] == 0x0A and raw[1] == 15:
        points = raw.reshape(count, 17)[:, [3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16]].copy().view("<f4")
    else:
        points = np.array([[p.x, p.y, p.z] for p in face_landmarks.landmark], dtype=np.float32)
    return points * np.array([width, height, width], np.float32)


class FaceTracker:
    """MediaPipe FaceMesh in tracking (video) mode: `tracker(frame_rgb)` -> (478, 3) pixels or None.

    `track` also says how many faces were seen. With `max_faces` > 1 it tracks one face and, every
    `check_every` frames, counts faces with MediaPipe's face detector; once a second face shows up it
    switches to multi-face tracking for the rest of the video. (Multi-face tracking from the start costs
    about a third of the throughput, because FaceMesh then runs its detector on every frame.)
    With a `background` executor, the detector is made and run on its thread, and tracking goes on
    meanwhile: the switch then comes a few frames after the check that saw the second face.
    The face returned is the one nearest to the previous one; when there is none, the largest and most central.
    With several faces, `second_face` holds another one after each call, followed the same way (None when
    there is none), so that extraction can keep whichever of the two speaks.
    """

    def __init__(self, refine_landmarks: bool = True, static: bool = False,
                 min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5, max_faces: int = 1,
                 check_every: int = 30, background=None):
        def face_mesh(faces):
            return mp.solutions.face_mesh.FaceMesh(
                static_image_mode=static, max_num_faces=faces, refine_landmarks=refine_landmarks,
                min_detection_confidence=min_detection_confidence, min_tracking_confidence=min_tracking_confidence)

        def face_detection():
            return mp.solutions.face_detection.FaceDetection(min_detection_confidence=min_detection_confidence)

        self._make_multi = (lambda: face_mesh(max_faces)) if max_faces > 1 else None
        self._mesh = face_mesh(1)
        self._background = background
        self._detector = None
        if max_faces > 1:  # made on the thread that will run it: MediaPipe's graph threads inherit its CPUs
            self._detector = background.submit(face_detection).result() if background else face_detection()
        self._pending = None  # the background check in flight
        self._check_every = check_every
        self._frames_seen = 0
        self._previous_centre: np.ndarray | None = None
        self._previous_second: np.ndarray | None = None
        self.second_face: np.ndarray | None = None

    def _second_face_appeared(self, frame_rgb: np.ndarray) -> bool:
        if self._detector is None:
            return False
        if self._pending is not None:
            if not self._pending.done():
                return False
            detections, self._pending = self._pending.result().detections or [], None
            if len(detections) > 1:
                return True
        if self._frames_seen % self._check_every:
            return False
        if self._background is None:
            return len(self._detector.process(frame_rgb).detections or []) > 1
        self._pending = self._background.submit(self._detector.process, frame_rgb)
        return False

    def track(self, frame_rgb: np.ndarray) -> tuple[np.ndarray | None, int]:
        if self._second_face_appeared(frame_rgb):
            self._mesh.close()
            self._mesh, self._make_multi = self._make_multi(), None
            self._detector.close()
            self._detector = None
        self._frames_seen += 1
        result = self._mesh.process(frame_rgb)
        if not result.multi_face_landmarks:
            self._previous_centre = self._previous_second = self.second_face = None
            return None, 0
        height, width = frame_rgb.shape[:2]
        faces = [landmarks_to_array(face, width, height) for face in result.multi_face_landmarks]
        chosen, self._previous_centre = choose_face(faces, width, height, self._previous_centre)
        self.second_face, self._previous_second = other_face(faces, chosen, width, height, self._previous_second)
        return faces[chosen], len(faces)

    def __call__(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        return self.track(frame_rgb)[0]

    def close(self) -> None:
        self._mesh.close()
        if self._pending is not None:
            self._pending.result()
        if self._detector is not None:
            self._detector.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def choose_face(faces: list[np.ndarray], width: int, height: int, previous_centre: np.ndarray | None):
    """Index of the face to keep, and its centre: nearest to the previous one, else the largest, most central."""
    if len(faces) == 1:  # the common case, on every frame: skip the comparisons
        return 0, faces[0][:, :2].mean(0)
    centres = np.array([face[:, :2].mean(0) for face in faces])
    if previous_centre is not None:
        chosen = int(np.argmin(np.linalg.norm(centres - previous_centre, axis=1)))
    else:
        areas = np.array([np.prod(np.ptp(face[:, :2], axis=0)) for face in faces])
        off_centre = np.linalg.norm(centres - (width / 2, height / 2), axis=1) / np.hypot(width, height)
        chosen = int(np.argmax(areas * (1 - off_centre)))
    return chosen, centres[chosen]


def other_face(faces: list[np.ndarray], chosen: int, width: int, height: int, previous_centre: np.ndarray | None):
    """The face to follow besides `chosen` (choose_face's rule among the others), and its centre; (None, None)
    when there is no other face."""
    if len(faces) == 1:
        return None, None
    others = [face for index, face in enumerate(faces) if index != chosen]
    index, centre = choose_face(others, width, height, previous_centre)
    return others[index], centre


class TasksTracker:
    """The MediaPipe Tasks FaceLandmarker (VIDEO mode) from a user-supplied .task file.

    `track(frame_rgb)` -> (landmarks (478, 3) pixels or None, faces seen, blendshapes (52,) or None,
    facial transformation matrix (4, 4) or None). Frames must come in order at `fps`.
    """

    def __init__(self, task_file: str | Path, fps: float, max_faces: int = 1, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5):
        from mediapipe.tasks import python as tasks
        from mediapipe.tasks.python import vision

        if not Path(task_file).is_file():
            raise FileNotFoundError(
                f"extract.task_file '{task_file}' does not exist; download face_landmarker_v2_with_blendshapes.task "
                "from MediaPipe and point extract.task_file at it, or use extract.extractor=facemesh")
        options = vision.FaceLandmarkerOptions(
            base_options=tasks.BaseOptions(model_asset_path=str(task_file)), running_mode=vision.RunningMode.VIDEO,
            num_faces=max_faces, min_face_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence, output_face_blendshapes=True,
            output_facial_transformation_matrixes=True)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self._frame_ms = 1000.0 / fps
        self._frames_seen = 0
        self._previous_centre: np.ndarray | None = None
        self._previous_second: np.ndarray | None = None
        self.second_face: np.ndarray | None = None  # as FaceTracker's
        self.blendshape_names: list[str] = []

    def track(self, frame_rgb: np.ndarray):
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame_rgb))
        result = self._landmarker.detect_for_video(image, int(round(self._frames_seen * self._frame_ms)))
        self._frames_seen += 1
        if not result.face_landmarks:
            self._previous_centre = self._previous_second = self.second_face = None
            return None, 0, None, None
        height, width = frame_rgb.shape[:2]
        scale = np.array([width, height, width], np.float32)
        faces = [np.array([[p.x, p.y, p.z] for p in face], np.float32) * scale for face in result.face_landmarks]
        chosen, self._previous_centre = choose_face(faces, width, height, self._previous_centre)
        self.second_face, self._previous_second = other_face(faces, chosen, width, height, self._previous_second)
        categories = result.face_blendshapes[chosen]
        self.blendshape_names = [c.category_name for c in categories]
        blendshapes = np.array([c.score for c in categories], np.float32)
        matrix = np.asarray(result.facial_transformation_matrixes[chosen], np.float32)
        return faces[chosen], len(faces), blendshapes, matrix

    def close(self) -> None:
        self._landmarker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def build_reference_mesh() -> np.ndarray:
    """Derive the canonical reference from the face in scikit-image's astronaut photo (offline, fixed)."""
    from skimage import data

    with FaceTracker(refine_landmarks=True, static=True) as tracker:
        landmarks = tracker(data.astronaut())
    if landmarks is None:
        raise RuntimeError("MediaPipe found no face in skimage.data.astronaut(); the mediapipe install is broken")
    return canonicalise(landmarks)
