"""The real path's first run, as far as a CPU can show it: the 7B recipes start without their optional packages
(flash-attn, tensorboard, vLLM, DeepSpeed) -- falling back with one warning line or refusing at once with one line
that names the extra -- full fine-tuning in the single-GPU recipe's bf16 setting really moves the weights at lr 1e-6,
and the FSDP launch config saves weights."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import pytest
import yaml

from qponder.config import load_config
from qponder.errors import QponderError
from qponder.train.common import OptimSettings, RunSettings, attn_implementation, report_to, trainer_common_kwargs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_train import _make_sft_data  # noqa: E402


def _without(module: str):
    """These tests check what happens where an optional GPU package is missing (every CPU machine)."""
    return pytest.mark.skipif(importlib.util.find_spec(module) is not None, reason=f"{module} is installed here")


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("qponder")]


@_without("flash_attn")
def test_flash_attention_falls_back_to_sdpa_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert attn_implementation("flash_attention_2") == "sdpa"
    assert _warnings(caplog) == ["model.attn_implementation: flash_attention_2 is not available (its package "
                                 "(flash_attn) is not installed: pip install flash-attn --no-build-isolation); "
                                 "using sdpa"]
    caplog.clear()
    assert attn_implementation("eager") == "eager" and attn_implementation(None) is None
    assert not _warnings(caplog)


@_without("tensorboard")
def test_report_to_skips_integrations_that_are_not_installed(caplog):
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    available = get_available_reporting_integrations()
    assert "tensorboard" not in available  # this machine: the case the 7B recipes hit without the extra
    with caplog.at_level(logging.WARNING):
        assert report_to(",".join(["tensorboard", *available])) == available
    assert _warnings(caplog) == ["run.report_to: tensorboard is not installed (pip install tensorboard); "
                                 "not reporting to it"]
    assert report_to("none") == [] and report_to(["none"]) == []


@_without("deepspeed")
def test_deepspeed_without_its_package_is_refused_in_one_line():
    with pytest.raises(QponderError, match=r"^run.deepspeed: z3.json needs DeepSpeed, which is not installed; "
                                           r"pip install 'qponder\[deepspeed\]'$"):
        trainer_common_kwargs(RunSettings(deepspeed="z3.json"), OptimSettings())


def test_fsdp_launch_config_makes_save_model_write_weights(monkeypatch):
    """Trainer.save_model writes final/ under FSDP only for a FULL state dict; accelerate's FSDP2 default is
    SHARDED. Resolve our config the way `accelerate launch` does (its env variables) through accelerate's plugin."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    cfg = yaml.safe_load((ROOT / "recipes/accelerate/fsdp.yaml").read_text())
    fsdp = cfg["fsdp_config"]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", str(fsdp["fsdp_version"]))
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", str(fsdp["fsdp_state_dict_type"]))
    assert "FULL_STATE_DICT" in str(FullyShardedDataParallelPlugin().state_dict_type)
    zero3 = yaml.safe_load((ROOT / "recipes/accelerate/zero3.yaml").read_text())
    assert zero3["deepspeed_config"]["zero3_save_16bit_model"] is True  # ZeRO-3's counterpart


@_without("vllm")
def test_grpo_recipe_with_vllm_is_refused_before_the_model_loads(tmp_path):
    from qponder.train.grpo import GRPOSettings, run_grpo

    cfg = load_config(GRPOSettings, ROOT / "recipes/grpo_qwen2_5_vl_7b.yaml",
                      [f"model.path={tmp_path / 'never-read'}", f"run.output_dir={tmp_path / 'out'}"])
    with pytest.raises(QponderError, match=r"^generation.use_vllm: vLLM is not installed; pip install "
                                           r"'qponder\[vllm\]'"):
        run_grpo(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@_without("flash_attn")
def test_7b_sft_recipe_trains_on_cpu_and_lr_1e6_moves_bf16_weights(tiny_model_dir, tmp_path, caplog):
    """The single-GPU reading of the 7B SFT recipe (dtype bfloat16, bf16, gradient checkpointing, flash-attn,
    tensorboard; no DeepSpeed/FSDP) on the tiny model: it starts, and one AdamW step at lr 1e-6 changes most trainable
    weights. Updated in bf16 they would round back (about 2 % change)."""
    from qponder.models import load_model_and_processor
    from qponder.train.sft import SFTSettings, run_sft

    assert os.environ.get("ACCELERATE_USE_FSDP") is None and os.environ.get("ACCELERATE_USE_DEEPSPEED") is None
    data = _make_sft_data(tmp_path / "data", n=4)
    cfg = load_config(SFTSettings, ROOT / "recipes/sft_qwen2_5_vl_7b.yaml", [
        f"model.path={tiny_model_dir}", f"data={data}", f"run.output_dir={tmp_path / 'out'}", "optim.max_steps=1",
        "optim.batch_size=2", "optim.grad_accum=1", "optim.learning_rate=1e-6", "optim.warmup_ratio=0",
        "optim.lr_scheduler=constant", "run.save_steps=100"])
    assert (cfg.model.dtype, cfg.run.bf16, cfg.model.lora.enabled) == ("bfloat16", True, False)
    before = dict(load_model_and_processor(tiny_model_dir, device="cpu", dtype="bfloat16").model.named_parameters())
    with caplog.at_level(logging.WARNING):
        run_sft(cfg)
    assert any("flash_attention_2 is not available" in w for w in _warnings(caplog))
    assert any("tensorboard is not installed" in w for w in _warnings(caplog))
    after = load_model_and_processor(tmp_path / "out" / "final", device="cpu", dtype="float32").model
    changed = total = 0
    for name, p in after.named_parameters():
        if "visual" in name and ".merger." not in name:
            continue  # the recipe freezes the vision tower
        changed += int((p.detach() != before[name].detach().float()).sum())
        total += p.numel()
    assert changed / total > 0.5, f"only {changed / total:.1%} of the trainable weights moved at lr 1e-6"


def test_trl_block_passes_any_trl_field_and_names_unknown_ones(tmp_path):
    from trl import GRPOConfig, SFTConfig

    from qponder.train.common import trl_args
    from qponder.train.grpo import GRPOSettings

    ours = {**trainer_common_kwargs(RunSettings(output_dir=str(tmp_path)), OptimSettings()), "num_generations": 4}
    args = trl_args(GRPOConfig, ours, {"vllm_max_model_length": 4096, "steps_per_generation": 2, "ddp_timeout": 7200})
    assert (args.vllm_max_model_length, args.steps_per_generation, args.ddp_timeout) == (4096, 2, 7200)
    with pytest.raises(QponderError, match=r"^trl.vllm_max_len: not a field of trl.GRPOConfig \(did you mean "
                                           r"vllm_max_model_length"):
        trl_args(GRPOConfig, ours, {"vllm_max_len": 4096})
    with pytest.raises(QponderError, match=r"^trl.learning_rate: qponder sets it from the recipe's own settings"):
        trl_args(SFTConfig, trainer_common_kwargs(RunSettings(output_dir=str(tmp_path)), OptimSettings()),
                 {"learning_rate": 1e-5})
    with pytest.raises(QponderError, match=r"^trl.GRPOConfig: "):  # TRL's own validation, in one line
        trl_args(GRPOConfig, ours, {"generation_batch_size": 6})  # not a multiple of the group size
    # the 7B recipe's block and a --set reach TRL's field names unchanged
    cfg = load_config(GRPOSettings, ROOT / "recipes/grpo_qwen2_5_vl_7b.yaml", ["trl.ddp_timeout=7200"])
    assert cfg.trl == {"vllm_max_model_length": 4096, "ddp_timeout": 7200}


def test_resume_skips_a_checkpoint_whose_save_was_cut_short(tmp_path, caplog):
    """The Trainer writes trainer_state.json last: a checkpoint folder without it is a save a kill cut short, and
    resuming from it fails; the newest complete one is taken, by step number (checkpoint-10 after checkpoint-9)."""
    from qponder.train.common import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for step, complete in ((5, True), (9, True), (10, True), (15, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-final-notes").mkdir()  # not a step: ignored
    with caplog.at_level(logging.WARNING, logger="qponder.train.common"):
        assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-15: no trainer_state.json" in caplog.text
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()
    (tmp_path / "checkpoint-5" / "trainer_state.json").unlink()
    (tmp_path / "checkpoint-9" / "trainer_state.json").unlink()
    assert last_checkpoint(tmp_path) is None  # nothing complete: train from the start
