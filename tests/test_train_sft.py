"""SFT's answer weight: which tokens it weights, and that the trainer's loss is the weighted token mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from qponder.errors import QponderError
from qponder.prompts import format_target
from qponder.train.sft import answer_token_weights, answer_weighted_trainer

REASONING = "Edges are slightly soft. Overall, the quality is fair."


def test_answer_token_weights_by_hand():
    pieces = ["<think>", "Soft", ".", "</think>\n", "<answer", ">", "3", ".", "9", "6", "</", "answer", ">",
              "<|im_end|>"]
    w = answer_token_weights(pieces, 5.0)
    assert [p for p, x in zip(pieces, w) if x == 5.0] == ["3", ".", "9", "6"]
    assert all(x == 1.0 for p, x in zip(pieces, w) if p not in "3.96")
    # A token that straddles the tag and the score is weighted; an unclosed or blank block is not.
    assert answer_token_weights(["<answer>3", ".5</answer>"], 2.0) == [2.0, 2.0]
    assert answer_token_weights(["say <answer> </answer> tags"], 2.0) == [1.0]
    assert answer_token_weights(["<answer>3.5"], 2.0) == [1.0]
    # Packed rows: every closed block.
    assert answer_token_weights(["<answer>", "2", "</answer>", "x", "<answer>", "4", "</answer>"], 3.0) == \
        [1.0, 3.0, 1.0, 1.0, 1.0, 3.0, 1.0]


@given(st.floats(1, 5), st.lists(st.integers(1, 7), min_size=1, max_size=80), st.sampled_from([0.5, 2.0, 10.0]))
@settings(max_examples=200, deadline=None)
def test_answer_token_weights_cover_exactly_the_score(score, cuts, weight):
    """However the target is cut into tokens, the weighted ones are the contiguous run that holds the score's
    characters, and nothing outside the answer tags' content is weighted."""
    text = format_target(REASONING, score)
    pieces, at = [], 0
    for n in cuts * (len(text) // sum(cuts) + 1):
        if at >= len(text):
            break
        pieces.append(text[at:at + n])
        at += n
    assert "".join(pieces) == text
    w = answer_token_weights(pieces, weight)
    marked = [i for i, x in enumerate(w) if x == weight]
    assert marked == list(range(marked[0], marked[-1] + 1))
    starts = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    a, b = text.rindex("<answer>") + len("<answer>"), text.rindex("</answer>")
    assert starts[marked[0]] <= a and starts[marked[-1]] + len(pieces[marked[-1]]) >= b
    assert all(starts[i] < b and a < starts[i] + len(pieces[i]) for i in marked)


def test_the_real_tokenizer_weights_the_score_digits(real_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir)
    ids = tok(format_target(REASONING, 3.96) + "<|im_end|>\n")["input_ids"]
    w = answer_token_weights([tok.decode([i]) for i in ids], 4.0)
    assert tok.decode([i for i, x in zip(ids, w) if x == 4.0]) == "3.96"
    assert sum(x == 4.0 for x in w) == 4  # Qwen writes digits one token each


def test_the_weight_must_be_positive_and_finite():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(QponderError, match="answer_loss_weight"):
            answer_weighted_trainer(object, bad)


def _records(root: Path, n: int = 3) -> list[dict]:
    recs = []
    for i in range(n):
        path = root / f"img{i}.png"
        Image.new("RGB", (56, 56), (40 * i, 120, 200 - 30 * i)).save(path)
        recs.append({"image": str(path), "target": format_target(REASONING, 1.5 + i)})
    return recs


@pytest.fixture(scope="module")
def trainers(tiny_model_dir, tmp_path_factory):
    """TRL's SFTTrainer and the answer-weighted one (weight 1 and 6) on the same tiny model, and one batch."""
    from trl import SFTConfig, SFTTrainer

    from qponder.models import load_model_and_processor
    from qponder.train.data import sft_dataset

    tmp = tmp_path_factory.mktemp("sft-w")
    lm = load_model_and_processor(tiny_model_dir, trainable=True)
    ds = sft_dataset(_records(tmp))

    def make(cls, **over):
        args = SFTConfig(output_dir=str(tmp / "out"), max_length=None, assistant_only_loss=True, bf16=False,
                         report_to="none", use_cpu=True, remove_unused_columns=False, **over)
        return cls(model=lm.model, args=args, train_dataset=ds, processing_class=lm.processor)

    plain = make(SFTTrainer)
    batch = plain.data_collator([ds[i] for i in range(len(ds))])
    return make, plain, {w: make(answer_weighted_trainer(SFTTrainer, w)) for w in (1.0, 6.0)}, batch, lm


def _manual_loss(model, batch, weights) -> torch.Tensor:
    """The weighted token mean from the model's full logits (no fused head): sum(w * nll) / supervised tokens."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    nll = -torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (nll * weights[:, 1:] * mask).sum() / mask.sum()


def test_weight_one_is_trls_own_loss_and_a_weight_scales_exactly_the_score(trainers):
    _, plain, weighted, batch, lm = trainers
    model = plain.model
    model.eval()  # no dropout: the losses are compared across forwards
    with torch.no_grad():
        trl_loss = plain.compute_loss(model, dict(batch))
        same = weighted[1.0].compute_loss(model, dict(batch))
        six = weighted[6.0].compute_loss(model, dict(batch))
        w6 = weighted[6.0]._weights(batch["labels"])
        ones = torch.ones_like(w6)
        assert torch.allclose(same, trl_loss, rtol=1e-5, atol=1e-6)
        assert torch.allclose(trl_loss, _manual_loss(model, batch, ones), rtol=1e-4, atol=1e-5)
        assert torch.allclose(six, _manual_loss(model, batch, w6), rtol=1e-4, atol=1e-5)
        assert six > trl_loss
    # The weighted positions are the score's digits, in every row.
    tok = lm.processor.tokenizer
    for row, target in zip(range(batch["labels"].shape[0]), ("1.50", "2.50", "3.50")):
        assert tok.decode(batch["labels"][row][w6[row] == 6.0]) == target
    # The hook is gone after the call: the model's own forward is unchanged.
    assert not model._forward_hooks


def test_the_weight_refuses_a_loss_computed_elsewhere(trainers):
    from trl import SFTTrainer

    make = trainers[0]
    with pytest.raises(QponderError, match="label smoothing"):
        make(answer_weighted_trainer(SFTTrainer, 3.0), label_smoothing_factor=0.1)


def test_sft_settings_train_with_the_answer_weight(tiny_model_dir, tmp_path):
    """``answer_loss_weight`` in the recipe reaches the trainer: the logged loss is the weighted one."""
    from qponder.config import load_config
    from qponder.train.sft import SFTSettings, run_sft

    recs = _records(tmp_path)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    losses = {}
    for w in (1.0, 50.0):
        out = tmp_path / f"w{w}"
        res = run_sft(load_config(SFTSettings, None, [
            f"model.path={tiny_model_dir}", f"data={data}", f"run.output_dir={out}", "model.dtype=float32",
            "optim.batch_size=3", "optim.max_steps=1", f"answer_loss_weight={w}", "run.save_steps=1000"]))
        assert res["global_step"] == 1
        losses[w] = res["train_loss"]
    # Same model, same batch, one step: the 4 score tokens of ~30 weigh 50x, so the loss is several times larger.
    assert losses[50.0] > 3 * losses[1.0]


def test_a_bad_weight_in_the_recipe_is_refused_before_anything_loads(tmp_path):
    from qponder.config import load_config
    from qponder.train.sft import SFTSettings, run_sft

    cfg = load_config(SFTSettings, None, ["model.path=/nonexistent", "data=/nonexistent.jsonl",
                                          f"run.output_dir={tmp_path / 'o'}", "answer_loss_weight=-2"])
    with pytest.raises(QponderError, match="answer_loss_weight: -2.0 must be a positive"):
        run_sft(cfg)
    assert not (tmp_path / "o").exists()
