"""``benchmarks.memory_plan``: the 7B parameter counts match the published size, the table adds up and scales with
the number of GPUs as each sharding says, and the README shows the table the script prints today."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """One run of the script as the README gives it: its stdout and its --json numbers."""
    import contextlib
    import io
    import sys

    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.memory_plan import main

        out = tmp_path_factory.mktemp("plan") / "plan.json"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["--json", str(out)]) == 0
    finally:
        sys.path.remove(str(ROOT))
    return buf.getvalue(), json.loads(out.read_text())


def _rows(res, **match):
    return [r for r in res["rows"] if all(r[k] == v for k, v in match.items())]


def test_parameter_counts_are_the_published_7b(result):
    _, res = result
    p = res["parameters"]
    assert p["total"] == 8_292_166_656  # the model card's "8.29B"
    assert p["vision_tower"] + p["merger"] == 676_550_144  # the vision side, ~0.68B
    assert p["language_model"] + p["lm_head"] == 7_615_616_512
    assert p["lm_head"] == p["embed_tokens"] == 152064 * 3584  # untied
    # LoRA on q/k/v/o and gate/up/down of 28 layers: r x (in + out) each; k and v project to 4 KV heads x 128
    h, kv, i = 3584, 512, 18944
    per_layer = 2 * (h + h) + 2 * (h + kv) + 3 * (h + i)
    assert p["lora"] == res["lora_r"] * 28 * per_layer


def test_table_adds_up_and_scales_with_the_gpus(result):
    text, res = result
    cols = ["weights", "grads", "optimizer", "gathered", "activations", "ref_model", "reader", "vllm", "reserve"]
    table = [line for line in text.splitlines() if re.match(r"\| (SFT|GRPO) \|", line)]
    assert len(table) == len(res["rows"]) == 2 * 2 * 4 * 2
    for line, r in zip(table, res["rows"]):
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        parts = [float(c) for c in cells[4:13]]
        assert float(cells[13]) == pytest.approx(sum(parts), abs=0.05 * len(parts))  # printed total = its parts
        assert float(cells[13]) == pytest.approx(r["total"], abs=0.05)
        assert r["total"] == pytest.approx(sum(r[c] for c in cols), rel=1e-12)
        assert cells[14] == ("yes" if r["total"] <= res["gpu_gib"] else "no")

    def states(r):
        return r["weights"] + r["grads"] + r["optimizer"]

    for stage in ("SFT", "GRPO"):
        for method in ("LoRA", "full"):
            one, eight = (_rows(res, stage=stage, method=method, sharding="ZeRO-3", gpus=n)[0] for n in (1, 8))
            assert states(one) == pytest.approx(8 * states(eight), rel=1e-9)  # ZeRO-3 partitions everything
            one, eight = (_rows(res, stage=stage, method=method, sharding="FSDP", gpus=n)[0] for n in (1, 8))
            assert states(one) == pytest.approx(8 * states(eight), rel=1e-9)
            one, eight = (_rows(res, stage=stage, method=method, sharding="ZeRO-2", gpus=n)[0] for n in (1, 8))
            assert one["weights"] == eight["weights"]  # ZeRO-2 keeps whole weights ...
            assert one["optimizer"] == pytest.approx(8 * eight["optimizer"], rel=1e-9)  # ... and splits the rest
            assert one["grads"] == pytest.approx(8 * eight["grads"], rel=1e-9)
            for r in _rows(res, stage=stage, method=method):  # the micro-batch is per GPU
                assert r["activations"] == _rows(res, stage=stage, method=method)[0]["activations"]


def test_cells_from_the_counts(result):
    """A few cells recomputed from the parameter counts alone."""
    _, res = result
    p = res["parameters"]
    trainable = p["total"] - p["vision_tower"]  # the recipes freeze the vision tower, not the merger
    full_ddp = _rows(res, stage="SFT", method="full", sharding="DDP", gpus=1)[0]
    assert full_ddp["weights"] * GIB == pytest.approx(4 * trainable + 2 * p["vision_tower"])  # fp32 master weights
    assert full_ddp["optimizer"] * GIB == pytest.approx(8 * trainable)  # two fp32 AdamW moments
    z3 = _rows(res, stage="SFT", method="full", sharding="ZeRO-3", gpus=8)[0]
    assert z3["weights"] * GIB == pytest.approx(2 * p["total"] / 8)
    assert z3["optimizer"] * GIB == pytest.approx(12 * trainable / 8)
    for r in _rows(res, stage="GRPO"):
        assert r["vllm"] == pytest.approx(0.3 * res["gpu_gib"])  # the recipe's vllm_gpu_memory_utilization
        assert r["reader"] * GIB >= 2 * p["total"]  # a whole bf16 copy per GPU, ZeRO-3 or not
        assert (r["ref_model"] > 0) == (r["method"] == "full")  # beta > 0; TRL needs none under LoRA
    for r in _rows(res, stage="SFT"):
        assert r["vllm"] == r["reader"] == r["ref_model"] == 0


def test_smallest_setup_is_the_fewest_gpus_that_fit(result):
    text, res = result
    for key, best in res["smallest"].items():
        stage, method = key.split("/")
        fits = [r for r in _rows(res, stage=stage) if r["fits"] and method in ("any", r["method"])]
        assert best == min(fits, key=lambda r: (r["gpus"], r["total"]))
        assert f"- {stage}, {'any method' if method == 'any' else method}: {best['method']}, {best['sharding']}, " \
               f"{best['gpus']} GPU" in text


def test_readme_shows_the_current_table(result):
    """The README's table is what the script prints for today's recipes (re-run it after changing one)."""
    text, _ = result
    readme = (ROOT / "README.md").read_text()
    table, smallest = text[text.index("| stage |"):].strip().split("\n\n")
    assert table in readme and smallest in readme
