"""Qwen2.5-VL shapes from the published checkpoints, in one place.

``gpu_bench``, ``gpu_check`` and ``memory_plan`` build (or count on the meta device) a model of real size from these
numbers, without downloading weights, so the three agree on what "7B" means.

Sources: the ``config.json`` of https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct (original layout: text keys at the
top level, ``vision_config`` beside them); the 3B's sizes as transformers' Qwen2.5-VL code and public copies give
them (Qwen/Qwen2.5-VL-3B-Instruct).
The 7B built from them has 8,292,166,656 parameters, the "8.29B" of the model card (``tests/test_memory_plan.py``).
"""

from __future__ import annotations

# Text model. 7B: hidden_size 3584, intermediate_size 18944, num_hidden_layers 28, num_attention_heads 28,
# num_key_value_heads 4, vocab_size 152064, max_position_embeddings 128000, rms_norm_eps 1e-6, rope_theta 1e6,
# rope_scaling {"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings false.
TEXT = {
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False, mrope_section=[16, 24, 24]),
    # 3B (from public copies, not checked against the hub file): tied embeddings, vocab 151936.
    "3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
               num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True, mrope_section=[16, 24, 24]),
    # A few layers with the same layout (GQA, mrope, windowed vision attention) to run the scripts on a CPU.
    # vocab_size None: taken from the tokenizer (the real Qwen vocabulary is 151,669 tokens).
    "debug": dict(vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, mrope_section=[2, 3, 3]),
}
TEXT_COMMON = dict(max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=1000000.0)

# Vision tower (shared by 3B and 7B): depth 32, hidden_size 1280, intermediate_size 3420, num_heads 16, patch_size 14,
# spatial_merge_size 2, temporal_patch_size 2, window_size 112, fullatt_block_indexes [7, 15, 23, 31];
# out_hidden_size = the text hidden size.
VISION = {
    "full": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
                 temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
    "debug": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1]),
}

# Special token ids of the released checkpoints (config.json): bos 151643 (<|endoftext|>), eos 151645 (<|im_end|>),
# vision_start 151652, vision_end 151653, image 151655, video 151656.
PUBLISHED_TOKEN_IDS = dict(pad=151643, eos=151645, vision_start=151652, vision_end=151653, image=151655,
                           video=151656)


def token_ids(tokenizer) -> dict[str, int]:
    """The special-token ids of a Qwen-style tokenizer (a locally trained one numbers them differently)."""
    g = tokenizer.convert_tokens_to_ids
    return dict(pad=g("<|endoftext|>"), eos=g("<|im_end|>"), vision_start=g("<|vision_start|>"),
                vision_end=g("<|vision_end|>"), image=g("<|image_pad|>"), video=g("<|video_pad|>"))


def qwen2_5_vl_config(shape: str = "7b", ids: dict[str, int] | None = None, vocab_size: int | None = None):
    """A ``transformers.Qwen2_5_VLConfig`` of the named shape (no weights). ``vocab_size`` overrides the shape's
    (needed for ``debug``, whose vocabulary is the tokenizer's)."""
    import transformers as T

    t = dict(TEXT[shape])
    ids = ids or PUBLISHED_TOKEN_IDS
    shape_vocab = t.pop("vocab_size")
    vocab = vocab_size or shape_vocab
    if vocab is None:
        raise ValueError(f"shape {shape!r} takes its vocabulary size from the tokenizer: pass vocab_size")
    tie = t.pop("tie_word_embeddings")
    rope = {"rope_type": "default", "rope_theta": TEXT_COMMON["rope_theta"], "mrope_section": t.pop("mrope_section")}
    text = dict(t, vocab_size=vocab, max_position_embeddings=TEXT_COMMON["max_position_embeddings"],
                rms_norm_eps=TEXT_COMMON["rms_norm_eps"], rope_parameters=rope, tie_word_embeddings=tie,
                bos_token_id=ids["pad"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    vision = dict(VISION["debug" if shape == "debug" else "full"], out_hidden_size=t["hidden_size"])
    return T.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["image"],
                              video_token_id=ids["video"], vision_start_token_id=ids["vision_start"],
                              vision_end_token_id=ids["vision_end"], tie_word_embeddings=tie)


def build_model(cfg, device: str, dtype, attn_implementation: str = "sdpa"):
    """Randomly initialised, created directly in ``dtype`` on ``device``: a 7B model never exists in fp32 (~31 GiB)
    and is never copied between devices. ``device="meta"`` allocates nothing (parameter counting)."""
    import torch
    import transformers as T

    with torch.device(device):
        return T.Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype,
                                                                 attn_implementation=attn_implementation)


def parameter_counts(cfg, model=None) -> dict[str, int]:
    """Parameters per part, counted on the meta device (nothing allocated): the vision tower (patch embedding and
    blocks), the merger (vision -> language projection), the language model (embeddings, decoder layers, norm) and
    the LM head; plus the token embedding, the patch embedding and one decoder layer, which the memory plan needs.
    ``model``: one already built from ``cfg`` (on any device) instead of a new meta one."""
    import torch

    model = model if model is not None else build_model(cfg, "meta", torch.bfloat16)
    n = {"vision_tower": 0, "merger": 0, "language_model": 0, "lm_head": 0}
    for name, p in model.named_parameters():
        if name.startswith("lm_head."):
            n["lm_head"] += p.numel()
        elif ".visual.merger." in f".{name}":
            n["merger"] += p.numel()
        elif ".visual." in f".{name}":
            n["vision_tower"] += p.numel()
        else:
            n["language_model"] += p.numel()
    lm = model.model.language_model
    n["embed_tokens"] = lm.embed_tokens.weight.numel()
    n["vision_patch_embed"] = sum(p.numel() for p in model.model.visual.patch_embed.parameters())
    n["decoder_layer"] = sum(p.numel() for p in lm.layers[0].parameters())
    n["total"] = sum(n[k] for k in ("vision_tower", "merger", "language_model", "lm_head"))
    return n
