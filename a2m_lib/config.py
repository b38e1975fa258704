"""The one typed configuration of a run: dataclasses loaded from YAML, with dotted overrides.

    cfg = load_config("configs/demo.yaml", ["train.lr=1e-4", "data.raw=/videos"])
    cfg = run_config("runs/demo")      # what every stage of a run reads: runs/demo/config.yaml

The hand-off: a run's config is resolved once, when the run starts (`a2m run` with its overrides, or a notebook
opened by hand in a run folder that has none yet), and written to the run folder (a2m_lib.rundir.config). Every
stage, the notebooks, `a2m train` under torchrun and evaluation, reads that file; nothing parses the original
YAML and its overrides again.

Unknown keys and values of the wrong type raise ConfigError naming the key and the fix;
nothing is silently ignored, and every key is read by some stage (a test checks).

Paths: a relative config file is looked for in the working folder, then in the project root. Relative
paths inside the config (fields made with `path_field`: data folders, MediaPipe files, a local encoder folder, a
neutral .npz) resolve against the project root (a2m_lib.files.project_path), so `a2m run` from the
checkout and a notebook opened in JupyterLab from notebooks/ read the same files.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from . import files, rundir
from .files import PROJECT_ROOT, project_path


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' is {value!r}; expected {expected}")


def path_field(default: str, rule: str = "always") -> Any:
    """A field holding a path: relative values resolve against the project root ("if_exists": only when
    that path exists, for values that may also be a hub id)."""
    return field(default=default, metadata={"path": rule})


@dataclass
class DataConfig:
    raw: str = path_field("data/raw/demo")  # folder of videos, optionally <speaker>/<file>
    processed: str = path_field("data/processed/demo")  # the clip store written by extraction
    fps: float = 30.0  # video frames per second of the mesh sequences
    sample_rate: int = 16000  # audio Hz fed to the encoder
    val_fraction: float = 0.1
    test_fraction: float = 0.15
    split_by: str = "clip"  # clip: held-out clips of every speaker | speaker: held-out speakers
    train_minutes: float = 0.0  # > 0: each speaker trains on at most this much footage; held-out clips unchanged

    def __post_init__(self):
        _check(self.split_by in ("clip", "speaker"), "data.split_by", self.split_by, "clip or speaker")


@dataclass
class ExtractConfig:
    extractor: str = "facemesh"  # facemesh (legacy FaceMesh, ships in the wheel) | tasks (needs task_file)
    task_file: str = path_field("")  # tasks: path to face_landmarker_v2_with_blendshapes.task (user-supplied)
    canonical_model: str = path_field("")  # optional: MediaPipe canonical_face_model.obj -> pose-free meshes in its cm
    refine_landmarks: bool = True  # 478 points (iris included); the first 468 are AniPortrait's
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    max_side_px: int = 1280  # frames larger than this are downscaled before FaceMesh
    max_faces: int = 2  # faces tracked; with two, the one that speaks is kept (a2m_lib.faces), the other recorded
    max_gap_frames: int = 5  # face-detection gaps up to this long are interpolated; longer gaps end a clip
    segment_min_seconds: float = 3.0  # long videos are cut into clips of these lengths, at speech pauses
    segment_max_seconds: float = 6.0
    workers: int = 0  # processes, each kept to its share of the CPUs; 0 = one per CPU. Results do not depend on it


@dataclass
class QAConfig:
    frame_tolerance: int = 1  # allowed |mesh frames - ceil(audio_seconds * fps)|
    max_offset_frames: int = 3  # allowed |audio/video offset| (AniPortrait: 3)
    min_frames: int = 10
    max_face_missing_frac: float = 0.05
    correct_offset: bool = False  # keep a confidently out-of-sync clip, its audio shifted by the measured offset
    min_offset_confidence: float = 0.05  # an offset estimate is decided on when its peak stands this far above
    # the best rival lag (correlation units; see qa.py); below it the clip is `uncertain`
    use_uncertain: bool = False  # train (and evaluate, pick neutrals) on clips whose offset is unsure
    align_in_tolerance: bool = True  # a confidently measured offset within max_offset_frames is corrected too


@dataclass
class NeutralConfig:
    neutral: str = path_field("auto")  # auto | "<clip_id>:<frame>" | path/to/neutral.npz | mean-closed
    top_k: int = 12  # candidates shown in the ranked table


# The audio encoders (a2m_lib.encoders.ENCODERS, one class each); a new encoder adds its name here.
ENCODER_KINDS = ("mel", "scratch", "wav2vec2", "whisper")
# Keys renamed since a release, for a clear message when an old config or saved model uses them.
RENAMED = {"model.mel_hidden": "model.conv_hidden", "model.mel_layers": "model.conv_layers",
           "model.mel_kernel": "model.conv_kernel"}


@dataclass
class ModelConfig:
    encoder: str = "wav2vec2"  # mel | scratch | wav2vec2 | whisper (a2m_lib.encoders; the README says which when)
    # the encoder's weights: wav2vec2: hub id or local folder (default facebook/wav2vec2-base-960h); whisper:
    # tiny.en | base (installed with a2m), a faster-whisper or transformers folder, or a hub id (default tiny.en)
    pretrained: str = path_field("", "if_exists")
    freeze_feature_encoder: bool = True  # wav2vec2/scratch: AniPortrait freezes the CNN (its output is then cached)
    only_last_features: bool = True  # wav2vec2/scratch: last hidden state (AniPortrait's inference config); False: mean of all
    whisper_layers: str = "weighted"  # whisper: weighted (a learned mix of every layer's state) | last
    finetune_layers: int = 0  # whisper: the top layers trained with the head (0: the encoder is frozen)
    latent_dim: int = 512
    n_vertices: int = 468
    speaker_embedding: bool = False  # a learned vector per training speaker added to the latent (FaceFormer's style)
    speaker_normalisation: bool = False  # outputs = speaker's mean offset + speaker's spread x head (see model.py)
    # Sizes of the "scratch" encoder (a small Wav2Vec2 trained from random weights, for offline runs).
    scratch_hidden: int = 128
    scratch_layers: int = 2
    scratch_conv_channels: int = 64
    mel_bands: int = 80  # mel: librosa log-mel bands at the video frame rate
    # The temporal convolution head of the mel and whisper encoders.
    conv_hidden: int = 256
    conv_layers: int = 4  # residual dilated convolutions, dilation 1, 2, 4, ...
    conv_kernel: int = 5  # receptive field: 1 + (kernel - 1) * (2^layers - 1) frames
    dropout: float = 0.0  # convolution head and latent dropout

    def __post_init__(self):
        hint = (f"{', '.join(ENCODER_KINDS)} (a hub id or folder goes in model.pretrained)"
                if "/" in self.encoder else ", ".join(ENCODER_KINDS))
        _check(self.encoder in ENCODER_KINDS, "model.encoder", self.encoder, hint)
        _check(self.whisper_layers in ("weighted", "last"), "model.whisper_layers", self.whisper_layers, "weighted or last")
        _check(self.finetune_layers >= 0, "model.finetune_layers", self.finetune_layers, "a whole number >= 0")


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine (to 0 at the last step), after warmup_steps of linear warm-up
    warmup_steps: int = 0
    weight_decay: float = 0.0
    whole_clip_fraction: float = 0.5  # share of samples that are whole clips; the rest are sub-clips
    min_subclip_frames: int = 10
    reference: str = "neutral"  # neutral: targets mesh - neutral | random_frame: mesh - a random frame of the speaker
    velocity_weight: float = 0.0  # + weight x L1 of frame-to-frame differences
    lip_weight: float = 0.0  # + weight x L1 on the lip vertices
    silence_weight: float = 0.0  # + weight x predicted motion in silent frames (stillness)
    augment: bool = False  # training-time noise, tilt and a masked band on cached frame features (made for log-mel)
    stretch: float = 0.0  # tempo augmentation: each sample resampled in time by a factor exp(U(-stretch, stretch))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | bf16 | fp32
    compile: bool = False  # torch.compile the model
    num_workers: int = 0  # DataLoader worker processes
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default
    cache_features: bool = True  # frozen features (frozen CNN, mel) computed once per clip and kept in the store
    validate_every: int = 1  # epochs between validation passes (the last epoch is always validated)
    checkpoint_every: int = 0  # optimiser steps between checkpoints (0: at the end of every epoch only)
    collapse_ratio: float = 0.3  # warn when predicted motion std on validation < this x the truth's
    processes: int = 1  # notebook 04: > 1 launches `torchrun --nproc_per_node N a2m train` (DDP)
    resume: bool = True  # continue an interrupted run (same training config and split); False: start afresh

    def __post_init__(self):
        _check(self.reference in ("neutral", "random_frame"), "train.reference", self.reference, "neutral or random_frame")
        _check(self.precision in ("auto", "bf16", "fp32"), "train.precision", self.precision, "auto, bf16 or fp32")
        _check(self.lr_schedule in ("constant", "cosine"), "train.lr_schedule", self.lr_schedule, "constant or cosine")
        for key in ("velocity_weight", "lip_weight", "silence_weight", "weight_decay", "collapse_ratio", "stretch"):
            _check(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "a number >= 0")
        _check(0 <= self.whole_clip_fraction <= 1, "train.whole_clip_fraction", self.whole_clip_fraction, "0 to 1")
        _check(self.min_subclip_frames >= 1 and self.processes >= 1, "train.min_subclip_frames/processes",
               (self.min_subclip_frames, self.processes), "at least 1")


@dataclass
class EvaluateConfig:
    split: str = "test"  # test | val | train: the clips of splits.csv to evaluate on
    checkpoint: str = "best"  # best | last
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    neutral: NeutralConfig = field(default_factory=NeutralConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, kind: type, key: str) -> Any:
    """Check one leaf value against its type; ints are accepted where floats are expected."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(
            f"config key '{key}' expects {kind.__name__}, got {value!r} ({type(value).__name__}); "
            f"fix the value in the YAML file or the -p {key}=... override"
        )
    return value


def _resolve_path(value: str, rule: str) -> str:
    """A relative path field -> absolute under the project root. Keywords (a neutral's "auto", "mean-closed" or
    "<clip_id>:<frame>") stay as they are, and so does weights' name that is not a local folder (tiny.en, a hub id)."""
    if not value or Path(value).is_absolute() or value in ("auto", "mean-closed"):
        return value
    if ":" in value and not value.endswith(".npz"):
        return value
    resolved = project_path(value)
    return str(resolved) if rule == "always" or resolved.exists() else value


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names and dotted in RENAMED:
            raise ConfigError(f"config key '{dotted}' is now '{RENAMED[dotted]}'; rename it in the YAML file or override")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{dotted}'{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{dotted}' is a section; give it a mapping, not {value!r}")
            kwargs[key] = _build(hint_type, value, dotted + ".")
        else:
            kwargs[key] = _coerce(value, hint_type, dotted)
            rule = next(f for f in dataclasses.fields(cls) if f.name == key).metadata.get("path")
            if rule:
                kwargs[key] = _resolve_path(kwargs[key], rule)
    built = cls(**kwargs)
    for item in dataclasses.fields(cls):  # defaults are relative paths too
        if item.metadata.get("path") and item.name not in kwargs:
            setattr(built, item.name, _resolve_path(getattr(built, item.name), item.metadata["path"]))
    return built


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """`["train.lr=1e-4"]` or `{"train.lr": 1e-4}` -> {"train.lr": 0.0001}. Values are parsed as YAML."""
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.lr=1e-4")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text) if text else ""
        # YAML reads 1e-4 as a string (it wants 1.0e-4); numbers written either way are accepted.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else value
            except ValueError:
                pass
        parsed[key.strip()] = value
    return parsed


def load_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] | None = None) -> Config:
    """Defaults <- YAML file <- overrides, checked key by key."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file() and not path.is_absolute() and project_path(path).is_file():
            path = project_path(path)  # e.g. configs/demo.yaml from a kernel running in notebooks/
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass one of {PROJECT_ROOT / 'configs'}/*.yaml")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        tree = loaded
    for key, value in parse_overrides(overrides).items():
        _set_dotted(tree, key, value)
    return _build(Config, tree, "")


def write_run_config(cfg: Config, run_dir: str | Path) -> Path:
    """Write the run's resolved config (the hand-off every stage reads)."""
    return files.write_text(rundir.config(project_path(run_dir)), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def run_config(run_dir: str | Path, start_from: str | Path | None = None,
               overrides: Iterable[str] | Mapping[str, Any] | None = None) -> Config:
    """The run's config: run_dir/config.yaml. A run folder without one starts here: `start_from` with `overrides`
    is resolved and written there first (a notebook opened by hand before `a2m run`)."""
    path = rundir.config(project_path(run_dir))
    if path.exists():
        return load_config(path)
    if start_from is None:
        raise ConfigError(f"{path} does not exist: start the run with `a2m run --config CONFIG --run-dir {run_dir}`, "
                          f"or give the config it starts from")
    cfg = load_config(start_from, overrides)
    write_run_config(cfg, run_dir)
    return cfg


def config_from_dict(tree: Mapping[str, Any]) -> Config:
    """Rebuild a Config saved with `Config.to_dict()` (run.json, checkpoints)."""
    return _build(Config, tree, "")
