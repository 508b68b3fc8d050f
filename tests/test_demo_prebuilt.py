"""The vision towers shipped for the demo: what `python -m qponder.demo.prebuilt` keeps is what the demo installs,
bit for bit; a damaged or ill-fitting file is refused; and the demo's default seeds have one."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

import qponder.demo.prebuilt as prebuilt
from qponder.demo.prebuilt import export_tower, find_prebuilt, install_tower, read_manifest, sha256
from qponder.demo.runner import DemoSettings, build_base
from qponder.demo.tiny_model import build_tiny_model
from qponder.demo.vision_proxy import VisionProxySettings
from qponder.errors import QponderError

TINY = DemoSettings(model_size="tiny", seed=1, vision_pretrain_samples=32, vision_pretrain_epochs=1, progress=False)


def _split(state: dict) -> tuple[dict, dict]:
    return ({k: v for k, v in state.items() if "visual." in k}, {k: v for k, v in state.items() if "visual." not in k})


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny demo base pretrained here (seed 1, 32 views), and its tower kept in a towers folder of its own."""
    root = tmp_path_factory.mktemp("made")
    build_base(root / "model", dataclasses.replace(TINY, vision_prebuilt=False))
    entry = export_tower(root / "model", "qwen2_5_vl", "tiny", root / "towers")
    return root, entry


def test_a_kept_tower_is_installed_bit_for_bit_in_place_of_pretraining(made, tmp_path, monkeypatch, capsys):
    towers = tmp_path / "towers"
    shutil.copytree(made[0] / "towers", towers)
    entry = made[1]
    assert entry["file"] == "qwen2_5_vl-tiny-seed1-32x1.safetensors" and entry["proxy"]["samples"] == 32
    assert read_manifest(towers) == [entry]
    monkeypatch.setattr(prebuilt, "TOWERS", towers)
    proxy = VisionProxySettings(samples=32, epochs=1, seed=1)
    assert find_prebuilt("qwen2_5_vl", "tiny", proxy) == entry
    for other in (dataclasses.replace(proxy, seed=0), dataclasses.replace(proxy, samples=64),
                  dataclasses.replace(proxy, learning_rate=2e-3)):
        assert find_prebuilt("qwen2_5_vl", "tiny", other) is None
    assert find_prebuilt("qwen2_5_vl", "small", proxy) is None

    build_base(tmp_path / "installed", TINY)                                             # finds it, installs it
    assert "the one shipped for these settings (qwen2_5_vl-tiny-seed1-32x1.safetensors" in capsys.readouterr().out
    made_vis, made_rest = _split(load_file(str(made[0] / "model" / "model.safetensors")))
    inst_vis, inst_rest = _split(load_file(str(tmp_path / "installed" / "model.safetensors")))
    assert _equal(made_vis, inst_vis) and _equal(made_rest, inst_rest)  # the same model as pretraining made
    meta = json.loads((tmp_path / "installed" / "qponder_tiny.json").read_text())
    assert meta["vision_pretrain"]["prebuilt"] == {"file": entry["file"], "sha256": entry["sha256"]}
    assert meta["vision_pretrain"]["settings"]["samples"] == 32 and "heldout_r_global" in meta["vision_pretrain"]

    assert export_tower(made[0] / "model", "qwen2_5_vl", "tiny", towers) == entry       # kept again: replaced
    assert read_manifest(towers) == [entry]


def test_a_damaged_or_ill_fitting_tower_is_refused(made, tmp_path):
    towers, entry = tmp_path / "towers", made[1]
    shutil.copytree(made[0] / "towers", towers)
    shutil.copytree(made[0] / "model", tmp_path / "made")
    small = build_tiny_model(tmp_path / "small", size="small", seed=1)
    before = sha256(small / "model.safetensors")
    with pytest.raises(QponderError, match="does not fit the vision tower"):
        install_tower(small, entry, towers)
    assert sha256(small / "model.safetensors") == before                               # nothing written
    with open(towers / entry["file"], "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(QponderError, match="sha256 differs"):
        install_tower(tmp_path / "made", entry, towers)
    (towers / entry["file"]).unlink()
    with pytest.raises(QponderError, match="missing"):
        install_tower(tmp_path / "made", entry, towers)
    (towers / "towers.json").write_text("[1, 2]")
    with pytest.raises(QponderError, match="not a tower manifest"):
        read_manifest(towers)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_demo_defaults_have_a_shipped_tower_that_fits(tmp_path, seed):
    """`qponder demo` with its default settings (seeds 0-2) installs a shipped tower: present, intact, made with
    those settings on that seed's training photographs, and fitting today's small model."""
    d = DemoSettings(seed=seed)
    proxy = VisionProxySettings(samples=d.vision_pretrain_samples, epochs=d.vision_pretrain_epochs, seed=seed)
    entry = find_prebuilt(d.family, d.model_size, proxy)
    assert entry is not None, f"no shipped tower for seed {seed}: python -m qponder.demo.prebuilt --seeds {seed}"
    report = install_tower(build_tiny_model(tmp_path / "m", family=d.family, size=d.model_size, seed=seed), entry)
    assert report["n_references"] == 10 and report["loss_last"] < report["loss_first"]
    assert all(s.startswith("demo photo ") for s in report["sources"])
