"""a2m_lib.config: typed keys, overrides, errors that name the fix, every key read, paths against the project root."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from a2m_lib import config, files, losses
from a2m_lib.config import ConfigError, ConfigRenamed, NeutralChoice, config_from_dict, load_config, parse_overrides
from tests.conftest import REPO


def test_demo_and_reference_configs_load(cfg):
    reference = load_config("configs/aniportrait.yaml")
    options = reference.model.encoder_options
    assert reference.model.encoder == "wav2vec2" and options["pretrained"] == "facebook/wav2vec2-base-960h"
    assert options["only_last_features"] and reference.model.n_vertices * 3 == 1404
    assert reference.data.fps == 30 and reference.model.latent_dim == 512 and reference.model.n_vertices == 468
    assert 0 < reference.train.whole_clip_fraction < 1
    assert reference.train.min_subclip_frames == 10
    assert cfg.model.encoder == "scratch" and cfg.train.device == "auto"


def test_overrides_are_typed_and_applied():
    cfg = load_config("configs/demo.yaml", ["train.lr=1e-4", "data.raw=/videos", "train.epochs=3", "qa.max_offset_frames=2"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.data.raw == "/videos" and cfg.train.epochs == 3 and cfg.qa.max_offset_frames == 2
    assert parse_overrides({"train.lr": 0.5}) == {"train.lr": 0.5}


def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'.*train.lr"):
        load_config("configs/demo.yaml", ["train.lrr=1e-4"])
    with pytest.raises(ConfigError, match="unknown config key 'nonsense'"):
        load_config(None, {"nonsense": 1})


def test_bad_value_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="train.epochs.*expects int"):
        load_config("configs/demo.yaml", ["train.epochs=many"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("configs/demo.yaml", ["train.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/missing.yaml")


def test_config_round_trips_through_a_dict(cfg):
    assert config_from_dict(cfg.to_dict()) == cfg


def test_old_configs_and_saved_models_still_load_and_name_the_new_keys(tmp_path):
    old = tmp_path / "old.yaml"  # a real.yaml as it was written before model.encoder_options and model.reference
    old.write_text("model:\n  encoder: whisper\n  pretrained: base\n  whisper_layers: last\n  mel_hidden: 64\n"
                   "  conv_layers: 2\n  scratch_hidden: 16\ntrain:\n  reference: random_frame\n")
    with pytest.warns(ConfigRenamed) as caught:
        cfg = load_config(old)
    said = " ".join(str(w.message) for w in caught)
    for moved in ("model.pretrained -> model.encoder_options.pretrained", "model.whisper_layers -> model.encoder_options.layers",
                  "model.conv_layers -> model.encoder_options.conv_layers", "train.reference -> model.reference"):
        assert moved in said
    assert "model.mel_hidden, model.scratch_hidden are not options" in said  # a mel and a scratch knob: not whisper's
    assert cfg.model.reference == "random_frame" and cfg.model.encoder_options["layers"] == "last"
    assert cfg.model.encoder_options["pretrained"] == "base" and cfg.model.encoder_options["conv_layers"] == 2
    mel = load_config(None, {"model.encoder": "mel", "model.mel_hidden": 64})  # renamed twice: mel_hidden, conv_hidden
    assert mel.model.encoder_options["conv_hidden"] == 64
    with pytest.raises(ConfigError, match="model.encoder_options.layers.*weighted or last"):
        load_config(None, {"model.encoder": "whisper", "model.whisper_layers": "all"})
    with pytest.raises(ConfigError, match="bands.*which the whisper encoder does not take.*model.encoder_options=\\{\\}"):
        load_config("configs/real_mel.yaml", {"model.encoder": "whisper"})  # another encoder's options stay behind
    assert load_config("configs/real_mel.yaml", {"model.encoder": "whisper", "model.encoder_options": {}}).model.encoder == "whisper"


def test_the_neutral_choice_is_parsed_once_and_checked_at_load():
    assert NeutralChoice.parse("auto").kind == "auto" and NeutralChoice.parse(" mean-closed ").kind == "mean-closed"
    frame = NeutralChoice.parse("spk0__clip:7:12")  # the last colon splits: clip ids may hold colons
    assert (frame.kind, frame.clip_id, frame.frame) == ("frame", "spk0__clip:7", 12) and str(frame) == "spk0__clip:7:12"
    assert NeutralChoice.parse("runs/x/neutral/spk0.npz").kind == "file" and NeutralChoice.picked("c", 3) == frame.__class__("frame", "c", 3)
    for bad in ("automatic", "clip:", "clip:x", ":4"):
        with pytest.raises(ConfigError, match="neutral.neutral"):
            load_config(None, {"neutral.neutral": bad})
    assert Path(load_config(None, {"neutral.neutral": "saved/spk0.npz"}).neutral.neutral).is_absolute()
    assert load_config(None, {"neutral.neutral": "c:3"}).neutral.neutral == "c:3"


# Where a stage reads a section under another name: the section's own config object (train_cfg, tcfg, ...).
ALIASES = {"data": ["data_cfg"], "extract": ["extract_cfg"], "qa": ["qa_cfg"], "model": ["model_cfg", "model.cfg", "self.cfg"],
           "train": ["tcfg", "train_cfg"]}


def test_every_config_key_is_read_somewhere():
    """Each key is read from its own section: cfg.<section>.<key>, or an object that is that section (ALIASES), or, for
    the loss weights, losses.WEIGHTS (which total_loss reads by name). A read of another section's key of the same
    name does not count (neutral.neutral is not neutral.top_k's section read as neutral)."""
    sources = "\n".join(p.read_text() for p in [*(REPO / "a2m_lib").rglob("*.py"), *(REPO / "notebooks").glob("*.ipynb")]
                        if p.name != "config.py")
    by_name = set(losses.WEIGHTS.values()) - {None}
    for section, kind in typing.get_type_hints(config.Config).items():
        if dataclasses.is_dataclass(kind):
            readers = "|".join(re.escape(name) for name in [f"cfg.{section}", *ALIASES.get(section, [])])
            for key in dataclasses.fields(kind):
                if section == "train" and key.name in by_name:
                    continue
                assert re.search(rf"(?<![\w.])(?:\w+\.)?(?:{readers})\.{key.name}\b", sources), \
                    f"config key {section}.{key.name} is read nowhere"
    assert by_name <= {f.name for f in dataclasses.fields(config.TrainConfig)}  # a weight renamed in one place only


def test_every_encoder_option_is_read_by_its_encoder():
    from a2m_lib import encoders

    for kind, cls in encoders.REGISTRY.items():
        module = Path(__import__(cls.__module__, fromlist=["x"]).__file__).read_text()
        for option in dataclasses.fields(cls.Options):
            assert re.search(rf"options\.{option.name}\b", module), f"{kind}'s option {option.name} is read nowhere"


def test_relative_config_paths_resolve_against_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # e.g. a kernel started in notebooks/
    cfg = config.load_config("configs/demo.yaml")
    assert Path(cfg.data.processed) == files.PROJECT_ROOT / "data" / "processed" / "demo"
    assert cfg.model.encoder == "scratch" and cfg.neutral.neutral == "auto"
    hub = config.load_config("configs/aniportrait.yaml")
    assert hub.model.encoder_options["pretrained"] == "facebook/wav2vec2-base-960h"  # a hub id stays a hub id
    assert config.load_config(None, {"data.raw": str(tmp_path)}).data.raw == str(tmp_path)
