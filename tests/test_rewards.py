"""Reward library: hand-computed values for every reward, TRL call conventions, logging, and the three readers."""

from __future__ import annotations

import json
import math
import pickle
from http.server import BaseHTTPRequestHandler

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localhttp import LocalServer, chat_completion, send_json
from qponder import rewards as R
from qponder.errors import QponderError
from qponder.prompts import format_target


def done(reasoning: str, score: str) -> str:
    return f"<think>{reasoning}</think>\n<answer>{score}</answer>"


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


class Recorder:
    """A stand-in for TRL's ``log_metric(name, value)`` that keeps what it was given."""

    def __init__(self):
        self.calls: list[tuple[str, float]] = []

    def __call__(self, name: str, value: float) -> None:
        self.calls.append((name, value))

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.calls)


# TRL 1.16 passes these besides the dataset columns.
TRL_KWARGS = dict(completion_ids=[[1, 2, 3]] * 3, trainer_state=object(), log_extra=lambda column, values: None)
FAIR = "The image is slightly blurry with no visible noise. Overall, the quality is fair."
BAD = "Severe blur and heavy noise; the quality is bad."


# ------------------------------------------------------------------------------------------------ completions

def test_completion_text_accepts_strings_and_chat_messages():
    assert R.completion_text("abc") == "abc"
    assert R.completion_text(chat("abc")) == "abc"
    assert R.completion_text({"role": "assistant", "content": "abc"}) == "abc"
    assert R.completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                                 {"type": "text", "text": "b"}]}]) == "ab"
    # tool/user messages are not the model's text; several assistant messages are joined
    assert R.completion_text([{"role": "assistant", "content": "a"}, {"role": "tool", "content": "x"},
                              {"role": "assistant", "content": "b"}]) == "a\nb"
    assert R.completion_text(None) == ""
    assert R.completion_text([{"role": "assistant", "content": None}]) == ""


# ------------------------------------------------------------------------------------------------ format

def test_format_reward_strings_chat_and_extra_columns():
    texts = [done("ok", "3.50"), "<answer>3</answer>", done("ok", "7")]
    fn = R.build("format")
    assert fn.__name__ == "format"
    assert fn(prompts=["p"] * 3, completions=texts) == [1.0, 0.0, 0.0]
    assert fn(prompts=["p"] * 3, completions=[chat(t) for t in texts], mos=[3, 3, 3], image_id=["a", "b", "c"],
              dataset="koniq", images=[None] * 3, **TRL_KWARGS) == [1.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------------ accuracy

def test_accuracy_linear_hand_values():
    fn = R.build("accuracy")  # tau = 1.0
    texts = [done("r", "3.50"), done("r", "4.00"), done("r", "1.00"), done("r", "x"), done("r", "2.75")]
    mos = [3.0, 4.0, 4.0, 3.0, 3.0]
    # |3.5-3| = 0.5 -> 0.5 ; exact -> 1 ; |1-4| = 3 -> max(0, -2) = 0 ; no score -> 0 ; |2.75-3| = .25 -> .75
    assert fn(prompts=None, completions=texts, mos=mos) == pytest.approx([0.5, 1.0, 0.0, 0.0, 0.75])
    # tau = 2: 1 - 0.5/2 = 0.75 ; 1 ; 1 - 3/2 < 0 -> 0 ; 0 ; 1 - 0.25/2 = 0.875
    assert R.build("accuracy", tau=2.0)(prompts=None, completions=texts, mos=mos) == pytest.approx(
        [0.75, 1.0, 0.0, 0.0, 0.875])


def test_accuracy_threshold_hand_values():
    fn = R.build("accuracy_threshold")  # tau = 0.35, strict <
    texts = [done("r", "3.50"), done("r", "3.50"), done("r", "2.00"), "no answer"]
    mos = [3.25, 3.0, 2.3125, 3.0]
    # |.25| < .35 -> 1 ; |.5| -> 0 ; |.3125| < .35 -> 1 ; missing -> 0
    assert fn(prompts=None, completions=texts, mos=mos) == [1.0, 0.0, 1.0, 0.0]
    assert fn.__name__ == "accuracy_threshold"
    # tau = 0.25 exactly at the boundary is not rewarded (strict inequality)
    assert R.build("accuracy_threshold", tau=0.25)(completions=[done("r", "3.50")], mos=[3.25]) == [0.0]


def test_accuracy_gaussian_hand_values():
    fn = R.build("accuracy_gaussian")  # sigma = 0.5
    texts = [done("r", "3"), done("r", "3.5"), done("r", "4"), done("r", "?")]
    # exp(0) = 1 ; exp(-.25/.5) = exp(-.5) = 0.6065306597 ; exp(-1/.5) = exp(-2) = 0.1353352832 ; missing -> 0
    assert fn(completions=texts, mos=[3.0, 3.0, 3.0, 3.0]) == pytest.approx(
        [1.0, 0.6065306597, 0.1353352832, 0.0], abs=1e-9)
    # sigma = 1: exp(-.25/2) = 0.8824969026
    assert R.build("accuracy_gaussian", sigma=1.0)(completions=[done("r", "3.5")], mos=[3.0]) == pytest.approx(
        [0.8824969026])


def test_accuracy_needs_a_finite_mos_column():
    fn = R.build("accuracy")
    with pytest.raises(QponderError, match="'mos'.*columns present: image_id"):
        fn(prompts=None, completions=[done("r", "3")], image_id=["a"], **TRL_KWARGS)
    with pytest.raises(QponderError, match="row 1"):
        fn(completions=[done("r", "3")] * 2, mos=[3.0, float("nan")])
    with pytest.raises(QponderError, match="row 0"):
        fn(completions=[done("r", "3")], mos=[None])
    with pytest.raises(ValueError, match="2 values for 1"):
        fn(completions=[done("r", "3")], mos=[3.0, 3.0])


# ------------------------------------------------------------------------------------------------ lexicon

@pytest.mark.parametrize("text, expected", [
    # blurry(-1) x slightly(.5) = -.5 ; noise negated by "no": +.5 -> s_desc = 3 ; level fair 3 -> 3
    (FAIR, 3.0),
    # blur x severe(2) = -2 ; noise x heavy(2) = -2 -> s_desc = 1 ; level bad 1 -> 1
    (BAD, 1.0),
    ("The image is blurry.", 2.0),  # 3 - 1
    ("The image is very blurry.", 1.5),  # 3 - 1.5
    ("It is a little blurry.", 2.5),  # "a little" is a diminisher (x .5), not a negation
    ("The image is sharp and clean.", 4.0),  # 3 + mean(1, 1)
    ("The image isn't sharp.", 2.0),  # negated merit counts -1
    ("There is no obvious blur or noise.", 3.5),  # negation carries over "or": mean(.5, .5)
    ("The image is noise-free and sharpness is lacking.", 3.0),  # post-modifiers: mean(+.5, -.5)
    ("Not bad.", 3.5),  # negated level word
    ("The quality is very good.", 4.5),  # 3 + (4 - 3) x 1.5
    ("A fair amount of noise.", 2.0),  # "fair amount" is not a verdict
    # sharp +1, details +.5, vivid +1, no noise +.5 -> s_desc 3.75 ; excellent 5 -> (2*5 + 3.75)/3
    ("Sharp details, vivid colours and no noise; the quality is excellent.", (10 + 3.75) / 3),
])
def test_lexicon_hand_values(text, expected):
    assert R.lexicon_score(text) == pytest.approx(expected)


def test_lexicon_returns_none_without_descriptors_and_is_monotone_in_intensity():
    assert R.lexicon_score("The photo shows a cat on a sofa at 3 pm, rated 4.5.") is None
    assert R.lexicon_score("") is None
    assert (R.lexicon_score("slightly noisy") > R.lexicon_score("noisy") > R.lexicon_score("very noisy")
            > R.lexicon_score("extremely noisy"))
    assert R.lexicon_score("not noisy") > R.lexicon_score("noisy")
    # a clause boundary stops a negation: "no noise, but blurry" keeps blurry negative
    assert R.lexicon_score("There is no noise, but the image is blurry.") == pytest.approx(3 + (0.5 - 1) / 2)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_lexicon_fuzz(text):
    s = R.lexicon_score(text)
    assert s is None or 1.0 <= s <= 5.0
    assert R.lexicon_score(text) == s  # deterministic


# ------------------------------------------------------------------------------------------------ consistency

def test_consistency_with_the_lexicon_reader_hand_values():
    fn = R.build("consistency")  # lexicon reader, tau_c = 1
    texts = [done(FAIR, "3.50"), done(FAIR, "4.50"), done(BAD, "1.25"), done("A cat on a sofa.", "3"),
             done(FAIR, "x"), "<answer>3</answer>"]
    rec = Recorder()
    out = fn(prompts=None, completions=[chat(t) for t in texts], mos=[1.0] * 6, log_metric=rec, **TRL_KWARGS)
    # s_r = 3 vs 3.5 -> 0.5 ; vs 4.5 -> 0 ; s_r = 1 vs 1.25 -> 0.75 ; reader finds nothing -> 0 (counted) ;
    # no score -> 0 (not read) ; no reasoning -> 0 (not read)
    assert out == pytest.approx([0.5, 0.0, 0.75, 0.0, 0.0, 0.0])
    m = rec.metrics
    assert m["rewards/consistency/eligible_frac"] == pytest.approx(4 / 6)
    assert m["rewards/consistency/reader_fail_frac"] == pytest.approx(1 / 4)
    assert m["rewards/consistency/zero_frac"] == pytest.approx(4 / 6)


def test_consistency_tau_require_format_and_a_custom_reader():
    seen: list[list[str]] = []

    def reader(texts):
        seen.append(list(texts))
        return [2.0 for _ in texts]

    fn = R.build("consistency", reader=reader, tau=2.0, require_format=True)
    texts = [done("any", "3.00"), "Intro. " + done("any", "3.00"), done("other", "4.00")]
    # 1 - |2 - 3|/2 = .5 ; not well-formed -> not read, 0 ; 1 - |2 - 4|/2 = 0
    assert fn(completions=texts) == [0.5, 0.0, 0.0]
    assert seen == [["any", "other"]]
    # require_format is the default; turned off, the non-well-formed completion is read too
    assert R.build("consistency", reader=reader, tau=2.0, require_format=False)(completions=texts) == [0.5, 0.5, 0.0]
    assert R.build("consistency")(completions=["Intro. " + done(FAIR, "3")]) == [0.0]
    with pytest.raises(QponderError, match="only used with a reader given by name"):
        R.build("consistency", reader=reader, reader_params={"x": 1})
    with pytest.raises(QponderError, match="consistency: unknown parameter 'taux'; valid: reader, reader_params"):
        R.build("consistency", reader=reader, taux=1.0)
    with pytest.raises(QponderError, match="unknown consistency reader 'nope'.*judge, levels, lexicon"):
        R.build("consistency", reader="nope")
    with pytest.raises(QponderError, match="consistency: unknown parameter 'taux'; valid: reader, reader_params, "
                                           "tau, require_format, reader_fail_warn, reader_fail_stop, "
                                           "reader_fail_stop_calls, margin, or the lexicon reader's: none"):
        R.build("consistency", taux=1.0)
    with pytest.raises(QponderError, match="qponder_reward: unknown parameter 'modle'.*levels reader's: model"):
        R.build("qponder_reward", reader="levels", modle="x")
    with pytest.raises(QponderError, match="'model' is given both flat and in reader_params"):
        R.build("consistency", reader="levels", model="a", reader_params={"model": "b"})


# ------------------------------------------------------------------------------------------------ rank fidelity

def test_rank_fidelity_two_images_two_samples_by_hand():
    # Image A (MOS 4) sampled 4.0 and 3.0: mu_A = 3.5, sigma_A^2 = ((.5)^2 + (.5)^2)/2 = .25
    # Image B (MOS 2) sampled 2.0 and 3.0: mu_B = 2.5, sigma_B^2 = .25
    # denominator sqrt(.25 + .25 + 1e-8) = 0.70710679
    # A, s=4: z = (4 - 2.5)/0.70710679 = 2.1213203, p = Phi(z) = 0.98305257, g = 1 (MOS_A > MOS_B)
    #         f = sqrt(p + 1e-8) + sqrt(0 + 1e-8) = 0.99149008 + 0.0001 = 0.99159008
    # A, s=3: z = (3 - 2.5)/0.70710679 = 0.70710677, p = 0.76024994, g = 1
    #         f = sqrt(0.76024994) + 0.0001 = 0.87192313 + 0.0001 = 0.87202313
    # B, s=2: z = (2 - 3.5)/0.70710679 = -2.1213203, p = 0.01694743, g = 0
    #         f = 0.0001 + sqrt(1 - p + 1e-8) = 0.0001 + 0.99149008 = 0.99159008
    # B, s=3: z = -0.70710677, p = 0.23975006, g = 0 -> f = 0.0001 + sqrt(0.76024994) = 0.87202313
    # one other image each, so the mean over j is f itself.
    texts = [done("r", "4.00"), done("r", "3.00"), done("r", "2.00"), done("r", "3.00")]
    fn = R.build("rank_fidelity")
    out = fn(prompts=["same prompt"] * 4, completions=texts, mos=[4.0, 4.0, 2.0, 2.0], image_id=["A", "A", "B", "B"])
    assert out == pytest.approx([0.99159008, 0.87202313, 0.99159008, 0.87202313], abs=1e-7)
    # Groups come from image_id, not from order: interleaving the rows permutes the rewards and nothing else.
    out2 = fn(completions=[chat(texts[i]) for i in (0, 2, 1, 3)], mos=[4.0, 2.0, 4.0, 2.0],
              image_id=["A", "B", "A", "B"])
    assert out2 == pytest.approx([out[i] for i in (0, 2, 1, 3)], abs=1e-12)


def test_rank_fidelity_missing_scores_ties_and_single_image():
    # A's second sample has no score: mu_A = 4.0 and sigma_A^2 = 0 from its parsed sample only; B as above.
    # A, s=4: z = (4 - 2.5)/sqrt(0 + .25 + 1e-8) = 2.99999994, p = 0.99865010, g = 1
    #         f = sqrt(0.99865010) + 0.0001 = 0.99932483 + 0.0001 = 0.99942483
    # A, no score: 0
    # B, s=2: z = (2 - 4)/0.50000001 = -3.99999992, p = 3.1671e-05, g = 0 -> f = 0.0001 + sqrt(0.99996833) = 1.00008417
    # B, s=3: z = -1.99999996, p = 0.02275013, g = 0 -> f = 0.0001 + sqrt(0.97724987) = 0.98865950
    out = R.rank_fidelity([4.0, None, 2.0, 3.0], [4.0, 4.0, 2.0, 2.0], ["A", "A", "B", "B"])
    assert out == pytest.approx([0.99942483, 0.0, 1.00008417, 0.98865950], abs=1e-7)
    # Equal MOS: g = .5 ; with identical scores p = .5, f = 2 sqrt(.25 + 1e-8) = 1.00000002
    assert R.rank_fidelity([3.0, 3.0], [3.0, 3.0], [1, 2]) == pytest.approx([1.0, 1.0], abs=1e-7)
    # A single image (or only one image with any parsed score) has nothing to be ranked against: all 0.
    assert R.rank_fidelity([3.0, 4.0], [3.0, 3.0], ["A", "A"]) == [0.0, 0.0]
    assert R.rank_fidelity([3.0, None], [3.0, 2.0], ["A", "B"]) == [0.0, 0.0]
    # Three images: the reward is the mean over the two others.
    three = R.rank_fidelity([4.0, 2.0, 3.0], [5.0, 1.0, 3.0], ["a", "b", "c"])
    pair_ab = R.rank_fidelity([4.0, 2.0], [5.0, 1.0], ["a", "b"])[0]
    pair_ac = R.rank_fidelity([4.0, 3.0], [5.0, 3.0], ["a", "c"])[0]
    assert three[0] == pytest.approx((pair_ab + pair_ac) / 2)


def test_rank_fidelity_checks_its_columns():
    fn = R.build("rank_fidelity")
    with pytest.raises(QponderError, match="'image_id'"):
        fn(completions=[done("r", "3")], mos=[3.0])
    with pytest.raises(QponderError, match="two different MOS"):
        fn(completions=[done("r", "3")] * 2, mos=[3.0, 4.0], image_id=["A", "A"])


# ------------------------------------------------------------------------------------------------ qponder_reward

def test_qponder_reward_hand_values_gating_and_logging():
    fn = R.build("qponder_reward", w_format=0.5, w_accuracy=1.0, w_consistency=2.0)
    texts = [
        done(FAIR, "3.50"),  # format 1 ; acc 1 - |3.5-3|/1 = .5 ; cons 1 - |3-3.5| = .5 -> .5 + .5 + 2*.5 = 2.0
        "Sure! " + done(FAIR, "3.50"),  # format 0 ; acc .5 ; cons gated off -> 0 + .5 + 0 = 0.5
        done(BAD, "1.00"),  # format 1 ; acc 1 - |1-3| < 0 -> 0 ; cons 1 -> .5 + 0 + 2 = 2.5
        "nothing",  # all zero
    ]
    rec = Recorder()
    out = fn(prompts=None, completions=texts, mos=[3.0] * 4, image_id=list("abcd"), log_metric=rec, **TRL_KWARGS)
    assert out == pytest.approx([2.0, 0.5, 2.5, 0.0])
    m = rec.metrics
    p = "rewards/qponder_reward/"
    assert m[p + "zero_frac"] == pytest.approx(0.25)
    assert m[p + "format/mean"] == pytest.approx(0.5)
    assert m[p + "format/zero_frac"] == pytest.approx(0.5)
    assert m[p + "accuracy/mean"] == pytest.approx(0.25)
    assert m[p + "accuracy/std"] == pytest.approx(0.25)  # values .5 .5 0 0
    assert m[p + "consistency/mean"] == pytest.approx(0.375)  # .5, 0, 1, 0
    assert m[p + "consistency/zero_frac"] == pytest.approx(0.5)
    assert m[p + "consistency/reader_fail_frac"] == 0.0
    assert all(isinstance(v, float) for _, v in rec.calls)


def test_qponder_reward_consistency_gated_by_accuracy():
    fn = R.build("qponder_reward", w_format=0.5, w_accuracy=1.0, w_consistency=2.0, consistency_gate="accuracy")
    texts = [
        done(FAIR, "3.50"),  # acc .5, cons .5 -> paid .25: .5 + .5 + 2*.25 = 1.5
        done(BAD, "1.00"),   # agrees with its reasoning on a wrong level: acc 0 -> paid 0: .5 + 0 + 0 = 0.5
        done(FAIR, "3.00"),  # right and consistent: acc 1, cons 1: .5 + 1 + 2 = 3.5
    ]
    rec = Recorder()
    out = fn(prompts=None, completions=texts, mos=[3.0] * 3, image_id=list("abc"), log_metric=rec, **TRL_KWARGS)
    assert out == pytest.approx([1.5, 0.5, 3.5])
    p = "rewards/qponder_reward/"
    assert rec.metrics[p + "consistency/mean"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)  # what the reader found
    assert rec.metrics[p + "consistency_paid/mean"] == pytest.approx((0.25 + 0.0 + 1.0) / 3)  # what was paid
    # without the gate the consistent wrong answer collects the consistency term
    assert R.build("qponder_reward", w_format=0.5, w_consistency=2.0)(completions=texts[1:2], mos=[3.0]) == [2.5]
    with pytest.raises(QponderError, match="consistency_gate: 'mos' is not one of none, accuracy"):
        R.build("qponder_reward", consistency_gate="mos")


def test_consistency_margin_pays_in_full_inside_the_band_around_the_reasoning():
    """With a margin the consistency term is flat within it (no pull onto the reader's value), linear outside."""
    assert R.consistency_score(3.0, 3.4, margin=0.5) == 1.0
    assert R.consistency_score(3.0, 3.9, margin=0.5) == pytest.approx(0.6)  # 1 - (0.9 - 0.5)
    assert R.consistency_score(3.0, 3.9) == pytest.approx(0.1)  # no margin: 1 - 0.9
    assert R.consistency_score(None, 3.0, margin=0.5) == 0.0
    texts = [done(FAIR, "3.40"), done(FAIR, "2.00"), done(FAIR, "4.75")]  # the reader: FAIR -> 3.0
    assert R.build("consistency", margin=0.5)(completions=texts, mos=[3.0] * 3) == pytest.approx([1.0, 0.5, 0.0])
    fn = R.build("qponder_reward", w_format=0.0, w_accuracy=0.0, w_consistency=1.0, consistency_margin=0.5)
    assert fn(completions=texts, mos=[3.0] * 3) == pytest.approx([1.0, 0.5, 0.0])
    with pytest.raises(QponderError, match=r"consistency.margin must be a number >= 0, got -0.1"):
        R.build("consistency", margin=-0.1)
    with pytest.raises(QponderError, match=r"qponder_reward.consistency_margin must be a number >= 0, got 'x'"):
        R.build("qponder_reward", consistency_margin="x")


def test_qponder_reward_accuracy_variant():
    fn = R.build("qponder_reward", w_format=0.0, w_consistency=0.0, accuracy="accuracy_threshold",
                 accuracy_params={"tau": 0.6})
    assert fn(completions=[done(FAIR, "3.50")], mos=[3.0]) == [1.0]
    with pytest.raises(QponderError, match="unknown accuracy variant 'format'"):
        R.build("qponder_reward", accuracy="format")


# ------------------------------------------------------------------------------------------------ registry

def test_build_and_build_reward_funcs():
    assert R.available_rewards() == ["accuracy", "accuracy_gaussian", "accuracy_threshold", "consistency", "format",
                                     "qponder_reward", "rank_fidelity"]
    with pytest.raises(QponderError, match="unknown reward 'acc'; available: accuracy"):
        R.build("acc")
    with pytest.raises(QponderError, match="unknown parameter 'sigma'; valid: tau"):
        R.build("accuracy", sigma=1.0)
    with pytest.raises(QponderError, match="positive number"):
        R.build("accuracy", tau=0)
    funcs, weights = R.build_reward_funcs([
        {"name": "format", "weight": 0.5},
        R.RewardSpec("accuracy", 1.0, {"tau": 0.5}),
        {"name": "accuracy", "params": {"tau": 2.0}},
        {"name": "consistency", "weight": "0.25", "params": {"reader": "lexicon"}},
    ])
    assert [f.__name__ for f in funcs] == ["format", "accuracy", "accuracy#2", "consistency"]
    assert weights == [0.5, 1.0, 1.0, 0.25]
    assert funcs[1].width == 0.5 and funcs[2].width == 2.0
    for bad, msg in [([], "no rewards configured"), ([{"name": "format", "wieght": 1}], "unknown key 'wieght'"),
                     ([{"name": "format", "weight": "x"}], "weight must be a number"),
                     ([{"name": "format", "weight": float("inf")}], "finite"),
                     ([{"weight": 1}], "missing reward name"), (["format"], "expected a mapping")]:
        with pytest.raises(QponderError, match=msg):
            R.build_reward_funcs(bad)


def test_rewards_are_picklable_with_trl_naming():
    from trl.trainer.utils import get_callable_name

    fn = R.build("qponder_reward")
    assert get_callable_name(fn) == "qponder_reward"
    clone = pickle.loads(pickle.dumps(fn))
    assert clone(completions=[done(FAIR, "3")], mos=[3.0]) == fn(completions=[done(FAIR, "3")], mos=[3.0])


def test_log_metric_is_optional_and_receives_zero_share():
    texts = [done("r", "3"), "x", "y", done("r", "4")]
    assert R.build("format")(completions=texts) == [1.0, 0.0, 0.0, 1.0]  # no log_metric: nothing to call
    rec = Recorder()
    R.build("format")(completions=texts, log_metric=rec)
    assert rec.calls == [("rewards/format/zero_frac", 0.5)]
    rec = Recorder()
    R.build("accuracy")(completions=texts, mos=[3.0] * 4, log_metric=None)  # explicit None is fine too


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=60), st.floats(1, 5), st.sampled_from("abc")), min_size=1, max_size=12),
       st.booleans())
def test_fuzz_every_pure_reward(rows, as_chat):
    texts = [t if i % 2 else done(t, f"{m:.2f}") for i, (t, m, _) in enumerate(rows)]
    completions = [chat(t) for t in texts] if as_chat else texts
    mos_by_image = {"a": 2.0, "b": 3.5, "c": 4.0}
    cols = dict(mos=[mos_by_image[g] for _, _, g in rows], image_id=[g for _, _, g in rows])
    for name in ("format", "accuracy", "accuracy_threshold", "accuracy_gaussian", "consistency"):
        out = R.build(name)(prompts=None, completions=completions, **cols)
        assert len(out) == len(rows) and all(0.0 <= v <= 1.0 for v in out)
    out = R.build("rank_fidelity")(completions=completions, **cols)
    assert all(0.0 <= v <= 1.0 + 2e-4 for v in out)
    out = R.build("qponder_reward")(completions=completions, **cols)
    assert all(0.0 <= v <= 3.0 for v in out)


# ------------------------------------------------------------------------------------------------ levels reader

@pytest.fixture(scope="module")
def levels_reader(tiny_model_dir):
    import torch

    torch.set_num_threads(1)
    return R.build_reader("levels", model=str(tiny_model_dir), device="cpu", batch_size=8)


def test_levels_reader_on_the_tiny_model(levels_reader, tiny_model_dir):
    texts = [FAIR, BAD, "Sharp.", "A much longer assessment: the image is very sharp, clean and vivid, with fine "
             "detail everywhere and natural colours; exposure is balanced. " * 3]
    batched = levels_reader(texts)
    assert len(batched) == 4 and all(1.0 <= v <= 5.0 for v in batched)
    one_by_one = [levels_reader([t])[0] for t in texts]
    assert batched == pytest.approx(one_by_one, abs=1e-5)  # left padding does not change the read-out
    assert levels_reader(texts) == batched  # deterministic
    small_batches = R.build_reader("levels", model=str(tiny_model_dir), device="cpu", batch_size=3)(texts)
    assert small_batches == pytest.approx(batched, abs=1e-5)
    assert levels_reader([]) == []
    # one load, shared by every reader on the same (path, device, dtype)
    assert sum(1 for k in R._MODEL_CACHE if k[0] == str(tiny_model_dir)) == 1


def test_levels_reader_distinct_level_tokens_and_user_placement(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = R.LevelsReader.level_token_ids(tok)
    assert len(set(ids)) == 5
    assert [tok.decode([i]) for i in ids] == [" excellent", " good", " fair", " poor", " bad"]
    reader = R.LevelsReader(str(tiny_model_dir), device="cpu", placement="user")
    rendered = reader.render(tok, "Blurry.")
    assert rendered.rstrip().endswith("assistant") and "Blurry." in rendered
    assert R.LevelsReader(str(tiny_model_dir), device="cpu").render(tok, "Blurry.").endswith("the image is")
    vals = reader([FAIR, BAD])
    assert all(1.0 <= v <= 5.0 for v in vals)
    with pytest.raises(QponderError, match="model parameter is required"):
        R.build_reader("levels")


def test_consistency_reward_with_the_levels_reader(tiny_model_dir, levels_reader):
    # reader parameters flat beside the reward's own (the recipe form) ...
    fn = R.build("consistency", reader="levels", model=str(tiny_model_dir), device="cpu")
    out = fn(completions=[done(FAIR, "3.00"), done(BAD, "1.00"), "no answer"])
    s_r = levels_reader([FAIR, BAD])
    assert out == pytest.approx([max(0, 1 - abs(s_r[0] - 3)), max(0, 1 - abs(s_r[1] - 1)), 0.0], abs=1e-5)
    # ... or nested under reader_params; the same model is shared through the cache
    fn2 = R.build("qponder_reward", w_format=0, w_accuracy=0, reader="levels",
                  reader_params={"model": str(tiny_model_dir), "device": "cpu"})
    assert fn2(completions=[done(FAIR, "3.00")], mos=[3.0]) == pytest.approx(out[:1], abs=1e-5)


# ------------------------------------------------------------------------------------------------ judge reader

class _JudgeHandler(BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible chat-completions endpoint. The reasoning text tells it how to answer:
    ``reply=<text>`` answers with that text, ``status=<code>`` fails with that status, ``garbage`` returns
    non-JSON."""

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        user = body["messages"][-1]["content"]
        if "rate-limited-once" in user and not self.server.limited:
            self.server.limited = True
            send_json(self, 429, b"", {"Retry-After": "0"})
            return
        if "status=" in user:
            send_json(self, int(user.split("status=")[1][:3]))
            return
        if "garbage" in user:
            send_json(self, 200, b"not json")
            return
        reply = user.split("reply=")[1].split("\n")[0] if "reply=" in user else "3"
        send_json(self, 200, chat_completion([reply], model=body["model"]))

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    with LocalServer(_JudgeHandler) as local:
        local.httpd.seen = []
        local.httpd.limited = False
        yield local.httpd


def test_judge_reader_against_a_local_server(judge_server, monkeypatch):
    monkeypatch.setenv("QPONDER_TEST_JUDGE_KEY", "sk-test-123")
    base = f"http://127.0.0.1:{judge_server.server_address[1]}/v1"
    reader = R.build_reader("judge", base_url=base, model="judge-7b", api_key_env="QPONDER_TEST_JUDGE_KEY",
                            timeout_s=5, max_concurrency=4, retries=1)
    texts = ["reply=3.5", "reply=Score: 4/5.", "reply=I cannot tell", "status=500", "status=404", "garbage",
             "reply=On a scale of 1 to 5, it is a 2."]
    assert reader(texts) == [3.5, 4.0, None, None, None, None, 2.0]
    assert (reader.requests, reader.failures) == (7, 4)
    seen = judge_server.seen
    assert {s["path"] for s in seen} == {"/v1/chat/completions"}
    assert {s["auth"] for s in seen} == {"Bearer sk-test-123"}
    assert len(seen) == 8  # the 500 was retried once; the 404 was not
    body = seen[0]["body"]
    assert body["model"] == "judge-7b" and body["temperature"] == 0.0
    assert body["messages"][0]["role"] == "system" and "reply=" in body["messages"][1]["content"]
    assert "sk-test" not in json.dumps(body)


def test_judge_failures_give_zero_and_are_counted(judge_server):
    base = f"http://127.0.0.1:{judge_server.server_address[1]}"
    fn = R.build("consistency", reader="judge", reader_params={"base_url": base, "model": "m"})
    rec = Recorder()
    out = fn(completions=[done("reply=3", "3.50"), done("status=503", "3.50")], log_metric=rec)
    assert out == [0.5, 0.0]
    assert rec.metrics["rewards/consistency/reader_fail_frac"] == 0.5
    assert judge_server.seen[0]["auth"] is None  # no api_key_env: no Authorization header


def test_a_failing_judge_is_warned_about_and_then_stops_the_run(judge_server, caplog):
    # A judge that answers 503 to every request zeroes the consistency term. With the defaults each such call is
    # a warning, and the 20th in a row stops the run with an error that says what to do.
    base = f"http://127.0.0.1:{judge_server.server_address[1]}"
    fn = R.build("consistency", reader="judge", base_url=base, model="m", retries=0)
    down = [done("status=503", "3.00")] * 2
    with caplog.at_level("WARNING", logger="qponder.rewards"):
        for _ in range(19):
            assert fn(completions=down) == [0.0, 0.0]
        warned = [r.getMessage() for r in caplog.records if "reader_fail_warn" in r.getMessage()]
        assert len(warned) == 19
        assert warned[0] == ("consistency: the judge reader could not score 2 of 2 texts in this call (100%, above "
                             "reader_fail_warn 20%); they get 0 consistency; 1 call(s) in a row above 50%, the run "
                             "stops at 20")
        with pytest.raises(QponderError) as err:
            fn(completions=down)
    msg = str(err.value)
    assert msg.startswith("consistency: the judge reader could not score 100% of the texts in the last reward call, "
                          "and more than 50% (reader_fail_stop) in each of the last 20 calls")
    assert "judge endpoint that is down" in msg and "raise reader_fail_stop / reader_fail_stop_calls" in msg


def test_reader_failure_share_thresholds_and_reset():
    answers: list[list] = []

    def flaky(texts):  # the next queued answer, one value per text
        return answers.pop(0)

    fn = R.build("consistency", reader=flaky, reader_fail_warn=0.3, reader_fail_stop=0.5, reader_fail_stop_calls=2)
    four = [done(FAIR, "3.00")] * 4
    bad, good, quarter, half = [None] * 4, [3.0] * 4, [3.0, 3.0, 3.0, None], [3.0, 3.0, None, None]
    answers.extend([bad, good, bad, quarter, bad, half, bad, bad])
    for _ in range(7):  # a good call, a share at or below the bound, resets the count; no error yet
        fn(completions=four)
    assert fn.failure_watch.bad_calls == 1
    with pytest.raises(QponderError, match="more than 50% .* in each of the last 2 calls"):
        fn(completions=four)
    # nothing to read (no well-formed completion) leaves the count as it is
    fn.failure_watch.bad_calls = 1
    assert fn(completions=["no answer"]) == [0.0] and fn.failure_watch.bad_calls == 1
    # 0 calls: never stops; the same reward inside qponder_reward is watched the same way, named as configured
    never = R.build("consistency", reader=lambda texts: [None] * len(texts), reader_fail_stop_calls=0)
    for _ in range(30):
        never(completions=four)
    both = R.build("qponder_reward", reader=flaky, reader_fail_stop_calls=1)
    answers.append(bad)
    with pytest.raises(QponderError, match="^qponder_reward: the flaky reader could not score 100%"):
        both(completions=four, mos=[3.0] * 4)
    unweighted = R.build("qponder_reward", w_consistency=0, reader=flaky, reader_fail_stop_calls=1)
    answers.append(bad)
    assert unweighted(completions=four, mos=[3.0] * 4) == [2.0] * 4  # only logged, so not watched
    for bad_params, msg in [({"reader_fail_warn": 1.5}, "consistency.reader_fail_warn must be a share between 0 "
                                                         "and 1, got 1.5"),
                            ({"reader_fail_stop": "x"}, "reader_fail_stop must be a share"),
                            ({"reader_fail_stop_calls": -1}, "reader_fail_stop_calls must be a whole number >= 0"),
                            ({"reader_fail_stop_calls": 2.5}, "reader_fail_stop_calls must be a whole number")]:
        with pytest.raises(QponderError, match=msg):
            R.build("consistency", **bad_params)


def test_judge_reader_retries_a_rate_limited_request(judge_server):
    # Regression: the reader had its own HTTP loop that gave up on 429 at once (a rate-limited judge silently
    # zeroed the consistency reward); it now uses OpenAIChatClient's rules (Retry-After honoured).
    reader = R.JudgeReader(f"http://127.0.0.1:{judge_server.server_address[1]}/v1", "m", retries=1)
    assert reader(["rate-limited-once reply=4.5"]) == [4.5]
    assert len(judge_server.seen) == 2 and (reader.requests, reader.failures) == (1, 0)


def test_judge_unreachable_server_and_config_errors(monkeypatch):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reader = R.JudgeReader(f"http://127.0.0.1:{port}", "m", timeout_s=2, retries=0)
    assert reader(["x", "y"]) == [None, None]
    assert reader.failures == 2
    with pytest.raises(QponderError, match="never put the API key in the config"):
        R.build_reader("judge", base_url="http://127.0.0.1:1", model="m", api_key="sk-secret")
    monkeypatch.delenv("QPONDER_UNSET_KEY", raising=False)
    with pytest.raises(QponderError, match="QPONDER_UNSET_KEY.*is not set"):
        R.build_reader("judge", base_url="http://127.0.0.1:1", model="m", api_key_env="QPONDER_UNSET_KEY")
    with pytest.raises(QponderError, match="base_url and model are required"):
        R.build_reader("judge")


@pytest.mark.parametrize("reply, expected", [
    ("3", 3.0), ("3.5", 3.5), (" **4** ", 4.0), ("2/5", 2.0), ("4 out of 5", 4.0), ("Score: 1.5.", 1.5),
    ("<think>hmm</think><answer>2.5</answer>", 2.5), ("On a 1-5 scale: 3", 3.0),
    ("3 or 4", None), ("7", None), ("0", None), ("none", None), ("", None), (None, None),
])
def test_parse_judge_reply(reply, expected):
    assert R.parse_judge_reply(reply) == expected


def test_reward_stats():
    assert R.reward_stats([0.0, 1.0, 0.0, 1.0]) == {"mean": 0.5, "std": 0.5, "zero_frac": 0.5}
    assert R.reward_stats([]) == {"mean": 0.0, "std": 0.0, "zero_frac": 0.0}
    assert math.isclose(R.reward_stats([2.0])["std"], 0.0)


def test_format_target_scores_one_on_every_component():
    t = format_target(BAD, 1.0)
    assert R.build("qponder_reward")(completions=[t], mos=[1.0]) == [3.0]
