"""Training datasets for TRL: SFT conversations from distilled records, GRPO prompts from scored samples.

Rows hold image *paths*; images are decoded lazily (``qponder.data.load_image``: RGB, EXIF-transposed, pixel
budget) through ``Dataset.with_transform``, so a 100k-image dataset costs no RAM up front. The user turn is the
student prompt as a string: TRL puts the image block before it, which renders exactly like
``qponder.prompts.student_messages`` used at inference (asserted in tests).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from qponder.errors import QponderError
from qponder.prompts import STUDENT_PROMPT

SFT_REQUIRED = ("image", "target")


def read_sft_records(path: str | Path) -> list[dict]:
    """Distilled SFT records (``qponder distill`` output ``sft.jsonl``), validated with file:line errors."""
    from qponder.io import iter_jsonl

    p = Path(path)
    if not p.exists():
        raise QponderError(f"{p}: SFT data file does not exist (run `qponder distill` first)")
    records = []
    for i, r in iter_jsonl(p, skip_bad_tail=False):
        if not isinstance(r, dict):
            raise QponderError(f"{p}:{i}: expected a JSON object, got {type(r).__name__}")
        records.append(r)
        for k in SFT_REQUIRED:
            if not r.get(k):
                raise QponderError(f"{p}:{i}: missing field {k!r}")
        img = Path(r["image"])
        if not img.is_absolute():
            img = p.parent / img
        if not img.exists():
            raise QponderError(f"{p}:{i}: image file {r['image']} does not exist")
        r["image"] = str(img)
    if not records:
        raise QponderError(f"{p}: no SFT records")
    return records


def _image_loader(column: str, nested: bool, min_pixels: Optional[int], max_pixels: Optional[int]):
    from qponder.data import load_image

    def transform(batch: dict) -> dict:
        out = dict(batch)
        if nested:
            out[column] = [[load_image(p, min_pixels=min_pixels, max_pixels=max_pixels) for p in ps]
                           for ps in batch[column]]
        else:
            out[column] = [load_image(p, min_pixels=min_pixels, max_pixels=max_pixels) for p in batch[column]]
        return out

    return transform


def sft_dataset(records: list[dict], prompt: str = STUDENT_PROMPT, min_pixels: Optional[int] = None,
                max_pixels: Optional[int] = None):
    from datasets import Dataset

    rows = {
        "messages": [[{"role": "user", "content": prompt}, {"role": "assistant", "content": r["target"]}]
                     for r in records],
        "images": [[r["image"]] for r in records],
    }
    ds = Dataset.from_dict(rows)
    return ds.with_transform(_image_loader("images", True, min_pixels, max_pixels))


def grpo_dataset(samples: list[dict], prompt: str = STUDENT_PROMPT, min_pixels: Optional[int] = None,
                 max_pixels: Optional[int] = None, source: str = "GRPO data"):
    """``samples``: dicts with image (path), mos (normalised 1-5), image_id. Extra columns reach reward functions.
    ``source`` names where they came from in error messages (a sample's own ``source`` field wins)."""
    from datasets import Dataset

    for i, s in enumerate(samples, 1):
        where = s.get("source") or f"{source}: sample {i}"
        for k in ("image", "mos", "image_id"):
            if s.get(k) is None:
                raise QponderError(f"{where}: missing {k!r}")
        if not (isinstance(s["mos"], (int, float)) and math.isfinite(s["mos"])):
            raise QponderError(f"{where} ({s['image_id']}): mos {s['mos']!r} is not a finite number")
    rows = {
        "prompt": [[{"role": "user", "content": prompt}] for _ in samples],
        "image": [s["image"] for s in samples],
        "mos": [float(s["mos"]) for s in samples],
        "image_id": [str(s["image_id"]) for s in samples],
    }
    ds = Dataset.from_dict(rows)
    return ds.with_transform(_image_loader("image", False, min_pixels, max_pixels))
