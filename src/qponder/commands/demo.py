from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Optional[str] = typer.Option(None, help="= out (default demo-out): models, data records, plots, "
                                                     "report.md"),
        size: Optional[str] = typer.Option(None, help="= model_size: small (default, minutes) | tiny (seconds)"),
        seed: Optional[int] = typer.Option(None, help="= seed"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with any DemoSettings fields."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any field: --set grpo_steps=10"),
    ) -> None:
        """The main job: tiny model + built-in demo data -> distil -> SFT -> GRPO -> evaluate -> report (CPU)."""
        from qponder.config import cli_overrides, load_config
        from qponder.demo.runner import DemoSettings, run_demo

        cfg = load_config(DemoSettings, config, cli_overrides(set_, {"out": out, "model_size": size, "seed": seed}))
        summary = run_demo(cfg)
        rows = summary["results"]
        typer.echo("\nstage       SRCC    PLCC    parse-fail")
        for k, v in rows.items():
            typer.echo(f"{k:<10} {v['srcc']:7.3f} {v['plcc']:7.3f} {v['parse_failure_rate']:8.1%}")
        typer.echo(f"\nreport: {Path(cfg.out) / 'report.md'}")
