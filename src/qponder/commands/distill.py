from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe YAML (recipes/distill_*.yaml)."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any field, e.g. --set "
                                                 "teacher.concurrency=32 --set filter.tolerance=0.4"),
        out: Optional[str] = typer.Option(None, "--out", help="= out (output folder; re-running resumes)"),
        max_samples: Optional[int] = typer.Option(None, "--max-samples", help="= max_samples"),
        data: Optional[str] = typer.Option(None, "--data", help="= data: demo | a manifest file"),
        split: Optional[str] = typer.Option(None, "--split", help="= split: train | val | test | all"),
        teacher: Optional[str] = typer.Option(None, "--teacher", help="= teacher.backend: rule | openai | local"),
        model: Optional[str] = typer.Option(None, "--model", help="= teacher.model (served name or model folder)"),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="= teacher.base_url"),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="= prompt (a teacher prompt name)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="= overwrite=true: start the folder again"),
        no_progress: bool = typer.Option(False, "--no-progress", help="= progress=false"),
    ) -> None:
        """Cold start: a teacher reasons about training images; answers near the MOS become SFT data. Resumable."""
        from qponder.config import cli_overrides, load_config
        from qponder.distill import DistillSettings, run_distill

        fields = {"out": out, "max_samples": max_samples, "data": data, "split": split, "teacher.backend": teacher,
                  "teacher.model": model, "teacher.base_url": base_url, "prompt": prompt}
        if overwrite:
            fields["overwrite"] = True
        if no_progress:
            fields["progress"] = False
        cfg = load_config(DistillSettings, config, cli_overrides(set_, fields))
        res = run_distill(cfg)
        st = res.stats
        reasons = ", ".join(f"{k} {v}" for k, v in st["reasons"].items() if k != "kept") or "none"
        typer.echo(f"distilled {res.n_kept + res.n_rejected} image(s) in {res.elapsed_s:.1f}s "
                   f"({res.n_skipped} already done): kept {res.n_kept}, rejected {res.n_rejected}, "
                   f"transport errors {res.n_errors}", err=True)
        rate = f"{100 * st['kept_rate']:.1f} %" if st["kept_rate"] is not None else "n/a"
        typer.echo(f"{res.out}: {st['n_kept']} kept of {st['n_decided']} ({rate}); rejections: {reasons} "
                   f"-> {res.sft_path}", err=True)
        if not res.complete:
            typer.echo(f"{res.n_errors} image(s) failed (see {res.out}/errors.jsonl); re-run the same command to "
                       "retry them", err=True)
            raise typer.Exit(code=1)
