from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("tiny-model")
    def tiny_model(
        out_dir: Path = typer.Argument(..., help="Folder to write the model into."),
        family: str = typer.Option("qwen2_5_vl", help="qwen2_5_vl | qwen2_vl | qwen3_vl"),
        size: str = typer.Option("tiny", help="tiny (~0.3M params) | small (~4M params)"),
        seed: int = typer.Option(0, help="Weight-initialisation seed (same seed -> same weights)."),
    ) -> None:
        """Build a randomly initialised Qwen-VL model with a locally trained tokenizer (no download)."""
        from qponder.models import build_tiny_model, count_parameters, load_model_and_processor

        path = build_tiny_model(out_dir, family=family, size=size, seed=seed)
        lm = load_model_and_processor(path, device="cpu")
        typer.echo(f"built {family}/{size} ({count_parameters(lm.model) / 1e6:.2f}M params, untrained) -> {path}")
