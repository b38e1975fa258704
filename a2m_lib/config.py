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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from . import files, rundir
from .files import PROJECT_ROOT, project_path


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


class ConfigRenamed(UserWarning):
    """A config (a file, an override or a saved model's) uses a key that has moved; it still loads."""


def check(ok: bool, key: str, value: Any, expected: str) -> None:
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
        check(self.split_by in ("clip", "speaker"), "data.split_by", self.split_by, "clip or speaker")


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


@dataclass(frozen=True)
class NeutralChoice:
    """neutral.neutral, parsed once (a2m_lib.neutral.choose acts on it; the picker makes `frame` choices):

        auto                  the best-ranked frame per speaker (a frame picked by hand is kept)
        mean-closed           the mean of the speaker's best-ranked 5% of frames
        "<clip_id>:<frame>"   that frame, for the clip's speaker
        path/to/neutral.npz   a saved neutral (its speaker key says whose)
    """

    kind: str  # auto | mean-closed | frame | file
    clip_id: str = ""
    frame: int = -1
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> "NeutralChoice":
        text = str(text).strip()
        if text in ("auto", "mean-closed"):
            return cls(text)
        if text.endswith(".npz"):
            return cls("file", path=text)
        clip_id, colon, frame = text.rpartition(":")
        if colon and clip_id and frame.strip().isdigit():
            return cls("frame", clip_id=clip_id, frame=int(frame))
        raise ConfigError(f"config key 'neutral.neutral' is {text!r}; expected auto, mean-closed, '<clip_id>:<frame>' "
                          f"(a frame number) or the path of a neutral .npz")

    @classmethod
    def picked(cls, clip_id: str, frame: int) -> "NeutralChoice":
        """A frame chosen by hand in the picker."""
        return cls("frame", clip_id=clip_id, frame=int(frame))

    def __str__(self) -> str:
        return {"frame": f"{self.clip_id}:{self.frame}", "file": self.path}.get(self.kind, self.kind)


@dataclass
class NeutralConfig:
    neutral: str = path_field("auto", "neutral")  # a NeutralChoice: auto | "<clip_id>:<frame>" | path.npz | mean-closed
    top_k: int = 12  # candidates shown in the ranked table

    def __post_init__(self):
        NeutralChoice.parse(self.neutral)  # checked here; a2m_lib.neutral.choose parses it when it acts on it


# Keys that moved to another section; the old spelling still loads, with a ConfigRenamed warning naming the new key.
# (Old flat encoder keys, model.pretrained and the like, move into model.encoder_options: see _migrate.)
MOVED = {"train.reference": "model.reference"}


@dataclass
class ModelConfig:
    encoder: str = "wav2vec2"  # mel | scratch | wav2vec2 | whisper: a2m_lib.encoders (the README says which when)
    # the encoder's own settings, checked by its Options class (a2m_lib/encoders/<module>.py) and written out in full:
    # pretrained weights, layers, head sizes, ...
    encoder_options: dict = field(default_factory=dict)
    latent_dim: int = 512
    n_vertices: int = 468
    # what the predicted offsets are measured from: neutral (the speaker's neutral mesh) | random_frame (a frame of
    # the speaker, which the model also receives: a dynamic reference)
    reference: str = "neutral"
    speaker_embedding: bool = False  # a learned vector per training speaker added to the latent (FaceFormer's style)
    speaker_normalisation: bool = False  # outputs = speaker's mean offset + speaker's spread x head (see model.py)

    def __post_init__(self):
        from .encoders import REGISTRY  # imported when used: torch and transformers load with it

        kinds = ", ".join(sorted(REGISTRY))
        check(self.encoder in REGISTRY, "model.encoder", self.encoder,
              f"{kinds} (a hub id or folder goes in model.encoder_options.pretrained)" if "/" in self.encoder else kinds)
        check(isinstance(self.encoder_options, Mapping), "model.encoder_options", self.encoder_options,
              "a mapping of the encoder's options")
        known = {f.name for f in dataclasses.fields(REGISTRY[self.encoder].Options)}
        foreign = sorted(set(self.encoder_options) - known)
        if foreign and all(any(key in {f.name for f in dataclasses.fields(cls.Options)} for cls in REGISTRY.values())
                           for key in foreign):  # another encoder's options: model.encoder changed, its options did not
            raise ConfigError(f"model.encoder_options has {', '.join(foreign)}, which the {self.encoder} encoder does not "
                              f"take (its options: {', '.join(sorted(known))}); when you change model.encoder, give that "
                              f"encoder's options, or start from its defaults with -p model.encoder_options={{}}")
        options = _build(REGISTRY[self.encoder].Options, self.encoder_options, "model.encoder_options.")
        self.encoder_options = dataclasses.asdict(options)
        check(self.reference in ("neutral", "random_frame"), "model.reference", self.reference, "neutral or random_frame")


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
    # the loss terms (a2m_lib.losses says each one's meaning):
    velocity_weight: float = 0.0  # + weight x L1 of frame-to-frame differences
    lip_weight: float = 0.0  # + weight x L1 on the lip vertices
    lip_gap_weight: float = 0.0  # + weight x L1 on the upper-to-lower lip distances and the mouth's widths
    closure_weight: float = 0.0  # closure frames (the lowest 20% of the inner-lip gap) count 1 + this in the lip terms
    motion_std_weight: float = 0.0  # + weight x L1 between predicted and true std over time of each lip coordinate
    lip_ccc_weight: float = 0.0  # + weight x (1 - concordance correlation) of each lip distance over the sample
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
        check(self.precision in ("auto", "bf16", "fp32"), "train.precision", self.precision, "auto, bf16 or fp32")
        check(self.lr_schedule in ("constant", "cosine"), "train.lr_schedule", self.lr_schedule, "constant or cosine")
        for key in ("velocity_weight", "lip_weight", "lip_gap_weight", "closure_weight", "motion_std_weight",
                    "lip_ccc_weight", "silence_weight", "weight_decay", "collapse_ratio", "stretch"):
            check(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "a number >= 0")
        check(0 <= self.whole_clip_fraction <= 1, "train.whole_clip_fraction", self.whole_clip_fraction, "0 to 1")
        check(self.min_subclip_frames >= 1 and self.processes >= 1, "train.min_subclip_frames/processes",
               (self.min_subclip_frames, self.processes), "at least 1")


@dataclass
class EvaluateConfig:
    split: str = "test"  # test | val | train: the clips of splits.csv to evaluate on
    checkpoint: str = "best"  # best | last
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # the gain on the predicted movement around its mean (model.articulate): auto = per speaker, the gain with the
    # lowest LVE on the validation clips (written to the run: rundir.articulation) | a number, e.g. 1 (as trained)
    articulation: str = "auto"

    def __post_init__(self):
        check(self.articulation == "auto" or _positive_number(self.articulation), "evaluate.articulation",
              self.articulation, "auto or a gain > 0, e.g. 1.3")


def _positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


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
    """A relative path field -> absolute under the project root. rule: always | if_exists (weights' names that are
    not a local folder stay: tiny.en, a hub id) | neutral (only a NeutralChoice that is a file)."""
    if not value or Path(value).is_absolute():
        return value
    if rule == "neutral" and NeutralChoice.parse(value).kind != "file":
        return value
    resolved = project_path(value)
    return str(resolved) if rule in ("always", "neutral") or resolved.exists() else value


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
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


def _migrate(tree: dict, origin: str, saved: bool = False) -> dict:
    """A config tree written with older key names -> today's, with one ConfigRenamed warning naming the new keys.

    MOVED keys change section; old flat encoder keys (model.pretrained, model.whisper_layers, model.conv_hidden, ...)
    move into model.encoder_options under the encoder's own names (its class's former_options). Flat keys that belong
    to another encoder are dropped: saved models carried every encoder's knobs (said only for a config file)."""
    tree = {key: dict(value) if isinstance(value, Mapping) else value for key, value in tree.items()}
    renamed, ignored = [], []
    for old, new in MOVED.items():
        (section, key), (new_section, new_key) = old.split("."), new.split(".")
        if isinstance(tree.get(section), dict) and key in tree[section]:
            value = tree[section].pop(key)
            tree.setdefault(new_section, {}).setdefault(new_key, value)
            renamed.append(f"{old} -> {new}")
    model = tree.get("model")
    if isinstance(model, dict):
        from .encoders import REGISTRY  # imported when used: torch and transformers load with it

        own = {f.name for f in dataclasses.fields(ModelConfig)}
        encoder = REGISTRY.get(str(model.get("encoder", ModelConfig.encoder)))
        anyone = {name for cls in REGISTRY.values()
                  for name in [f.name for f in dataclasses.fields(cls.Options)] + list(cls.former_options)}
        options = dict(model.get("encoder_options") or {})
        for key in [k for k in model if k not in own]:
            names = {f.name for f in dataclasses.fields(encoder.Options)} if encoder else set()
            new = encoder.former_options.get(key, key) if encoder else key
            if new in names:
                options.setdefault(new, model.pop(key))
                renamed.append(f"model.{key} -> model.encoder_options.{new}")
            elif key in anyone:
                model.pop(key)
                ignored.append(f"model.{key}")
        if options:
            model["encoder_options"] = options
    if renamed:
        warnings.warn(f"older config keys in {origin}: it loads as before, but rename them: {', '.join(renamed)}",
                      ConfigRenamed, stacklevel=3)
    if ignored and not saved:
        warnings.warn(f"{origin}: {', '.join(ignored)} are not options of the model.encoder chosen there and are ignored",
                      ConfigRenamed, stacklevel=3)
    return tree


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
    return _build(Config, _migrate(tree, f"config {path}" if path is not None else "the overrides"), "")


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


def command_config(run_dir: str | Path, config_path: str | Path | None = None,
                   overrides: Iterable[str] | Mapping[str, Any] | None = None) -> Config:
    """The config of a command that acts on a run (a2m qa, train, evaluate, predict): the run's config.yaml. A run
    without one starts here, from --config and -p, and the result is written there; a run with one is read as it is,
    and --config or -p that would change it stop the command, naming the keys (nothing falls back to defaults)."""
    path = rundir.config(project_path(run_dir))
    if not path.exists() and config_path is None:
        raise ConfigError(f"{path} does not exist: give --config CONFIG (and any -p) to start the run {run_dir}, or "
                          f"start it with `a2m run --config CONFIG --run-dir {run_dir}`")
    if not path.exists():
        return run_config(run_dir, config_path, overrides)
    cfg = load_config(path)
    if config_path is not None or overrides:
        asked = load_config(config_path or path, overrides)
        changed = [key for key, value in flatten(asked.to_dict()).items() if flatten(cfg.to_dict()).get(key) != value]
        if changed:
            raise ConfigError(f"{path} holds this run's config, and --config / -p would change {', '.join(changed)}; a run "
                              f"keeps one config: edit {path} and re-run the stages it affects, or use another --run-dir")
    return cfg


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """A config's nested dict -> {"section.key": value} (encoder options too: model.encoder_options.layers)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_from_dict(tree: Mapping[str, Any], origin: str = "a saved config") -> Config:
    """Rebuild a Config saved with `Config.to_dict()` (run.json, checkpoints), older key names included."""
    return _build(Config, _migrate(dict(tree), origin, saved=True), "")
