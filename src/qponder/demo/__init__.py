"""The CPU demo's stand-ins: what exists only because qponder runs here without a teacher VLM, a pretrained vision
tower or real benchmark images. None of it is the method; a GPU user with a real checkpoint never needs it.

* ``data``: the demo dataset (photographs from installed packages x KADID-10k distortions, KADID's human cell-mean
  labels); ``kadid``: the distortions and the label table.
* ``rule_teacher`` + ``teacher``: a deterministic rule-based "expert" behind the ``rule`` teacher backend.
* ``tiny_model``: tiny Qwen-VL models built offline; ``vision_proxy``: label-free pretraining of their vision tower.
* ``runner``: ``qponder demo``, the whole pipeline end to end on CPU.

The core never imports this package. It plugs in through the seams a real user has too: ``register`` (the
``qponder.plugins`` entry point) adds the ``rule`` teacher backend and the ``demo`` dataset by name, and the tiny
model is an ordinary model folder.
"""

from __future__ import annotations


def _load_demo(split: str | None, *, seed: int = 0, size: str = "default") -> list:
    from qponder.demo.data import load_demo_samples

    return load_demo_samples(split, seed=seed, size=size)


def register() -> None:
    """Entry point ``qponder.plugins: demo``: make ``teacher.backend: rule`` and ``data: demo`` resolvable."""
    from qponder.data.registry import register_dataset_loader
    from qponder.demo.teacher import RuleBackend
    from qponder.distill.backends import register_backend

    register_backend("rule", RuleBackend)
    register_dataset_loader("demo", _load_demo)
