"""The GPU path against the CPU, side by side in one run, from a pack small enough to travel to a lent GPU machine.

    .venv/bin/python benchmarks/gpu.py --pack DIR [--clips 60]       # here: GRID s1 clips -> DIR (at most 40 MB)
    python3 benchmarks/gpu.py --from DIR [--devices cuda cpu] [--epochs 20] [--results benchmarks/gpu_results.json]

--pack writes what training and evaluation need and nothing else: for `--clips` GRID s1 clips of the grid_s1 base
run (notebooks 01-03 of configs/grid.yaml: benchmarks/footage_curve.py leaves runs/grid_s1-base), their cached Whisper
tiny.en features (float16, every layer, as the feature cache holds them), meshes (468 points, float16), audio (16-bit,
its QA shift applied), the QA decisions and the speaker's neutral, and pack.json (the config, the encoder's
architecture and the weights' SHA-256, the clip list, the sizes).

--from trains the GRID recipe (configs/grid.yaml; its own split of the pack's clips: 15% validation, 20% test) for
the same epochs on each device and scores the same held-out clips, at articulation gain 1. It needs torch,
transformers, numpy, pandas, PyYAML, safetensors, tqdm and tensorboard, and no Whisper weights: the pack's encoder
(PackedWhisper, below) is Whisper's class with its frozen features read from the pack. train.precision stays auto:
bf16 autocast on CUDA, fp32 on the CPU. Prints seconds per epoch (the median after the first, which holds the
warm-up) and the held-out metrics of each device, their ratios, and whether they agree within TOLERANCE.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "grid.yaml"
SPLIT = {"data.val_fraction": 0.15, "data.test_fraction": 0.2, "data.split_by": "clip"}
METRICS = ("lve", "mouth_corr", "motion_ratio", "closure_error", "peak_opening_ratio")
# bf16 autocast against fp32 takes different rounding from the first step on; the runs stay this close:
TOLERANCE = {"lve": ("relative", 0.03), "mouth_corr": ("absolute", 0.02), "motion_ratio": ("absolute", 0.05)}
MAX_PACK_MB = 40


# ----------------------------------------------------------------------------------- --pack (here, with the store)

def pack(out: Path, n_clips: int, base: Path, overrides: dict | None = None) -> dict:
    """`overrides`: on configs/grid.yaml, for a store other than GRID's (the tests pack their synthetic one)."""
    import pandas as pd
    import torch

    from a2m_lib import config, rundir, store
    from a2m_lib.model import Audio2Mesh

    overrides = dict(overrides or {})
    cfg = config.load_config(CONFIG, overrides)
    accepted = rundir.accepted_clips(base)
    order = sorted(accepted.clip_id, key=lambda c: hashlib.sha256(f"pack:{c}".encode()).hexdigest())[:n_clips]
    chosen = accepted.set_index("clip_id").loc[order].reset_index()
    model = Audio2Mesh(cfg.model, ["s1"])  # the real encoder: its features are what the pack carries
    shutil.rmtree(out, ignore_errors=True)
    (out / "clips").mkdir(parents=True)
    rows = []
    for row in chosen.itertuples():
        example = store.load_example(cfg.data.processed, row.clip_id, int(row.audio_shift_frames), cfg.data.sample_rate,
                                     cfg.model.n_vertices)
        audio16 = np.clip(np.round(example.audio * 32767), -32768, 32767).astype(np.int16)
        heard = model.normalise(audio16.astype(np.float32) / 32767)  # what --from restores, then hears
        with torch.no_grad():
            features = model.frame_features(torch.from_numpy(heard), len(example.mesh), cfg.data.sample_rate, example.fps)
        np.savez_compressed(out / "clips" / f"{row.clip_id}.npz", mesh=example.mesh.astype(np.float16), audio=audio16,
                            features=features.numpy().astype(np.float16), fps=example.fps, speaker=example.speaker)
        rows.append(dict(clip_id=row.clip_id, speaker=example.speaker, n_frames=len(example.mesh), status="pass",
                         use=True, audio_shift_frames=0, language=example.language))
    pd.DataFrame(rows).to_csv(out / "qa.csv", index=False)
    shutil.copytree(rundir.neutral_dir(base), out / "neutral")
    encoder = model.audio_encoder
    description = dict(clips=len(rows), config=str(CONFIG.relative_to(REPO)), overrides={**overrides, **SPLIT},
                       encoder_options=cfg.model.encoder_options, encoder_config=encoder.encoder_config(),
                       features_id=encoder.features_id(), describe=encoder.describe())
    (out / "pack.json").write_text(json.dumps(description, indent=1))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    if size > MAX_PACK_MB:
        raise SystemExit(f"the pack is {size:.1f} MB, over {MAX_PACK_MB} MB: give fewer --clips")
    description["megabytes"] = round(size, 2)
    (out / "pack.json").write_text(json.dumps(description, indent=1))
    return description


# ----------------------------------------------------------------------------------- --from (anywhere)

def packed_encoder(description: dict, features: dict):
    """PackedWhisper: Whisper's encoder class, built without its weights (the frozen part never runs: its output for
    the pack's audio is in the pack). One class, as any encoder is (a2m_lib.encoders)."""
    from a2m_lib.encoders.whisper import WhisperAudioEncoder

    class PackedWhisper(WhisperAudioEncoder):
        kind = "whisper_packed"

        @classmethod
        def build(cls, options):
            return cls.rebuild(options, description["encoder_config"])

        def frame_features(self, audio, sample_rate, n_frames, fps):
            import torch

            digest = hashlib.sha256(audio.detach().cpu().numpy().astype(np.float32).tobytes()).hexdigest()[:16]
            if digest not in features:
                raise KeyError("audio the pack holds no Whisper features for: PackedWhisper hears the pack's clips only")
            return torch.from_numpy(features[digest][:n_frames]).to(audio.device)

    return PackedWhisper


def unpack(pack_dir: Path, work: Path) -> tuple[Path, dict]:
    """The pack as a clip store (its feature cache filled) and a base run (QA decisions, neutral)."""
    import pandas as pd

    from a2m_lib import files, rundir, store
    from a2m_lib.encoders.whisper import WhisperAudioEncoder

    description = json.loads((pack_dir / "pack.json").read_text())
    processed, base = work / "store", work / "base"
    cache = processed / "features" / description["features_id"]
    cache.mkdir(parents=True)
    features = {}
    table = pd.read_csv(pack_dir / "qa.csv", keep_default_na=False)
    for row in table.itertuples():
        with np.load(pack_dir / "clips" / f"{row.clip_id}.npz") as clip:
            mesh, audio = clip["mesh"].astype(np.float32), clip["audio"].astype(np.float32) / 32767
            store.save_clip(processed, row.clip_id, dict(mesh=mesh, audio=audio),
                            dict(clip_id=row.clip_id, speaker=str(clip["speaker"]), fps=float(clip["fps"]), language=""))
            heard = WhisperAudioEncoder.normalise(None, audio)  # the encoder's normalisation: a function of the audio
            digest = hashlib.sha256(heard.tobytes()).hexdigest()[:16]
            features[digest] = clip["features"]
            np.save(cache / f"{row.clip_id}-{digest}-{len(mesh)}.npy", clip["features"])
    base.mkdir()
    shutil.copy(pack_dir / "qa.csv", rundir.qa_table(base))
    shutil.copytree(pack_dir / "neutral", rundir.neutral_dir(base))
    files.write_json(work / "features.json", {"clips": len(features)})
    description["features"] = features
    return processed, description


def held_out_metrics(run_dir: Path, cfg, device: str) -> dict:
    """The model's metrics on the run's test clips (articulation gain 1): Audio2Mesh.predict, metrics.py."""
    from a2m_lib import metrics, rundir, store
    from a2m_lib.model import load_model

    model = load_model(rundir.checkpoint(run_dir, "best"), device)
    splits = rundir.read_splits(run_dir)
    neutrals = rundir.load_neutrals(run_dir)
    rows = []
    for row in splits[splits.split == "test"].itertuples():
        example = store.load_example(cfg.data.processed, row.clip_id, 0, cfg.data.sample_rate, cfg.model.n_vertices)
        neutral = neutrals[row.speaker][: cfg.model.n_vertices]
        offsets = model.predict(example.audio, len(example.mesh), speaker=row.speaker, sample_rate=cfg.data.sample_rate,
                                fps=example.fps)
        valid = example.valid
        rows.append(metrics.clip_metrics((neutral + offsets)[valid], example.mesh[valid], neutral))
    return metrics.summarise(rows)


def one_device(device: str, processed: Path, base: Path, work: Path, epochs: int, overrides: dict) -> dict:
    import pandas as pd

    from a2m_lib import config, rundir, train

    run = rundir.branch(base, work / f"run-{device.replace(':', '')}")
    cfg = config.load_config(CONFIG, {**overrides, "model.encoder": "whisper_packed", "data.processed": str(processed),
                                      "train.epochs": epochs, "train.device": device, "evaluate.device": device})
    started = time.perf_counter()
    result = train.train(cfg, run, progress=False)
    seconds = time.perf_counter() - started
    history = pd.read_csv(rundir.train_log(run))
    summary = held_out_metrics(run, cfg, device)
    return dict(device=result.device, epochs=epochs, train_seconds=round(seconds, 2),
                first_epoch_seconds=round(float(history.seconds.iloc[0]), 3),
                seconds_per_epoch=round(float(history.seconds.iloc[1:].median()), 3),
                best_epoch=result.best_epoch, best_val_loss=round(result.best_val_loss, 5),
                train_clips=int((rundir.read_splits(run).split == "train").sum()),
                model={key: summary[key] for key in METRICS}, test_clips=summary["n_clips"])


def agreement(first: dict, second: dict) -> dict:
    verdicts = {}
    for key, (kind, bound) in TOLERANCE.items():
        a, b = first["model"][key], second["model"][key]
        difference = abs(a - b) / abs(b) if kind == "relative" else abs(a - b)
        verdicts[key] = dict(difference=round(difference, 4), bound=bound, kind=kind, within=bool(difference <= bound))
    return verdicts


def from_pack(pack_dir: Path, devices: list[str], epochs: int) -> dict:
    import torch

    from a2m_lib import encoders

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        processed, description = unpack(pack_dir, work)
        encoder = packed_encoder(description, description.pop("features"))
        assert encoders.REGISTRY[encoder.kind] is encoder
        results = dict(pack=str(pack_dir), clips=description["clips"], encoder=description["describe"],
                       torch=torch.__version__, devices={})
        if torch.cuda.is_available():
            results["gpu_name"] = torch.cuda.get_device_name()
        for device in devices:
            results["devices"][device] = one_device(device, processed, work / "base", work, epochs,
                                                    {k: v for k, v in description["overrides"].items() if k != "data.processed"})
            print(json.dumps(results["devices"][device]), flush=True)
    if len(devices) == 2:
        first, second = (results["devices"][d] for d in devices)
        results["speedup"] = round(second["seconds_per_epoch"] / first["seconds_per_epoch"], 2)
        results["agreement"] = agreement(first, second)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pack", type=Path, help="write the pack here (needs the grid_s1 store)")
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--base", type=Path, default=REPO / "runs" / "grid_s1-base")
    parser.add_argument("--from", dest="source", type=Path, help="train and evaluate from this pack")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cuda and cpu where CUDA is, else cpu")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "gpu_results.json")
    args = parser.parse_args()
    if args.pack:
        description = pack(args.pack, args.clips, args.base)
        print(f"{args.pack}: {description['clips']} clips, {description['megabytes']} MB")
    if args.source:
        import torch

        devices = args.devices or (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
        if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: --devices cpu times the CPU alone")
        results = from_pack(args.source, devices, args.epochs)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))
        print(f"| | {' | '.join(devices)} |\n|---|{'---|' * len(devices)}")
        for key in ("seconds_per_epoch", "first_epoch_seconds", "best_val_loss"):
            print(f"| {key} | {' | '.join(str(results['devices'][d][key]) for d in devices)} |")
        for key in METRICS:
            values = [f"{results['devices'][d]['model'][key]:.4f}" for d in devices]
            print(f"| held-out {key} | {' | '.join(values)} |")
        if "agreement" in results:
            print(f"time per epoch, {devices[1]} / {devices[0]}: {results['speedup']}x; agreement: "
                  + ", ".join(f"{k} {v['difference']} ({'within' if v['within'] else 'OUTSIDE'} {v['bound']})"
                              for k, v in results["agreement"].items()))


if __name__ == "__main__":
    main()
