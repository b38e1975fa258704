import numpy as np

from a2m_lib import media, mesh, regions, synth, trackers


def test_mediapipe_finds_the_face_in_at_least_99_percent_of_frames(synthetic_raw):
    found = total = 0
    for path in sorted(synthetic_raw.rglob("*.mp4"))[:4]:
        with trackers.FaceTracker() as tracker:
            for frame in media.iter_frames(path, 30):
                found += tracker(frame) is not None
                total += 1
    assert total > 300
    assert found / total >= 0.99


def test_clip_has_matching_audio_video_and_ground_truth(synthetic_raw):
    path = sorted(synthetic_raw.rglob("*.mp4"))[0]
    truth = np.load(path.with_suffix(".gt.npz"), allow_pickle=True)
    n_frames = sum(1 for _ in media.iter_frames(path, 30))
    audio = media.read_audio(path, 16000)
    assert truth["articulation"].shape == (n_frames, 3)
    assert abs(len(audio) / 16000 * 30 - n_frames) < 1.0
    assert 3.0 <= n_frames / 30 <= 4.0
    # articulation spans closures (0) to open vowels
    assert truth["articulation"][:, 0].min() < 0.05 and truth["articulation"][:, 0].max() > 0.4


def test_jaw_articulation_opens_the_tracked_mouth():
    rig = synth.load_face()
    with trackers.FaceTracker(static=True) as tracker:
        closed = mesh.remove_pose(tracker(synth.render_frame(rig, np.zeros(3, np.float32), np.zeros(4))))[0]
        opened = mesh.remove_pose(tracker(synth.render_frame(rig, np.array([1, 0, 0], np.float32), np.zeros(4))))[0]
    assert regions.mouth_opening(opened) > regions.mouth_opening(closed) + 1.0  # mesh units (~cm)


def test_speakers_differ_in_pitch_and_vowels_in_formants():
    rng = np.random.default_rng(0)
    low, *_ = synth.synth_utterance(2.0, 110, rng)
    high, *_ = synth.synth_utterance(2.0, 220, rng)
    def pitch(audio):
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        freqs = np.fft.rfftfreq(len(audio), 1 / 16000)
        band = (freqs > 70) & (freqs < 400)
        return freqs[band][np.argmax(spectrum[band])]
    assert pitch(high) > 1.5 * pitch(low)


def test_faults_are_injected(tmp_path):
    rig = synth.load_face()
    rng = np.random.default_rng(1)
    truth = synth.synth_clip(tmp_path / "drop.mp4", rig, 3.0, 150, rng, faults=synth.Faults(dropped_frames=5))
    assert sum(1 for _ in media.iter_frames(tmp_path / "drop.mp4", 30)) == 85
    assert len(truth["articulation"]) == 85


def test_fast_landmark_reading_matches_mediapipe_fields():
    from skimage import data
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as face_mesh:
        face = face_mesh.process(data.astronaut()).multi_face_landmarks[0]
    slow = np.array([[p.x * 512, p.y * 512, p.z * 512] for p in face.landmark], np.float32)
    np.testing.assert_allclose(trackers.landmarks_to_array(face, 512, 512), slow, rtol=1e-6, atol=1e-4)


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
