"""The MOS contract (``qponder.data.schema``): one image's human score, from a pyiqa manifest on SPAQ's native 0-100
scale, keeps the same two names at every hop -- ``mos`` the normalised 1-5 value, ``mos_native`` the dataset's own --
through distillation (decisions and SFT rows), GRPO rows and evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from qponder.data import load_samples
from qponder.distill import DistillSettings, FilterSettings, run_distill
from qponder.evaluate import EvalSettings, evaluate
from qponder.io import read_jsonl
from qponder.train.data import grpo_dataset, read_sft_records
from qponder.train.grpo import GRPOSettings, load_grpo_samples

NATIVE = [20.0, 35.0, 50.0, 65.0, 80.0, 95.0]  # SPAQ: 0-100 slider, higher is better


def _norm(v: float) -> float:
    return 1.0 + 4.0 * v / 100.0


@pytest.fixture(scope="module")
def spaq_root(tmp_path_factory):
    """A user's SPAQ folder in pyiqa's layout (meta_info CSV + images), six images of varying sharpness."""
    root = tmp_path_factory.mktemp("data")
    imgs = root / "SPAQ" / "TestImage"
    imgs.mkdir(parents=True)
    (root / "meta_info").mkdir()
    rng = np.random.default_rng(0)
    rows = ["img_name,mos"]
    for i, v in enumerate(NATIVE):
        base = np.linspace(0, 255, 96 * 72 * 3).reshape(72, 96, 3)
        arr = np.clip(base + rng.normal(0, 60 - 10 * i, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(imgs / f"{i:05d}.png")
        rows.append(f"{i:05d}.png,{v}")
    (root / "meta_info" / "meta_info_SPAQDataset.csv").write_text("\n".join(rows) + "\n")
    return root


def test_one_image_keeps_mos_and_mos_native_through_every_stage(spaq_root, tiny_model_dir, tmp_path):
    manifest = spaq_root / "meta_info" / "meta_info_SPAQDataset.csv"
    images = spaq_root / "SPAQ" / "TestImage"
    image_id = "spaq/00002.png"
    native, norm = NATIVE[2], _norm(NATIVE[2])  # 50 on 0-100 -> 3.0 on 1-5

    def check(rec: dict, hop: str) -> None:
        assert rec["mos"] == pytest.approx(norm, abs=1e-6), hop
        assert rec["mos_native"] == pytest.approx(native, abs=1e-6), hop
        assert not {"mos_norm", "mos_raw", "std_norm"} & set(rec), hop

    # 0. the manifest, read into Samples
    samples = {s.image_id: s for s in load_samples(manifest, images, dataset="spaq")}
    check(samples[image_id].to_dict(), "Sample")

    # 1. distillation: the journal and the SFT rows
    out = tmp_path / "distill"
    run_distill(DistillSettings(data=str(manifest), data_root=str(images), dataset="spaq", split=None,
                                out=str(out), progress=False, histogram=False,
                                filter=FilterSettings(tolerance=4.0)))
    decisions = {r["image_id"]: r for r in read_jsonl(out / "decisions.jsonl")}
    check(decisions[image_id], "decisions.jsonl")
    sft = {r["image_id"]: r for r in read_sft_records(out / "sft.jsonl")}
    check(sft[image_id], "sft.jsonl")

    # 2. GRPO rows, from the distilled records and from the manifest itself
    for data, root in ((out / "sft.jsonl", None), (manifest, images)):
        rows = {r["image_id"]: r for r in load_grpo_samples(GRPOSettings(data=str(data), data_root=root and str(root),
                                                                         dataset="spaq", split=None))}
        check(rows[image_id], f"GRPO rows from {data.name}")
        ds = grpo_dataset(list(rows.values()))
        assert ds["mos"][list(rows).index(image_id)] == pytest.approx(norm), "GRPO dataset column"

    # 3. evaluation: predictions.jsonl
    ev = tmp_path / "eval"
    evaluate(EvalSettings(model=str(tiny_model_dir), benchmarks=["spaq"], data_root=str(spaq_root), out=str(ev),
                          max_new_tokens=8, batch_size=6, readout="levels", device="cpu", progress=False))
    preds = {r["image_id"]: r for r in map(json.loads, (ev / "spaq" / "predictions.jsonl").read_text().splitlines())}
    check(preds[image_id], "predictions.jsonl")
    assert sorted(p["mos"] for p in preds.values()) == pytest.approx(sorted(map(_norm, NATIVE)))


def test_a_journal_from_before_the_contract_resumes_in_todays_names(spaq_root, tmp_path):
    """An older decisions.jsonl (native score in ``mos_raw``) is upgraded where it is read: the SFT rows rebuilt
    from it on resume carry ``mos_native``."""
    manifest = spaq_root / "meta_info" / "meta_info_SPAQDataset.csv"
    images = spaq_root / "SPAQ" / "TestImage"
    cfg = DistillSettings(data=str(manifest), data_root=str(images), dataset="spaq", split=None, out=str(tmp_path),
                          progress=False, histogram=False, max_samples=3)
    run_distill(cfg)
    journal = tmp_path / "decisions.jsonl"
    old = [json.loads(line) for line in journal.read_text().splitlines()]
    for r in old:
        r["mos_raw"] = r.pop("mos_native")
    journal.write_text("".join(json.dumps(r) + "\n" for r in old))
    (tmp_path / "sft.jsonl").unlink()
    run_distill(cfg)
    kept = [r for r in old if r["decision"] == "kept"]
    assert kept, "the rule teacher kept nothing; the check below would be empty"
    sft = list(read_jsonl(tmp_path / "sft.jsonl"))
    assert [(r["image_id"], r["mos_native"]) for r in sft] == [(r["image_id"], r["mos_raw"]) for r in kept]
