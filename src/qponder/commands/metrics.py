"""``qponder metrics FILE``: SRCC/KRCC/PLCC/RMSE per dataset from a file of predicted scores and MOS."""

from __future__ import annotations

from pathlib import Path

import typer


_HELP = (
    "Agreement of predicted scores with MOS, per dataset: n, n_valid, parse-failure rate, SRCC, KRCC, PLCC (raw), "
    "PLCC after the VQEG 4-parameter logistic, and RMSE of raw scores vs MOS (no fit).\n\n"
    'With several datasets a "mean" row gives the unweighted mean over datasets of the correlations. There is no '
    "pooled row: pooling datasets with different MOS distributions gives a number nobody reports.\n\n"
    "When the file has a 'reasoning' field (predictions.jsonl from qponder eval does), a second table compares each "
    "answer with the score its reasoning implies (lexicon reader): SRCC, mean absolute difference, the share of "
    "answers more than one level away from the reasoning's level, and the answers' diversity (distinct values, "
    "entropy in bits)."
)


def register(app: typer.Typer) -> None:
    @app.command("metrics", help=_HELP)
    def metrics(
        file: Path = typer.Argument(
            ...,
            help="CSV (.csv/.tsv) or JSON Lines with columns 'score' (predicted; empty/null = unparsable answer), "
            "'mos', and optionally 'dataset'.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object keyed by dataset (NaN -> null)."),
        fill: float | None = typer.Option(
            None,
            "--fill",
            help="Score used in place of unparsable answers. Default: exclude them from the metrics (they are "
            "still counted in n and the parse-failure rate).",
        ),
    ) -> None:
        """Print agreement metrics of a score file (see ``_HELP``)."""
        import math
        import warnings

        from qponder.errors import QponderError
        from qponder.io import json_dumps
        from qponder.metrics import CONSISTENCY_KEYS, summarize_file
        from qponder.report import text_table
        from qponder.rewards.readers import build_reader

        if fill is not None and not math.isfinite(fill):
            raise QponderError(f"--fill must be a finite number, got {fill}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = summarize_file(file, fill=fill, reader=build_reader("lexicon"))
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        if as_json:
            typer.echo(json_dumps(results))
            return
        n_rows = sum(r["n"] for r in results.values() if "n" in r)
        how = f"failed parses scored as {fill:g}" if fill is not None else "failed parses excluded"
        typer.echo(f"{file}: {n_rows} rows; {how}; RMSE on raw scores vs MOS")
        typer.echo(text_table(results), nl=False)
        if any("n_consistency" in r for r in results.values()):
            typer.echo("\nreasoning vs answer (s_r: lexicon reader; rows missing either excluded, the rest counted "
                       "in n_consistency); answers: distinct at 2 decimals, entropy of 0.25-wide bins over [1, 5]")
            typer.echo(text_table(results, columns=list(CONSISTENCY_KEYS)), nl=False)
