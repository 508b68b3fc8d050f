"""``benchmarks.bench_rewards_ablation``: every arm trains from the one SFT checkpoint and is evaluated; the table and
the targets come from the per-seed numbers (a tiny smoke run here; the real run is minutes per arm)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_rewards_ablation as B

pytestmark = pytest.mark.slow


def test_quick_ablation_trains_each_arm_from_the_same_sft_checkpoint(tmp_path):
    res = B.run(quick=True, arms=("accuracy", "rank_fidelity", "qponder"), out=tmp_path,
                sets=("sft_answer_weight=3",))
    seed = tmp_path / "quick" / "seed0"
    assert "answer_loss_weight: 3.0" in (seed / "sft" / "sft_config.yaml").read_text()  # --set reaches the demo
    assert res["command"].endswith("--quick --set sft_answer_weight=3")
    for arm in ("accuracy", "rank_fidelity"):
        cfg = (seed / f"grpo-{arm}" / "grpo_config.yaml").read_text()
        assert str(seed / "sft" / "final") in cfg and f"name: {arm}" in cfg
        assert (seed / f"eval-grpo-{arm}" / "demo" / "predictions.jsonl").exists()
    assert set(res["summary"]) == {"sft", "accuracy", "rank_fidelity", "qponder"}
    assert set(res["per_seed"][0]["grpo"]) == {"accuracy", "rank_fidelity", "qponder"}
    assert all(d["zero_std_share"] is not None for d in res["per_seed"][0]["grpo"].values())
    saved = json.loads((tmp_path / "quick" / "ablation.json").read_text())
    assert saved["arms"] == ["accuracy", "rank_fidelity", "qponder"]
    assert "| rank_fidelity |" in (tmp_path / "quick" / "ablation.md").read_text()
    assert (tmp_path / "quick" / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --demos: the same finished demo folder as a seed; the finished arm is kept, a new one trains inside the folder;
    # --jobs 2: the two arms in two processes at once, each with its own log
    kept = (seed / "grpo-accuracy" / "final" / "model.safetensors").stat().st_mtime_ns
    again = B.run(arms=("accuracy", "threshold", "qponder"), out=tmp_path / "from-demos", demos=(seed,), jobs=2)
    assert (seed / "grpo-accuracy" / "final" / "model.safetensors").stat().st_mtime_ns == kept
    assert "name: accuracy_threshold" in (seed / "grpo-threshold" / "grpo_config.yaml").read_text()
    assert again["seeds"] == [0] and again["command"].endswith(f"--demos {seed} --jobs 2")
    assert "train_runtime" in (seed / "ablation-threshold.log").read_text()  # the child's own output
    assert (seed / "ablation-accuracy.log").exists() and not (seed / "ablation-demo.log").exists()
    recorded = sum(res["per_seed"][0]["seconds"].values()) - res["per_seed"][0]["seconds"]["rank_fidelity"]
    assert again["minutes"] == pytest.approx(recorded / 60 + again["per_seed"][0]["seconds"]["threshold"] / 60, abs=0.1)
    assert again["per_seed"][0]["seconds"]["demo"] / 60 < again["wall_minutes"] < again["minutes"] + 1
    for arm in ("accuracy", "qponder"):  # the kept arm from its child process's JSON, qponder from summary.json
        a, b = again["per_seed"][0]["results"][arm], res["per_seed"][0]["results"][arm]
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if B._finite(b[k]))  # NaN is stored as null
    assert (tmp_path / "from-demos" / "ablation.md").exists()
    with pytest.raises(SystemExit, match="not a finished qponder demo"):
        B.run(demos=(tmp_path / "from-demos",), out=tmp_path / "x")
    with pytest.raises(SystemExit, match="--quick and --set do not apply"):
        B.run(demos=(seed,), sets=("grpo_steps=3",), out=tmp_path / "x")

    # a job that fails (a demo folder without its SFT checkpoint) is named, with the end of its log
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("demo_settings.json", "summary.json"):
        (broken / name).write_bytes((seed / name).read_bytes())
    with pytest.raises(SystemExit, match=r"seed 0, accuracy: failed \(exit 1\).*ablation-accuracy.log") as e:
        B.run(arms=("accuracy", "qponder"), out=tmp_path / "y", demos=(broken,), jobs=2)
    assert "sft/final" in str(e.value)


def test_paired_difference_to_sft_per_seed_and_the_table():
    srcc = {0: (0.5, 0.6), 1: (0.6, 0.55), 2: (0.4, 0.5)}  # seed: (SFT, arm)
    per_seed = {k: {"results": {"sft": {"srcc": a, "plcc": a}, "qponder": {"srcc": b, "plcc": None}}}
                for k, (a, b) in srcc.items()}
    table, paired = B.aggregate(per_seed, (0, 1, 2), ("qponder",))
    assert table["qponder"]["srcc"]["mean"] == pytest.approx(0.55)
    assert table["qponder"]["srcc"]["std"] == pytest.approx(0.0408248, abs=1e-6)  # population std over seeds
    d = paired["qponder"]["srcc"]
    assert d["mean"] == pytest.approx(0.05) and d["seeds_up"] == 2 and d["n"] == 3
    assert paired["qponder"]["plcc"]["n"] == 0 and paired["qponder"]["plcc"]["mean"] is None  # no PLCC to pair
    md = B.markdown({"summary": table, "paired_to_sft": paired, "grpo_dynamics": {}, "targets": {"x": True},
                     "seeds": [0, 1, 2], "minutes": 1.0, "command": "c"})
    row = next(line for line in md.splitlines() if line.startswith("| qponder"))
    assert "0.550 ± 0.041" in row and "+0.050 ± 0.071 (2/3)" in row
    assert "- x: met" in md
