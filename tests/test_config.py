"""a2m_lib.config: typed keys, overrides, errors that name the fix, every key read, paths against the project root."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from a2m_lib import config, files
from a2m_lib.config import ConfigError, config_from_dict, load_config, parse_overrides
from tests.conftest import REPO


def test_demo_and_reference_configs_load(cfg):
    reference = load_config("configs/aniportrait.yaml")
    assert reference.model.encoder == "wav2vec2" and reference.model.pretrained == "facebook/wav2vec2-base-960h"
    assert reference.model.only_last_features and reference.model.n_vertices * 3 == 1404
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


def test_a_renamed_key_names_its_new_name():
    with pytest.raises(ConfigError, match="'model.mel_hidden' is now 'model.conv_hidden'"):
        load_config(None, {"model.mel_hidden": 64})
    with pytest.raises(ConfigError, match="model.whisper_layers.*weighted or last"):
        load_config(None, {"model.whisper_layers": "all"})


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
