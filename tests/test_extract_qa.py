import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest

from a2m_lib import extract, media, qa, synth


def test_manifest_and_clip_files(processed, synthetic_raw):
    manifest = pd.read_csv(processed / "manifest.csv", keep_default_na=False)
    assert list(manifest.columns) == extract.MANIFEST_COLUMNS
    assert len(manifest) == 12 and (manifest.status == "ok").all()
    assert set(manifest.speaker) == {"spk0", "spk1"}
    clip = extract.load_clip(processed, manifest.clip_id[0])
    n_frames = clip["meta"]["n_frames"]
    assert clip["mesh"].shape == (n_frames, 478, 3) and clip["landmarks_image"].shape == (n_frames, 478, 3)
    assert clip["pose_rotation"].shape == (n_frames, 3, 3) and clip["face_found"].all()
    assert clip["audio"].dtype == np.float32 and abs(len(clip["audio"]) / 16000 - clip["meta"]["audio_seconds"]) < 1e-3
    # pose removal: the stable landmarks sit on the reference whatever the head does
    from a2m_lib import mesh
    error = np.linalg.norm(clip["mesh"][:, mesh.STABLE_VERTICES] - mesh.reference_mesh()[mesh.STABLE_VERTICES], axis=-1)
    assert np.median(error) < 0.6
    assert not list(processed.rglob("*.part*")), "no half-written files"


def test_clean_clips_pass_qa(processed):
    table = pd.read_csv(processed / "qa.csv", keep_default_na=False)
    assert list(table.columns) == qa.QA_COLUMNS
    assert (table.status == "pass").all(), table[table.status != "pass"].reason.tolist()
    assert (table.av_offset_frames.abs() <= 1).all()


@pytest.fixture(scope="module")
def faulty_store(tmp_path_factory, cfg):
    raw = tmp_path_factory.mktemp("faulty_raw")
    synth.synth_dataset(raw / "shifted", 1, 2, (4.0, 5.0), seed=11, faults=synth.Faults(audio_offset_frames=6), progress=False)
    synth.synth_dataset(raw / "dropped", 1, 1, (4.0, 4.0), seed=12, faults=synth.Faults(dropped_frames=6), progress=False)
    synth.synth_dataset(raw / "noface", 1, 1, (4.0, 4.0), seed=13, faults=synth.Faults(no_face_frames=30), progress=False)
    (raw / "bad").mkdir()
    (raw / "bad" / "notes.mp4").write_text("this is not a video")
    good = next((raw / "dropped").rglob("*.mp4"))
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-i", str(good), "-an", "-c:v", "copy",
                    str(raw / "bad" / "silent_film.mp4")], check=True)
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-i", str(good), "-vn", "-c:a", "copy",
                    str(raw / "bad" / "audio_only.mp4")], check=True)
    out = tmp_path_factory.mktemp("faulty_processed")
    manifest = extract.extract_store(raw, out, cfg.data, cfg.extract, progress=False)
    return raw, out, manifest, qa.check_store(out, cfg.qa, cfg.data.sample_rate)


def test_bad_files_get_a_reason_and_the_rest_carry_on(faulty_store):
    _, _, manifest, _ = faulty_store
    failed = manifest[manifest.status == "failed"].set_index(manifest.source[manifest.status == "failed"].map(os.path.basename))
    assert "not a readable media file" in failed.loc["notes.mp4", "reason"]
    assert "no audio track" in failed.loc["silent_film.mp4", "reason"]
    assert "no video stream" in failed.loc["audio_only.mp4", "reason"]
    assert (failed.clip_id == "").all()
    assert (manifest.status == "ok").sum() == 4


def test_qa_flags_offset_dropped_frames_and_missing_face(faulty_store):
    _, _, _, report = faulty_store
    table = report.table.set_index("clip_id")
    shifted = table[table.index.str.startswith("shifted")]
    assert (shifted.status == "fail").all()
    assert (shifted.av_offset_frames - 6).abs().max() <= 1, shifted.av_offset_frames.tolist()
    dropped = table.loc[table.index.str.startswith("dropped")].iloc[0]
    assert dropped.status == "fail" and dropped.frame_diff <= -5 and "expected" in dropped.reason
    noface = table.loc[table.index.str.startswith("noface")].iloc[0]
    assert noface.status == "fail" and noface.face_missing_frac >= 0.2 and "no face" in noface.reason
    assert report.accepted == []


def test_extraction_resumes_without_redoing_finished_clips(faulty_store, cfg):
    raw, out, manifest, _ = faulty_store
    clip_files = sorted((out / "clips").glob("*.npz"))
    stamps = {p: p.stat().st_mtime_ns for p in clip_files}
    clip_files[0].unlink()  # as if the run had been killed before this clip
    again = extract.extract_store(raw, out, cfg.data, cfg.extract, progress=False)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in clip_files[1:])
    assert clip_files[0].exists()
    pd.testing.assert_frame_equal(again.sort_values("source").reset_index(drop=True),
                                  manifest.sort_values("source").reset_index(drop=True), check_dtype=False)
    # a changed setting invalidates the cache
    changed = extract.settings_key(cfg.data, type(cfg.extract)(refine_landmarks=False))
    meta = json.loads(str(np.load(clip_files[1])["meta"]))
    assert meta["settings"] != changed
