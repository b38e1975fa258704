"""The shared foundations: layering, regions, config keys, QA decisions per run, native log, safe model files."""
import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pandas as pd
import pytest
import torch

from a2m_lib import config, files, model, neutral, qa, regions, rundir, runner, train, workers

REPO = Path(__file__).resolve().parents[1]
STAGES = {"extract", "qa", "neutral", "train", "evaluate"}


def _relative_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
    return found


def test_stages_depend_on_shared_modules_not_on_each_other():
    for stage in STAGES:
        imported = _relative_imports(REPO / "a2m_lib" / f"{stage}.py")
        assert not imported & (STAGES - {stage}), f"{stage}.py imports {imported & STAGES}"
    # Front ends may call the stages: the command line, and the notebooks' pictures and picker.
    front_ends = {"cli", "plots", "picker"}
    shared = [path for path in (REPO / "a2m_lib").rglob("*.py") if path.stem not in STAGES | front_ends]
    assert len(shared) > 20
    for path in shared:  # (a2m_lib/encoders/*'s level-1 imports stay inside that package)
        assert not _relative_imports(path) & STAGES or path.parent.name == "encoders", path.name


def test_computing_modules_import_without_matplotlib_ipywidgets_or_mediapipe():
    code = ("import sys\n"
            "for name in ('matplotlib', 'ipywidgets', 'mediapipe'): sys.modules[name] = None\n"
            "import a2m_lib.qa, a2m_lib.neutral, a2m_lib.train, a2m_lib.evaluate, a2m_lib.metrics, a2m_lib.regions\n"
            "import a2m_lib.mesh, a2m_lib.render, a2m_lib.rundir, a2m_lib.copies, a2m_lib.audio_frames\n")
    blocked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert blocked.returncode == 0, blocked.stderr[-2000:]


def test_regions_are_mediapipes_own_sets():
    import mediapipe as mp

    face_mesh = mp.solutions.face_mesh

    def indices(connections):
        return sorted({i for edge in connections for i in edge})

    assert regions.LIPS.tolist() == indices(face_mesh.FACEMESH_LIPS)
    assert regions.LEFT_EYE.tolist() == indices(face_mesh.FACEMESH_LEFT_EYE)
    assert regions.RIGHT_EYE.tolist() == indices(face_mesh.FACEMESH_RIGHT_EYE)
    assert set(regions.INNER_LIPS) < set(regions.LIPS) and {13, 14, 78, 308} <= set(regions.INNER_LIPS)
    assert set(regions.EYES) < set(regions.UPPER_FACE) and not set(regions.LIPS) & set(regions.UPPER_FACE)


def test_every_config_key_is_read_somewhere():
    sources = "\n".join(p.read_text() for p in [*(REPO / "a2m_lib").rglob("*.py"), *(REPO / "notebooks").glob("*.ipynb")]
                        if p.name != "config.py")
    for section, kind in typing.get_type_hints(config.Config).items():
        if dataclasses.is_dataclass(kind):
            for key in dataclasses.fields(kind):
                # read from a config object: cfg.train.lr, tcfg.lr, data_cfg.fps, self.cfg.encoder (not any `.name`)
                assert re.search(rf"cfg\.(?:{section}\.)?{key.name}\b", sources), \
                    f"config key {section}.{key.name} is read nowhere"


def test_relative_config_paths_resolve_against_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # e.g. a kernel started in notebooks/
    cfg = config.load_config("configs/demo.yaml")
    assert Path(cfg.data.processed) == files.PROJECT_ROOT / "data" / "processed" / "demo"
    assert cfg.model.encoder == "scratch" and cfg.neutral.neutral == "auto"
    hub = config.load_config("configs/aniportrait.yaml")
    assert hub.model.pretrained == "facebook/wav2vec2-base-960h"  # a hub id stays a hub id
    assert config.load_config(None, {"data.raw": str(tmp_path)}).data.raw == str(tmp_path)


def test_one_write_then_rename_helper_leaves_no_torn_file(tmp_path):
    target = tmp_path / "table.csv"
    files.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and not list(tmp_path.glob("*.part*"))
    hand_written = [f"{p.name}:{n}" for p in (REPO / "a2m_lib").glob("*.py") if p.name != "files.py"
                    for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\.replace\((path|target)", line)]
    assert not hand_written, hand_written


def test_two_runs_with_other_qa_settings_keep_their_own_decisions(faulty_store_for_runs, tmp_path, cfg):
    out = faulty_store_for_runs
    strict = config.load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(out), "qa.max_offset_frames": 3})
    lenient = config.load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(out), "qa.max_offset_frames": 8})
    first = qa.check_store(out, strict.qa, strict.data.sample_rate, run_dir=tmp_path / "strict", progress=False)
    second = qa.check_store(out, lenient.qa, lenient.data.sample_rate, run_dir=tmp_path / "lenient", progress=False)
    assert first.measured_clips > 0 and second.measured_clips == 0  # measurements come from the store's cache
    assert not (out / "qa.csv").exists()
    strict_set, lenient_set = set(rundir.accepted_clips(tmp_path / "strict").clip_id), set(rundir.accepted_clips(tmp_path / "lenient").clip_id)
    assert strict_set < lenient_set  # the 6-frame offset clips pass only with the lenient threshold
    trained_on = {}
    for name, run_cfg in (("strict", strict), ("lenient", lenient)):
        run_dir = tmp_path / name
        run_cfg = dataclasses.replace(run_cfg, train=dataclasses.replace(run_cfg.train, epochs=1),
                                      model=dataclasses.replace(run_cfg.model, scratch_hidden=32, latent_dim=16))
        neutral.resolve(out, rundir.accepted_clips(run_dir), "auto", run_dir)
        train.train(run_cfg, run_dir, progress=False)
        trained_on[name] = set(pd.read_csv(run_dir / "splits.csv").clip_id)
        assert runner.data_hashes(out, run_dir)["qa_table_sha256"] == files.sha256(run_dir / "qa.csv")
    assert trained_on["strict"] == strict_set and trained_on["lenient"] == lenient_set
    assert rundir.accepted_clips(tmp_path / "strict").clip_id.tolist() == sorted(strict_set)  # untouched by the other run


@pytest.fixture(scope="module")
def faulty_store_for_runs(tmp_path_factory, synthetic_raw, cfg):
    """Four clean clips plus two whose audio is 6 frames late."""
    from a2m_lib import extract, synth

    raw = tmp_path_factory.mktemp("two_runs_raw")
    for clip in sorted((synthetic_raw / "spk0").glob("*.mp4"))[:4]:
        (raw / "spk0").mkdir(exist_ok=True)
        (raw / "spk0" / clip.name).symlink_to(clip)
    synth.synth_dataset(raw / "late", 1, 2, (4.0, 5.0), seed=11, faults=synth.Faults(audio_offset_frames=6), progress=False)
    out = tmp_path_factory.mktemp("two_runs_store")
    extract.extract_store(raw, out, cfg.data, cfg.extract, progress=False)
    return out


def test_native_log_chatter_is_dropped_and_real_lines_reach_logging(tmp_path, caplog):
    with workers.native_stderr_to(tmp_path / "native.log") as log_path:
        os.write(2, b"W0000 00:00:1 123 inference_feedback_manager.cc:114] Feedback manager requires a model\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E0000 00:00:1 123 calculator_graph.cc:887] something real broke\n")
        print("python's own stderr still shows", file=sys.stderr)
    with caplog.at_level("WARNING", logger="a2m"):
        kept = workers.forward_native_log(log_path)
    assert kept == ["E0000 00:00:1 123 calculator_graph.cc:887] something real broke"]
    assert "something real broke" in caplog.text and "XNNPACK" not in caplog.text
    assert not log_path.exists()


# ------------------------------------------------------------------ model files never run code (issue 14)

class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _tiny_model() -> model.Audio2Mesh:
    torch.manual_seed(0)
    return model.Audio2Mesh(config.ModelConfig(encoder="scratch", scratch_hidden=32, scratch_layers=1,
                                               scratch_conv_channels=16, latent_dim=16))


def test_shared_model_is_safetensors_and_json(tmp_path):
    from safetensors.torch import load_file

    tiny = _tiny_model()
    tiny.save_pretrained(tmp_path / "shared")
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["config.json", "model.safetensors"]
    weights = load_file(tmp_path / "shared" / "model.safetensors")  # outside a2m: no code, no a2m import needed
    described = json.loads((tmp_path / "shared" / "config.json").read_text())
    assert described["model_config"]["latent_dim"] == 16 and "mesh units" in described["units"]
    assert torch.equal(weights["out_fn.weight"], tiny.state_dict()["out_fn.weight"])
    loaded = model.load_model(tmp_path / "shared")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny.state_dict().values()))


def test_a_crafted_checkpoint_is_refused_by_every_loader_and_runs_nothing(tmp_path, processed, qa_run, accepted):
    marker = tmp_path / "pwned"
    tiny = _tiny_model()
    crafted = dict(tiny.describe(), model=tiny.state_dict(), payload=_RunsCode(marker))
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        torch.save(crafted, run_dir / "checkpoints" / name)
    (tmp_path / "shared").mkdir()
    torch.save(crafted, tmp_path / "shared" / "model.pt")  # a pickled model where a shared model should be

    with pytest.raises(model.UnsafeModelFileError, match=r"refused to load .*best\.pt.*could run code"):
        model.load_model(run_dir / "checkpoints" / "best.pt")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        model.load_model(tmp_path / "shared")
    # evaluation
    from a2m_lib import evaluate

    cfg = config.load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(processed)})
    shutil.copy(qa_run / "qa.csv", run_dir / "qa.csv")
    neutral.resolve(processed, accepted, "auto", run_dir)
    with pytest.raises(model.UnsafeModelFileError):
        evaluate.evaluate(cfg, run_dir, progress=False)
    # resuming training
    with pytest.raises(model.UnsafeModelFileError, match="last.pt"):
        train.train(dataclasses.replace(cfg, model=tiny.cfg), run_dir, progress=False)
    # a2m predict (--run and --checkpoint) and the AniPortrait export
    from a2m_lib import predict

    with pytest.raises(model.UnsafeModelFileError):
        predict.prepare(run_dir, None, None, "spk0", None)
    with pytest.raises(model.UnsafeModelFileError):
        predict.prepare(None, run_dir / "checkpoints" / "last.pt", run_dir / "neutral" / "spk0.npz", None, None)
    with pytest.raises(model.UnsafeModelFileError):
        predict.export_aniportrait(run_dir, tmp_path / "export")
    result = subprocess.run([sys.executable, "-m", "a2m_lib.cli", "predict", str(REPO / "README.md"), "--run", str(run_dir),
                             "--out", str(tmp_path / "x.npz")], capture_output=True, text=True)
    assert result.returncode != 0 and "refused to load" in result.stderr
    assert not marker.exists()
    assert not subprocess.run(["grep", "-rn", "weights_only=False", str(REPO / "a2m_lib")], capture_output=True).stdout
