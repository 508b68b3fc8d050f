"""Keep/reject rules (pure functions), their statistics, and the distill settings."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qponder.config import load_config
from qponder.distill import DistillSettings
from qponder.distill.filtering import (
    REASONS,
    Candidate,
    check_completion,
    decide,
    error_histogram_png,
    mentions_mos,
    pstdev,
    spearman,
    summarize,
)
from qponder.errors import QponderError
from qponder.prompts import format_target

scores = st.integers(100, 500).map(lambda x: x / 100)  # two-decimal scores in [1, 5]
reasoning = st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)),
                    min_size=20, max_size=200).filter(lambda s: len(s.strip()) >= 20)


def _valid(score: float) -> Candidate:
    return Candidate(format_target("The image is sharp and clean overall.", score),
                     "The image is sharp and clean overall.", score, True)


@given(reasoning, scores)
def test_well_formed_answers_are_valid(r, s):
    c = check_completion(format_target(r, s))
    assert c.valid and c.score == s and c.reasoning == r.strip() and c.problem is None


@pytest.mark.parametrize("text,problem", [
    ("Looks fine, 3/5.", "invalid_format"),
    ("<think>Sharp and clean everywhere.</think><answer>3.456</answer>", "invalid_format"),  # 3 decimals
    ("<think>Sharp and clean everywhere.</think>\n<answer>6</answer>", "invalid_format"),
    ("<think>Sharp.</think>\n<answer>3.00</answer>", "reasoning_too_short"),
    (None, "invalid_format"),
])
def test_invalid_answers_name_their_problem(text, problem):
    c = check_completion(text, min_reasoning_chars=20)
    assert not c.valid and c.problem == problem


def test_mos_leak_detection():
    assert mentions_mos("Raters gave a mean opinion score of 3", None)
    assert mentions_mos("the MOS is high", None) and mentions_mos("human raters liked it", None)
    assert mentions_mos("it deserves 3.42 because", 3.42)
    assert not mentions_mos("it deserves 3.425 or 13.42", 3.42)
    assert not mentions_mos("mostly sharp, almost no noise", 3.42)
    leak = format_target("The human raters were right: it is sharp and clean.", 3.5)
    assert check_completion(leak, mos_in_prompt=3.5).problem == "mos_leak"
    assert check_completion(leak).valid  # blind prompt: nothing to leak


@given(s=scores, mos=st.floats(1, 5), tol=st.floats(0, 2))
def test_single_answer_kept_iff_within_tolerance(s, mos, tol):
    d = decide([_valid(s)], mos, tolerance=tol)
    assert d.kept == (abs(s - mos) <= tol + 1e-9)
    assert d.reason == ("kept" if d.kept else "out_of_tolerance")
    assert d.teacher_score == s and d.score_error == pytest.approx(s - mos, abs=1e-6) and d.chosen == 0


@settings(max_examples=300)
@given(ss=st.lists(st.one_of(scores, st.none()), min_size=1, max_size=6), mos=st.floats(1, 5),
       tol=st.floats(0, 2), k=st.integers(1, 4), max_std=st.floats(0, 2), select=st.sampled_from(["first", "best"]))
def test_k_sample_rules(ss, mos, tol, k, max_std, select):
    cands = [_valid(s) if s is not None else Candidate("junk", None, None, False, "invalid_format") for s in ss]
    d = decide(cands, mos, tolerance=tol, k_samples=k, max_std=max_std, select=select)
    valid = [s for s in ss if s is not None]
    assert d.reason in REASONS
    if not valid:
        assert not d.kept and d.reason == "invalid_format" and d.chosen is None
        return
    first_k = valid[:k]
    assert list(d.scores) == first_k
    assert cands[d.chosen].valid and d.teacher_score in first_k
    if select == "best":
        assert abs(d.teacher_score - mos) == min(abs(s - mos) for s in first_k)
    else:
        assert d.teacher_score == first_k[0]
    if d.kept:
        assert len(valid) >= k and abs(d.teacher_score - mos) <= tol + 1e-9
        assert k == 1 or pstdev(first_k) <= max_std + 1e-9
    elif len(valid) < k:
        assert d.reason == "too_few_valid"
    elif k > 1 and pstdev(first_k) > max_std + 1e-9:
        assert d.reason == "disagreement"
    else:
        assert d.reason == "out_of_tolerance"


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.floats(-5, 5, allow_nan=False)), min_size=3, max_size=40))
def test_spearman_matches_scipy(pairs):
    from scipy.stats import spearmanr

    x, y = zip(*pairs)
    ours = spearman(x, y)
    if len(set(x)) < 2 or len(set(y)) < 2:
        assert ours is None
    else:
        assert ours == pytest.approx(float(spearmanr(x, y)[0]), abs=1e-9)


def test_summary_and_histogram(tmp_path):
    ds = [{"decision": "kept", "reason": "kept", "teacher_score": 3.2, "mos": 3.0, "score_error": 0.2,
           "attempts": 1, "requests": 1},
          {"decision": "kept", "reason": "kept", "teacher_score": 4.0, "mos": 4.3, "score_error": -0.3,
           "attempts": 2, "requests": 3},
          {"decision": "rejected", "reason": "out_of_tolerance", "teacher_score": 1.5, "mos": 2.5,
           "score_error": -1.0, "attempts": 1, "requests": 1},
          {"decision": "rejected", "reason": "invalid_format", "teacher_score": None, "mos": 2.0,
           "score_error": None, "attempts": 3, "requests": 3}]
    s = summarize(ds, tolerance=0.5)
    assert (s["n_decided"], s["n_kept"], s["n_rejected"], s["kept_rate"]) == (4, 2, 2, 0.5)
    assert s["reasons"] == {"kept": 2, "invalid_format": 1, "out_of_tolerance": 1}
    assert s["score_error"]["mae"] == pytest.approx(0.5)
    assert s["score_error"]["within_tolerance"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["score_error"]["rmse"] == pytest.approx(math.sqrt((0.04 + 0.09 + 1) / 3), abs=1e-4)
    assert s["teacher_srcc"] == pytest.approx(1.0) and s["requests_total"] == 8
    assert error_histogram_png(ds, tmp_path / "h.png", 0.5)
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert not error_histogram_png(ds[3:], tmp_path / "none.png", 0.5)
    assert summarize([])["kept_rate"] is None


def test_settings_validation_and_recipes():
    demo = load_config(DistillSettings, "recipes/distill_demo_cpu.yaml")
    demo.validate()
    assert demo.teacher.backend == "rule" and demo.data == "demo" and demo.split == "train"
    big = load_config(DistillSettings, "recipes/distill_qwen2_5_vl_72b.yaml", ["data=x.csv"])
    big.validate()
    assert big.teacher.backend == "openai" and big.teacher.api_key_env == "QPONDER_TEACHER_API_KEY"
    assert big.filter.k_samples == 3 and big.teacher.temperature > 0
    bad = {
        "filter.k_samples=3": "temperature",
        "filter.tolerance=-1": "tolerance",
        "teacher.concurrency=0": "concurrency",
        "prompt=nope": "unknown teacher prompt",
        "max_samples=0": "max_samples",
        "teacher.timeout_s=0": r"^teacher\.timeout_s must be > 0, got 0\.0$",
        "filter.max_std=-0.5": r"^filter\.max_std must be >= 0, got -0\.5$",
        "teacher.batch_size=0": r"^teacher\.batch_size must be >= 1, got 0$",
    }
    for override, msg in bad.items():
        cfg = load_config(DistillSettings, None, ["teacher.backend=openai", "teacher.model=m", override])
        with pytest.raises(QponderError, match=msg):
            cfg.validate()
    with pytest.raises(QponderError, match="teacher.model is required"):
        load_config(DistillSettings, None, ["teacher.backend=local"]).validate()
    with pytest.raises(QponderError, match="filter.tolerence"):
        load_config(DistillSettings, None, ["filter.tolerence=1"])
