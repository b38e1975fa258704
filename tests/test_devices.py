"""The GPU path, tested on the CPU: device selection, bf16 autocast, and checkpoints that move between devices."""
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from a2m_lib import rundir, train
from a2m_lib.config import load_config
from a2m_lib.model import load_checkpoint, load_model, resolve_device
from tests.conftest import SMALL_SCRATCH

REPO = Path(__file__).resolve().parents[1]
SMALL = {**SMALL_SCRATCH, "train.batch_size": 2, "train.num_threads": 1, "train.epochs": 1}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_it_names_the_setting():
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match=r"device=cuda:1 but CUDA is not available.*train.device / evaluate.device"):
        resolve_device("cuda:1")


def test_bf16_autocast_only_where_asked_or_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not train.uses_bf16(cpu, "auto") and train.uses_bf16(cuda, "auto")
    assert train.uses_bf16(cpu, "bf16") and not train.uses_bf16(cuda, "fp32")


@pytest.fixture(scope="module")
def bf16_run(processed, base_run, tmp_path_factory):
    """One epoch of the demo recipe (small) with bf16 autocast on the CPU, as `auto` would run it on a GPU."""
    run_dir = rundir.branch(base_run, tmp_path_factory.mktemp("bf16_run"))
    cfg = load_config(REPO / "configs" / "demo.yaml", {"data.processed": str(processed), **SMALL,
                                                       "train.precision": "bf16"})
    result = train.train(cfg, run_dir, progress=False)
    return cfg, run_dir, result


@pytest.mark.slow
def test_bf16_training_keeps_fp32_weights_and_a_finite_loss(bf16_run):
    _, run_dir, result = bf16_run
    assert np.isfinite(result.best_val_loss)
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    dtypes = {tensor.dtype for tensor in state["model"].values() if tensor.is_floating_point()}
    assert dtypes == {torch.float32}, dtypes


def _as_if_saved_on_cuda(source: Path, target: Path) -> None:
    """Rewrite a torch.save file so that every tensor's storage says it was on cuda:0, as a checkpoint written by
    GPU training does: torch records each storage's device as a string in the pickle and restores it there on load.
    torch.save pickles with protocol 2, where a string is the opcode X, a 4-byte length and the UTF-8 bytes."""
    cpu, cuda = b"X" + (3).to_bytes(4, "little") + b"cpu", b"X" + (6).to_bytes(4, "little") + b"cuda:0"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                assert cpu in data, "torch.save's format changed: no storage location found"
                data = data.replace(cpu, cuda)
            new.writestr(item, data)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the rewritten file would simply load on it")
def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu(bf16_run, tmp_path):
    _, run_dir, _ = bf16_run
    original = run_dir / "checkpoints" / "best.pt"
    on_gpu = tmp_path / "best_cuda.pt"
    _as_if_saved_on_cuda(original, on_gpu)
    with pytest.raises(RuntimeError, match="CUDA"):  # the rewrite is real: a plain torch.load wants the GPU
        torch.load(on_gpu, weights_only=True)
    moved, reference = load_model(on_gpu, "cpu"), load_model(original, "cpu")
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    speaker = reference.speakers[0]
    np.testing.assert_array_equal(moved.predict(audio, 30, speaker=speaker), reference.predict(audio, 30, speaker=speaker))
    resumed = load_checkpoint(on_gpu)  # what a resumed run reads: everything on the CPU first
    assert all(t.device.type == "cpu" for t in resumed["model"].values())


@pytest.mark.slow
def test_the_gpu_pack_travels_small_and_trains_where_whisper_is_not_installed(processed, base_run, tmp_path):
    """benchmarks/gpu.py --pack on the session's store (configs/grid.yaml's recipe at its frame rate), then --from on
    the CPU: the pack's encoder hears only the pack, and gives what Whisper gives for the pack's audio."""
    import json
    import runpy

    from a2m_lib import config, encoders
    from a2m_lib.model import Audio2Mesh

    gpu = runpy.run_path(str(REPO / "benchmarks" / "gpu.py"), run_name="gpu_benchmark")
    rundir_config = {"data.processed": str(processed), "data.fps": 30.0}
    described = gpu["pack"](tmp_path / "pack", 8, base_run, rundir_config)
    assert described["clips"] == 8 and described["megabytes"] < 40 / 60 * 8 + 1  # about 0.6 MB a clip
    assert json.loads((tmp_path / "pack" / "pack.json").read_text())["features_id"] == described["features_id"]
    results = gpu["from_pack"](tmp_path / "pack", ["cpu"], 2)
    row = results["devices"]["cpu"]
    assert row["epochs"] == 2 and row["train_clips"] >= 4 and row["test_clips"] >= 1
    assert all(np.isfinite(value) for value in row["model"].values()), row
    # PackedWhisper's features for a packed clip are the real encoder's for that audio
    real = Audio2Mesh(config.load_config(REPO / "configs" / "grid.yaml", rundir_config).model)
    with np.load(sorted((tmp_path / "pack" / "clips").glob("*.npz"))[0]) as clip:
        audio, packed = clip["audio"].astype(np.float32) / 32767, clip["features"]
    heard = torch.from_numpy(real.normalise(audio))
    np.testing.assert_array_equal(real.frame_features(heard, len(packed)).numpy(), packed)
    cls = encoders.REGISTRY["whisper_packed"]
    rebuilt = cls.build(cls.Options(**real.cfg.encoder_options))
    np.testing.assert_array_equal(rebuilt.frame_features(heard, 16000, len(packed), 30.0).numpy(), packed)
    assert rebuilt.features_id() == real.features_id()
