"""The config schema: layering, type checks, errors naming the dotted key, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config, from_dict, load_config, save_config, to_dict

CONFIGS = sorted((Path(__file__).parents[3] / "configs").glob("*.yaml"))


def test_defaults_yaml_and_overrides_layer(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.5}\ntrain: {epochs: 7}\n")
    cfg = load_config(path, ["optim.lr=3e-4", "data.shards=/some/dir", "model.modality=text", "train.seed=3"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.train.epochs == 7
    assert cfg.data.shards == "/some/dir" and cfg.model.modality == "text" and cfg.train.seed == 3
    assert cfg.train.batch_size == Config().train.batch_size


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lrr=1", "optim.lrr"),
        ("train.epochs=two", "train.epochs"),
        ("train.batch_size=1.5", "train.batch_size"),
        ("log.progress=maybe", "log.progress"),
        ("model.modality=audio", "model.modality"),
        ("backend.name=horovod", "backend.name"),
        ("train.epochs=0", "train.epochs"),
        ("data.chunk_samples=0", "data.chunk_samples"),
        ("nosuch.key=1", "nosuch"),
    ],
)
def test_bad_values_name_the_dotted_key(override, key):
    with pytest.raises(MsaDistError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  text:\n    nmae: bert\n")
    with pytest.raises(MsaDistError, match=r"model\.text\.nmae"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(MsaDistError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(MsaDistError, match="not valid YAML"):
        load_config(bad)


def test_roundtrip_through_yaml(tmp_path):
    cfg = load_config(None, ["optim.betas=[0.8,0.9]", "model.head.hidden=99"])
    save_config(cfg, tmp_path / "c.yaml")
    again = from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert to_dict(again) == to_dict(cfg) and again.optim.betas == (0.8, 0.9)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_against_the_schema(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
