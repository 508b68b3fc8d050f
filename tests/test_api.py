"""The Python API (qponder.load_scorer, qponder.iqa_metric): light import, every input kind, the CLI's numbers,
errors that name the bad input, and pyiqa's metric interface."""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import qponder
from qponder.cli import main as cli_main
from qponder.errors import QponderError
from qponder.infer import ScoreResult


@pytest.fixture(scope="module")
def levels(tiny_model_dir):
    """Level read-out: deterministic and always a number, so inputs can be compared by score."""
    return qponder.load_scorer(tiny_model_dir, readout="levels", device="cpu", batch_size=3)


def _pixels(i: int, h: int = 56, w: int = 84) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_import_qponder_stays_light():
    """`import qponder` must not pay for torch/transformers (CLI start-up, plugins); the API loads on first use."""
    code = ("import json, sys, qponder\n"
            "seen = lambda: sorted(m for m in ('torch', 'transformers', 'qponder.api') if m in sys.modules)\n"
            "after_import = seen()\n"
            "from qponder import iqa_metric, load_scorer\n"
            "print(json.dumps([after_import, seen(), 'load_scorer' in dir(qponder), hasattr(qponder, 'nope')]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    after_import, after_names, listed, has_nope = json.loads(out.stdout)
    assert after_import == [] and after_names == ["qponder.api"]  # the API module itself does not import torch
    assert listed and not has_nope


def test_one_input_gives_one_result_and_every_kind_reads_the_same_pixels(levels, tmp_path):
    """A path, a PIL image, a uint8 array and a float array of the same pixels score the same."""
    arr = _pixels(0)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    res = levels.score(path)
    assert isinstance(res, ScoreResult) and res.image == str(path.resolve()) and res.readout == "levels"
    assert levels.score_range == (1.0, 5.0) and levels.lower_better is False
    assert 1.0 <= res.score <= 5.0 and res.levels_score == res.score
    for other in (Image.fromarray(arr), arr, arr.astype(np.float32) / 255.0, str(path)):
        assert levels.score(other).score == pytest.approx(res.score, abs=1e-5)
    assert levels.score(arr[:, ::-1]).score != pytest.approx(res.score, abs=1e-5)  # other pixels, other score


def test_a_list_gives_results_in_input_order_equal_to_one_by_one(levels):
    """The list is batched by size (batch_size 3 here, mixed sizes), yet each result is the image's own, in order."""
    inputs = [_pixels(i, h=28 * (1 + i % 3), w=28 * (3 - i % 3)) for i in range(7)]
    together = levels.score(inputs)
    assert isinstance(together, list) and [r.image for r in together] == [f"<array {i}>" for i in range(7)]
    alone = [levels.score(x).score for x in inputs]
    assert [r.score for r in together] == pytest.approx(alone, abs=1e-5)
    assert levels.score([]) == [] and len(levels.score((inputs[0],))) == 1


def test_generated_reasoning_samples_and_level_score_are_reported(tiny_model_dir):
    scorer = qponder.load_scorer(tiny_model_dir, readout="both", device="cpu", samples=2, temperature=1.0,
                                 max_new_tokens=8)
    res = scorer.score(_pixels(1))
    assert res.readout == "both" and len(res.raw) == 2 and len(res.scores) == 2 and len(res.format_ok) == 2
    assert 1.0 <= res.levels_score <= 5.0
    assert res.score is None or 1.0 <= res.score <= 5.0


def test_sampled_scores_repeat_with_a_seed_and_equal_the_cli(tiny_model_dir, tmp_path, capsys):
    """Same seed -> same samples, from a fresh scorer too; and the numbers `qponder score` prints for the files."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_pixels(i, h=28 * (i + 1))).save(folder / f"img{i}.png")
    paths = sorted(str(p) for p in folder.iterdir())
    opts = dict(samples=3, temperature=1.0, seed=11, max_new_tokens=10, batch_size=2, device="cpu")
    first = [(r.image, r.raw, r.scores) for r in qponder.load_scorer(tiny_model_dir, **opts).score(paths)]
    again = [(r.image, r.raw, r.scores) for r in qponder.load_scorer(tiny_model_dir, **opts).score(paths)]
    assert first == again
    assert cli_main(["score", str(folder), "--model", str(tiny_model_dir), "--samples", "3", "--temperature", "1.0",
                     "--seed", "11", "--max-new-tokens", "10", "--batch-size", "2"]) == 0
    cli = sorted((r["image"], r["raw"], r["scores"]) for r in map(json.loads, capsys.readouterr().out.splitlines()))
    assert cli == sorted(first)
    other = qponder.load_scorer(tiny_model_dir, **{**opts, "seed": 12}).score(paths)
    assert [r.raw for r in other] != [raw for _, raw, _ in first]


def test_bad_input_raises_a_qponder_error_naming_it(levels, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    cases = [
        (tmp_path / "missing.png", r"missing\.png: image file not found"),
        (broken, r"broken\.png: cannot read image"),
        (np.zeros((8, 8), np.uint8), r"<array 0>: array of shape \(8, 8\); expected H x W x 3"),
        (np.zeros((8, 8, 4), np.uint8), r"<array 0>: array of shape \(8, 8, 4\)"),
        (np.full((8, 8, 3), 2.0), r"<array 0>: float array with values outside \[0, 1\]"),
        (np.zeros((8, 8, 3), np.int64), r"<array 0>: array of dtype int64"),
        (42, r"input 0: cannot score a int"),
        ([_pixels(0), np.zeros((3, 8, 8), np.uint8)], r"<array 1>: array of shape \(3, 8, 8\)"),
    ]
    for bad, message in cases:
        with pytest.raises(QponderError, match=message):
            levels.score(bad)
    with pytest.raises(QponderError, match="unknown readout 'vibes'"):
        qponder.load_scorer(tmp_path, readout="vibes")


def test_iqa_metric_has_pyiqa_create_metric_interface(tiny_model_dir, tmp_path):
    """Checked against pyiqa's documented metric interface, so qponder drops in where pyiqa metrics are used:

    - README "Basic Usage", https://github.com/chaofengc/IQA-PyTorch#basic-usage : ``iqa_metric =
      pyiqa.create_metric(name)``; ``iqa_metric(img_path)`` or ``iqa_metric(img_tensor)`` with an ``(N, 3, H, W)``
      RGB tensor in [0, 1]; ``iqa_metric.lower_better`` tells the direction.
    - ``InferenceModel``, https://github.com/chaofengc/IQA-PyTorch/blob/main/pyiqa/models/inference_model.py :
      attributes ``metric_name``, ``lower_better``, ``score_range``, ``metric_mode`` ('NR' / 'FR'), and
      ``forward(self, target, ref=None, **kwargs)`` returning the network's score tensor (one score per image).
    """
    metric = qponder.iqa_metric(tiny_model_dir, readout="levels", device="cpu")
    assert isinstance(metric.metric_name, str) and metric.metric_name == "qponder"
    assert metric.lower_better is False and metric.score_range == (1.0, 5.0) and metric.metric_mode == "NR"
    params = list(inspect.signature(metric.forward).parameters.values())
    assert [p.name for p in params[:2]] == ["target", "ref"] and params[1].default is None
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD

    arrs = [_pixels(i) for i in range(3)]
    paths = []
    for i, a in enumerate(arrs):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(a).save(paths[-1])
    one = metric(paths[0])
    assert torch.is_tensor(one) and one.shape == (1,) and one.dtype == torch.float32
    by_path = metric(paths)
    assert by_path.shape == (3,) and all(1.0 <= float(s) <= 5.0 for s in by_path)
    batch = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255.0  # N x 3 x H x W in [0, 1]
    assert torch.allclose(metric(batch), by_path, atol=1e-5)
    assert float(one[0]) == pytest.approx(float(by_path[0]), abs=1e-5)
    with pytest.raises(QponderError, match="no-reference"):
        metric(batch, batch)
    with pytest.raises(QponderError, match=r"shape \(3, 56, 84\); expected N x 3 x H x W"):
        metric(batch[0])


def test_iqa_metric_gives_nan_for_an_unparsable_generated_answer(tiny_model_dir):
    """An untrained model's generated answer has no score: NaN, never an invented number (as in `qponder metrics`)."""
    metric = qponder.iqa_metric(tiny_model_dir, device="cpu", max_new_tokens=2, metric_name="qponder-gen")
    out = metric(torch.rand(2, 3, 28, 56))
    assert metric.metric_name == "qponder-gen" and out.shape == (2,)
    assert all(math.isnan(s) or 1.0 <= s <= 5.0 for s in out.tolist())
    assert any(math.isnan(s) for s in out.tolist())  # 2 tokens cannot hold <answer>S</answer>
