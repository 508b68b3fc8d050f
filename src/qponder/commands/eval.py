from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        model: Optional[str] = typer.Option(None, "--model", help="= model: checkpoint folder, hub id or adapter."),
        benchmarks: Optional[str] = typer.Option(None, help="= benchmarks, comma-separated (demo, koniq10k, spaq, "
                                                            "kadid10k, pipal, livec, agiqa3k, csiq, tid2013, or "
                                                            "protocol-a)"),
        data_root: Optional[str] = typer.Option(None, help="= data_root: folder holding the benchmark datasets"),
        split: Optional[str] = typer.Option(None, help="= split: default (each benchmark's test split: KonIQ's "
                                                       "official test, the whole set elsewhere) | train | val | "
                                                       "test"),
        max_samples: Optional[int] = typer.Option(None, help="= max_samples per benchmark"),
        out: Optional[str] = typer.Option(None, help="= out (results folder; re-running resumes)"),
        samples: Optional[int] = typer.Option(None, help="= samples per image (mean score)"),
        temperature: Optional[float] = typer.Option(None, help="= temperature (0 = greedy)"),
        readout: Optional[str] = typer.Option(None, help="= readout: generate | levels | expected | both"),
        batch_size: Optional[int] = typer.Option(None, help="= batch_size"),
        backend: Optional[str] = typer.Option(None, help="= backend: auto | hf | vllm"),
        tensor_parallel_size: Optional[int] = typer.Option(None, help="= tensor_parallel_size: GPUs one vLLM "
                                                                      "model is split over"),
        judge: Optional[str] = typer.Option(None, "--judge", help="= judge_url: OpenAI-compatible base URL of a "
                                                                 "judge model rating the descriptions"),
        consistency_reader: Optional[str] = typer.Option(None, help="= consistency_reader: what reads the score "
                                                                     "a reasoning implies, lexicon | levels"),
        consistency_model: Optional[str] = typer.Option(None, help="= consistency_model: model the levels reader "
                                                                   "reads the reasoning with (the SFT model)"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with any EvalSettings fields."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any field: --set max_new_tokens=512"),
    ) -> None:
        """Evaluate on IQA benchmarks: predictions.jsonl, results.json/.md, scatter plots. Resumable.
        Under accelerate launch / torchrun the images are shared out over the processes."""
        from qponder.config import cli_overrides, load_config
        from qponder.errors import QponderError
        from qponder.evaluate import EvalSettings, evaluate
        from qponder.infer import current_shard

        fields = {"model": model, "data_root": data_root, "split": split, "max_samples": max_samples,
                  "out": out, "samples": samples, "temperature": temperature, "readout": readout,
                  "batch_size": batch_size, "backend": backend, "tensor_parallel_size": tensor_parallel_size,
                  "judge_url": judge, "consistency_reader": consistency_reader,
                  "consistency_model": consistency_model,
                  "benchmarks": benchmarks.split(",") if benchmarks else None}
        cfg = load_config(EvalSettings, config, cli_overrides(set_, fields))
        if not cfg.model:
            raise QponderError("--model is required")
        results = evaluate(cfg)
        if not current_shard().main:
            return  # rank 0 merged the predictions and wrote the reports
        typer.echo((Path(cfg.out) / "results.md").read_text())
        typer.echo(f"wrote {cfg.out}/results.json, results.md and per-benchmark predictions + scatter plots "
                   f"({len(results)} benchmark(s))", err=True)
