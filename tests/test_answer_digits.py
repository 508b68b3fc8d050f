"""``benchmarks.answer_digits``: the digit-certainty summary by hand, and the model read on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from benchmarks import answer_digits as A


def test_digit_certainty_by_hand():
    uniform = [0.1] * 10
    sure_four = [0.0] * 10
    sure_four[4] = 1.0
    leading = [[0, 0.1, 0.2, 0.6, 0.1, 0, 0, 0, 0, 0], [0, 0.5, 0.5, 0, 0, 0, 0, 0, 0, 0]]
    res = A.digit_certainty(leading, [uniform, sure_four])
    assert res["n"] == 2 and res["leading_top_p"] == pytest.approx((0.6 + 0.5) / 2)
    assert res["tenths_top_p"] == pytest.approx((0.1 + 1.0) / 2)
    assert res["tenths_entropy_bits"] == pytest.approx(math.log2(10) / 2)  # a uniform digit and a certain one
    assert res["tenths_argmax"] == {"0": 1, "4": 1}  # ties go to the lowest digit
    with pytest.raises(ValueError):
        A.digit_certainty([], [])


def test_measure_on_the_tiny_model_leaves_out_unscored_rows_and_fives(tiny_model_dir, tmp_path):
    rows = []
    for i, score in enumerate((2.4, 4.75, 5.0, None)):
        path = tmp_path / f"im{i}.png"
        Image.new("RGB", (56, 56), (50 * i, 120, 200)).save(path)
        rows.append({"path": str(path), "score": score, "reasoning": "Sharp. Overall, the quality is good."})
    res = A.measure(str(tiny_model_dir), rows, batch_size=2)
    assert res["n"] == 2  # the unscored row and the 5.00 (no tenths digit to doubt) are left out
    assert 0.1 <= res["tenths_top_p"] <= 1.0 and 0.0 <= res["tenths_entropy_bits"] <= math.log2(10) + 1e-6
    assert 0.0 < res["leading_top_p"] <= 1.0 and sum(res["tenths_argmax"].values()) == 2
    json.dumps(res)  # the command prints it
