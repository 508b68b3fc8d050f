"""Training data readers: distilled SFT records and GRPO rows, with errors that name file and line."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from qponder.errors import QponderError
from qponder.train.data import grpo_dataset, read_sft_records
from qponder.train.grpo import GRPOSettings, load_grpo_samples


@pytest.fixture()
def sft_file(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(img)
    good = {"image": "a.png", "image_id": "x/a", "mos": 3.0, "mos_native": 50.0, "split": "train",
            "target": "<think>t</think>\n<answer>3.00</answer>"}
    return tmp_path, good


def test_reads_relative_images_and_names_bad_lines(sft_file):
    root, good = sft_file
    p = root / "sft.jsonl"
    p.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "target": ""}) + "\n")
    with pytest.raises(QponderError, match=r"sft.jsonl:3: missing field 'target'"):
        read_sft_records(p)
    p.write_text(json.dumps(good) + "\n[1, 2]\n")
    with pytest.raises(QponderError, match=r"sft.jsonl:2: expected a JSON object"):
        read_sft_records(p)
    p.write_text(json.dumps({**good, "image": "missing.png"}) + "\n")
    with pytest.raises(QponderError, match=r"sft.jsonl:1: image file missing.png does not exist"):
        read_sft_records(p)
    p.write_text(json.dumps(good) + "\n")
    recs = read_sft_records(p)
    assert recs[0]["image"] == str(root / "a.png")
    p.write_text("\n")
    with pytest.raises(QponderError, match="no SFT records"):
        read_sft_records(p)
    with pytest.raises(QponderError, match="does not exist"):
        read_sft_records(root / "nope.jsonl")


def test_grpo_rows_from_sft_records_with_a_blank_first_line(sft_file):
    root, good = sft_file
    p = root / "sft.jsonl"
    p.write_text("\n" + json.dumps(good) + "\n")
    rows = load_grpo_samples(GRPOSettings(data=str(p), split="train"))
    assert rows == [{"image": str(root / "a.png"), "mos": 3.0, "mos_native": 50.0, "image_id": "x/a",
                     "source": f"{p}: x/a"}]
    ds = grpo_dataset(rows)
    assert ds[0]["image"].size == (32, 32) and ds[0]["mos"] == 3.0  # decoded lazily to a PIL image
    with pytest.raises(QponderError, match=r"sft.jsonl: x/a \(x/a\): mos nan is not a finite number"):
        grpo_dataset([{**rows[0], "mos": float("nan")}])
    with pytest.raises(QponderError, match=r"my.csv: sample 1: missing 'image_id'"):
        grpo_dataset([{"image": "a", "mos": 1.0}], source="my.csv")


def test_grpo_rows_from_the_demo_carry_their_manifest_row():
    rows = load_grpo_samples(GRPOSettings(data="demo", split="train", max_samples=3))
    assert len(rows) == 3 and all(1 <= r["mos"] <= 5 for r in rows)
    assert all(r["source"].split(":")[0].endswith("manifest.csv") for r in rows)


def test_demo_seed_reaches_grpo_and_eval_so_test_photos_never_train():
    from qponder.demo.data import load_demo_samples
    from qponder.evaluate import benchmark_samples

    for seed in (0, 1, 2):
        train = {r["image"] for r in load_grpo_samples(GRPOSettings(data="demo", demo_seed=seed, split="train"))}
        test = {s.image for s in benchmark_samples("demo", None, "default", None, demo_seed=seed)}
        assert train == {s.image for s in load_demo_samples(split="train", seed=seed)}
        assert test and not train & test
