"""The Python API: score images from code, and a pyiqa-style metric object.

``qponder.load_scorer(path)`` and ``qponder.iqa_metric(path)`` are thin layers over ``qponder.infer.QualityScorer``:
they turn what a user holds (file paths, PIL images, numpy arrays, ``N x 3 x H x W`` tensors) into the RGB images the
CLI would load, batch them with the CLI's size-sorted plan and hand back ``ScoreResult``s (or, for the metric, a
tensor). Scoring itself, prompts, seeds and read-outs stay in ``infer.py``, so the API gives the CLI's numbers.
torch is imported inside the functions: ``import qponder`` stays light.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from qponder.errors import QponderError
from qponder.infer import QualityScorer, ScoreResult, batch_plan, check_readout

SCORE_RANGE = (1.0, 5.0)  # the MOS scale every read-out reports on


def _array_to_image(arr: Any, name: str):
    """HxWx3 uint8, or float in [0, 1] -> PIL RGB; anything else is the caller's mistake, named."""
    import numpy as np
    from PIL import Image

    if arr.ndim != 3 or arr.shape[2] != 3:
        raise QponderError(f"{name}: array of shape {tuple(arr.shape)}; expected H x W x 3 (RGB)")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise QponderError(f"{name}: array of shape {tuple(arr.shape)} holds no pixels")
    if arr.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(arr))
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise QponderError(f"{name}: float array with values outside [0, 1] (or NaN); scale it to [0, 1] "
                               "or pass uint8")
        return Image.fromarray(np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8))
    raise QponderError(f"{name}: array of dtype {arr.dtype}; expected uint8 or float in [0, 1]")


def _load_one(x: Any, index: int, min_pixels: int | None, max_pixels: int | None):
    """One input -> (name, RGB image inside the pixel budget, pixel count before resizing), loaded and named as
    ``qponder score`` loads and names a file (the count is what its batch plan sorts by)."""
    from PIL import Image

    from qponder.data import load_image, prepare_image

    if isinstance(x, (str, os.PathLike)):
        name = str(Path(x).expanduser().resolve())  # the name seeds the batch's samples, as in `qponder score`
        image = load_image(name, min_pixels=min_pixels, max_pixels=max_pixels)
        with Image.open(name) as header:
            return name, image, header.width * header.height
    if isinstance(x, Image.Image):
        name = f"<image {index}>"
        try:
            return name, prepare_image(x, min_pixels, max_pixels), x.width * x.height
        except (OSError, ValueError) as e:
            raise QponderError(f"{name}: cannot read image ({type(e).__name__}: {e})") from None
    if type(x).__module__ == "numpy" and hasattr(x, "ndim"):
        name = f"<array {index}>"
        image = _array_to_image(x, name)
        return name, prepare_image(image, min_pixels, max_pixels), image.width * image.height
    raise QponderError(f"input {index}: cannot score a {type(x).__name__}; pass a file path, a PIL image or an "
                       "H x W x 3 numpy array (or a list of them)")


class Scorer:
    """What ``qponder.load_scorer`` returns: ``score(x)`` for one input or a list, on the 1-5 scale, higher better."""

    score_range = SCORE_RANGE
    lower_better = False

    def __init__(self, scorer: QualityScorer, *, readout: str = "generate", samples: int = 1,
                 min_pixels: int | None = None, max_pixels: int | None = None):
        check_readout(readout)
        self.scorer = scorer
        self.readout = readout
        self.samples = samples
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels

    def score(self, x: Any, *, samples: int | None = None, temperature: float | None = None,
              readout: str | None = None) -> ScoreResult | list[ScoreResult]:
        """One input -> one ``ScoreResult``; a list or tuple -> a list in the same order (batched by size)."""
        single = not isinstance(x, (list, tuple))
        items = [x] if single else list(x)
        loaded = [_load_one(item, i, self.min_pixels, self.max_pixels) for i, item in enumerate(items)]
        results: list[ScoreResult | None] = [None] * len(loaded)
        plan = batch_plan([size for _, _, size in loaded], self.scorer.batch_size)
        for batch in plan:  # the CLI's plan: same batches, same per-batch seeds, same numbers
            out = self.scorer.score_batch([loaded[i][1] for i in batch], [loaded[i][0] for i in batch],
                                          samples=self.samples if samples is None else samples,
                                          readout=readout or self.readout, temperature=temperature)
            for i, res in zip(batch, out):
                results[i] = res
        return results[0] if single else results  # type: ignore[return-value]


def load_scorer(path: str | os.PathLike, *, readout: str = "generate", device: str = "auto", dtype: str = "auto",
                samples: int = 1, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                batch_size: int = 8, max_new_tokens: int = 256, min_pixels: int | None = None,
                max_pixels: int | None = None, base_model: str | None = None) -> Scorer:
    """Load a model folder, hub id or LoRA adapter folder for scoring from Python (the options of ``qponder score``)."""
    check_readout(readout)  # before the (slow) model load
    scorer = QualityScorer(str(path), device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                           min_pixels=min_pixels, max_pixels=max_pixels, base_model=base_model)
    return Scorer(scorer, readout=readout, samples=samples, min_pixels=min_pixels, max_pixels=max_pixels)


class IQAMetric:
    """A no-reference metric shaped like ``pyiqa.create_metric(...)``'s result: ``metric(target)`` -> tensor of N
    scores (NaN where a generated answer had no parsable score), plus ``metric_name``, ``lower_better``,
    ``score_range`` and ``metric_mode``."""

    metric_mode = "NR"
    lower_better = False
    score_range = SCORE_RANGE

    def __init__(self, scorer: Scorer, metric_name: str = "qponder"):
        self.scorer = scorer
        self.metric_name = metric_name
        self.device = scorer.scorer.device

    def forward(self, target: Any, ref: Any = None, **kwargs: Any):
        """``target``: an image path, a list of paths, or an ``N x 3 x H x W`` float tensor in [0, 1]."""
        import torch

        if ref is not None:
            raise QponderError(f"{self.metric_name} is a no-reference metric; it takes no reference image")
        if torch.is_tensor(target):
            if target.dim() != 4 or target.shape[1] != 3:
                raise QponderError(f"tensor input of shape {tuple(target.shape)}; expected N x 3 x H x W (RGB)")
            items: Any = list(target.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy())
        elif isinstance(target, (str, os.PathLike)):
            items = [target]
        elif isinstance(target, (list, tuple)):
            items = list(target)
        else:
            raise QponderError(f"cannot score a {type(target).__name__}; pass an image path, a list of paths or "
                               "an N x 3 x H x W tensor")
        scores = [r.score for r in self.scorer.score(items, **kwargs)]
        return torch.tensor([math.nan if s is None else s for s in scores], dtype=torch.float32)

    __call__ = forward


def iqa_metric(path: str | os.PathLike, *, metric_name: str = "qponder", **kwargs: Any) -> IQAMetric:
    """``load_scorer(path, **kwargs)`` behind pyiqa's metric interface (drop-in where a pyiqa NR metric is used)."""
    return IQAMetric(load_scorer(path, **kwargs), metric_name=metric_name)


__all__ = ["SCORE_RANGE", "IQAMetric", "Scorer", "iqa_metric", "load_scorer"]
