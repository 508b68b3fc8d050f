"""Per-GPU memory of the 7B recipes, estimated before anyone rents GPUs: which setup fits on 80 GB cards.

Inputs: the recipes (``recipes/sft_qwen2_5_vl_7b.yaml``, ``recipes/grpo_qwen2_5_vl_7b.yaml``, loaded into the
stage settings with ``qponder.config.load_config``) and parameter counts of Qwen2.5-VL-7B taken on the meta device
(``benchmarks.qwen_shapes``; nothing is allocated): language model, vision tower, merger, and the LoRA adapters PEFT
puts on the recipe's targets. For LoRA and full fine-tuning x DDP / ZeRO-2 / ZeRO-3 / FSDP x 1 and 8 GPUs it adds up,
per GPU (bytes per parameter; P = all, T = trainable, F = frozen, N = GPUs):

* weights + gradients + optimizer. AdamW keeps two fp32 moments (8 T).
  DDP (one GPU or plain data parallel): qponder keeps trainable weights in fp32 when nothing else holds a master
  copy (``qponder.train.common.keep_trainable_fp32``; LoRA adapters are fp32 anyway): 4 T + 2 F, fp32 gradients 4 T
  (and DDP's gradient buckets, another 4 T, on more than one GPU), moments 8 T.
  DeepSpeed (bf16): bf16 weights 2 P, bf16 gradients 2 T, fp32 master + moments 12 T (the ZeRO paper's 2 + 2 + 12);
  ZeRO-2 divides gradients and optimizer by N, ZeRO-3 everything.
  FSDP2 under bf16 mixed precision: accelerate upcasts trainable weights to fp32, so 4 T + 2 F weights, 4 T
  gradients, 8 T moments, all divided by N.
* gathered (ZeRO-3, FSDP): the unsharded bf16 parameters in use: the largest module (the 545M-parameter LM head)
  and two decoder layers for ZeRO-3; FSDP's root unit (embeddings, LM head, patch embedding, merger stay gathered
  for the whole step) and two decoder layers.
* activations, gradient checkpointing per decoder layer, bf16, FlashAttention/SDPA (no sequence x sequence scores),
  vision tower frozen (it stores nothing; its transient working set is smaller than the LM's), n = tokens of one
  micro-batch on one GPU = per-device batch x (image tokens at ``max_pixels`` + prompt text + answer):
  checkpoints L * n * 2h, plus one layer recomputed in the backward n * 2 * (8h + 4 h_kv + 4I) and the gradients of
  its gate and up projections n * 2 * 2I, plus (LoRA, dropout > 0) the dropped-out inputs of the 7 targets
  n * 2 * (6h + I), plus the logits: SFT materialises them for every position, bf16 + their fp32 copy + the fp32
  log-softmax cross-entropy keeps (10 bytes x vocab per position); GRPO does not (TRL 1.16 scores completions
  through a tiled fused LM head, ``trl.trainer.utils.add_fused_lm_head``).
* GRPO only: vLLM's colocated share (``vllm_gpu_memory_utilization`` x the card, its own weight copy and KV cache
  inside), the reference model (``beta`` > 0 and not LoRA: a bf16 copy, partitioned under ZeRO-3 and FSDP, whole
  under ZeRO-2, which TRL runs at stage 0 for it), and the ``levels`` reader: a whole bf16 copy of the SFT model on
  every GPU, also under ZeRO-3 (``qponder.models.zero3_disabled_for_load``), plus its inference working set.
* a reserve for the CUDA context, NCCL buffers and allocator fragmentation.

It is an estimate, not a measurement: ``python -m benchmarks.gpu_check`` measures the peaks of a LoRA SFT and GRPO
step at this size on one GPU, and those numbers are the check on this arithmetic.

    python -m benchmarks.memory_plan [--gpu-gib 79.2] [--answer-tokens 256] [--json OUT]
                                     [--sft-set KEY=VALUE ...] [--grpo-set KEY=VALUE ...]   # e.g. model.lora.r=64
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
#: What an 80 GB H100/A100 reports to torch (total_memory), in GiB.
GPU_GIB = 79.2
RESERVE_GIB = 3.0
#: Text tokens of the student prompt around the image: the Qwen tokenizer with the Qwen2.5-VL chat template
#: (gpu_check's stock_processor phase, prompt_tokens - image_tokens: 168 - 48).
PROMPT_TEXT_TOKENS = 120
#: The levels reader's prompt around a reasoning (REASONING_READOUT_PROMPT in the chat template), about.
READER_PROMPT_TOKENS = 60
READER_BATCH = 32  # the levels reader's default batch_size
SHARDINGS = ("DDP", "ZeRO-2", "ZeRO-3", "FSDP")
GPU_COUNTS = (1, 8)
METHODS = ("LoRA", "full")
COLUMNS = ("weights", "grads", "optimizer", "gathered", "activations", "ref_model", "reader", "vllm", "reserve")


@dataclass(frozen=True)
class Shape:
    """What the arithmetic needs of the model: dimensions and parameter counts (meta device)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    counts: dict
    lora: int  # LoRA adapter parameters on the recipe's targets at the plan's rank


@dataclass(frozen=True)
class StagePlan:
    """One stage's per-GPU work, read off its recipe."""

    name: str
    micro_batch: int  # sequences per forward/backward on one GPU
    seq_tokens: int  # image + prompt text + answer
    logits_positions: int  # positions whose full-vocabulary logits exist at once (0: fused head)
    freeze_vision: bool
    freeze_merger: bool
    reference_model: bool  # beta > 0 (TRL skips it under LoRA)
    reader: bool  # the levels consistency reader
    reader_tokens: int
    vllm_fraction: float  # 0 when generation does not use colocated vLLM


def shape_7b(lora_settings) -> Shape:
    """Qwen2.5-VL-7B's dimensions and counts; the LoRA count is PEFT's own on the meta model."""
    import torch
    from peft import get_peft_model

    from benchmarks.qwen_shapes import build_model, parameter_counts, qwen2_5_vl_config
    from qponder.train.common import lora_config

    cfg = qwen2_5_vl_config("7b")
    model = build_model(cfg, "meta", torch.bfloat16)
    counts = parameter_counts(cfg, model)
    peft_model = get_peft_model(model, lora_config(lora_settings))
    lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    t = cfg.text_config
    return Shape(hidden=t.hidden_size, intermediate=t.intermediate_size, layers=t.num_hidden_layers,
                 heads=t.num_attention_heads, kv_heads=t.num_key_value_heads, vocab=t.vocab_size, counts=counts,
                 lora=lora)


def image_tokens(max_pixels: int) -> int:
    """Merged vision tokens at the budget: one per 28 x 28 pixels (patch 14, 2 x 2 merge)."""
    return max_pixels // (28 * 28)


def stage_plans(sft, grpo, answer_tokens: int) -> list[StagePlan]:
    """From the loaded recipes: SFT answers are the distilled reasoning (``answer_tokens``, the recipe does not cap
    them); GRPO completions are as long as ``max_completion_length`` allows (the worst case)."""
    sft_seq = image_tokens(sft.model.max_pixels) + PROMPT_TEXT_TOKENS + answer_tokens
    g = grpo.generation
    grpo_seq = image_tokens(grpo.model.max_pixels) + PROMPT_TEXT_TOKENS + g.max_completion_length
    reads = any(r.name in ("consistency", "qponder_reward") and r.params.get("reader") == "levels"
                for r in grpo.rewards)
    per_device = grpo.optim.batch_size
    reader_tokens = min(READER_BATCH, per_device) * (g.max_completion_length + READER_PROMPT_TOKENS)
    vllm = g.vllm_gpu_memory_utilization if g.use_vllm and g.vllm_mode == "colocate" else 0.0
    return [
        StagePlan("SFT", sft.optim.batch_size, sft_seq, sft.optim.batch_size * sft_seq, sft.model.freeze_vision,
                  sft.model.freeze_merger, False, False, 0, 0.0),
        StagePlan("GRPO", per_device, grpo_seq, 0, grpo.model.freeze_vision, grpo.model.freeze_merger,
                  grpo.beta > 0, reads, reader_tokens, vllm),
    ]


def trainable(shape: Shape, method: str, st: StagePlan) -> tuple[int, int]:
    """(trainable, frozen) parameters: LoRA trains its adapters only; full fine-tuning everything but what the
    recipe freezes (the vision tower; the merger unless ``freeze_merger``)."""
    c = shape.counts
    if method == "LoRA":
        return shape.lora, c["total"]
    frozen = (c["vision_tower"] if st.freeze_vision else 0) + (c["merger"] if st.freeze_merger else 0)
    return c["total"] - frozen, frozen


def activation_bytes(shape: Shape, st: StagePlan, lora: bool) -> float:
    """The formula of the module docstring, for one GPU's micro-batch."""
    h, i, n = shape.hidden, shape.intermediate, st.micro_batch * st.seq_tokens
    h_kv = h * shape.kv_heads // shape.heads
    checkpoints = shape.layers * n * 2 * h
    layer = n * 2 * (8 * h + 4 * h_kv + 4 * i) + n * 2 * 2 * i
    if lora:
        layer += n * 2 * (6 * h + i)
    logits = st.logits_positions * shape.vocab * 10
    return checkpoints + layer + logits


def estimate(shape: Shape, st: StagePlan, method: str, sharding: str, n: int, gpu_gib: float) -> dict:
    """Bytes per GPU by column (see COLUMNS) for one setup."""
    c = shape.counts
    t, f = trainable(shape, method, st)
    p = c["total"]
    b: dict[str, float] = dict.fromkeys(COLUMNS, 0.0)
    if sharding == "DDP":
        b["weights"] = 4 * t + 2 * f
        b["grads"] = 4 * t * (2 if n > 1 else 1)  # + DDP's gradient buckets
        b["optimizer"] = 8 * t
    elif sharding in ("ZeRO-2", "ZeRO-3"):
        weights = 2 * (p + (t if method == "LoRA" else 0))  # DeepSpeed casts the adapters to bf16 too
        b["weights"] = weights / n if sharding == "ZeRO-3" else weights
        b["grads"] = 2 * t / n
        b["optimizer"] = 12 * t / n
    else:  # FSDP
        b["weights"] = (4 * t + 2 * f) / n
        b["grads"] = 4 * t / n
        b["optimizer"] = 8 * t / n
    two_layers = 2 * c["decoder_layer"]
    if sharding == "ZeRO-3":
        b["gathered"] = 2 * (max(c["lm_head"], c["embed_tokens"]) + two_layers)
    elif sharding == "FSDP":
        root = c["embed_tokens"] + c["lm_head"] + c["merger"] + c["vision_patch_embed"]
        b["gathered"] = 2 * (root + two_layers)
    b["activations"] = activation_bytes(shape, st, method == "LoRA")
    if st.reference_model and method == "full":
        b["ref_model"] = 2 * p / n if sharding in ("ZeRO-3", "FSDP") else 2 * p
    if st.reader:
        lora_extra = 2 * shape.lora if method == "LoRA" else 0  # the SFT output is then base + adapter
        b["reader"] = 2 * p + lora_extra + st.reader_tokens * 2 * (4 * shape.hidden + 2 * shape.intermediate)
    b["vllm"] = st.vllm_fraction * gpu_gib * GIB
    b["reserve"] = RESERVE_GIB * GIB
    gib = {k: v / GIB for k, v in b.items()}
    total = sum(gib.values())
    return {"stage": st.name, "method": method, "sharding": sharding, "gpus": n, **gib, "total": total,
            "fits": total <= gpu_gib}


def plan(sft, grpo, answer_tokens: int = 256, gpu_gib: float = GPU_GIB) -> dict:
    """Every setup's estimate, the inputs they came from, and the smallest setup that fits per stage. LoRA rows use
    the SFT recipe's LoRA settings (rank, targets) whether or not the recipe enables it."""
    lora = sft.model.lora
    shape = shape_7b(lora)
    stages = stage_plans(sft, grpo, answer_tokens)
    rows = [estimate(shape, st, m, s, n, gpu_gib) for st in stages for m in METHODS for s in SHARDINGS
            for n in GPU_COUNTS]
    smallest = {}
    for st in stages:
        for method in (None, *METHODS):
            fit = [r for r in rows if r["stage"] == st.name and r["fits"] and method in (None, r["method"])]
            best = min(fit, key=lambda r: (r["gpus"], r["total"])) if fit else None
            smallest[f"{st.name}/{method or 'any'}"] = best
    return {"gpu_gib": gpu_gib, "reserve_gib": RESERVE_GIB, "answer_tokens": answer_tokens,
            "lora_r": lora.r, "lora_targets": lora.target_modules, "parameters": {**shape.counts, "lora": shape.lora},
            "stages": [asdict(st) for st in stages], "rows": rows, "smallest": smallest}


def markdown(result: dict) -> str:
    """The table (GiB per GPU) and one line per stage naming the smallest setup that fits."""
    head = ["stage", "method", "sharding", "GPUs", *COLUMNS, "total", f"fits {result['gpu_gib']:g} GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["stage"], r["method"], r["sharding"], str(r["gpus"]), *(f"{r[k]:.1f}" for k in COLUMNS),
                 f"**{r['total']:.1f}**", "yes" if r["fits"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for key, r in result["smallest"].items():
        stage, method = key.split("/")
        what = f"{stage}, {'any method' if method == 'any' else method}"
        lines.append(f"- {what}: " + (f"{r['method']}, {r['sharding']}, {r['gpus']} GPU{'s' * (r['gpus'] > 1)} "
                                      f"({r['total']:.1f} GiB)" if r else "nothing here fits"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", type=Path, default=ROOT / "recipes" / "sft_qwen2_5_vl_7b.yaml")
    ap.add_argument("--grpo", type=Path, default=ROOT / "recipes" / "grpo_qwen2_5_vl_7b.yaml")
    ap.add_argument("--gpu-gib", type=float, default=GPU_GIB, help="memory of one card as torch reports it")
    ap.add_argument("--answer-tokens", type=int, default=256, help="SFT answer (distilled reasoning) length")
    ap.add_argument("--sft-set", nargs="*", default=[], metavar="KEY=VALUE", help="override the SFT recipe")
    ap.add_argument("--grpo-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override the GRPO recipe (e.g. gpu_check's: generation.use_vllm=false ...)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    a = ap.parse_args(argv)
    from qponder.config import load_config
    from qponder.train.grpo import GRPOSettings
    from qponder.train.sft import SFTSettings

    sft, grpo = load_config(SFTSettings, a.sft, a.sft_set), load_config(GRPOSettings, a.grpo, a.grpo_set)
    result = plan(sft, grpo, a.answer_tokens, a.gpu_gib)
    p = result["parameters"]
    print(f"Qwen2.5-VL-7B: {p['total']:,} parameters (language model {p['language_model']:,} + LM head "
          f"{p['lm_head']:,}, vision tower {p['vision_tower']:,}, merger {p['merger']:,}); LoRA r={result['lora_r']} "
          f"on the recipe's targets: {p['lora']:,}.")
    for st in result["stages"]:
        print(f"{st['name']}: {st['micro_batch']} sequences x {st['seq_tokens']} tokens per GPU micro-batch.")
    print()
    print(markdown(result))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
