"""The real-footage recipes on the real clips of ../shared/eval_media, side by side on one split: training time and
held-out metrics per speaker for the mel encoder (configs/real_mel.yaml), Whisper tiny.en and Whisper base
(configs/real.yaml), so later changes can be compared against them.

    .venv/bin/python benchmarks/real_footage.py [--variants mel tiny.en base] [--split-by clip speaker] [-p key=value ...]

Builds data/raw/real/<speaker>/ as symbolic links into ../shared/eval_media (nothing is copied into the repo), runs
notebooks 01-03 once (runs/real: extraction, QA, neutrals), then notebooks 04-05 for each variant in
runs/real-<variant> on that run's QA decisions and neutrals (rundir.branch). Held-out clips are chosen by the config's
split, the same for every variant: by clip (`clip`: held-out clips of every speaker; every speaker with at least 3
accepted clips has test clips) and by speaker (`speaker`, data.split_by: held-out voices the model never heard).
Results, each split under its own key, go to benchmarks/real_footage_results.json (a split not run is kept).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "eval_media"

# speaker -> files under eval_media (several recordings of one person share a speaker). A speaker is one person,
# and each recording appears once:
# - the ten LipNet GRID samples are ten different people (looked at, and their meshes differ as much as
#   different people's do), so each is its own speaker;
# - sadtalker/WDA_AlexandriaOcasioCortez_000, v-express/AOC_gt and video-retalking/face_3 are one recording (their
#   audio is identical, normalised cross-correlation 1.00), so only the HDTF original is used: the others would
#   put copies of a training clip among the held-out ones.
SPEAKERS = {
    "obama": ["real_extra/face2face-demo/obama.mp4", "real_extra/emotion-morphing/obama.mp4"],
    "aoc": ["sadtalker/WDA_AlexandriaOcasioCortez_000.mp4"],
    **{f"grid_{name}": [f"lipnet/GRID_{name}.mpg"] for name in ("bbaf2n", "brbk7n", "lbax4n", "lbbc2a", "lrwp9a",
                                                                "lwbsza", "pwij3p", "sbia1a", "sbwe5n", "swiz3n")},
    "trump": ["real_extra/testing_deepfake/trump.mp4"],
    "musk": ["real_extra/testing_deepfake/musk.mp4"],
    "minimates": ["real_extra/MiniMates/driving.mp4"],
    "katiehill": ["sadtalker/WDA_KatieHill_000.mp4"],
    "kim": ["real_extra/Wav2Lip-GFPGAN/kim_7s_raw.mp4"],
    "may": ["aniportrait/pose_ref_video.mp4"],
    "m030": ["real_extra/EAMM/crop_M030_sad_3_001.mp4", "real_extra/spectre/M030_level_3_angry_016.mp4"],
    "interview": ["real_extra/lip-reading-deeplearning/sample_video.mp4"],
    "retalking_man1": ["video-retalking/face_1.mp4"], "retalking_man2": ["video-retalking/face_2.mp4"],
    "retalking_woman5": ["video-retalking/face_5.mp4"], "selfie": ["real_extra/headGAN/driving.mp4"],
    **{f"liveportrait_{name}": [f"liveportrait/{name}.mp4"] for name in ("d6", "d10", "d11", "d12", "d20")},
    **{f"lrs2_{name}": [f"real_extra/deep_avsr/{name}.mp4"] for name in ("00001", "00004", "00008", "00009", "00022", "00024")},
    **{f"mead_{name.split('_')[0]}": [f"real_extra/spectre/{name}.mp4"] for name in (
        "M003_level_1_disgusted_015", "M026_level_3_disgusted_018", "W023_level_2_surprised_010",
        "W036_level_3_happy_007", "W040_level_3_happy_029")},
}
LANGUAGES = {"minimates": "zh"}
UNKNOWN_LANGUAGE = ("liveportrait", "retalking", "vox_", "selfie")


def build_raw(raw: Path) -> int:
    """data/raw/real/<speaker>/<file> links and a metadata.csv with the known languages; returns the link count."""
    rows, count = ["file,speaker,language"], 0
    for stale in (path for path in raw.glob("*/*") if path.is_symlink()):  # links of an earlier speaker map
        stale.unlink()
    for folder in (path for path in raw.glob("*") if path.is_dir() and not any(path.iterdir())):
        folder.rmdir()
    pcavs = {f"vox_{p.stem}": [f"pcavs/{p.name}"] for p in sorted((SHARED / "pcavs").glob("*.mp4"))}
    for speaker, sources in {**SPEAKERS, **pcavs}.items():
        for source in sources:
            path = SHARED / source
            if not path.exists():
                continue
            name = f"{path.stem}_{hashlib.md5(source.encode()).hexdigest()[:4]}{path.suffix}"
            link = raw / speaker / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(path)
            language = LANGUAGES.get(speaker, "" if speaker.startswith(UNKNOWN_LANGUAGE) else "en")
            rows.append(f"{speaker}/{name},{speaker},{language}")
            count += 1
    (raw / "metadata.csv").write_text("\n".join(rows) + "\n")
    return count


VARIANTS = {"mel": ("configs/real_mel.yaml", []), "tiny.en": ("configs/real.yaml", ["model.encoder_options.pretrained=tiny.en"]),
            "base": ("configs/real.yaml", ["model.encoder_options.pretrained=base"])}


def summarise(run_dir: Path, record: dict) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return dict(encoder=metrics["encoder"], seconds_per_notebook={k: v["seconds"] for k, v in record["notebooks"].items()},
                model=metrics["model"], model_unscaled=metrics.get("model_unscaled"), articulation=metrics.get("articulation"),
                baselines=metrics["baselines"], failures=metrics["failures"], n_clips=metrics["n_clips"],
                lve_ratio_model_to_neutral=metrics["lve_ratio_model_to_neutral"],
                lve_ratio_model_to_mean_offset=metrics["lve_ratio_model_to_mean_offset"],
                per_speaker={s: dict(lve=b["model"]["lve"], mean_offset_lve=b["baselines"]["mean_offset"]["lve"],
                                     neutral_lve=b["baselines"]["neutral"]["lve"], mouth_corr=b["model"]["mouth_corr"],
                                     motion_ratio=b["model"]["motion_ratio"], closure_error=b["model"]["closure_error"],
                                     peak_opening_ratio=b["model"]["peak_opening_ratio"], n_clips=b["model"]["n_clips"])
                             for s, b in metrics["per_speaker"].items()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--split-by", nargs="+", default=["clip", "speaker"], choices=["clip", "speaker"])
    parser.add_argument("-p", "--param", action="append", default=[])
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: this benchmark needs the shared real footage")
    from a2m_lib import rundir, runner

    raw = REPO / "data" / "raw" / "real"
    print(f"{build_raw(raw)} real videos linked under {raw}", flush=True)
    base = REPO / "runs" / "real"
    started = time.time()
    record = {"notebooks": {}}
    for stage in ("01", "02", "03"):  # once: every variant trains on these QA decisions and neutrals
        record["notebooks"].update(runner.run(REPO / "configs" / "real.yaml", base, args.param, only=stage)["notebooks"])
    path = REPO / "benchmarks" / "real_footage_results.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result = result if "splits" in result else {"splits": {}}  # results written before the speaker split: replaced
    result["seconds_shared_stages"] = {k: v["seconds"] for k, v in record["notebooks"].items()}
    for split_by in args.split_by:
        variants = result["splits"].setdefault(split_by, {})
        for name in args.variants:
            config, params = VARIANTS[name]
            run_dir = REPO / "runs" / f"real-{split_by}-{name}"
            shutil.rmtree(run_dir, ignore_errors=True)
            rundir.branch(base, run_dir)
            variant_record = runner.run(REPO / config, run_dir, params + args.param + [f"data.split_by={split_by}"],
                                        stage_from="04")
            variants[name] = summarise(run_dir, variant_record)
            path.write_text(json.dumps(result, indent=2))
    result["seconds_total"] = round(time.time() - started)
    path.write_text(json.dumps(result, indent=2))
    for split_by, variants in result["splits"].items():
        print(f"split by {split_by}")
        print(f"{'variant':10} {'train s':>8} {'LVE':>7} {'x neutral':>10} {'x mean off':>11} {'corr':>6} {'motion':>7} "
              f"{'closure':>8} {'peak':>6} {'lag':>6}")
        for name, row in variants.items():
            model = row["model"]
            print(f"{name:10} {row['seconds_per_notebook']['04_train']:8.0f} {model['lve']:7.3f} "
                  f"{row['lve_ratio_model_to_neutral']:10.2f} {row['lve_ratio_model_to_mean_offset']:11.2f} "
                  f"{model['mouth_corr']:6.2f} {model['motion_ratio']:7.2f} {model['closure_error']:8.3f} "
                  f"{model['peak_opening_ratio']:6.2f} {model['lip_lag_frames']:+6.2f}")


if __name__ == "__main__":
    main()
