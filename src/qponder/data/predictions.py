"""Read a predictions file (predicted ``score``, ``mos``, optional ``dataset`` per row): what ``qponder metrics`` reads.

It lives in the data layer beside the manifest readers so that ``qponder.metrics`` holds metric code only. The
manifest helpers do not fit: a manifest lists an empty or NaN value as a problem, while an empty or NaN score here
is an unparsable answer to count, and the error messages differ.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qponder.errors import QponderError
from qponder.io import iter_jsonl

__all__ = ["read_scores", "read_scores_and_reasoning"]

_MISSING_SCORE = {"", "nan", "null", "none", "na", "n/a"}


def _parse_score(value: Any, where: str) -> float | None:
    """A predicted score, or None for an unparsable answer (empty / null / NaN)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise QponderError(f"{where}: score {value!r} is not a number")
    if isinstance(value, (int, float)):
        v = float(value)
    else:
        text = str(value).strip()
        if text.lower() in _MISSING_SCORE:
            return None
        try:
            v = float(text)
        except ValueError:
            raise QponderError(
                f"{where}: score {text!r} is not a number (leave it empty/null for an unparsable answer)"
            ) from None
    if math.isnan(v):
        return None
    if not math.isfinite(v):
        raise QponderError(f"{where}: score {value!r} is not finite")
    return v


def _parse_mos(value: Any, where: str) -> float:
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise QponderError(f"{where}: mos is {'empty' if not isinstance(value, bool) else repr(value)}")
    try:
        v = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise QponderError(f"{where}: mos {value!r} is not a number") from None
    if not math.isfinite(v):
        raise QponderError(f"{where}: mos {value!r} is not a finite number")
    return v


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        raise QponderError(f"{path}: looks like a JSON array; expected JSON Lines (one object per line) or CSV")
    return "jsonl" if head.startswith(b"{") else "csv"


class _Groups:
    """Accumulates rows into ``{dataset: (scores, mos)}``; the per-row work is kept minimal (files run to 1e5+ rows)
    and the careful parsers only run on values that are not plain numbers, to name the row in the error."""

    def __init__(self, reserved: Mapping[str, str]) -> None:
        self.groups: dict[str, tuple[list[float | None], list[float]]] = {}
        self.reserved = reserved
        self.reasoning: dict[str, list[str | None]] = {}
        self.has_reasoning = False

    def add(self, where: Any, dataset: Any, score: Any, mos: Any, reasoning: Any = None) -> None:
        if dataset is None:
            ds = "all"
        else:
            ds = str(dataset).strip()
            if not ds:
                raise QponderError(f"{where()}: dataset is empty (the file has a dataset column)")
            if ds in self.reserved:
                raise QponderError(f"{where()}: dataset name {ds!r} is reserved for {self.reserved[ds]}")
        try:
            m = float(mos)
            if not math.isfinite(m) or isinstance(mos, bool):
                raise ValueError
        except (TypeError, ValueError):
            m = _parse_mos(mos, where())
        v: float | None
        try:
            v = float(score)
            if isinstance(score, bool) or not math.isfinite(v):
                raise ValueError
        except (TypeError, ValueError):
            v = _parse_score(score, where())
        group = self.groups.get(ds)
        if group is None:
            group = self.groups[ds] = ([], [])
        group[0].append(v)
        group[1].append(m)
        self.reasoning.setdefault(ds, []).append(reasoning if isinstance(reasoning, str) and reasoning else None)


def _read_csv(path: Path, kind: str, acc: _Groups) -> None:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t" if kind == "tsv" else ",")
        header = next(reader, None)
        if header is None:
            return
        cols = [h.strip().lower() for h in header]
        for name in ("score", "mos", "dataset"):
            if cols.count(name) > 1:
                raise QponderError(f"{path}:1: column '{name}' appears {cols.count(name)} times")
        for name in ("score", "mos"):
            if name not in cols:
                raise QponderError(f"{path}:1: no '{name}' column (header: {', '.join(header) or 'empty'})")
        si, mi = cols.index("score"), cols.index("mos")
        di = cols.index("dataset") if "dataset" in cols else None
        ri = cols.index("reasoning") if "reasoning" in cols else None
        acc.has_reasoning = ri is not None
        need = max(si, mi, -1 if di is None else di, -1 if ri is None else ri) + 1

        def where() -> str:
            return f"{path}:{reader.line_num}"

        for row in reader:
            if not any(row):
                continue  # blank line
            if len(row) < need:
                row = row + [""] * (need - len(row))
            acc.add(where, None if di is None else row[di], row[si], row[mi], None if ri is None else row[ri])


def _read_jsonl(path: Path, acc: _Groups) -> None:
    has_dataset: bool | None = None
    for line, rec in iter_jsonl(path, skip_bad_tail=False):
        if not isinstance(rec, dict):
            raise QponderError(f"{path}:{line}: expected a JSON object, got {type(rec).__name__}")
        if "score" not in rec or "mos" not in rec:
            rec = {str(k).strip().lower(): v for k, v in rec.items()}
            for name in ("score", "mos"):
                if name not in rec:
                    raise QponderError(f"{path}:{line}: no '{name}' field")
        if has_dataset is None:
            has_dataset = "dataset" in rec
        elif has_dataset != ("dataset" in rec):
            which = "has no" if has_dataset else "has a"
            raise QponderError(f"{path}:{line}: {which} 'dataset' field, unlike the first record")
        ds = (rec["dataset"] if rec["dataset"] is not None else "") if has_dataset else None
        if "reasoning" in rec:
            acc.has_reasoning = True
        acc.add(lambda line=line: f"{path}:{line}", ds, rec["score"], rec["mos"], rec.get("reasoning"))


def read_scores(
    path: str | os.PathLike[str], *, reserved: Mapping[str, str] | None = None
) -> dict[str, tuple[list[float | None], list[float]]]:
    """The scores and MOS of :func:`read_scores_and_reasoning`, without the reasoning."""
    return read_scores_and_reasoning(path, reserved=reserved)[0]


def read_scores_and_reasoning(
    path: str | os.PathLike[str], *, reserved: Mapping[str, str] | None = None
) -> tuple[dict[str, tuple[list[float | None], list[float]]], dict[str, list[str | None]] | None]:
    """Read ``score`` (prediction, empty/null = unparsable) and ``mos`` (+ optional ``dataset``) columns.

    CSV (``.csv``; ``.tsv`` tab-separated) or JSON Lines (``.jsonl``/``.ndjson``; other names are sniffed).
    Returns ``{dataset: (scores, mos)}`` in order of first appearance; without a ``dataset`` column everything is
    one dataset named ``"all"``. The second item holds each row's ``reasoning`` text (None where empty or not a
    string) in the same order -- what ``qponder eval``'s predictions.jsonl carries -- or is None when no row has a
    ``reasoning`` field/column, so a plain score file stays a score file. ``reserved`` maps dataset names the
    caller needs for rows of its own (e.g. ``summarize_file``'s ``"mean"``) to what they are for; a file that
    uses one is an error. Problems raise :class:`QponderError` naming ``file:line``.
    """
    path = Path(path)
    if not path.exists():
        raise QponderError(f"{path}: no such file")
    if path.is_dir():
        raise QponderError(f"{path}: is a directory, expected a CSV or JSONL file")
    acc = _Groups(reserved or {})
    kind = _file_kind(path)
    if kind == "jsonl":
        _read_jsonl(path, acc)
    else:
        _read_csv(path, kind, acc)
    if not acc.groups:
        raise QponderError(f"{path}: no data rows")
    return acc.groups, (acc.reasoning if acc.has_reasoning else None)
