"""The output contract: every parsing rule of issue #3, pinned by example, plus fuzzing and speed checks."""

from __future__ import annotations

import dataclasses
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qponder.parsing import ParsedCompletion, parse_completion, parse_score
from qponder.prompts import format_target

GOOD = "<think>Slightly soft, little noise.</think>\n<answer>3.72</answer>"


def answer(content: str) -> str:
    return f"<think>ok</think><answer>{content}</answer>"


# ------------------------------------------------------------------------------------------------ score reading

@pytest.mark.parametrize("content, expected", [
    ("3", 3.0),
    ("3.", 3.0),
    ("3.72", 3.72),
    ("3.725", 3.725),  # read with any number of decimals (format_ok is the strict one)
    (" 4.5 ", 4.5),
    ("\n2.25\n", 2.25),
    ("1", 1.0),
    ("1.00", 1.0),
    ("5", 5.0),
    ("5.0", 5.0),
    ("03", 3.0),
    ("3/5", 3.0),
    ("3.5 / 5", 3.5),
    ("4/5.0", 4.0),
])
def test_score_accepted(content, expected):
    assert parse_completion(answer(content)).score == expected


@pytest.mark.parametrize("content", [
    "", "   ", "0.99", "5.01", "6", "0", "10", "-3", "+3", "3e0", ".5", "3,5", "3 4", "3.5.1", "three",
    "Score: 3", "3 points", "3/10", "3/5/5", "about 3", "\u0663",  # Arabic-Indic digit three: ASCII digits only
    "3" + "0" * 100,  # absurdly long content
    "<think>3</think>",
])
def test_score_rejected(content):
    assert parse_completion(answer(content)).score is None


def test_score_comes_from_the_last_closed_answer_block():
    assert parse_score("<answer>2</answer> then <answer>4</answer>") == 4.0
    # the last block decides, even when it is invalid and an earlier one was valid
    assert parse_score("<answer>2</answer> then <answer>four</answer>") is None
    # an unclosed trailing block is not a block: the last *closed* one is read
    assert parse_score("<answer>2</answer> then <answer>4") == 2.0
    # nested opening tags: the content starts at the nearest <answer> before the last </answer>
    assert parse_score("<answer>1<answer>2.5</answer>") == 2.5


def test_unclosed_or_missing_answer_gives_no_score():
    assert parse_completion("<think>fine</think><answer>3.5").score is None
    assert parse_completion("<think>fine</think> 3.5").score is None
    assert parse_completion("3.5</answer>").score is None
    assert parse_completion("").score is None


def test_text_around_the_blocks_does_not_prevent_reading_the_score():
    p = parse_completion("Sure! Here you go: <think>Sharp.</think> and so <answer>4.25</answer> Hope it helps.")
    assert p.score == 4.25
    assert p.reasoning == "Sharp."
    assert p.format_ok is False
    assert parse_completion("<answer>2</answer>").score == 2.0  # no think block at all


def test_tags_are_case_sensitive():
    p = parse_completion("<Think>x</Think><Answer>3</Answer>")
    assert (p.reasoning, p.score, p.format_ok) == (None, None, False)


# ------------------------------------------------------------------------------------------------ format_ok

@pytest.mark.parametrize("text", [
    GOOD,
    "<think>a</think><answer>3</answer>",  # no whitespace between the blocks
    "  \n<think> a </think> \n\t <answer> 3.5 </answer>\n  ",  # whitespace everywhere it is allowed
    "<think>a</think>\n<answer>3.</answer>",
    "<think>a</think>\n<answer>4.50</answer>",
    "<think>a</think>\n<answer>4/5</answer>",  # the tolerated "/5"
    "<think>multi\nline\nreasoning</think>\n<answer>1.00</answer>",
    "<think>a</think>\n<answer>5</answer>",
])
def test_format_ok(text):
    p = parse_completion(text)
    assert p.format_ok is True
    assert p.score is not None and p.reasoning


@pytest.mark.parametrize("text", [
    "<answer>3</answer>",  # no think block
    "<think>a</think>",  # no answer block
    "<think>   </think><answer>3</answer>",  # empty reasoning
    "<think></think><answer>3</answer>",
    "<think>a</think><think>b</think><answer>3</answer>",  # two think blocks
    "<think>a</think><answer>3</answer><answer>3</answer>",  # two answer blocks
    "<answer>3</answer><think>a</think>",  # wrong order
    "<think>a<answer>3</think></answer>",  # interleaved
    "<think>a</think> so <answer>3</answer>",  # text between the blocks
    "Sure. <think>a</think><answer>3</answer>",  # leading text
    "<think>a</think><answer>3</answer> Done.",  # trailing text
    "<think>a</think><answer>3.725</answer>",  # more than two decimals
    "<think>a</think><answer>6</answer>",  # out of range
    "<think>a</think><answer>three</answer>",
    "<think>a</think><answer></answer>",
    "<think>a</think><answer>3",  # unclosed answer
    "<think>a<answer>3</answer>",  # unclosed think
    "a</think><answer>3</answer>",  # opening think tag missing
    "<think>a</think><answer>3</answer></think>",  # stray closing tag
    "<THINK>a</THINK><ANSWER>3</ANSWER>",
])
def test_format_not_ok(text):
    assert parse_completion(text).format_ok is False


# ------------------------------------------------------------------------------------------------ reasoning

def test_reasoning_is_the_stripped_first_think_block():
    assert parse_completion(GOOD).reasoning == "Slightly soft, little noise."
    assert parse_completion("<think>  first  </think><think>second</think>").reasoning == "first"
    assert parse_completion("<think>   </think><answer>3</answer>").reasoning is None
    assert parse_completion("<answer>3</answer>").reasoning is None
    assert parse_completion("just text").reasoning is None


def test_unclosed_think_reads_up_to_the_answer_or_the_end():
    assert parse_completion("<think>cut off mid-sentence").reasoning == "cut off mid-sentence"
    assert parse_completion("<think>blurry <answer>2</answer>").reasoning == "blurry"
    assert parse_completion("<think>  ").reasoning is None


def test_closing_tag_without_opening_reads_from_the_start():
    # a chat template that pre-fills "<think>" leaves only the closing tag in the completion
    p = parse_completion("Noisy and dark.</think>\n<answer>1.5</answer>")
    assert (p.reasoning, p.score, p.format_ok) == ("Noisy and dark.", 1.5, False)


def test_parsed_completion_is_frozen():
    p = parse_completion(GOOD)
    assert isinstance(p, ParsedCompletion)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.score = 1.0  # type: ignore[misc]


def test_non_string_input_parses_as_empty():
    for bad in (None, 3, b"<think>a</think><answer>3</answer>", ["x"]):
        assert parse_completion(bad) == ParsedCompletion(None, None, False)  # type: ignore[arg-type]


def test_format_target_round_trips():
    p = parse_completion(format_target("  Sharp, clean.  ", 4.256))
    assert p == ParsedCompletion("Sharp, clean.", 4.26, True)


# ------------------------------------------------------------------------------------------------ fuzzing

_PIECES = st.sampled_from([
    "<think>", "</think>", "<answer>", "</answer>", "<think", "answer>", "<", ">", "/", "3", "5", ".", "0", "9",
    "4.25", "/5", " ", "\n", "\t", "text", "é", "\u0663", "\x00", "\u2028",
])
_SOUP = st.lists(_PIECES, max_size=30).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), _SOUP))
def test_fuzz_never_raises_and_invariants_hold(text):
    p = parse_completion(text)
    assert isinstance(p.format_ok, bool)
    if p.score is not None:
        assert 1.0 <= p.score <= 5.0
    if p.reasoning is not None:
        assert p.reasoning == p.reasoning.strip() and p.reasoning
    if p.format_ok:
        assert p.score is not None and p.reasoning is not None
        assert round(p.score, 2) == p.score


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), min_size=1,
            max_size=200).filter(lambda s: s.strip()),
    st.floats(min_value=1.0, max_value=5.0, allow_nan=False),
)
def test_fuzz_format_target_is_always_well_formed(reasoning, score):
    p = parse_completion(format_target(reasoning, score))
    assert p.format_ok is True
    assert p.reasoning == reasoning.strip()
    assert p.score == float(f"{score:.2f}")


# ------------------------------------------------------------------------------------------------ speed

@pytest.mark.parametrize("text", [
    "<think>" * 200_000,
    "</think>" * 200_000 + "<answer>3</answer>",
    "<answer>" * 200_000 + "</answer>",
    "<think>a</think><answer>" + "9" * 1_000_000 + "</answer>",
    "<think>a</think><answer>3" + " " * 1_000_000 + "/5</answer>",
    "<think>" + "a " * 1_000_000 + "</think><answer>3</answer>",
    "<answer>3" + "</answer><answer>3" * 100_000 + "</answer>",
])
def test_pathological_inputs_are_linear(text):
    t = time.perf_counter()
    parse_completion(text)
    assert time.perf_counter() - t < 0.5


