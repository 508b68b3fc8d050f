"""Typed configs: YAML recipes, dotted overrides, unknown keys named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from qponder.config import load_config, parse_overrides, save_config
from qponder.errors import QponderError


@dataclass
class Lora:
    r: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj"])


@dataclass
class Cfg:
    model: str = "tiny"
    lr: float = 1e-4
    steps: int = 10
    bf16: bool = False
    mode: Literal["full", "lora"] = "full"
    lora: Lora = field(default_factory=Lora)
    out: Optional[str] = None


def test_defaults_recipe_and_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: /ckpt\nlr: 2.0e-5\nlora:\n  r: 16\n")
    cfg = load_config(Cfg, p, ["steps=3", "lora.targets=[q_proj, v_proj]", "bf16=true", "mode=lora"])
    assert cfg == Cfg(model="/ckpt", lr=2e-5, steps=3, bf16=True, mode="lora",
                      lora=Lora(r=16, targets=["q_proj", "v_proj"]))
    assert load_config(Cfg) == Cfg()


def test_roundtrip(tmp_path):
    cfg = Cfg(model="m", lora=Lora(r=2))
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Cfg, tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("yaml_text, message", [
    ("modle: x\n", "unknown config key 'modle'"),
    ("lora:\n  rank: 4\n", "unknown config key 'lora.rank'"),
    ("steps: many\n", "config key 'steps': expected an integer"),
    ("lr: fast\n", "config key 'lr': expected a number"),
    ("mode: half\n", "config key 'mode': 'half' is not one of"),
    ("lora: 3\n", "config key 'lora': expected a mapping"),
    ("model: null\n", "config key 'model': null is not allowed"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("a: [1\n", "invalid YAML"),
])
def test_bad_recipes_name_the_key(tmp_path, yaml_text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(QponderError, match=message.replace("[", r"\[")):
        load_config(Cfg, p)


def test_bad_overrides_and_missing_file(tmp_path):
    with pytest.raises(QponderError, match="expected KEY=VALUE"):
        parse_overrides(["steps"])
    with pytest.raises(QponderError, match="unknown config key 'lora.x'"):
        load_config(Cfg, None, ["lora.x=1"])
    with pytest.raises(QponderError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")


def test_cli_flag_values_are_not_reparsed_as_yaml(tmp_path):
    from qponder.config import cli_overrides

    over = cli_overrides(["steps=3", "lora.r=4"], {"model": "2024_01", "out": tmp_path / "0755", "bf16": True,
                                                   "lr": None, "steps": 5})
    cfg = load_config(Cfg, None, over)
    assert cfg.model == "2024_01" and cfg.out == str(tmp_path / "0755") and cfg.bf16 is True
    assert cfg.steps == 5 and cfg.lora.r == 4 and cfg.lr == Cfg().lr  # flags win over --set; None = not given


def test_a_mapping_field_rejects_a_scalar(tmp_path):
    @dataclass
    class WithParams:
        params: dict = field(default_factory=dict)

    with pytest.raises(QponderError, match="config key 'params': expected a mapping"):
        load_config(WithParams, None, ["params=5"])
    assert load_config(WithParams, None, ["params={tau: 0.5}"]).params == {"tau": 0.5}
