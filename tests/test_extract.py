"""a2m_lib.extract (and clips.py): the store's files and manifest, bad inputs, gaps, cuts, resume, workers, shards."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from a2m_lib import audio_frames, extract, media, mesh, qa, regions, store, synth
from tests.conftest import ffmpeg

pytestmark = pytest.mark.slow  # extraction end to end on synthetic and odd videos: make test-fast skips it


def test_manifest_and_clip_files(processed):
    manifest = pd.read_csv(processed / "manifest.csv", keep_default_na=False)
    assert list(manifest.columns) == store.MANIFEST_COLUMNS
    assert len(manifest) == 12 and (manifest.status == "ok").all()
    assert set(manifest.speaker) == {"spk0", "spk1"}
    clip = store.load_clip(processed, manifest.clip_id[0])
    n_frames = clip["meta"]["n_frames"]
    assert clip["mesh"].shape == (n_frames, 478, 3) and clip["landmarks_image"].shape == (n_frames, 478, 3)
    assert clip["pose_rotation"].shape == (n_frames, 3, 3) and clip["face_found"].all()
    assert clip["audio"].dtype == np.float32 and abs(len(clip["audio"]) / 16000 - clip["meta"]["audio_seconds"]) < 1e-3
    # pose removal: the stable landmarks sit on the reference whatever the head does
    error = np.linalg.norm(clip["mesh"][:, regions.STABLE] - mesh.reference_mesh()[regions.STABLE], axis=-1)
    assert np.median(error) < 0.6
    assert not list(processed.rglob("*.part*")), "no half-written files"


def _by_file(manifest):
    return manifest.set_index(manifest.source.map(os.path.basename))


def test_bad_files_get_a_reason_and_the_rest_carry_on(faulty_store):
    _, _, manifest, _ = faulty_store
    rows = _by_file(manifest)
    expected = {"notes.mp4": "not a readable media file", "truncated.mp4": "not a readable media file",
                "silent_film.mp4": "no audio track", "audio_only.mp4": "no video stream", "muted.mp4": "silent",
                "faceless.mp4": "found no face", "spk0_0000.mp4": None}
    for name, reason in expected.items():
        if reason:
            assert rows.loc[name, "status"] == "failed" and reason in rows.loc[name, "reason"], rows.loc[name].to_dict()
            assert rows.loc[name, "clip_id"] == ""
    assert (manifest.status == "ok").sum() == 8  # 2 shifted, dropped, blink, tiny and the 3 odd formats
    assert all(path.name.endswith(".npz") for path in (faulty_store[1] / "clips").iterdir())


def test_long_face_gap_ends_the_clip_and_short_gaps_are_interpolated(faulty_store):
    _, out, manifest, report = faulty_store
    noface = manifest[manifest.clip_id.str.startswith("noface") | manifest.source.str.contains("noface")]
    assert (noface.status != "ok").all() and noface.reason.str.contains("no face for 30 frames").any()
    blink = manifest[manifest.clip_id.str.startswith("blink")].iloc[0]
    assert blink.status == "ok" and blink.interpolated_frames == 3
    clip = store.load_clip(out, blink.clip_id)
    assert clip["interpolated"].sum() == 3 and np.isfinite(clip["mesh"]).all()
    assert report.table.set_index("clip_id").loc[blink.clip_id, "status"] == "pass"


def test_odd_formats_are_converted(faulty_store):
    _, out, manifest, report = faulty_store
    table = report.table.set_index("clip_id")
    for clip_id in ("odd__stereo48k", "odd__stereo44k", "odd__uhd"):
        assert table.loc[clip_id, "status"] == "pass", table.loc[clip_id].to_dict()
    uhd = store.load_clip(out, "odd__uhd")
    assert np.nanmax(uhd["landmarks_image"][..., 0]) > 1280  # landmarks in source pixels, not the downscaled copy
    tiny = table.loc["bad__tiny"]
    assert tiny.status == "fail" and "only" in tiny.reason and tiny.n_frames < 10


def test_extraction_resumes_without_redoing_finished_sources(faulty_store, cfg):
    raw, out, manifest, _ = faulty_store
    clip_files = sorted((out / "clips").glob("*.npz"))
    stamps = {p: p.stat().st_mtime_ns for p in clip_files}
    clip_files[0].unlink()  # as if the run had been killed while writing this source
    again = extract.extract_store(raw, out, cfg.data, cfg.extract, progress=False)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in clip_files[1:])
    assert clip_files[0].exists()
    pd.testing.assert_frame_equal(again.sort_values(["source", "start"]).reset_index(drop=True),
                                  manifest.sort_values(["source", "start"]).reset_index(drop=True), check_dtype=False)
    record = json.loads(next((out / "sources").glob("*.json")).read_text())
    assert record["settings"] == extract.settings_key(cfg.data, cfg.extract)
    assert record["settings"] != extract.settings_key(cfg.data, type(cfg.extract)(refine_landmarks=False))


def test_audio_starting_late_is_placed_late(synthetic_raw, tmp_path, cfg):
    source = sorted(synthetic_raw.rglob("*.mp4"))[0]
    raw = tmp_path / "raw"
    raw.mkdir()
    ffmpeg("-i", source, "-itsoffset", "0.2", "-i", source, "-map", "0:v", "-map", "1:a", "-c", "copy", raw / "late.mp4")
    extract.extract_store(raw, tmp_path / "out", cfg.data, cfg.extract, progress=False)
    late = store.load_clip(tmp_path / "out", "late")["audio"]
    original = media.read_audio(source)
    lag = np.argmax(np.correlate(late[:32000], original[8000:16000], "valid")) - 8000
    assert abs(lag - 3200) < 40, lag  # 0.2 s at 16 kHz
    row = qa.check_store(tmp_path / "out", cfg.qa, cfg.data.sample_rate, run_dir=tmp_path / "run").table.iloc[0]
    assert abs(row.av_offset_frames - 6) <= 1 and row.status == "fail"


def test_long_videos_are_cut_at_pauses(tmp_path, cfg):
    synth.synth_dataset(tmp_path / "raw", 1, 1, (14.0, 14.0), seed=21, progress=False)
    manifest = extract.extract_store(tmp_path / "raw", tmp_path / "out", cfg.data, cfg.extract, progress=False)
    clips = manifest[manifest.status == "ok"].sort_values("start")
    assert len(clips) >= 3 and clips.clip_id.str.match(r"spk0__spk0_0000_\d{3}$").all()
    assert ((clips.end - clips.start) >= 3.0 - 1e-6).all() and ((clips.end - clips.start) <= 6.0 + 1e-6).all()
    np.testing.assert_allclose(clips.start.values[1:], clips.end.values[:-1])  # contiguous
    audio = media.read_audio(next((tmp_path / "raw").rglob("*.mp4")))
    energy = audio_frames.frame_energy(audio, 16000, 30, int(14 * 30))
    cuts = (clips.start.values[1:] * 30).round().astype(int)
    assert np.all(energy[cuts] < np.median(energy)), "cuts fall in quiet frames"
    for row in clips.itertuples():
        clip = store.load_clip(tmp_path / "out", row.clip_id)
        assert abs(len(clip["audio"]) / 16000 * 30 - row.n_frames) < 1


def test_workers_and_shards_give_the_same_store(synthetic_raw, tmp_path, cfg):
    subset = tmp_path / "raw"
    for path in sorted(synthetic_raw.rglob("*.mp4"))[:4]:
        (subset / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, subset / path.parent.name / path.name)
    parallel = extract.extract_store(subset, tmp_path / "parallel", cfg.data, cfg.extract, workers=2, progress=False)
    for index in range(2):
        extract.extract_store(subset, tmp_path / f"shard{index}", cfg.data, cfg.extract, shard=(index, 2), progress=False)
    merged = tmp_path / "merged"
    for index in range(2):
        shutil.copytree(tmp_path / f"shard{index}", merged, dirs_exist_ok=True)
    combined = store.write_manifest(merged)
    assert len(parallel) == 4 and (parallel.status == "ok").all()
    pd.testing.assert_frame_equal(parallel.sort_values("clip_id").reset_index(drop=True),
                                  combined.sort_values("clip_id").reset_index(drop=True))
    for clip_id in parallel.clip_id:
        np.testing.assert_allclose(store.load_clip(tmp_path / "parallel", clip_id)["mesh"],
                                   store.load_clip(merged, clip_id)["mesh"], atol=1e-5)


def test_a_video_removed_from_raw_leaves_the_manifest_but_keeps_its_files(synthetic_raw, tmp_path, cfg, capsys):
    subset = tmp_path / "raw"
    for path in sorted(synthetic_raw.rglob("*.mp4"))[:2]:
        (subset / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, subset / path.parent.name / path.name)
    before = extract.extract_store(subset, tmp_path / "out", cfg.data, cfg.extract, workers=1, progress=False)
    removed = sorted(subset.rglob("*.mp4"))[0]
    removed.unlink()
    after = extract.extract_store(subset, tmp_path / "out", cfg.data, cfg.extract, workers=1, progress=False)
    assert len(before) == 2 and len(after) == 1 and str(removed) not in set(after.source)
    assert "no longer in the raw folder" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / "clips").glob("*.npz"))) == 2  # nothing computed is deleted


def test_language_and_speaker_from_metadata(tmp_path, synthetic_raw, cfg):
    raw = tmp_path / "raw"
    raw.mkdir()
    files = sorted(synthetic_raw.rglob("*.mp4"))[:2]
    for path in files:
        shutil.copy(path, raw / path.name)
    (raw / "metadata.csv").write_text(f"file,speaker,language\n{files[0].name},alice,de\n")
    (raw / files[1].with_suffix(".json").name).write_text(json.dumps({"language": "fr"}))
    sources = {s["path"].name: s for s in extract.find_sources(raw)}
    assert (sources[files[0].name]["speaker"], sources[files[0].name]["language"]) == ("alice", "de")
    assert (sources[files[1].name]["speaker"], sources[files[1].name]["language"]) == ("default", "fr")


def test_second_face_is_recorded_and_the_main_face_kept(tmp_path, cfg):
    import cv2

    rig = synth.load_face()
    rng = np.random.default_rng(3)
    audio, per_sample, _ = synth.synth_utterance(4.0, 150, rng)
    frames = []
    for t in range(120):
        canvas = np.full((384, 512, 3), 200, np.uint8)
        big = cv2.resize(synth.render_frame(rig, per_sample[int((t + 0.5) * 16000 / 30)], np.zeros(4)), (300, 300))
        canvas[60:360, 180:480] = big
        if t >= 45:  # a second, smaller person appears at the left
            canvas[20:150, 20:150] = cv2.resize(rig.image, (130, 130))
        frames.append(canvas)
    (tmp_path / "raw").mkdir()
    media.write_video(tmp_path / "raw" / "two.mp4", np.stack(frames), 30, audio, 16000)
    manifest = extract.extract_store(tmp_path / "raw", tmp_path / "out", cfg.data, cfg.extract, progress=False)
    row = manifest.iloc[0]
    assert row.status == "ok" and row.multi_face_frames >= 45 and "largest, most central" in row.reason
    clip = store.load_clip(tmp_path / "out", row.clip_id)
    assert clip["n_faces"][:30].max() == 1 and clip["n_faces"][75:].min() == 2
    centres = np.nanmean(clip["landmarks_image"][..., :2], axis=1)
    assert clip["face_found"].all() and (centres[:, 0] > 250).all(), "stays on the big, central face"


def test_variable_frame_rate_is_resampled_by_timestamp(synthetic_raw, tmp_path, cfg):
    source = sorted(synthetic_raw.rglob("*.mp4"))[1]
    raw = tmp_path / "raw"
    raw.mkdir()
    # Keep every other frame of the first 2 s only (15 fps there, 30 fps after), timestamps untouched.
    ffmpeg("-i", source, "-vf", "select='gte(n,60)+not(mod(n,2))'", "-fps_mode", "vfr", "-c:a", "copy", raw / "vfr.mp4")
    n_source = sum(1 for _ in media.iter_frames(source, 30))
    manifest = extract.extract_store(raw, tmp_path / "out", cfg.data, cfg.extract, progress=False)
    assert manifest.n_frames.iloc[0] == n_source  # not n_source - 30: frames are placed by time
    row = qa.check_store(tmp_path / "out", cfg.qa, cfg.data.sample_rate, run_dir=tmp_path / "run").table.iloc[0]
    assert row.status == "pass" and abs(row.av_offset_frames) <= 1, row.to_dict()


def test_an_unreadable_clip_file_names_itself_and_the_fix(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"broken.npz is unreadable.*re-run extraction"):
        store.load_clip(tmp_path, "broken")


def test_a_25fps_source_repeats_frames_instead_of_tracking_them_twice(synthetic_raw, tmp_path, cfg):
    source = sorted(synthetic_raw.rglob("*.mp4"))[2]
    raw = tmp_path / "raw"
    raw.mkdir()
    ffmpeg("-i", source, "-vf", "fps=25", "-c:a", "copy", raw / "pal.mp4")
    extract.extract_store(raw, tmp_path / "out", cfg.data, cfg.extract, progress=False)
    clip = store.load_clip(tmp_path / "out", "pal")
    repeated, points = clip["repeated"], clip["landmarks_image"]
    assert abs(repeated.sum() - len(repeated) / 6) <= 2  # 25 -> 30 fps repeats one frame in six
    np.testing.assert_array_equal(points[1:][repeated[1:]], points[:-1][repeated[1:]])
    moved = np.abs(points[1:] - points[:-1]).max(axis=(1, 2))[~repeated[1:]]
    assert (moved > 0).all(), "frames that are not repeats get their own landmarks"


def test_a_worker_that_dies_costs_only_its_own_sources(synthetic_raw, tmp_path, cfg, monkeypatch):
    """A worker process that dies (as a crash inside MediaPipe would end it) while it holds one source: exactly that
    source is reported unfinished, every other one is finished by the other worker, and a re-run completes it.

    The worker kills itself (SIGKILL) when it starts preparing the first source (a2m_lib.faults): the first job
    in the queue is the first job its worker takes, so at that moment it holds no other source."""
    sources = extract.find_sources(synthetic_raw)
    doomed = sources[0]
    out = tmp_path / "out"
    monkeypatch.setenv("A2M_CRASH_AT", f"extract.prepare={doomed['source_key']}")  # inherited by the spawned workers
    with pytest.raises(RuntimeError, match="1 source\\(s\\) were not finished") as error:
        extract.extract_store(synthetic_raw, out, cfg.data, cfg.extract, workers=2, progress=False)
    assert str(doomed["path"]) in str(error.value)
    done = {path.stem for path in (out / "sources").glob("*.json")}
    assert done == {source["source_key"] for source in sources[1:]}
    assert not list((out / "clips").glob("*.part*"))
    monkeypatch.delenv("A2M_CRASH_AT")
    manifest = extract.extract_store(synthetic_raw, out, cfg.data, cfg.extract, progress=False)  # resumes
    assert len(manifest) == len(sources) == 12 and (manifest.status == "ok").all()


def test_the_number_of_workers_is_not_a_clip_setting(cfg):
    from dataclasses import replace

    assert cfg.extract.workers == 0  # one per CPU unless the config says otherwise
    one, four = (extract.settings_key(cfg.data, replace(cfg.extract, workers=n)) for n in (1, 4))
    assert one == four and "workers" not in one


def test_frames_are_those_of_the_ffmpeg_command_line(synthetic_raw, tmp_path):
    """FrameReader decodes in process (PyAV); its frames must be exactly what `ffmpeg -vf fps=30` gives."""
    import imageio_ffmpeg

    source = sorted(synthetic_raw.rglob("*.mp4"))[3]
    ffmpeg("-i", source, "-vf", "fps=25,crop=iw:ih-64", "-c:a", "copy", tmp_path / "pal.mp4")
    ffmpeg("-display_rotation", "90", "-i", tmp_path / "pal.mp4", "-c", "copy", tmp_path / "turned.mp4")
    for path in (source, tmp_path / "pal.mp4", tmp_path / "turned.mp4"):
        reader = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", "fps=30"])
        width, height = next(reader)["size"]
        expected = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
        with media.FrameReader(path, 30) as frames:
            got = list(frames)
        assert len(got) == len(expected), path.name
        for index, ((frame, repeated), reference) in enumerate(zip(got, expected)):
            np.testing.assert_array_equal(frame, reference, err_msg=f"{path.name} frame {index}")
            assert not repeated or np.array_equal(reference, expected[index - 1])
        if path != source:
            assert abs(sum(repeated for _, repeated in got) - len(got) / 6) <= 1, path.name
    assert got[0][0].shape[0] > got[0][0].shape[1]  # turned: the display rotation is applied


def test_damaged_video_packets_are_skipped_and_noted(synthetic_raw, tmp_path, cfg):
    data = bytearray(sorted(synthetic_raw.rglob("*.mp4"))[5].read_bytes())
    middle = len(data) // 2
    data[middle: middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "damaged.mp4").write_bytes(bytes(data))
    manifest = extract.extract_store(tmp_path / "raw", tmp_path / "out", cfg.data, cfg.extract, progress=False)
    row = manifest.iloc[0]
    assert row.status == "ok" and "damaged video packets" in row.reason, row.to_dict()


def test_the_store_knows_its_own_audio_rate():
    """The store finaliser (faces.finalise_store, after extraction and after a2m merge) judges faces at the rate the
    clips were extracted at, read from the store's own manifest: a merge has no config to forget it from."""
    import json

    import pandas as pd

    from a2m_lib import store

    def manifest(*rates):
        return pd.DataFrame({"settings": [json.dumps({"sample_rate": rate, "fps": 30}) for rate in rates] + [""]})

    assert store.sample_rate(manifest(22050, 22050)) == 22050
    assert store.sample_rate(manifest()) == 16000  # no clips yet
    with pytest.raises(ValueError, match=r"several audio rates \(\[16000, 22050\]\)"):
        store.sample_rate(manifest(16000, 22050))
