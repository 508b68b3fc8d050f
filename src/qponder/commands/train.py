from __future__ import annotations

import importlib
from pathlib import Path
from typing import List, Optional

import typer

_SET_HELP = "Override any config field, e.g. --set optim.learning_rate=1e-5 --set model.lora.enabled=true"

STAGES = {
    # name: (module, settings class, runner, summary line, help for --model, help for --data)
    "sft": ("qponder.train.sft", "SFTSettings", "run_sft",
            "Stage 1: SFT on distilled reasoning (assistant-only cross-entropy; full or LoRA). Resumable.",
            "= model.path (base checkpoint)", "= data (sft.jsonl from `qponder distill`)"),
    "grpo": ("qponder.train.grpo", "GRPOSettings", "run_grpo",
             "Stage 2: GRPO with the reward library (format + accuracy + consistency by default). Resumable.",
             "= model.path (the SFT checkpoint)", "= data (demo | sft.jsonl | manifest)"),
}


def _add_stage(app: typer.Typer, name: str) -> None:
    module, settings_name, runner_name, summary, model_help, data_help = STAGES[name]

    def command(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help=f"Recipe YAML (recipes/{name}_*.yaml)."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help=_SET_HELP),
        model: Optional[str] = typer.Option(None, help=model_help),
        data: Optional[str] = typer.Option(None, help=data_help),
        output_dir: Optional[str] = typer.Option(None, help="= run.output_dir"),
        max_steps: Optional[int] = typer.Option(None, help="= optim.max_steps"),
        lora: Optional[bool] = typer.Option(None, "--lora/--full", help="= model.lora.enabled"),
        merge: Optional[bool] = typer.Option(None, "--merge/--no-merge",
                                             help="= merge_lora: also export LoRA merged into the base (merged/)"),
    ) -> None:
        from qponder.config import cli_overrides, load_config

        mod = importlib.import_module(module)
        fields = {"model.path": model, "data": data, "run.output_dir": output_dir, "optim.max_steps": max_steps,
                  "model.lora.enabled": lora, "merge_lora": merge}
        cfg = load_config(getattr(mod, settings_name), config, cli_overrides(set_, fields))
        res = getattr(mod, runner_name)(cfg)
        typer.echo(f"{name.upper()} done: {res['global_step']} steps, train loss {res['train_loss']:.4f} -> "
                   + ", ".join(f"{k}: {v}" for k, v in res["paths"].items()))

    command.__doc__ = summary
    app.command(name)(command)


def register(app: typer.Typer) -> None:
    for name in STAGES:
        _add_stage(app, name)
