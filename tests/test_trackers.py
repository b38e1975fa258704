"""a2m_lib.trackers: reading MediaPipe's landmarks."""

import numpy as np

from a2m_lib import trackers


def test_fast_landmark_reading_matches_mediapipe_fields():
    import mediapipe as mp
    from skimage import data

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as face_mesh:
        face = face_mesh.process(data.astronaut()).multi_face_landmarks[0]
    slow = np.array([[p.x * 512, p.y * 512, p.z * 512] for p in face.landmark], np.float32)
    np.testing.assert_allclose(trackers.landmarks_to_array(face, 512, 512), slow, rtol=1e-6, atol=1e-4)
