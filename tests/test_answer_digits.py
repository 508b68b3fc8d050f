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


def test_level_agreement_by_hand():
    assert A.named_level("Noisy but sharp. Overall, the quality is Fair.") == 3  # the verdict: the last level word
    assert A.named_level("Good detail; overall poor.") == 2 and A.named_level("No verdict here.") is None
    assert A.named_level("Goodness knows.") is None  # whole words only
    assert list(A.in_level_tenths(4, 3)) == [5, 6, 7, 8, 9] and list(A.in_level_tenths(4, 4)) == [0, 1, 2, 3, 4]
    assert A.in_level_tenths(4, 2) is None and A.in_level_tenths(1, 0) is None
    uniform = [0.1] * 10
    follows = [0.0] * 5 + [0.2] * 5  # all mass on 5-9
    res = A.level_agreement([4, 4, 3, None], [3.7, 2.9, 3.5, 1.2], [follows, uniform, uniform, uniform])
    # "good" 3.7 (mass 1.0 on 5-9), "good" 2.9 (cannot be good), "fair" 3.5 (good, not fair; 0.5 on 0-4); the row
    # without a verdict is left out
    assert res["n_named_level"] == 3 and res["answers_in_level"] == pytest.approx(1 / 3)
    assert res["leading_in_level"] == pytest.approx(2 / 3)
    assert res["tenths_in_level_mass"] == pytest.approx((1.0 + 0.5) / 2)
    assert math.isnan(A.level_agreement([None], [3.0], [uniform])["leading_in_level"])


def test_in_level_counterfactual_by_hand():
    habit = [0.3, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.1, 0.05]  # "0" first, "8" first among 5-9
    # written: 3.04 ("good": in-level argmax 8 -> 3.8), 3.09 ("fair": in-level 0 -> 3.0), 2.51 (no verdict: kept
    # as 2.5), 4.02 ("good": in-level 0 -> 4.0), 3.0 ("good" again -> 3.8, already counted)
    res = A.in_level_counterfactual([4, 3, None, 4, 4], [3.04, 3.09, 2.51, 4.02, 3.0], [habit] * 5)
    assert res == {"distinct_tenths_written": 3, "distinct_tenths_if_in_level": 4}  # {3.0, 2.5, 4.0} + 3.8
    ties = [0.1] * 10  # ties go to the lowest digit: "good" after 3 takes 5, joining the unnamed 3.5
    assert A.in_level_counterfactual([4, None], [3.9, 3.5], [ties, ties]) == {"distinct_tenths_written": 2,
                                                                                "distinct_tenths_if_in_level": 1}
    # more than two decimals, or a mean of samples, is truncated as written: 3.996 has tenths digit 9, not 0
    assert A.in_level_counterfactual([None, None], [3.996, 3.9], [ties, ties])["distinct_tenths_written"] == 1
    # a level out of the leading digit's reach keeps the written digit
    assert A.in_level_counterfactual([5, 5], [2.3, 2.7], [ties, ties])["distinct_tenths_if_in_level"] == 2


def test_measure_on_the_tiny_model_leaves_out_unscored_rows_and_fives(tiny_model_dir, tmp_path):
    rows = []
    for i, score in enumerate((2.4, 4.25, 5.0, None)):
        path = tmp_path / f"im{i}.png"
        Image.new("RGB", (56, 56), (50 * i, 120, 200)).save(path)
        rows.append({"path": str(path), "score": score, "reasoning": "Sharp. Overall, the quality is good."})
    res = A.measure(str(tiny_model_dir), rows, batch_size=2)
    assert res["n"] == 2  # the unscored row and the 5.00 (no tenths digit to doubt) are left out
    assert 0.1 <= res["tenths_top_p"] <= 1.0 and 0.0 <= res["tenths_entropy_bits"] <= math.log2(10) + 1e-6
    assert 0.0 < res["leading_top_p"] <= 1.0 and sum(res["tenths_argmax"].values()) == 2
    # both kept rows name "good": 2.4 cannot be good; 4.25 is, and its tenths digits inside good are 0-4
    assert res["n_named_level"] == 2 and res["answers_in_level"] == 0.5 and res["leading_in_level"] == 0.5
    assert 0.0 <= res["tenths_in_level_mass"] <= 1.0
    assert res["distinct_tenths_written"] == 2 and res["distinct_tenths_if_in_level"] == 2  # leading 2 and 4
    json.dumps(res)  # the command prints it
