"""A trained model out of the workbench as one ONNX file, and a2m's predictions from it through onnxruntime.

    a2m export-onnx --run-dir runs/ID --out model.onnx          # export_onnx
    a2m predict AUDIO --onnx model.onnx --speaker S --out OUT.npz   # OnnxModel.predict: the same meshes as torch

The graph (opset ONNX_OPSET) runs the model from its audio input to meshes, for any number of frames:

    inputs   audio (1, samples) float32: the recording as the encoder wants it (metadata `normalisation`), with
             frame_times (T,) float32: each output frame's centre time, seconds (only its length T is read), when the
             encoder's feature step is in the graph (wav2vec2, hubert, scratch: their CNN); or
             features (1, T, C) float32: the encoder's frame features, when it is not (whisper: its frozen encoder's
             hidden states of every layer at the frames' centre times; mel: the standardised log-mel);
             speaker (1,) int64: a row of metadata `speakers` (with speaker normalisation, the last row is any other
             voice); articulation (1,) float32: the gain on the movement around its mean (1 = as trained; metadata
             `articulation` holds the run's fitted gains); reference (1, V, 3) float32, for a dynamic-reference model
    outputs  offsets (1, T, V, 3): from the speaker's neutral (mesh units, ~cm), and
             vertices (1, T, V, 3): offsets + the neutral of that row (metadata `speakers`; the last row's is their mean)

Whisper's feature step stays outside: it hears each recording in 30 s windows (8 s of audio each, every 4 s), which
a graph of fixed-size windows would have to repeat, and its frozen weights (75 MB for tiny.en) are already an ONNX
export away in other projects. a2m's onnxruntime path computes those features with a2m's Whisper encoder, and runs
everything trained through onnxruntime.

The file's metadata (metadata_props, JSON values) names the run, the encoder and its weights' SHA-256, the model's own
weights' SHA-256, fps, sample rate, speakers, the fitted articulation gains, the opset and the units.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import files, rundir
from .config import run_config

ONNX_OPSET = 18


def _graph(model, neutrals, sample_rate: int, fps: float):
    """The exported network: the model, its articulation knob and the neutrals, as one torch module."""
    import torch
    from torch import nn

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("neutrals", torch.as_tensor(neutrals, dtype=torch.float32))       # (rows, V, 3)

        def meshes(self, features, speaker, articulation, reference):                             # (1, T, C)
            mask = torch.ones(features.shape[:2], dtype=torch.bool)
            offsets = model(features.float(), mask, speaker, reference)                            # (1, T, V, 3)
            mean = offsets.mean(1, keepdim=True)
            offsets = mean + articulation.view(1, 1, 1, 1) * (offsets - mean)
            return offsets, self.neutrals[speaker][:, None] + offsets

    class FromAudio(Graph):  # the encoder's feature step in the graph: audio (1, S), frame_times (T,)
        def forward(self, audio, frame_times, speaker, articulation, reference=None):
            features = model.audio_encoder.frame_features(audio[0], sample_rate, frame_times.shape[0], fps)[None]
            return self.meshes(features, speaker, articulation, reference)

    class FromFeatures(Graph):  # the feature step outside: features (1, T, C)
        def forward(self, features, speaker, articulation, reference=None):
            return self.meshes(features, speaker, articulation, reference)

    return (FromAudio if model.audio_encoder.features_in_graph else FromFeatures)().eval()


def export_onnx(run_dir, out, checkpoint: str = "best") -> dict:
    """Write the run's model as OUT (an .onnx file): see the module docstring. Returns the metadata."""
    import onnx
    import torch

    from .encoders.base import state_sha256
    from .model import Articulation, load_model

    run_dir, out = files.project_path(run_dir), Path(out)
    cfg = run_config(run_dir)
    model = load_model(rundir.checkpoint(run_dir, checkpoint))
    saved = rundir.load_neutrals(run_dir)
    speakers = list(model.speakers)
    rows = [saved[s][: model.cfg.n_vertices] for s in speakers]
    rows.append(np.mean(rows, axis=0))  # the row of any other voice
    encoder = model.audio_encoder
    in_graph = encoder.features_in_graph
    n_frames, samples = 45, int(1.5 * cfg.data.sample_rate)
    frames = torch.export.Dim("frames", min=2, max=100_000)
    if in_graph:
        example = (torch.randn(1, samples), torch.zeros(n_frames))
        shapes = ({1: torch.export.Dim("samples", min=800, max=10**8)}, {0: frames})
        names = ["audio", "frame_times"]
    else:
        width = int(encoder.frame_features(torch.zeros(samples), cfg.data.sample_rate, n_frames, cfg.data.fps).shape[1])
        example, shapes, names = (torch.randn(1, n_frames, width),), ({1: frames},), ["features"]
    example += (torch.zeros(1, dtype=torch.long), torch.ones(1))
    shapes += (None, None)
    names += ["speaker", "articulation"]
    if model.reference_fn is not None:
        example += (torch.zeros(1, model.cfg.n_vertices, 3),)
        shapes += (None,)
        names.append("reference")
    graph = _graph(model, np.stack(rows), cfg.data.sample_rate, cfg.data.fps)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(graph, example, dynamic_shapes=shapes, input_names=names,
                                    output_names=["offsets", "vertices"], opset_version=ONNX_OPSET, dynamo=True,
                                    verbose=False)
    proto = program.model_proto
    fitted = Articulation.read(rundir.articulation(run_dir))
    if cfg.evaluate.articulation != "auto":  # the run set one gain for every voice
        fitted = Articulation({}, float(cfg.evaluate.articulation), f"set: evaluate.articulation={cfg.evaluate.articulation}")
    metadata = dict(
        format="a2m-onnx", run=str(run_dir), checkpoint=checkpoint, opset=ONNX_OPSET, fps=cfg.data.fps,
        sample_rate=cfg.data.sample_rate, speakers=speakers + (["(any other voice)"] if model.cfg.speaker_normalisation else []),
        encoder=encoder.record(), encoder_options=model.cfg.encoder_options, encoder_kind=model.cfg.encoder,
        features="in the graph (input audio)" if in_graph else "outside the graph (input features)",
        normalisation=encoder.normalisation, inputs=names, weights_sha256=state_sha256(model),
        articulation=dict(gains=fitted.gains, default=fitted.default, source=fitted.source) if fitted else None,
        reference=model.cfg.reference, n_vertices=model.cfg.n_vertices,
        units="mesh units (~cm): pose-free MediaPipe meshes, outer eye corners 9.0 apart")
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto)
    with files.atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return metadata


class OnnxModel:
    """An exported model run by onnxruntime, through the one inference path's windowing and articulation
    (model.blend_windows, model.articulate): what `a2m predict --onnx` uses."""

    def __init__(self, path, threads: int = 0):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # no busy-waiting between runs: torch computes the feature step in between (Whisper) on the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} does not exist; write one with a2m export-onnx --run-dir RUN --out {path}")
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.meta = {key: json.loads(value) for key, value in self.session.get_modelmeta().custom_metadata_map.items()}
        if self.meta.get("format") != "a2m-onnx":
            raise ValueError(f"{self.path} is not an a2m ONNX model (no a2m metadata); export one with a2m export-onnx")
        self.inputs = [item.name for item in self.session.get_inputs()]
        self.fps, self.sample_rate = float(self.meta["fps"]), int(self.meta["sample_rate"])
        self._encoder = None

    @property
    def speakers(self) -> list[str]:
        return [s for s in self.meta["speakers"] if s != "(any other voice)"]

    def row(self, speaker: str | None) -> int:
        """The speaker input's value: the speaker's row, or the last (any other voice) where the model has one."""
        if speaker in self.speakers:
            return self.speakers.index(speaker)
        if len(self.meta["speakers"]) > len(self.speakers):
            return len(self.speakers)
        raise ValueError(f"unknown speaker {speaker!r}; {self.path} knows {', '.join(self.speakers)} (--speaker)")

    def gain(self, speaker: str | None) -> float:
        fitted = self.meta.get("articulation")
        return float(fitted["gains"].get(speaker, fitted["default"])) if fitted else 1.0

    def encoder(self):
        """The encoder's own feature step and normalisation (a2m_lib.encoders), for what the graph does not hold."""
        if self._encoder is None:
            from .encoders import REGISTRY

            cls = REGISTRY[self.meta["encoder_kind"]]
            self._encoder = cls.build(cls.Options(**self.meta["encoder_options"]))
        return self._encoder

    def neutral(self, speaker: str | None) -> np.ndarray:
        """The (V, 3) mesh the graph adds the speaker's offsets to (its `vertices` output less its `offsets`)."""
        self.predict(np.zeros(self.sample_rate // 2, np.float32), int(self.fps // 2), speaker)
        return self._neutral

    def predict(self, audio: np.ndarray, n_frames: int, speaker: str | None = None, reference: np.ndarray | None = None,
                sample_rate: int | None = None, fps: float | None = None, window_seconds: float = 20.0,
                overlap_seconds: float = 4.0, articulation: float = 1.0) -> np.ndarray:
        """Raw audio (samples,) at the model's rate -> offsets (n_frames, V, 3), as Audio2Mesh.predict gives them."""
        import torch

        from .model import articulate, blend_windows, window_audio

        if (sample_rate or self.sample_rate) != self.sample_rate or (fps or self.fps) != self.fps:
            raise ValueError(f"{self.path} was exported for {self.sample_rate} Hz audio and {self.fps:g} fps; "
                             f"resample the audio (a2m predict does) and predict at its fps")
        encoder = self.encoder()
        normalised = encoder.normalise(audio)
        fixed = {"speaker": np.array([self.row(speaker)], np.int64), "articulation": np.ones(1, np.float32)}
        if "reference" in self.inputs:
            fixed["reference"] = (np.zeros((1, self.meta["n_vertices"], 3), np.float32) if reference is None
                                  else np.asarray(reference, np.float32)[None])
        whole = None
        if "features" in self.inputs and encoder.whole_recording:
            with torch.no_grad():
                whole = encoder.frame_features(torch.from_numpy(normalised), self.sample_rate, n_frames, self.fps).float().numpy()

        def run(start: int, end: int) -> np.ndarray:
            if "audio" in self.inputs:
                feed = {"audio": window_audio(normalised, start, end, self.sample_rate, self.fps)[None],
                        "frame_times": ((np.arange(start, end) + 0.5) / self.fps).astype(np.float32)}
            elif whole is not None:
                feed = {"features": whole[start:end][None]}
            else:
                piece = torch.from_numpy(window_audio(normalised, start, end, self.sample_rate, self.fps))
                with torch.no_grad():
                    feed = {"features": encoder.frame_features(piece, self.sample_rate, end - start, self.fps).float().numpy()[None]}
            offsets, vertices = self.session.run(["offsets", "vertices"], {**feed, **fixed})
            self._neutral = vertices[0, 0] - offsets[0, 0]
            return offsets[0]

        return articulate(blend_windows(n_frames, self.fps, window_seconds, overlap_seconds, run), articulation)
