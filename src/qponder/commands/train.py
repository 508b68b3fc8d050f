from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

_SET_HELP = "Override any config field, e.g. --set optim.learning_rate=1e-5 --set model.lora.enabled=true"


def _overrides(sets: List[str] | None, **fields) -> List[str]:
    out = list(sets or [])
    out += [f"{k}={v}" for k, v in fields.items() if v is not None]
    return out


def register(app: typer.Typer) -> None:
    @app.command("sft")
    def sft(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe YAML (recipes/sft_*.yaml)."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help=_SET_HELP),
        model: Optional[str] = typer.Option(None, help="= model.path"),
        data: Optional[str] = typer.Option(None, help="= data (sft.jsonl from `qponder distill`)"),
        output_dir: Optional[str] = typer.Option(None, help="= run.output_dir"),
        max_steps: Optional[int] = typer.Option(None, help="= optim.max_steps"),
    ) -> None:
        """Stage 1: SFT on distilled reasoning (assistant-only cross-entropy; full or LoRA). Resumable."""
        from qponder.config import load_config
        from qponder.train.sft import SFTSettings, run_sft

        cfg = load_config(SFTSettings, config, _overrides(
            set_, **{"model.path": model, "data": data, "run.output_dir": output_dir, "optim.max_steps": max_steps}))
        res = run_sft(cfg)
        typer.echo(f"SFT done: {res['global_step']} steps, train loss {res['train_loss']:.4f} -> "
                   + ", ".join(f"{k}: {v}" for k, v in res["paths"].items()))

    @app.command("grpo")
    def grpo(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe YAML (recipes/grpo_*.yaml)."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help=_SET_HELP),
        model: Optional[str] = typer.Option(None, help="= model.path (the SFT checkpoint)"),
        data: Optional[str] = typer.Option(None, help="= data (demo | sft.jsonl | manifest)"),
        output_dir: Optional[str] = typer.Option(None, help="= run.output_dir"),
        max_steps: Optional[int] = typer.Option(None, help="= optim.max_steps"),
    ) -> None:
        """Stage 2: GRPO with the reward library (format + accuracy + consistency by default). Resumable."""
        from qponder.config import load_config
        from qponder.train.grpo import GRPOSettings, run_grpo

        cfg = load_config(GRPOSettings, config, _overrides(
            set_, **{"model.path": model, "data": data, "run.output_dir": output_dir, "optim.max_steps": max_steps}))
        res = run_grpo(cfg)
        typer.echo(f"GRPO done: {res['global_step']} steps -> "
                   + ", ".join(f"{k}: {v}" for k, v in res["paths"].items()))
