"""Tiny Qwen-VL models built offline: the demo's and the tests' stand-in for a downloaded checkpoint.

``build_tiny_model(out_dir, ...)`` makes a randomly initialised Qwen2-VL / Qwen2.5-VL / Qwen3-VL model with a locally
trained byte-level BPE tokenizer carrying the Qwen special tokens and Qwen's pre-tokenizer (so numbers are written
one digit per token, as a real Qwen model writes them), or a real tokenizer from a folder (``tokenizer=``),
the real chat template (from TRL), and a small image-pixel budget, and saves it as an ordinary model folder, the seam
through which the core loads it (``qponder.models.load_model_and_processor``). Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from qponder.errors import QponderError
from qponder.models import _check_family, _image_only_classes

# Qwen special tokens, in the order of the real Qwen2/2.5/3-VL vocab tail.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# The pre-tokenizer split pattern of Qwen2/2.5/3's tokenizer.json (every digit stands alone: \p{N}).
QWEN_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                      r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Added (non-special) tokens. Qwen3's real tokenizer has the first four so; the <answer> tags are added here alone
# (the real one writes "<answer>" as '<', 'answer', '>'; tests/test_real_tokenizer.py).
QWEN_ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<answer>", "</answer>"]


@dataclass(frozen=True)
class TinySize:
    hidden: int
    layers: int
    vision_depth: int
    vision_hidden: int
    max_image_tokens: int  # merged vision tokens per image (pixel budget)
    vocab: int


TINY_SIZES = {
    # ~0.3M params: tests and quick checks.
    "tiny": TinySize(hidden=64, layers=2, vision_depth=2, vision_hidden=32, max_image_tokens=16, vocab=1024),
    # a few million params: the demo and the learning-curve benchmark.
    "small": TinySize(hidden=256, layers=4, vision_depth=4, vision_hidden=128, max_image_tokens=64, vocab=2048),
}




_IQA_WORDS = (
    "the image is sharp blurry blur soft focus detail details fine edges crisp noise noisy grain grainy clean "
    "compression artefacts artifacts blocking ringing banding pixelated pixelation jpeg exposure exposed dark "
    "bright overexposed underexposed highlights shadows clipped contrast flat harsh colour color colours colors "
    "saturated desaturated washed out cast natural vivid content subject composition quality overall perceived "
    "excellent good fair poor bad very slightly moderately severely strongly heavily mildly somewhat quite not "
    "visible strong weak mild severe minor major little no some much with and but so which while although "
    "because therefore overall score rate rating assessment level low high medium average acceptable pleasing "
    "annoying distracting degraded degradation distortion distorted smooth texture textures region regions "
    "background foreground photo photograph picture scene lighting light well reasonably clearly lacks shows "
    "has have appears looks seems there are is of in on to a an it its this that"
).split()


def _tokenizer_corpus(n: int = 6000, seed: int = 0) -> list[str]:
    """A synthetic corpus in the language the demo teacher and prompts speak, so IQA text tokenises compactly."""
    from qponder.prompts import LEVEL_READOUT_PROMPT, LEVELS, REASONING_READOUT_PROMPT, STUDENT_PROMPT, TEACHER_PROMPTS

    rnd = random.Random(seed)
    fixed = [STUDENT_PROMPT, LEVEL_READOUT_PROMPT, REASONING_READOUT_PROMPT]
    fixed += [t.system + "\n" + t.user for t in TEACHER_PROMPTS.values()]
    lines = fixed * 20
    level_words = [w for w, _ in LEVELS]
    for _ in range(n):
        k = rnd.randint(6, 20)
        s = " ".join(rnd.choice(_IQA_WORDS) for _ in range(k))
        lvl = rnd.choice(level_words)
        lines.append(f"<think>{s.capitalize()}. The quality is{lvl}.</think>\n<answer>{rnd.uniform(1, 5):.2f}</answer>")
        lines.append(f"The quality of the image is{lvl}")
    return lines


def build_tokenizer(vocab_size: int = 1024, seed: int = 0):
    """Byte-level BPE trained locally (no download), wrapped as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    # Qwen's own pre-tokenization: its split pattern (one token per digit, so a score is written digit by digit as
    # the real model writes it), then byte-level mapping.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_tokenizer_corpus(seed=seed), trainer=trainer)
    tok.add_tokens(QWEN_ADDED_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None, model_max_length=8192, padding_side="left",
                                   clean_up_tokenization_spaces=False)


def load_tokenizer(path: str | os.PathLike):
    """A real tokenizer folder (e.g. Qwen's ``tokenizer.json`` + ``tokenizer_config.json``) set up as the tiny models'
    own: ``<|im_end|>`` ends a turn, ``<|endoftext|>`` pads, left padding. Every Qwen special token must be in it,
    each as one token, since the model's image/video/EOS ids are read from it."""
    from transformers import AutoTokenizer

    folder = Path(path)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise QponderError(f"{folder}: no tokenizer.json or tokenizer_config.json (not a tokenizer folder)")
    tok = AutoTokenizer.from_pretrained(str(folder))
    vocab = tok.get_vocab()
    missing = [t for t in QWEN_SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise QponderError(f"{folder}: the tokenizer lacks the Qwen special token(s) {', '.join(missing)}")
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.padding_side = "left"
    return tok


def _chat_template(family: str) -> str:
    import trl

    name = "qwen3_vl.jinja" if family == "qwen3_vl" else "qwen2_5_vl.jinja"
    # TRL ships the original Qwen templates and recognises them to swap in its assistant-mask training variants.
    return (Path(trl.__file__).parent / "chat_templates" / name).read_text()


def dct_filter_bank(n_filters: int, patch: int, channels: int = 3, temporal: int = 2):
    """2-D DCT-II filters for a (n, C, T, P, P) patch embedding: luminance filters spread over the whole spectrum
    (low to high frequency) plus a few low-frequency colour-difference filters, each scaled by (1 + its frequency
    radius) so that the 1/f spectrum of natural images comes out roughly white.

    A randomly initialised ViT's patch embedding mixes all frequencies, and content (low frequencies) dominates the
    token directions, so image statistics that decide perceived quality (how energy is spread over frequencies:
    blur, noise, blocking) reach the language model only after a lot of training. A fixed, whitened frequency
    analyser is the cheapest stand-in for the low-level features a pretrained vision tower has; the filters are
    trained further like any weight. Filters are mutually orthogonal (not unit norm).
    """
    import numpy as np

    k = np.arange(patch)
    b1 = np.cos(np.pi * (k[None, :] + 0.5) * k[:, None] / patch) * np.sqrt(2.0 / patch)
    b1[0] /= np.sqrt(2.0)
    pairs = sorted(((u, v) for u in range(patch) for v in range(patch)), key=lambda t: (t[0] ** 2 + t[1] ** 2, t))
    n_chroma = min(8, n_filters // 8) if channels == 3 else 0
    n_luma = n_filters - n_chroma
    picks = np.unique(np.linspace(0, len(pairs) - 1, n_luma).round().astype(int))
    picks = list(picks) + [i for i in range(len(pairs)) if i not in set(picks)][: n_luma - len(picks)]
    luma = np.full(channels, 1.0 / np.sqrt(channels))
    chroma = [np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0), np.array([-0.5, -0.5, 1.0]) / np.sqrt(1.5)]
    t = np.full(temporal, 1.0 / np.sqrt(temporal))
    out = np.zeros((n_filters, channels, temporal, patch, patch), dtype=np.float32)
    for i, idx in enumerate(picks[:n_luma]):
        u, v = pairs[idx]
        out[i] = (1 + np.hypot(u, v)) * luma[:, None, None, None] * t[None, :, None, None] * np.outer(b1[u], b1[v])
    for j in range(n_chroma):
        u, v = pairs[j // 2]
        out[n_luma + j] = (1 + np.hypot(u, v)) * chroma[j % 2][:, None, None, None] * t[None, :, None, None] \
            * np.outer(b1[u], b1[v])
    return out


def _init_patch_embedding(model) -> None:
    import torch

    conv = next(m for n, m in model.named_modules() if n.endswith("patch_embed.proj"))
    bank = dct_filter_bank(conv.weight.shape[0], conv.weight.shape[-1], conv.weight.shape[1], conv.weight.shape[2])
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(bank))
        if conv.bias is not None:
            conv.bias.zero_()


def build_tiny_model(out_dir: str | os.PathLike, family: str = "qwen2_5_vl", size: str = "tiny",
                     seed: int = 0, vision_init: str = "dct", tokenizer: str | os.PathLike | None = None) -> Path:
    """Build, save and return the folder of a randomly initialised Qwen-VL model. Deterministic given ``seed``.

    ``vision_init="dct"`` (default) starts the patch embedding as a fixed DCT filter bank (see ``dct_filter_bank``);
    ``"random"`` keeps transformers' random init everywhere. ``tokenizer``: a real tokenizer folder to build around
    (``load_tokenizer``; the vocabulary, hence the embedding, is that tokenizer's, padded to a multiple of 64)
    instead of the locally trained one; the chat template is the same either way.
    """
    if vision_init not in ("dct", "random"):
        raise QponderError(f"unknown vision_init {vision_init!r}; use dct or random")
    _check_family(family)
    if size not in TINY_SIZES:
        raise QponderError(f"unknown tiny-model size {size!r}; choose one of {', '.join(TINY_SIZES)}")
    import torch
    import transformers as T

    s = TINY_SIZES[size]
    tok = build_tokenizer(s.vocab, seed=0) if tokenizer is None else load_tokenizer(tokenizer)
    g = tok.convert_tokens_to_ids
    t = dict(image=g("<|image_pad|>"), video=g("<|video_pad|>"), vstart=g("<|vision_start|>"),
             vend=g("<|vision_end|>"), eos=g("<|im_end|>"), pad=g("<|endoftext|>"))
    vocab = ((len(tok) + 63) // 64) * 64
    head_dim = 16
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}
    text = dict(vocab_size=vocab, hidden_size=s.hidden, intermediate_size=2 * s.hidden, num_hidden_layers=s.layers,
                num_attention_heads=s.hidden // head_dim, num_key_value_heads=max(s.hidden // (2 * head_dim), 1),
                max_position_embeddings=8192, rope_parameters=rope, bos_token_id=t["pad"], eos_token_id=t["eos"],
                pad_token_id=t["pad"], tie_word_embeddings=False)
    common = dict(image_token_id=t["image"], video_token_id=t["video"], vision_start_token_id=t["vstart"],
                  vision_end_token_id=t["vend"], tie_word_embeddings=False)
    vh = s.vision_hidden
    heads = max(vh // 32, 2)
    if family == "qwen2_5_vl":
        cfg = T.Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(depth=s.vision_depth, hidden_size=vh, intermediate_size=2 * vh, num_heads=heads,
                               out_hidden_size=s.hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                               window_size=56, fullatt_block_indexes=[s.vision_depth - 1]),
            **common)
        model_cls, patch = T.Qwen2_5_VLForConditionalGeneration, 14
    elif family == "qwen2_vl":
        cfg = T.Qwen2VLConfig(
            text_config=text,
            vision_config=dict(depth=s.vision_depth, embed_dim=vh, hidden_size=s.hidden, mlp_ratio=2,
                               num_heads=heads, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
            **common)
        model_cls, patch = T.Qwen2VLForConditionalGeneration, 14
    else:
        rope3 = dict(rope, mrope_interleaved=True)
        cfg = T.Qwen3VLConfig(
            text_config=dict(text, rope_parameters=rope3, head_dim=head_dim),
            vision_config=dict(depth=s.vision_depth, hidden_size=vh, intermediate_size=2 * vh, num_heads=heads,
                               out_hidden_size=s.hidden, patch_size=16, spatial_merge_size=2,
                               temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0]),
            **common)
        model_cls, patch = T.Qwen3VLForConditionalGeneration, 16

    torch.manual_seed(seed)
    model = model_cls(cfg).to(torch.float32)
    if vision_init == "dct":
        _init_patch_embedding(model)
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = t["eos"], t["pad"], t["pad"]
    template = _chat_template(family)
    tok.chat_template = template
    from transformers import Qwen2VLImageProcessorPil

    merged = patch * 2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, temporal_patch_size=2, merge_size=2,
        size={"shortest_edge": 4 * merged * merged, "longest_edge": s.max_image_tokens * merged * merged})
    proc_cls = _image_only_classes()[family][1]
    processor = proc_cls(image_processor=image_processor, tokenizer=tok, chat_template=template)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    info = {"family": family, "size": size, "seed": seed, "vision_init": vision_init,
            "note": "randomly initialised; not a trained model"}
    if tokenizer is not None:
        info["tokenizer"] = str(Path(tokenizer).resolve())
    (out / "qponder_tiny.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
