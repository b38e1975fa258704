"""Audio2Mesh, laid out as AniPortrait's `Audio2MeshModel`, so that its weights map onto theirs by name:

    audio_encoder   an a2m_lib.encoders.AudioEncoder (a transformers Wav2Vec2Model for wav2vec2/scratch, as
                    AniPortrait's; or the mel or Whisper encoder)
    in_fn           Linear(hidden, latent)
    out_fn          Linear(latent, V*3), zero-initialised: an untrained model predicts the reference face

Per clip, the encoder's frame-level input ("frame features") is computed once (encoder.frame_features: a
frozen CNN's output, log-mel frames, or Whisper's hidden states, at the clip's video frames, ceil(seconds x
fps)). Sub-clips are slices of those frames, so frozen frame features can be cached per clip without changing
what the model computes. Then, for a padded batch:

    features (B, T, C) -> encoder.encode (padding masked)                                 (B, T, hidden)
    -> in_fn (+ speaker vector) (+ reference embedding) -> out_fn                        (B, T, V, 3)

The outputs are offsets from the reference: the speaker's neutral mesh, or, with a dynamic reference
(model.reference = random_frame), a frame of the speaker that the model also receives.

    model = Audio2Mesh(cfg.model, speakers=["spk0", "spk1"])
    offsets = model.predict(audio, n_frames, speaker="spk0")   # (samples,) 16 kHz -> (n_frames, V, 3)
    model.save_pretrained("runs/x/model")                      # model.safetensors + config.json
    model = load_model("runs/x/model")                         # ... or a checkpoint, runs/x/checkpoints/best.pt

Loading never runs code. A shared model is safetensors weights plus a JSON config; a training
checkpoint is read with `torch.load(weights_only=True)`, which unpickles only tensors and plain values.
Anything else is refused with UnsafeModelFileError, naming the file. Outside a2m:
`safetensors.torch.load_file("model.safetensors")` and `json.load(open("config.json"))`.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn
from . import files
from .config import ModelConfig, config_from_dict
from .encoders import AudioEncoder, build_encoder, rebuild_encoder

WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"
MESH_UNITS = "mesh units (~cm): pose-free MediaPipe meshes, outer eye corners 9.0 apart (a2m_lib.mesh)"


class UnsafeModelFileError(ValueError):
    """A model file that could only be loaded by running code from it (arbitrary unpickling)."""


class Audio2Mesh(nn.Module):
    def __init__(self, cfg: ModelConfig, speakers: list[str] | None = None, audio_encoder: nn.Module | None = None):
        super().__init__()
        self.cfg, self.speakers = cfg, list(speakers or [])
        self.audio_encoder: AudioEncoder = audio_encoder if audio_encoder is not None else build_encoder(cfg)
        n_outputs = cfg.n_vertices * 3
        self.in_fn = nn.Linear(self.hidden_size, cfg.latent_dim)
        self.speaker_embedding = nn.Embedding(len(self.speakers), cfg.latent_dim) if cfg.speaker_embedding else None
        if self.speaker_embedding is not None:
            if not self.speakers:
                raise ValueError("model.speaker_embedding needs the list of training speakers")
            nn.init.normal_(self.speaker_embedding.weight, std=0.02)
        # the dynamic reference enters as a linear embedding of its (V*3) offsets from the speaker's mean face
        self.reference_fn = nn.Linear(n_outputs, cfg.latent_dim) if cfg.reference != "neutral" else None
        self.out_fn = nn.Linear(cfg.latent_dim, n_outputs)
        nn.init.zeros_(self.out_fn.weight)  # an untrained model predicts the reference: the baseline to beat
        nn.init.zeros_(self.out_fn.bias)
        if cfg.speaker_normalisation:
            # per training speaker (and a last row for any other speaker: their average), the mean offset and its
            # spread: outputs are mean + spread x out_fn(...), so every speaker's motion is learnt on one scale
            # and an untrained model predicts each speaker's mean offset. Set by training (set_speaker_statistics).
            rows = len(self.speakers) + 1
            self.register_buffer("offset_mean", torch.zeros(rows, cfg.n_vertices, 3))
            self.register_buffer("offset_scale", torch.ones(rows))

    # ------------------------------------------------------------------ what the encoder sees (a2m_lib.encoders)
    @property
    def hidden_size(self) -> int:
        return self.audio_encoder.hidden_size

    @property
    def frozen_features(self) -> bool:
        """Frame features that no training changes: computed once per clip and cached."""
        return self.audio_encoder.frozen

    def features_id(self) -> str:
        """Names what frame_features computes (frozen weights and settings): the feature cache's key."""
        return self.audio_encoder.features_id()

    def normalise(self, audio: np.ndarray) -> np.ndarray:
        """A recording's samples as the encoder wants them (its own normalisation: AudioEncoder.normalise)."""
        return self.audio_encoder.normalise(audio)

    def frame_features(self, audio: torch.Tensor, n_frames: int, sample_rate: int = 16000, fps: float = 30.0) -> torch.Tensor:
        """One clip's normalised audio (samples,) -> its encoder input at the video frame rate, (n_frames, C)."""
        return self.audio_encoder.frame_features(audio, sample_rate, n_frames, fps)

    # ------------------------------------------------------------------ the network
    def forward(self, features: torch.Tensor, mask: torch.Tensor, speaker_ids: torch.Tensor | None = None,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, T, C) padded, mask (B, T) True on real frames -> offsets (B, T, V, 3)."""
        hidden = self.audio_encoder.encode(features, mask)                                 # (B, T, hidden)
        latent = self.in_fn(hidden)                                                        # (B, T, latent)
        if self.speaker_embedding is not None:
            latent = latent + self.speaker_embedding(speaker_ids)[:, None]
        if self.reference_fn is not None:
            latent = latent + self.reference_fn(reference.flatten(1))[:, None]
        offsets = self.out_fn(latent).view(*features.shape[:2], self.cfg.n_vertices, 3)    # (B, T, V, 3)
        if self.cfg.speaker_normalisation:
            rows = speaker_ids if speaker_ids is not None else torch.full((len(offsets),), len(self.speakers), device=offsets.device)
            offsets = self.offset_mean[rows][:, None] + self.offset_scale[rows][:, None, None, None] * offsets
        return offsets

    def set_speaker_statistics(self, mean: dict[str, np.ndarray], scale: dict[str, float]) -> None:
        """Per-speaker mean offset (V, 3) and spread (mesh units), from the training clips."""
        for row, speaker in enumerate(self.speakers):
            self.offset_mean[row] = torch.as_tensor(mean[speaker], dtype=torch.float32)
            self.offset_scale[row] = float(scale[speaker])
        self.offset_mean[-1] = self.offset_mean[:-1].mean(0)
        self.offset_scale[-1] = self.offset_scale[:-1].mean()

    # ------------------------------------------------------------------ inference
    def speaker_index(self, speaker: str | None) -> int:
        """The speaker's row; a speaker not in training gets the average row (not possible with an embedding)."""
        if speaker in self.speakers:
            return self.speakers.index(speaker)
        if self.speaker_embedding is not None:
            raise ValueError(f"unknown speaker {speaker!r}; this model knows {', '.join(self.speakers)} (--speaker)")
        return len(self.speakers) if self.cfg.speaker_normalisation else 0

    @torch.no_grad()
    def predict(self, audio: np.ndarray, n_frames: int, speaker: str | None = None, reference: np.ndarray | None = None,
                sample_rate: int = 16000, fps: float = 30.0, window_seconds: float = 20.0,
                overlap_seconds: float = 4.0, articulation: float = 1.0) -> np.ndarray:
        """Raw audio (samples,) -> offsets (n_frames, V, 3): the one inference path (evaluation, a2m predict).

        Audio longer than `window_seconds` is processed in windows that overlap by `overlap_seconds`, blended with
        linear cross-fades over the overlap, so memory stays flat over minutes of audio. Audio normalisation (the
        encoder's) uses the whole input, so a window sees what a single pass would. `reference`: for a dynamic-reference model,
        the (V, 3) reference frame's offsets from the speaker's neutral (zeros: the neutral itself). `articulation`:
        the gain on the movement around its mean (articulate; 1 = as trained).
        """
        device = next(self.parameters()).device
        normalised = self.normalise(audio)
        speaker_ids = torch.tensor([self.speaker_index(speaker)], device=device)
        ref = None
        if self.reference_fn is not None:
            ref = torch.zeros(1, self.cfg.n_vertices, 3, device=device) if reference is None else \
                torch.as_tensor(np.asarray(reference, np.float32), device=device)[None]
        whole = None  # features that depend on the whole recording are computed once, so windows see what one pass sees
        if self.audio_encoder.whole_recording:
            whole = self.frame_features(torch.from_numpy(normalised).to(device), n_frames, sample_rate, fps)

        def run(start: int, end: int) -> np.ndarray:                                                # (end - start, V, 3)
            if whole is not None:
                features = whole[start:end][None]                                                      # (1, T, C)
            else:
                piece = torch.from_numpy(window_audio(normalised, start, end, sample_rate, fps)).to(device)
                features = self.frame_features(piece, end - start, sample_rate, fps)[None]
            mask = torch.ones(1, end - start, dtype=torch.bool, device=device)
            return self(features.float(), mask, speaker_ids, ref)[0].float().cpu().numpy()

        return articulate(blend_windows(n_frames, fps, window_seconds, overlap_seconds, run), articulation)

    # ------------------------------------------------------------------ saving and loading
    def describe(self) -> dict:
        """The JSON config saved beside the weights: enough to rebuild this model offline."""
        return dict(format="a2m-audio2mesh", model_config=dataclasses.asdict(self.cfg),
                    encoder_config=self.audio_encoder.encoder_config(), encoder=self.audio_encoder.describe(),
                    encoder_record=self.audio_encoder.record(), speakers=self.speakers,
                    outputs="offsets from the reference mesh (the speaker's neutral, or the given frame), (T, V, 3)",
                    units=MESH_UNITS)

    @classmethod
    def from_state(cls, description: dict, weights: dict[str, torch.Tensor]) -> "Audio2Mesh":
        """Rebuild from describe() and a state dict: the one constructor behind every loader."""
        tree = {"model": dict(description["model_config"])}
        if "reference" in description and "reference" not in tree["model"]:  # saved outside the model's config before
            tree["train"] = {"reference": description["reference"]}
        cfg = config_from_dict(tree, "this saved model").model  # older key names still load, with a message
        encoder = rebuild_encoder(cfg, description["encoder_config"])
        model = cls(cfg, description.get("speakers"), audio_encoder=encoder)
        model.load_state_dict(weights)
        return model

    def save_pretrained(self, directory: str | Path) -> Path:
        """model.safetensors + config.json (each written atomically); mirrors from_pretrained."""
        directory = Path(directory)
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        with files.atomic_path(directory / WEIGHTS_NAME) as tmp:
            safetensors.torch.save_file(weights, str(tmp), metadata={"format": "pt"})
        files.write_json(directory / CONFIG_NAME, self.describe())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "Audio2Mesh":
        directory = Path(directory)
        weights_path, config_path = directory / WEIGHTS_NAME, directory / CONFIG_NAME
        if not weights_path.exists() or not config_path.exists():
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME} and {CONFIG_NAME}; save a model there with "
                                    f"save_pretrained (older pickled model.pt files are not read: they could run code)")
        weights = safetensors.torch.load_file(str(weights_path), device=str(map_location))
        return cls.from_state(json.loads(config_path.read_text()), weights)


def window_audio(normalised: np.ndarray, start: int, end: int, sample_rate: int, fps: float) -> np.ndarray:
    """The samples of frames [start, end), zero-padded where the audio ends early, and to the 400 samples a
    Wav2Vec2 CNN needs at least."""
    spf = sample_rate / fps
    first, last = int(round(start * spf)), int(round(end * spf))
    piece = np.zeros(max(last - first, 400), np.float32)
    available = normalised[first:last]
    piece[: len(available)] = available
    return piece


def blend_windows(n_frames: int, fps: float, window_seconds: float, overlap_seconds: float, run) -> np.ndarray:
    """Offsets (n_frames, V, 3) from `run(start, end)` over windows of `window_seconds` that overlap by
    `overlap_seconds`, blended with linear cross-fades over each overlap (one window when the audio is short). The
    windowing of the one inference path, whatever runs the network (torch here, onnxruntime in a2m_lib.onnx_model)."""
    window, overlap = int(round(window_seconds * fps)), int(round(overlap_seconds * fps))
    output, weight = None, np.zeros(n_frames, np.float32)
    starts = [0] if n_frames <= window else list(range(0, n_frames - overlap, window - overlap))
    for start in starts:
        end = min(start + window, n_frames)
        offsets = run(start, end)
        if output is None:
            output = np.zeros((n_frames, *offsets.shape[1:]), np.float32)
        ramp = np.ones(end - start, np.float32)
        if start > 0:
            ramp[:overlap] = np.linspace(0, 1, overlap + 2)[1:-1]
        if end < n_frames:
            ramp[-overlap:] = np.minimum(ramp[-overlap:], np.linspace(1, 0, overlap + 2)[1:-1])
        output[start:end] += offsets * ramp[:, None, None]
        weight[start:end] += ramp
    return output / weight[:, None, None]


@dataclass
class Articulation:
    """A run's gain on the predicted movement per speaker (articulate), and where it came from: fitted by evaluation
    on the validation clips (a2m_lib.evaluate.fit_articulation, saved as rundir.articulation) or set by the user."""

    gains: dict              # speaker -> gain
    default: float           # for a speaker without its own gain (one not in the validation clips, a new voice)
    source: str              # "fitted on N validation clips" | "set: evaluate.articulation=G"
    curve: dict | None = None  # gain -> validation LVE over every speaker (when fitted)

    def gain(self, speaker: str | None) -> float:
        return float(self.gains.get(speaker, self.default))

    @classmethod
    def read(cls, path: str | Path) -> "Articulation | None":
        path = Path(path)
        return cls(**json.loads(path.read_text())) if path.exists() else None


def articulate(sequence: np.ndarray, gain: float) -> np.ndarray:
    """The articulation knob: (T, V, 3) movement scaled by `gain` around its mean over time (1 = unchanged). The mean
    shape stays; what moves moves `gain` times as far (LiveSpeechPortraits' mouth gain, on every vertex)."""
    if gain == 1.0:
        return sequence
    mean = sequence.mean(axis=0, keepdims=True)
    return (mean + gain * (sequence - mean)).astype(sequence.dtype)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A training checkpoint (model, optimiser, progress, config) read without running any code from it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; run training (notebook 04) first")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).split("\n")[0]
        raise UnsafeModelFileError(
            f"refused to load {path}: it holds more than tensors and plain values, and unpickling it could run code "
            f"({reason}). a2m writes no such files; use a checkpoint written by a2m or a save_pretrained folder "
            f"(model.safetensors + config.json)") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Audio2Mesh:
    """A trained model, in eval mode on `device`, from a save_pretrained folder or a training checkpoint."""
    path = Path(path)
    if path.is_dir():
        model = Audio2Mesh.from_pretrained(path, map_location="cpu")
    else:
        state = load_checkpoint(path)
        model = Audio2Mesh.from_state(state, state["model"])
    return model.to(device).eval()


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} but CUDA is not available here; use device=auto or cpu "
                           f"(train.device / evaluate.device)")
    return torch.device(name)
