"""Proxy-pretrained vision towers shipped with qponder, so `qponder demo` starts where a real run starts: from a
pretrained vision tower, without spending most of its minutes making one.

A real run downloads its pretrained tower with the checkpoint; the demo may download nothing, so its stand-in
(``qponder.demo.vision_proxy``) used to be trained inside every `qponder demo` run: about 8 of its 25 minutes on a
slow 2-core machine at 6000 views, twice that at the 12000 views that make the student see well enough (README,
*Performance*). The towers of the demo's default seeds are made once, by

    python -m qponder.demo.prebuilt --seeds 0,1,2          # the demo's defaults; --samples / --epochs / --size

which runs exactly what the demo would (``qponder.demo.runner.build_base`` with pretraining) and keeps the vision
tower and merger (``towers/<family>-<size>-seed<S>-<views>x<epochs>.safetensors``, float32, unchanged) with their
pretraining report in ``towers/towers.json``. A demo whose settings match an entry (family, size, seed, every proxy
setting) installs it instead of pretraining; anything else pretrains as before, and ``--set vision_prebuilt=false``
always does. A file whose sha256 differs from the manifest's, or whose tensors do not fit the model, is refused.
Rebuild them after changing what the pretraining learns (``vision_proxy``'s views and targets, the small model's
initialisation): nothing here can tell that a tower was made by older code.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

from qponder.errors import QponderError

log = logging.getLogger(__name__)

TOWERS = Path(__file__).with_name("towers")
_VISUAL = "visual."  # the tower's key prefix inside a checkpoint ends with this ("model.visual." in transformers 5)


def proxy_key(settings) -> dict:
    """What of a ``VisionProxySettings`` decides the tower it makes (``progress`` does not)."""
    return {k: v for k, v in asdict(settings).items() if k != "progress"}


def _weights_file(model_dir: Path) -> Path:
    f = model_dir / "model.safetensors"
    if not f.is_file():
        raise QponderError(f"{model_dir}: no single model.safetensors (a sharded or .bin checkpoint is not a demo "
                           "model folder)")
    return f


def _split_tower(state: dict) -> tuple[str, dict]:
    """A checkpoint's vision-tower key prefix and its tensors under their names inside the tower."""
    prefixes = {k[: k.index(_VISUAL) + len(_VISUAL)] for k in state if _VISUAL in k}
    if len(prefixes) != 1:
        raise QponderError(f"expected one vision-tower key prefix ending in {_VISUAL!r}, found {sorted(prefixes)}")
    prefix = prefixes.pop()
    return prefix, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _identity(entry: dict) -> tuple:
    """What tells manifest entries apart: the model they fit and every setting that made them."""
    return entry.get("family"), entry.get("size"), entry.get("proxy")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(towers: Optional[Path] = None) -> list[dict]:
    import json

    path = (towers or TOWERS) / "towers.json"
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["towers"]
    except (ValueError, KeyError, TypeError) as e:
        raise QponderError(f"{path}: not a tower manifest ({e})") from e
    return entries


def find_prebuilt(family: str, size: str, settings, towers: Optional[Path] = None) -> Optional[dict]:
    """The manifest entry made with exactly these settings (``settings.seed`` is the demo seed), or None."""
    want = (family, size, proxy_key(settings))
    return next((e for e in read_manifest(towers) if _identity(e) == want), None)


def export_tower(model_dir: str | os.PathLike, family: str, size: str, towers: Optional[Path] = None) -> dict:
    """Keep the proxy-pretrained vision tower (and merger) of the demo model folder ``model_dir`` in ``towers`` and
    record it, with its pretraining report, in the manifest (replacing an entry of the same settings)."""
    import json

    from safetensors.torch import load_file, save

    from qponder.demo.vision_proxy import VisionProxySettings
    from qponder.io import write_bytes_atomic, write_json_atomic

    model_dir, towers = Path(model_dir), towers or TOWERS
    meta = json.loads((model_dir / "qponder_tiny.json").read_text(encoding="utf-8"))
    report = meta.get("vision_pretrain")
    if not report:
        raise QponderError(f"{model_dir}: its vision tower was not proxy-pretrained (no vision_pretrain record)")
    _, tower = _split_tower(load_file(str(_weights_file(model_dir))))
    proxy = proxy_key(VisionProxySettings(**report["settings"]))
    name = f"{family}-{size}-seed{proxy['seed']}-{proxy['samples']}x{proxy['epochs']}.safetensors"
    write_bytes_atomic(save(tower, metadata={"format": "pt"}), towers / name)
    entry = {"file": name, "sha256": sha256(towers / name), "family": family, "size": size, "proxy": proxy,
             "report": report}
    entries = [e for e in read_manifest(towers) if _identity(e) != _identity(entry)]
    write_json_atomic({"towers": sorted(entries + [entry], key=lambda e: e["file"])}, towers / "towers.json")
    return entry


def install_tower(model_dir: str | os.PathLike, entry: dict, towers: Optional[Path] = None) -> dict:
    """Put the shipped tower ``entry`` into the demo model folder ``model_dir`` (in place of its random tower) and
    record its pretraining report there, as pretraining in the folder would have."""
    import json

    from safetensors.torch import load_file, save

    from qponder.io import write_bytes_atomic, write_json_atomic

    model_dir = Path(model_dir)
    path = (towers or TOWERS) / entry["file"]
    if not path.is_file():
        raise QponderError(f"{path}: the tower the manifest names is missing")
    if sha256(path) != entry["sha256"]:
        raise QponderError(f"{path}: sha256 differs from towers.json's; the file is damaged or was replaced")
    tower = load_file(str(path))
    weights = _weights_file(model_dir)
    state = load_file(str(weights))
    prefix, current = _split_tower(state)
    mine = {k: tuple(v.shape) for k, v in current.items()}
    theirs = {k: tuple(v.shape) for k, v in tower.items()}
    if mine != theirs:
        differ = sorted(set(mine.items()) ^ set(theirs.items()))[:4]
        raise QponderError(f"{path} does not fit the vision tower of {model_dir} (first differences: {differ})")
    state.update({prefix + k: v for k, v in tower.items()})
    write_bytes_atomic(save(state, metadata={"format": "pt"}), weights)
    meta_path = model_dir / "qponder_tiny.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    meta["vision_pretrain"] = {**entry["report"], "prebuilt": {"file": entry["file"], "sha256": entry["sha256"]}}
    meta["note"] = ("randomly initialised, then given a vision tower proxy-pretrained on low-level image statistics "
                    "(no human labels; shipped with qponder); not a trained quality model")
    write_json_atomic(meta, meta_path)
    return meta["vision_pretrain"]


def build(seeds, size: str = "small", family: str = "qwen2_5_vl", samples: Optional[int] = None,
          epochs: Optional[int] = None, towers: Optional[Path] = None) -> list[dict]:
    """Make and keep the towers the demo would pretrain for ``seeds`` (its defaults unless given)."""
    from qponder.demo.runner import DemoSettings, build_base

    entries = []
    for seed in seeds:
        d = DemoSettings(seed=seed, model_size=size, family=family, vision_prebuilt=False)
        d = replace(d, vision_pretrain_samples=samples or d.vision_pretrain_samples,
                    vision_pretrain_epochs=epochs or d.vision_pretrain_epochs)
        work = Path(tempfile.mkdtemp(prefix=f"qponder-tower-{seed}-"))
        try:
            build_base(work / "model", d)
            entries.append(export_tower(work / "model", family, size, towers))
            log.info("tower for seed %d: %s", seed, entries[-1]["file"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return entries


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m qponder.demo.prebuilt", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--size", default="small")
    p.add_argument("--family", default="qwen2_5_vl")
    p.add_argument("--samples", type=int, default=None, help="proxy views (default: the demo's)")
    p.add_argument("--epochs", type=int, default=None, help="passes over them (default: the demo's)")
    p.add_argument("--towers", type=Path, default=TOWERS, help="where to keep them (default: the package's)")
    a = p.parse_args(argv)
    for e in build([int(s) for s in a.seeds.split(",")], a.size, a.family, a.samples, a.epochs, a.towers):
        print(f"{a.towers / e['file']}: {e['report']['seconds']['total']} s, sha256 {e['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
