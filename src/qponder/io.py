"""Crash-safe file helpers shared by every stage that writes results.

Why: evaluation, distillation and training jobs run for hours and get killed. A results file must either be the old
version or the new one, never half of each (``write_*_atomic``: temp file in the same folder + ``os.replace``), and
a per-item log must survive a crash with at most the last, partial line lost (``append_jsonl`` / ``read_jsonl``).

JSON written here is strict: NaN/inf become ``null`` (Python's ``json`` would emit the non-standard ``NaN``), and
numpy scalars/arrays become plain numbers/lists.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from qponder.errors import QponderError

log = logging.getLogger(__name__)

__all__ = [
    "append_jsonl",
    "iter_jsonl",
    "json_dumps",
    "json_safe",
    "read_jsonl",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def json_safe(obj: Any) -> Any:
    """Return a copy of ``obj`` that strict JSON can hold: non-finite floats -> None, numpy -> Python, Path -> str.

    Tuples and sets become lists; mapping keys become strings. Unknown objects are left for ``json`` to reject.
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    # numpy without importing it: scalars have .item(), arrays have .tolist()
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):
        return json_safe(obj.tolist())
    return obj


def json_dumps(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text (NaN -> null, no ``NaN`` tokens), keys in insertion order, UTF-8 characters kept."""
    return json.dumps(json_safe(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort (not every filesystem/OS lets a directory be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    The temp file lives in the target folder (``os.replace`` is only atomic within one filesystem) and is fsynced
    before the rename. The target keeps its permission bits if it existed; a new file gets 0o644.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    """UTF-8 text version of :func:`write_bytes_atomic`."""
    return write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(obj: Any, path: str | os.PathLike[str], *, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (NaN -> null) atomically, with a trailing newline."""
    return write_text_atomic(json_dumps(obj, indent=indent) + "\n", path)


def _last_newline(fd: int, size: int) -> int:
    """Offset of the last b"\\n" in the first ``size`` bytes of ``fd``, or -1; reads backwards in chunks."""
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i
        pos = start
    return -1


def append_jsonl(path: str | os.PathLike[str], record: Any) -> None:
    """Append ``record`` as one strict-JSON line, then flush and fsync, so a finished item is never lost.

    If a crash left a partial last line (no trailing newline), it is dropped first when it is not valid JSON
    (a warning names it), or terminated with a newline when it is; otherwise the new record would be glued onto
    it and corrupt the middle of the file. Single writer per file is assumed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json_dumps(record, indent=None) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            start = _last_newline(fd, size) + 1
            tail = os.pread(fd, size - start, start)
            try:
                json.loads(tail.decode("utf-8"))
                os.pwrite(fd, b"\n", size)
            except (UnicodeDecodeError, ValueError):
                log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted write", path, len(tail))
                os.ftruncate(fd, start)
        os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_jsonl(path: str | os.PathLike[str], *, skip_bad_tail: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, record)`` for each non-blank line (1-based line numbers, for error messages).

    A line that is not valid JSON raises :class:`QponderError` naming ``path:line`` -- unless it is the last
    non-blank line and ``skip_bad_tail`` is true: that is what a crash mid-write leaves, so it is skipped with a
    warning. A missing file is a :class:`QponderError` too.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise QponderError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise QponderError(f"{path}: is a directory, expected a JSONL file") from None
    lines = raw.split(b"\n")
    last = max((i for i, b in enumerate(lines) if b.strip()), default=-1)
    for i, b in enumerate(lines):
        if not b.strip():
            continue
        try:
            rec = json.loads(b.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            if i == last and skip_bad_tail:
                log.warning("%s:%d: skipping a truncated last line (interrupted write?)", path, i + 1)
                return
            where = "truncated last line" if i == last else "not valid JSON"
            raise QponderError(f"{path}:{i + 1}: {where} ({e})") from None
        yield i + 1, rec


def read_jsonl(path: str | os.PathLike[str], skip_bad_tail: bool = True) -> list[Any]:
    """All records of a JSONL file; see :func:`iter_jsonl` for how bad lines are treated."""
    return [rec for _, rec in iter_jsonl(path, skip_bad_tail=skip_bad_tail)]
