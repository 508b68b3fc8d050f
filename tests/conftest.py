"""Shared fixtures: tiny models are built once per session (0.1 s each) and reused read-only."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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
