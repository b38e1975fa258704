"""a2m_lib.neutral and the picker (a2m_lib.picker) outside the browser: choices, ranking, the saved files."""

import json

import numpy as np
import pytest

from a2m_lib import files, neutral, picker, rundir, store
from a2m_lib.config import NeutralChoice

pytestmark = pytest.mark.slow  # needs an extracted store: make test-fast skips it


def _truth_for(synthetic_raw, clip_id):
    speaker, stem = clip_id.split("__")
    return np.load(synthetic_raw / speaker / f"{stem}.gt.npz", allow_pickle=True)["articulation"]


@pytest.fixture(scope="module")
def ranking(processed, accepted):
    return neutral.Ranking(processed, accepted)


def test_auto_neutral_has_a_nearly_closed_jaw_for_every_speaker(ranking, synthetic_raw, tmp_path, accepted):
    chosen = neutral.choose(tmp_path, ranking, "auto")
    assert set(chosen.speaker) == {"spk0", "spk1"}
    for row in chosen.itertuples():
        jaws = np.concatenate([_truth_for(synthetic_raw, c)[:, 0] for c in accepted.clip_id[accepted.speaker == row.speaker]])
        jaw = _truth_for(synthetic_raw, row.clip_id)[row.frame, 0]
        # Over 5% of frames have a jaw of exactly 0 (pauses), so the 5th percentile is 0. Allow 0.02 jaw
        # units (about 0.3 px of lower-lip travel): below what MediaPipe can resolve, so a tie.
        assert jaw <= max(np.quantile(jaws, 0.05), 0.02), (row.clip_id, row.frame, jaw)
        saved = rundir.load_neutral(rundir.neutral_file(tmp_path, row.speaker))
        assert saved["chosen_by"] == "auto" and saved["mesh"].shape == (478, 3)
        assert saved["clip_id"] == row.clip_id and saved["frame"] == row.frame


def test_the_ranking_puts_closed_still_frames_first(ranking, synthetic_raw, accepted):
    """The top candidates are distinct moments whose ground-truth jaw (synth's articulation) is among the speaker's
    most closed, and the worst-scored frames are open: the scores rank what a neutral needs, not just sort."""
    top = ranking.top(5)
    assert len(top) == 10 and list(top.columns[:3]) == ["speaker", "clip_id", "frame"]
    for speaker, group in top.groupby("speaker"):
        assert group.score.is_monotonic_increasing
        jaws = np.concatenate([_truth_for(synthetic_raw, c)[:, 0] for c in accepted.clip_id[accepted.speaker == speaker]])
        chosen = np.array([_truth_for(synthetic_raw, row.clip_id)[row.frame, 0] for row in group.itertuples()])
        # every candidate is among the most closed quarter, or within 0.02 jaw units of closed (as above: a tie)
        assert (chosen <= max(np.quantile(jaws, 0.25), 0.02)).all(), chosen
        for (clip_a, frame_a), (clip_b, frame_b) in zip(group[["clip_id", "frame"]].values, group[["clip_id", "frame"]].values[1:]):
            assert clip_a != clip_b or abs(frame_a - frame_b) >= 15  # distinct moments, not neighbours
        worst = ranking.scored[speaker].tail(20)
        open_jaws = np.array([_truth_for(synthetic_raw, row.clip_id)[row.frame, 0] for row in worst.itertuples()])
        assert np.median(open_jaws) > np.quantile(jaws, 0.5)  # the least neutral frames have the mouth open


def test_manual_frame_file_and_mean_closed_choices(ranking, tmp_path, accepted):
    clip_id = accepted.clip_id[accepted.speaker == "spk1"].iloc[0]
    chosen = neutral.choose(tmp_path / "manual", ranking, f"{clip_id}:5").set_index("speaker")
    assert chosen.loc["spk1", "chosen_by"] == "manual" and chosen.loc["spk1", "frame"] == 5
    assert chosen.loc["spk0", "chosen_by"] == "auto"  # speakers not named fall back to auto
    from_file = neutral.choose(tmp_path / "file", ranking, str(rundir.neutral_file(tmp_path / "manual", "spk1"))).set_index("speaker")
    assert from_file.loc["spk1", "chosen_by"] == "file"
    np.testing.assert_array_equal(rundir.load_neutral(rundir.neutral_file(tmp_path / "file", "spk1"))["mesh"],
                                  rundir.load_neutral(rundir.neutral_file(tmp_path / "manual", "spk1"))["mesh"])
    mean = neutral.choose(tmp_path / "mean", ranking, NeutralChoice.parse("mean-closed"))
    assert (mean.chosen_by == "mean-closed").all()
    with pytest.raises(ValueError, match="not among the accepted clips"):
        neutral.choose(tmp_path / "bad", ranking, "nope:3")


def test_picker_buttons_choose_at_once_and_the_run_records_a_manual_pick(ranking, tmp_path):
    neutral.choose(tmp_path, ranking, "auto")  # what notebook 03 did before the picker is used
    files.write_json(rundir.record(tmp_path), {"status": "ok", "neutral": {"neutral": "auto", "speakers": []}})
    chooser = picker.NeutralPicker(ranking, tmp_path, top_k=3)
    assert chooser.speaker.options == ("spk0", "spk1") and len(chooser.buttons) == 3
    assert "(chosen by auto)" in chooser.status.value
    # the scrubber starts on the first candidate's clip and frame, with its image drawn
    first = chooser.ranking[chooser.ranking.speaker == "spk0"].iloc[0]
    assert (chooser.clip.value, chooser.slider.value) == (first.clip_id, first.frame)
    assert chooser.scrub_image.value[:4] == b"\x89PNG"
    chooser.speaker.value = "spk1"
    second = chooser.ranking[chooser.ranking.speaker == "spk1"].iloc[1]
    chooser.buttons[1].click()
    saved = rundir.load_neutral(rundir.neutral_file(tmp_path, "spk1"))
    assert (saved["clip_id"], saved["frame"], saved["chosen_by"]) == (second.clip_id, second.frame, "manual")
    assert f"{second.clip_id}:{second.frame}" in chooser.status.value
    # the pick is in choice.json and the run's record at once, the other speaker's row untouched
    for entry in (json.loads(rundir.neutral_choice(tmp_path).read_text()), json.loads(rundir.record(tmp_path).read_text())["neutral"]):
        rows = {row["speaker"]: row for row in entry["speakers"]}
        assert (rows["spk1"]["chosen_by"], rows["spk1"]["frame"]) == ("manual", second.frame)
        assert rows["spk0"]["chosen_by"] == "auto" and entry["neutral"] == "auto"
    # the scrubber: any clip, any frame
    chooser.clip.value = chooser.clip.options[-1]
    chooser.slider.value = 7
    assert chooser.scrub_image.value[:4] == b"\x89PNG"
    chooser.scrub_button.click()
    saved = rundir.load_neutral(rundir.neutral_file(tmp_path, "spk1"))
    assert (saved["clip_id"], saved["frame"]) == (chooser.clip.options[-1], 7)
    # re-opening shows the saved choice, and re-running the notebook with auto keeps it
    reopened = picker.NeutralPicker(ranking, tmp_path, top_k=3)
    reopened.speaker.value = "spk1"
    assert f"{chooser.clip.options[-1]}:7" in reopened.status.value and "manual" in reopened.status.value
    table = neutral.choose(tmp_path, ranking, "auto").set_index("speaker")
    assert table.loc["spk1", "chosen_by"] == "manual (kept)" and table.loc["spk0", "chosen_by"] == "auto"
    assert rundir.load_neutral(rundir.neutral_file(tmp_path, "spk1"))["frame"] == 7


def test_training_targets_subtract_each_speakers_own_neutral(processed, ranking, tmp_path, accepted):
    from a2m_lib.dataset import ClipDataset

    neutral.choose(tmp_path, ranking, "auto")
    neutrals = rundir.load_neutrals(tmp_path)
    assert not np.allclose(neutrals["spk0"], neutrals["spk1"])
    dataset = ClipDataset(processed, accepted, neutrals, 468, 16000)  # whole clips only
    for index, row in enumerate(accepted.itertuples()):
        clip_mesh = store.load_clip(processed, row.clip_id)["mesh"][:, :468]
        np.testing.assert_allclose(dataset[index]["offsets"], clip_mesh - neutrals[row.speaker][:468], atol=1e-5)


def test_a_neutral_has_its_speakers_closed_mouth(ranking, tmp_path):
    """Every frame ranked above the first open-mouthed one is among the speaker's closed frames (the lowest 20% of
    its inner-lip gap), and the chosen neutral's closure_error (its gap beyond the speaker's closed level) is
    recorded: near 0 here, within the spread of the closed frames themselves."""
    from a2m_lib import regions

    chosen = neutral.choose(tmp_path, ranking, "auto").set_index("speaker")
    for speaker, table in ranking.scored.items():
        closed = table.mouth_opening <= table.mouth_opening.quantile(neutral.CLOSED_QUANTILE)
        first_open = int(np.argmax(~closed.to_numpy()))
        assert closed.iloc[:first_open].all() and first_open >= 0.19 * len(table)
        spread = table.mouth_opening[closed].std()
        assert abs(chosen.loc[speaker, "closure_error"]) <= 2 * spread, (speaker, chosen.loc[speaker, "closure_error"])
        mesh = rundir.load_neutral(rundir.neutral_file(tmp_path, speaker))["mesh"]
        assert chosen.loc[speaker, "closure_error"] == pytest.approx(
            float(regions.mouth_opening(mesh)) - ranking.closed_level[speaker])
