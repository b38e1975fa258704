"""a2m_lib.regions: the landmark sets are MediaPipe's own."""

from a2m_lib import regions


def test_regions_are_mediapipes_own_sets():
    import mediapipe as mp

    face_mesh = mp.solutions.face_mesh

    def indices(connections):
        return sorted({i for edge in connections for i in edge})

    assert regions.LIPS.tolist() == indices(face_mesh.FACEMESH_LIPS)
    assert regions.LEFT_EYE.tolist() == indices(face_mesh.FACEMESH_LEFT_EYE)
    assert regions.RIGHT_EYE.tolist() == indices(face_mesh.FACEMESH_RIGHT_EYE)
    assert set(regions.INNER_LIPS) < set(regions.LIPS) and {13, 14, 78, 308} <= set(regions.INNER_LIPS)
    assert set(regions.EYES) < set(regions.UPPER_FACE) and not set(regions.LIPS) & set(regions.UPPER_FACE)
