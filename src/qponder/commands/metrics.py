"""``qponder metrics FILE``: SRCC/KRCC/PLCC/RMSE per dataset from a file of predicted scores and MOS."""

from __future__ import annotations

from pathlib import Path

import typer


_HELP = (
    "Agreement of predicted scores with MOS, per dataset: n, n_valid, parse-failure rate, SRCC, KRCC, PLCC (raw), "
    "PLCC after the VQEG 4-parameter logistic, and RMSE of raw scores vs MOS (no fit).\n\n"
    'With several datasets a "mean" row gives the unweighted mean over datasets of the correlations. There is no '
    "pooled row: pooling datasets with different MOS distributions gives a number nobody reports."
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
        from qponder.metrics import summarize_file
        from qponder.report import text_table

        if fill is not None and not math.isfinite(fill):
            raise QponderError(f"--fill must be a finite number, got {fill}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = summarize_file(file, fill=fill)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        if as_json:
            typer.echo(json_dumps(results))
            return
        n_rows = sum(r["n"] for r in results.values() if "n" in r)
        how = f"failed parses scored as {fill:g}" if fill is not None else "failed parses excluded"
        typer.echo(f"{file}: {n_rows} rows; {how}; RMSE on raw scores vs MOS")
        typer.echo(text_table(results), nl=False)
