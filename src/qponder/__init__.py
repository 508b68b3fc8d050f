"""qponder: reasoning-based visual quality assessment (distil -> SFT -> GRPO -> evaluate -> serve).

From Python: ``scorer = qponder.load_scorer(path)``, ``scorer.score(image_or_list)``; a pyiqa-style metric:
``qponder.iqa_metric(path)``. Both live in ``qponder.api`` and are imported on first use, so ``import qponder``
does not import torch.
"""

__version__ = "0.1.0"

from qponder.errors import QponderError  # noqa: E402

_API = ("load_scorer", "iqa_metric", "Scorer", "IQAMetric")

__all__ = ["QponderError", "__version__", *_API]


def __getattr__(name: str):
    """The API names, imported lazily (PEP 562): the first use pays for qponder.api, not ``import qponder``."""
    if name in _API:
        from qponder import api

        return getattr(api, name)
    raise AttributeError(f"module 'qponder' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
