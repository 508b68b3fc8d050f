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
        vision_pretrain_samples: int = typer.Option(
            0, help="> 0: proxy-pretrain the vision tower on this many distorted views of the demo's training "
                    "photographs (no labels; what `qponder demo` does, about 5 min for 6000 on 2 cores)."),
        vision_pretrain_epochs: int = typer.Option(2, help="Epochs of the proxy pretraining."),
        demo_seed: int = typer.Option(0, help="Demo split whose training photographs the proxy pretraining uses."),
        tokenizer: Path = typer.Option(
            None, help="A real tokenizer folder (tokenizer.json, tokenizer_config.json; e.g. Qwen's) to build "
                       "around instead of the locally trained one; the vocabulary becomes that tokenizer's."),
    ) -> None:
        """Build a randomly initialised Qwen-VL model with a locally trained (or given) tokenizer (no download)."""
        from qponder.demo.tiny_model import build_tiny_model
        from qponder.models import count_parameters, load_model_and_processor

        path = build_tiny_model(out_dir, family=family, size=size, seed=seed, tokenizer=tokenizer)
        state = "untrained"
        if vision_pretrain_samples > 0:
            from qponder.demo.vision_proxy import VisionProxySettings, pretrain_on_demo

            rep = pretrain_on_demo(path, demo_seed, VisionProxySettings(
                samples=vision_pretrain_samples, epochs=vision_pretrain_epochs, seed=seed))
            state = (f"vision tower proxy-pretrained on {rep['n_references']} demo training photographs, "
                     f"loss {rep['loss_first']} -> {rep['loss_last']}")
        lm = load_model_and_processor(path, device="cpu")
        typer.echo(f"built {family}/{size} ({count_parameters(lm.model) / 1e6:.2f}M params, {state}) -> {path}")
