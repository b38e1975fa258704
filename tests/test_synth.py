"""a2m_lib.synth: synthetic talking heads that MediaPipe tracks, with their ground truth and faults."""

import numpy as np
import pytest

from a2m_lib import media, mesh, regions, synth, trackers


@pytest.mark.slow
def test_mediapipe_finds_the_face_in_at_least_99_percent_of_frames(synthetic_raw):
    found = total = 0
    for path in sorted(synthetic_raw.rglob("*.mp4"))[:4]:
        with trackers.FaceTracker() as tracker:
            for frame in media.iter_frames(path, 30):
                found += tracker(frame) is not None
                total += 1
    assert total > 300
    assert found / total >= 0.99


@pytest.mark.slow
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
