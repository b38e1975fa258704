"""a2m_lib.mesh: head-pose removal."""

import numpy as np

from a2m_lib import mesh, regions


def test_batched_pose_removal_matches_scipys_similarity_fit():
    from scipy.spatial.transform import Rotation

    reference = mesh.reference_mesh()
    rng = np.random.default_rng(0)
    frames = np.stack([12.0 * reference @ Rotation.random(random_state=i).as_matrix().T + rng.normal(0, 50, 3)
                       for i in range(4)]).astype(np.float32)
    frames += rng.normal(0, 0.5, frames.shape).astype(np.float32)  # landmark noise
    meshes, scales, rotations, translations = mesh.remove_pose_batch(frames)
    for i in range(4):
        # reference solution: scipy's Kabsch rotation, then scale and translation in closed form
        source, target = frames[i][regions.STABLE], reference[regions.STABLE]
        source_c, target_c = source - source.mean(0), target - target.mean(0)
        rotation, _ = Rotation.align_vectors(target_c, source_c)
        scale = (target_c * rotation.apply(source_c)).sum() / (source_c ** 2).sum()
        np.testing.assert_allclose(rotations[i], rotation.as_matrix(), atol=1e-4)
        assert abs(scales[i] - scale) < 1e-5 and abs(scales[i] - 1 / 12.0) < 1e-3
        np.testing.assert_allclose(meshes[i], reference, atol=0.2)  # pose removed, up to the noise
        single = mesh.remove_pose(frames[i])
        np.testing.assert_array_equal(single[0], meshes[i])
