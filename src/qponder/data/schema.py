"""The one sample record every stage uses, the MOS contract, and the linear MOS normalisation to [1, 5].

The MOS contract, for every record qponder holds or writes (``Sample``, ``sft.jsonl``, ``decisions.jsonl``, GRPO
rows, ``predictions.jsonl``):

* ``mos`` is always the human score normalised to [1, 5], higher = better: what the model is trained on, rewarded
  against and scored against;
* ``mos_native`` is the same score on the dataset's own scale (e.g. SPAQ's 0–100, a DMOS), for reports;
* ``std`` / ``std_native`` are the rating spread on those two scales (None when the dataset has none).

Only the input side differs: a manifest's score column is, by definition, native. Files written before this
contract (``Sample`` dicts with ``mos``/``mos_norm``, ``decisions.jsonl`` with ``mos_raw``) are converted once, where
they are read (:func:`upgrade_mos_names`).

Normalisation is linear from the dataset's *documented* range (not the observed min/max, which changes with the
subset), flipped where lower is better (DMOS), so that 5 is always best.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qponder.errors import QponderError

if TYPE_CHECKING:  # pragma: no cover
    from qponder.data.registry import BenchmarkSpec

NORM_LO = 1.0
NORM_HI = 5.0


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    ``image`` is absolute; ``image_id`` is ``"<dataset>/<path relative to root>"`` so ids stay stable when the
    data root moves. ``ref`` (absolute path of the pristine reference, FR datasets and the demo), ``source``
    (``"file:row"`` it came from) and ``extra`` (other manifest columns, as strings) are additions to the
    shared contract; ``extra`` is excluded from equality and hashing.
    """

    image: str
    mos: float  # normalised to [1, 5] (the MOS contract above)
    mos_native: float  # on the dataset's own scale
    dataset: str
    split: str | None
    image_id: str
    std: float | None = None  # normalised like mos
    std_native: float | None = None
    ref: str | None = None
    source: str | None = field(default=None, compare=False)
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (what JSONL outputs and the server return)."""
        return {
            "image": self.image,
            "mos": self.mos,
            "mos_native": self.mos_native,
            "dataset": self.dataset,
            "split": self.split,
            "image_id": self.image_id,
            "std": self.std,
            "std_native": self.std_native,
            "ref": self.ref,
            "source": self.source,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Sample:
        """Inverse of :meth:`to_dict` (unknown keys are ignored; a dict from before the MOS contract is upgraded)."""
        d = upgrade_mos_names(d)
        try:
            return cls(
                image=str(d["image"]), mos=float(d["mos"]), mos_native=float(d["mos_native"]),
                dataset=str(d["dataset"]), split=d.get("split"), image_id=str(d["image_id"]),
                std=None if d.get("std") is None else float(d["std"]),
                std_native=None if d.get("std_native") is None else float(d["std_native"]),
                ref=d.get("ref"), source=d.get("source"), extra=dict(d.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise QponderError(f"sample record is missing or has a bad field: {e}") from e


def upgrade_mos_names(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record in today's names (the MOS contract). Older ``Sample`` dicts held the native score in ``mos`` and the
    normalised one in ``mos_norm`` (``std``/``std_norm`` likewise); older ``decisions.jsonl`` rows held the native score
    in ``mos_raw`` beside an already normalised ``mos``. Records in today's names come back as they are."""
    out = dict(record)
    if "mos_norm" in out:
        out["mos_native"], out["mos"] = out.get("mos"), out.pop("mos_norm")
        if "std_norm" in out or "std" in out:
            out["std_native"], out["std"] = out.get("std"), out.pop("std_norm", None)
    elif "mos_raw" in out:
        out["mos_native"] = out.pop("mos_raw")
    return out


def _range_of(spec: BenchmarkSpec | str | tuple) -> tuple[float, float, bool]:
    """Accept a spec, a registry name, or ``(lo, hi)`` / ``(lo, hi, lower_better)``."""
    if isinstance(spec, str):
        from qponder.data.registry import get_benchmark

        spec = get_benchmark(spec)
    if isinstance(spec, tuple):
        lo, hi = float(spec[0]), float(spec[1])
        lower_better = bool(spec[2]) if len(spec) > 2 else False
    else:
        lo, hi = (float(v) for v in spec.mos_range)
        lower_better = bool(spec.lower_better)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise QponderError(f"MOS range [{lo}, {hi}] is not a valid interval (need lo < hi)")
    return lo, hi, lower_better


def normalize_mos(value: float, spec: BenchmarkSpec | str | tuple) -> float:
    """Map a native score linearly from the dataset's documented range onto [1, 5], higher = better.

    Values outside the range map outside [1, 5] (validation, not this function, decides whether that is an
    error). For a 1–5 higher-is-better range the result equals the input exactly.
    """
    lo, hi, lower_better = _range_of(spec)
    v = float(value)
    if lower_better:
        return NORM_HI - (v - lo) * (NORM_HI - NORM_LO) / (hi - lo)
    return NORM_LO + (v - lo) * (NORM_HI - NORM_LO) / (hi - lo)


def denormalize_mos(value: float, spec: BenchmarkSpec | str | tuple) -> float:
    """Inverse of :func:`normalize_mos` (for reporting predictions on a dataset's native scale)."""
    lo, hi, lower_better = _range_of(spec)
    v = float(value)
    if lower_better:
        return lo + (NORM_HI - v) * (hi - lo) / (NORM_HI - NORM_LO)
    return lo + (v - NORM_LO) * (hi - lo) / (NORM_HI - NORM_LO)


def normalize_std(std: float, spec: BenchmarkSpec | str | tuple) -> float:
    """Rescale a standard deviation by the same factor as the MOS (a spread has no offset and no sign)."""
    lo, hi, _ = _range_of(spec)
    return abs(float(std)) * (NORM_HI - NORM_LO) / (hi - lo)
