"""`qponder demo` end to end with the tiny model and a few steps: every stage runs, every file is written, and a
re-run resumes (finished stages are skipped)."""

from __future__ import annotations

import json

import pytest

from qponder.cli import main as cli_main
from qponder.demo.data import assign_splits
from qponder.demo.runner import DemoSettings

pytestmark = pytest.mark.slow


def test_demo_quick_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--size", "tiny", "--set", "sft_epochs=0.05", "--set", "grpo_steps=2",
            "--set", "vision_pretrain_samples=32", "--set", "vision_pretrain_epochs=1",
            "--set", "eval_max_samples=6", "--set", "max_new_tokens=24", "--set", "progress=false",
            "--set", "teacher_samples=1"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "untrained" in printed and "grpo" in printed and "report.md" in printed
    for f in ("report.md", "summary.json", "sft_loss.png", "grpo_rewards.png", "distill/sft.jsonl",
              "distill/decisions.jsonl", "sft/final/config.json", "grpo/final/config.json",
              "eval-untrained/demo/scatter.png", "eval-sft/results.json", "eval-grpo/demo/predictions.jsonl"):
        assert (out / f).exists(), f
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"untrained", "sft", "grpo"}
    for stage in summary["results"].values():
        assert stage["n"] == 6 and stage["levels"]["n_valid"] == 6
    assert summary["distill"]["n_kept"] > 0
    report = (out / "report.md").read_text()
    assert "| untrained" in report and "| sft" in report and "| grpo" in report
    assert "vision tower: proxy-pretrained on 32 distorted views of the 10 training photographs" in report
    meta = json.loads((out / "model-untrained" / "qponder_tiny.json").read_text())
    pretrained_on = {s.split()[-1] for s in meta["vision_pretrain"]["sources"]}
    held_out = {photo for photo, split in assign_splits(0).items() if split != "train"}
    assert pretrained_on and not pretrained_on & held_out      # the proxy pretraining never sees val/test photos
    assert not (out / "model-untrained.partial").exists()
    grpo_log = [json.loads(x) for x in (out / "grpo" / "log.jsonl").read_text().splitlines()]
    assert any("rewards/accuracy/mean" in r for r in grpo_log)
    # stage 2 is watched on the held-out val photograph (before the first step and after the last) and its
    # signal-free groups are counted
    val = [json.loads(x) for x in (out / "grpo" / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [0, 2] and all(r["n"] == 40 for r in val)
    assert (out / "grpo_val.png").stat().st_size > 0
    assert "groups whose rewards were all equal (no learning signal)" in report and "Val photograph (40" in report

    # a second run finds every stage done and only re-evaluates from saved predictions
    before = (out / "sft" / "final" / "model.safetensors").stat().st_mtime_ns
    assert cli_main(args) == 0
    assert (out / "sft" / "final" / "model.safetensors").stat().st_mtime_ns == before
    again = json.loads((out / "summary.json").read_text())
    assert again["results"]["sft"]["n_valid"] == summary["results"]["sft"]["n_valid"]
    assert again["results"]["sft"]["scored_now"] == 0

    # resuming with settings that would change a finished stage is refused before any work
    assert cli_main([*args, "--set", "grpo_steps=3"]) == 2
    assert "grpo_steps: 2 there, 3 now" in capsys.readouterr().err
    assert (out / "sft" / "final" / "model.safetensors").stat().st_mtime_ns == before

    # a folder made before a setting existed counts as having that setting's default
    recorded = json.loads((out / "demo_settings.json").read_text())
    del recorded["sft_answer_weight"]
    (out / "demo_settings.json").write_text(json.dumps(recorded))
    assert cli_main(args) == 0
    capsys.readouterr()
    assert cli_main([*args, "--set", "sft_answer_weight=7"]) == 2
    assert f"sft_answer_weight: {DemoSettings.sft_answer_weight!r} there, 7.0 now" in capsys.readouterr().err
