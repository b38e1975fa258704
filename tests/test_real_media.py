"""Extraction and QA on real talking-head clips from ../shared/eval_media (skipped when absent)."""
import subprocess
from types import SimpleNamespace

import pytest

from a2m_lib import extract, media, qa, regions, store
from a2m_lib.config import QAConfig

from .conftest import require_eval_media

pytestmark = [pytest.mark.real_media, pytest.mark.slow]
FRONTAL = ["lipnet/GRID_bbaf2n.mpg", "v-express/AOC_gt.mp4", "sadtalker/WDA_AlexandriaOcasioCortez_000.mp4"]
SHIFT_FRAMES = 5


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, cfg):
    sources = require_eval_media(*FRONTAL)
    raw = tmp_path_factory.mktemp("real_raw")
    for source in sources:
        (raw / f"{source.parent.name}_{source.name}").symlink_to(source)
    # A copy of the GRID clip with its audio content 5 frames (at 30 fps) late, same length.
    shifted = raw / "shifted_GRID_bbaf2n.mp4"
    delay_ms = SHIFT_FRAMES * 1000 / cfg.data.fps
    subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-i", str(sources[0]), "-map", "0:v", "-map", "0:a",
                    "-c:v", "copy", "-af", f"adelay={delay_ms:.3f}:all=1", "-shortest", str(shifted)], check=True)
    out = tmp_path_factory.mktemp("real_processed")
    manifest = extract.extract_store(raw, out, cfg.data, cfg.extract, progress=False)
    return manifest, qa.check_store(out, cfg.qa, cfg.data.sample_rate, run_dir=out / "run").table.set_index("clip_id")


def test_faces_are_found_and_frame_counts_match(real_store):
    manifest, table = real_store
    assert (manifest.status == "ok").all(), manifest.reason.tolist()
    for clip_id in table.index.drop("shifted_GRID_bbaf2n"):
        row = table.loc[clip_id]
        assert row.face_missing_frac <= 0.05, (clip_id, row.face_missing_frac)
        assert abs(row.frame_diff) <= 1, (clip_id, row.n_frames, row.expected_frames)


def test_unshifted_clip_is_in_sync(real_store):
    _, table = real_store
    row = table.loc["lipnet_GRID_bbaf2n"]
    assert abs(row.av_offset_frames) <= 1 and row.status == "pass", row.to_dict()
    # The HDTF clips come out at +3 to +4 frames (the mouth moving before the sound, or a real offset in
    # the source): near the limit, so some are flagged. Bound the estimate, not the verdict.
    assert (table.drop(index="shifted_GRID_bbaf2n").av_offset_frames.abs() <= 4).all(), table.av_offset_frames.to_dict()


def test_audio_shifted_by_five_frames_is_flagged(real_store):
    _, table = real_store
    row = table.loc["shifted_GRID_bbaf2n"]
    assert abs(row.av_offset_frames - SHIFT_FRAMES) <= 1, row.to_dict()
    assert row.status == "fail" and "offset" in row.reason


def test_copies_of_one_recording_are_failed_naming_the_original(real_store):
    # v-express/AOC_gt.mp4 is another crop of sadtalker/WDA_AlexandriaOcasioCortez_000.mp4 (identical audio); the
    # shifted GRID clip is a re-timed copy of the GRID one. All four are the default speaker here.
    _, table = real_store
    assert table.loc["v-express_AOC_gt"].duplicate_of == "sadtalker_WDA_AlexandriaOcasioCortez_000_000"  # its first 3.3 s
    assert table.loc["shifted_GRID_bbaf2n"].duplicate_of == "lipnet_GRID_bbaf2n"
    assert table.loc["v-express_AOC_gt"].status == "fail" and "a copy of clip" in table.loc["v-express_AOC_gt"].reason
    originals = table.drop(index=["v-express_AOC_gt", "shifted_GRID_bbaf2n"])
    assert (originals.duplicate_of.fillna("") == "").all(), originals.duplicate_of


def test_tasks_backend_adds_blendshapes_and_a_metric_pose_free_mesh(tmp_path, cfg):
    from dataclasses import replace

    import numpy as np

    from a2m_lib import mesh, neutral

    clip_path, task_file, canonical = require_eval_media(
        "v-express/AOC_gt.mp4", "mediapipe/face_landmarker_v2_with_blendshapes.task", "mediapipe/canonical_face_model.obj")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "aoc.mp4").symlink_to(clip_path)
    tasks_cfg = replace(cfg.extract, extractor="tasks", task_file=str(task_file), canonical_model=str(canonical))
    manifest = extract.extract_store(tmp_path / "raw", tmp_path / "out", cfg.data, tasks_cfg, progress=False)
    assert manifest.status.tolist() == ["ok"], manifest.reason.tolist()
    clip = store.load_clip(tmp_path / "out", "aoc")
    n_frames = len(clip["mesh"])
    assert clip["blendshapes"].shape == (n_frames, 52) and clip["transformation_matrix"].shape == (n_frames, 4, 4)
    assert "jawOpen" in list(clip["blendshape_names"]) and clip["face_found"].mean() > 0.95
    reference = mesh.load_canonical_model(canonical)
    error = np.linalg.norm(clip["mesh"][:, regions.STABLE] - reference[regions.STABLE], axis=-1)
    assert np.nanmedian(error) < 0.5  # cm: the stable points sit on the canonical model
    jaw = list(clip["blendshape_names"]).index("jawOpen")
    opening = regions.mouth_opening(clip["mesh"])
    assert np.corrcoef(clip["blendshapes"][:, jaw], opening)[0, 1] > 0.5  # the mesh and the blendshape agree
    features = neutral.frame_measures({"aoc": clip})
    assert "blendshape_energy" in features and len(neutral.score_frames(features)) > 0.9 * n_frames


def test_tasks_backend_without_a_task_file_is_a_clear_error(tmp_path, cfg):
    from dataclasses import replace

    (tmp_path / "raw").mkdir()
    with pytest.raises(FileNotFoundError, match="task_file"):
        extract.extract_store(tmp_path / "raw", tmp_path / "out", cfg.data, replace(cfg.extract, extractor="tasks"))


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory, cfg):
    """Every real talking-head video of ../shared/eval_media that the real-footage benchmark uses, extracted
    into 3-6 s clips as a user's footage would be, and QA'd with the demo's settings; plus four videos
    with two faces side by side (benchmarks/sync.py)."""
    require_eval_media("lipnet/GRID_bbaf2n.mpg")
    from benchmarks.real_footage import build_raw
    from benchmarks.sync import two_face_composites

    raw = tmp_path_factory.mktemp("shared_raw")
    assert build_raw(raw) > 40
    truth = two_face_composites(raw)
    out = tmp_path_factory.mktemp("shared_processed")
    manifest = extract.extract_store(raw, out, cfg.data, cfg.extract, progress=False)
    report = qa.check_store(out, cfg.qa, cfg.data.sample_rate, run_dir=out / "run", progress=False)
    return SimpleNamespace(report=report, manifest=manifest, truth=truth, processed=out)


def test_per_clip_offsets_agree_with_their_source_on_real_clips(shared_store):
    table = shared_store.report.table
    assert (table.sync_method == "store").mean() > 0.9  # enough other sources to learn the sync model from
    clips = qa.offset_agreement(table)  # the clips of sources cut into several 3-6 s clips
    assert len(clips) >= 40 and clips.n_frames.max() <= 6 * 30 + 1
    agree = clips.error <= 1
    # Measured 0.957 (44 of 46 clips) in every run (QA is deterministic; benchmarks/sync.py). The bound leaves two
    # more borderline clips room to move with a code change: a regression costs more than that.
    assert agree.mean() >= 0.9, clips.loc[~agree, ["clip_id", "clip_offset_frames", "source_offset_frames"]]
    # The confidence means something: the clips that disagree are the unsure ones.
    unsure = clips.clip_confidence < QAConfig().min_offset_confidence
    # every confident clip agreed when measured (39 of 39); one may miss: a bound with a margin of one clip
    assert (~agree[~unsure]).sum() <= 1 and (~agree).sum() <= unsure.sum()


def test_unsure_clips_are_marked_uncertain_not_rejected_or_corrected(shared_store, cfg):
    from dataclasses import replace

    report = shared_store.report
    table = report.table
    unsure = table[table.clip_confidence < cfg.qa.min_offset_confidence]
    uncertain = table[table.status == "uncertain"]
    assert len(uncertain) and set(uncertain.clip_id) <= set(unsure.clip_id)
    assert (uncertain.audio_shift_frames == 0).all() and not uncertain.use.any()
    assert uncertain.reason.str.contains("unsure").all()
    # qa.use_uncertain puts them back into what training reads, with the same statuses.
    lenient = qa.check_store(shared_store.processed, replace(cfg.qa, use_uncertain=True), cfg.data.sample_rate,
                             run_dir=shared_store.processed / "lenient", progress=False)
    assert set(lenient.accepted) == set(report.accepted) | set(uncertain.clip_id)
    assert (lenient.table.status == table.status).all()


def test_the_face_that_speaks_is_kept_when_two_are_on_screen(shared_store):
    manifest = shared_store.manifest.set_index("clip_id")
    table = shared_store.report.table.set_index("clip_id")
    for name, side in shared_store.truth.items():
        clip_id = f"two_faces__{name}"
        row = manifest.loc[clip_id]
        assert row.face_choice == "speaker" and row.face_sync_score > row.other_face_sync_score, row.to_dict()
        assert "mouth follows the audio" in row.reason
        clip = store.load_clip(shared_store.processed, clip_id, keys=("landmarks_image",))
        x = clip["landmarks_image"][..., 0].mean(axis=1)  # the kept face's centre, frame by frame
        on_side = (x < 512) if side == "left" else (x >= 512)
        assert on_side.mean() >= 0.95, (clip_id, side, on_side.mean())
        assert int(row.face_centre.split(",")[0]) < 512 if side == "left" else int(row.face_centre.split(",")[0]) >= 512
        assert table.loc[clip_id, "status"] == "pass", table.loc[clip_id].to_dict()
