"""Per-clip sync checked against GRID's word timings: an independent reference for QA's offsets.

    .venv/bin/python benchmarks/grid_word_sync.py [--run runs/grid_s1-base]

GRID's alignments (../shared/eval_media/grid_s1/align/<id>.align) time every word from the audio. A word that
starts with b, p or m ("bin", "blue", "place", "please", "by", "m") starts with the lips closed: the lips close
just before the sound starts. Per word, the lip closure is the frame of the smallest inner-lip gap from 0.2 s
before the word's start to 0.1 s after it; the clip's lag is the median over its b/p/m words of (closure frame -
word start frame). A clip whose audio is N frames late shows a lag N frames more negative, so -lag is the
word-timing estimate of QA's offset, up to one constant for the corpus (where in the closure an aligner puts a
word's start). Reports, for QA's per-clip offsets (av_offset_frames): the share of clips within +-1 frame of the
word-timing estimate, raw and with the corpus constant removed; and the same for a constant offset (the
corpus median), which is what in-tolerance shifting (qa.align_in_tolerance) has to beat.
Writes benchmarks/grid_word_sync_results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ALIGN = REPO.parent / "shared" / "eval_media" / "grid_s1" / "align"
UNITS_PER_SECOND = 25_000  # GRID's alignments count 1/1000 of a 25 fps frame


def word_lag(mesh: np.ndarray, fps: float, words: list[tuple[float, float, str]]) -> float | None:
    from a2m_lib import regions

    gap = regions.mouth_opening(mesh)
    lags = []
    for start, _, word in words:
        if not word or word[0] not in "bpm" or word == "sil":
            continue
        first, last = int(round((start - 0.2) * fps)), int(round((start + 0.1) * fps))
        if first < 0 or last >= len(gap) or not np.isfinite(gap[first: last + 1]).all():
            continue
        closure = first + int(np.argmin(gap[first: last + 1]))
        lags.append(closure - start * fps)
    return float(np.median(lags)) if lags else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=str(REPO / "runs" / "grid_s1-base"))
    args = parser.parse_args()
    from a2m_lib import rundir, store
    from a2m_lib.config import load_config

    run = Path(args.run)
    cfg = load_config(run / "config.yaml")
    table = pd.read_csv(rundir.qa_table(run), keep_default_na=False)
    rows = []
    for row in table.itertuples():
        if row.status == "fail":
            continue
        align = ALIGN / f"{Path(row.source).stem}.align"
        clip = store.load_clip(cfg.data.processed, row.clip_id, keys=("mesh",))
        if not align.exists() or float(clip["meta"]["start"]) != 0.0:
            continue
        words = [(int(a) / UNITS_PER_SECOND, int(b) / UNITS_PER_SECOND, w) for a, b, w in
                 (line.split() for line in align.read_text().splitlines() if line.strip())]
        lag = word_lag(clip["mesh"], float(clip["meta"]["fps"]), words)
        if lag is not None:
            rows.append(dict(clip_id=row.clip_id, status=row.status, words_offset=-lag, qa_offset=row.av_offset_frames,
                             clip_offset=row.clip_offset_frames, confidence=row.clip_confidence))
    found = pd.DataFrame(rows)
    constant = float(np.median(found.words_offset - found.qa_offset))
    corpus = float(np.median(found.qa_offset))

    def share(values) -> float:
        return round(float(np.mean(np.abs(values) <= 1)), 3)

    result = dict(
        clips=len(found), bpm_word_clips=len(found), corpus_constant_frames=constant,
        qa_within_1_frame_raw=share(found.words_offset - found.qa_offset),
        qa_within_1_frame_constant_removed=share(found.words_offset - found.qa_offset - round(constant)),
        constant_within_1_frame=share(found.words_offset - corpus - round(constant)),
        qa_offset_counts=found.qa_offset.value_counts().sort_index().to_dict(),
        words_offset_spread_frames=round(float(found.words_offset.std()), 2),
        correlation_qa_vs_words=round(float(np.corrcoef(found.qa_offset, found.words_offset)[0, 1]), 3))
    (REPO / "benchmarks" / "grid_word_sync_results.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
