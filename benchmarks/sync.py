"""Per-clip A/V sync and the face that speaks, on the real clips of ../shared/eval_media (not a timed test).

    .venv/bin/python benchmarks/sync.py

Extracts the real-footage benchmark's videos (benchmarks/real_footage.py) into 3-6 s clips, plus four
composites of two real speakers side by side with the audio of one of them (two_face_composites), into a
temporary store, then prints, side by side:
- per-clip offset agreement: for the clips of sources cut into several clips, the share whose own offset
  is within ±1 frame of their source's pooled offset, for QA's store model and for the per-clip
  regression QA used before (each against its own pooled estimate);
- how that agreement depends on the clip's confidence;
- QA's statuses (pass / fail / uncertain) with the demo's and the real recipe's QA settings;
- for each composite, the face kept, its sync score against the other face's, the share of frames on the
  speaking side, and QA's verdict.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from a2m_lib import extract, media, qa, store, sync  # noqa: E402
from a2m_lib.config import load_config  # noqa: E402
from benchmarks.real_footage import SHARED, build_raw  # noqa: E402

TWO_FACES = {"man": "video-retalking/face_2.mp4", "woman": "video-retalking/face_3.mp4"}  # one listens
# Two people who were both speaking when filmed: both mouths move, whichever voice is put under them.
BOTH_SPEAKING = {"katie": "sadtalker/WDA_KatieHill_000.mp4", "aoc": "sadtalker/WDA_AlexandriaOcasioCortez_000.mp4"}


def two_face_composites(raw: Path, pair: dict = TWO_FACES) -> dict:
    """raw/two_faces/<left>_<right>_voice_<who>.mp4: two real speaking clips side by side (ffmpeg hstack, each
    scaled to 512x512) with the audio of one of them, in both orders, with either audio. Returns
    {file stem: "left" or "right", the side of the face whose audio it is}."""
    speakers = {name: SHARED / path for name, path in pair.items()}
    first, second = speakers
    (raw / "two_faces").mkdir(parents=True, exist_ok=True)
    truth = {}
    for left, right in ((first, second), (second, first)):
        for voice in (first, second):
            name = f"{left}_{right}_voice_{voice}"
            subprocess.run([media.ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(speakers[left]),
                            "-i", str(speakers[right]), "-i", str(speakers[voice]), "-filter_complex",
                            "[0:v]scale=512:512,fps=25[a];[1:v]scale=512:512,fps=25[b];[a][b]hstack=inputs=2[v]",
                            "-map", "[v]", "-map", "2:a", "-shortest", str(raw / "two_faces" / f"{name}.mp4")], check=True)
            truth[name] = "left" if voice == left else "right"
            # a speaker each: two composites share each voice, and QA fails copies of one recording within a speaker
            (raw / "two_faces" / f"{name}.json").write_text(json.dumps({"speaker": f"two_faces_{name}"}))
    return truth


def per_clip_regression_agreement(table: pd.DataFrame, measured: list) -> float:
    """The agreement QA had before the store model: the per-clip regression against its own pooled estimate."""
    scores = {row["clip_id"]: s for row, s in measured if s is not None}
    clips = qa.offset_agreement(table)
    errors = []
    for source, members in clips.groupby("source"):
        pooled = sync.pool([(scores[c], n) for c, n in zip(members.clip_id, members.n_frames)])
        errors += [abs(sync.peak(scores[c])[0] - sync.peak(pooled)[0]) for c in members.clip_id]
    return float(np.mean(np.array(errors) <= 1))


def main() -> None:
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: this benchmark needs the shared real footage")
    demo, real = load_config(REPO / "configs" / "demo.yaml"), load_config(REPO / "configs" / "real.yaml")
    with tempfile.TemporaryDirectory() as work:
        raw, out = Path(work) / "raw", Path(work) / "out"
        build_raw(raw)
        truth = two_face_composites(raw)
        manifest = extract.extract_store(raw, out, demo.data, demo.extract).set_index("clip_id")
        report = qa.check_store(out, demo.qa, demo.data.sample_rate, run_dir=Path(work) / "demo_run")
        real_report = qa.check_store(out, real.qa, real.data.sample_rate, run_dir=Path(work) / "real_run")
        lenient = qa.check_store(out, replace(demo.qa, min_offset_confidence=0.0), demo.data.sample_rate,
                                 run_dir=Path(work) / "no_uncertain")
        measured, _ = qa.measure_store(out, demo.data.sample_rate, progress=False)
        table = report.table
        clips = qa.offset_agreement(table)
        unsure = clips.clip_confidence < demo.qa.min_offset_confidence
        bins = pd.cut(clips.clip_confidence, [-1, 0.03, 0.05, 0.1, 0.2, 1])
        faces = {}
        for name, side in truth.items():
            clip_id = f"two_faces__{name}"
            x = store.load_clip(out, clip_id, keys=("landmarks_image",))["landmarks_image"][..., 0].mean(axis=1)
            row = manifest.loc[clip_id]
            faces[name] = dict(speaking_side=side, face_choice=row.face_choice, face_centre=row.face_centre,
                               kept_face_sync=row.face_sync_score, other_face_sync=row.other_face_sync_score,
                               frames_on_speaking_side=round(float(np.mean((x < 512) if side == "left" else (x >= 512))), 3),
                               qa_status=table.set_index("clip_id").loc[clip_id, "status"])
        result = dict(
            clips=len(table), multi_clip_source_clips=len(clips),
            agreement_store_model=round(float((clips.error <= 1).mean()), 3),
            agreement_per_clip_regression=round(per_clip_regression_agreement(table, measured), 3),
            agreement_confident=round(float((clips.error[~unsure] <= 1).mean()), 3),
            agreement_unsure=round(float((clips.error[unsure] <= 1).mean()), 3) if unsure.any() else None,
            agreement_by_confidence={str(k): f"{v.mean():.2f} of {len(v)}" for k, v in (clips.error <= 1).groupby(bins, observed=True)},
            statuses_demo_settings=table.status.value_counts().to_dict(),
            statuses_real_settings=real_report.table.status.value_counts().to_dict(),
            statuses_without_uncertain=lenient.table.status.value_counts().to_dict(),
            sync_method=table.sync_method.value_counts().to_dict(),
            two_faces=faces)
    print(json.dumps(result, indent=2, default=str))
    (REPO / "benchmarks" / "sync_results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
