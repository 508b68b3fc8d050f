"""GPU throughput at real model size, no weights needed: a randomly initialised Qwen2.5-VL-3B/7B-shaped model.

Measures, on one GPU (H100/H200 class; < 10 minutes):
  * generation tokens/s (HF generate, bf16, batch of B images at the Qwen2.5-VL pixel budget we train with),
  * training tokens/s (forward + backward + AdamW step on SFT-length sequences, gradient checkpointing on),
  * peak GPU memory of each,
  * vLLM generation tokens/s when vLLM is installed (--vllm: the model is saved to a temp folder and freed first).

The model is built directly in bf16 on the GPU, so the peak is the bf16 model's (~16 GB at 7B), never an fp32 copy.

    python -m benchmarks.gpu_bench [--shape 7b|3b] [--batch 8] [--new-tokens 256] [--attn sdpa|flash_attention_2]
                                   [--vllm] [--out bench-out/gpu.json]

Random weights generate random text, so generation runs a fixed number of tokens (min_new_tokens = max_new_tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

SHAPES = ("7b", "3b", "debug")  # benchmarks.qwen_shapes: the published sizes; debug = a few layers for a CPU
DEVICE = "cuda"


def _sync() -> None:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE.startswith("cuda") else None


def build(shape: str, attn: str):
    """The model, built directly in its compute dtype on the device (bf16 on a GPU: never an fp32 7B first, which
    alone is ~31 GiB), with a tiny model's tokenizer and processor (no download)."""
    import torch

    from benchmarks.qwen_shapes import build_model, qwen2_5_vl_config, token_ids
    from qponder.demo.tiny_model import build_tiny_model
    from qponder.models import load_processor, set_pixel_budget

    tmp = Path(tempfile.mkdtemp())
    tiny = build_tiny_model(tmp / "tok", family="qwen2_5_vl", size="tiny")  # tokenizer + processor, no download
    proc = load_processor(tiny)
    set_pixel_budget(proc, min_pixels=256 * 28 * 28, max_pixels=1280 * 28 * 28)
    tok = proc.tokenizer
    vocab = ((len(tok) + 63) // 64) * 64 if shape == "debug" else None  # debug: the tiny tokenizer's vocabulary
    cfg = qwen2_5_vl_config(shape, token_ids(tok), vocab_size=vocab)
    model = build_model(cfg, DEVICE, torch.bfloat16 if DEVICE.startswith("cuda") else torch.float32, attn)
    return model, proc, tmp


def images(n: int, size=(1024, 768)):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def bench_generate(model, proc, batch: int, new_tokens: int) -> dict:
    import torch

    from qponder.prompts import student_messages

    proc.tokenizer.padding_side = "left"
    text = proc.apply_chat_template(student_messages(), tokenize=False, add_generation_prompt=True)
    enc = proc(text=[text] * batch, images=images(batch), padding=True, return_tensors="pt").to(DEVICE)
    model.eval()
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
        _sync()
        _reset_peak()
        t0 = time.perf_counter()
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True)
        _sync()
    dt = time.perf_counter() - t0
    return {"batch": batch, "prompt_tokens": int(enc["input_ids"].shape[1]), "new_tokens": new_tokens,
            "seconds": dt, "generated_tokens_per_s": batch * new_tokens / dt,
            "peak_mem_gib": _peak_gib()}


def bench_train(model, proc, batch: int, target_tokens: int, steps: int) -> dict:
    import torch

    from qponder.prompts import format_target, student_messages

    proc.tokenizer.padding_side = "right"
    msgs = student_messages() + [{"role": "assistant", "content": [{"type": "text", "text": format_target(
        "The image is sharp and clean. " * (target_tokens // 8), 4.0)}]}]
    text = proc.apply_chat_template(msgs, tokenize=False)
    enc = proc(text=[text] * batch, images=images(batch), padding=True, return_tensors="pt").to(DEVICE)
    enc["labels"] = enc["input_ids"].clone()
    model.train()
    model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    _reset_peak()
    times = []
    for _ in range(steps):
        _sync()
        t0 = time.perf_counter()
        loss = model(**enc).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - t0)
    dt = sum(times[1:]) / max(len(times) - 1, 1)
    tokens = int(enc["attention_mask"].sum())
    return {"batch": batch, "seq_len": int(enc["input_ids"].shape[1]), "step_s": dt, "train_tokens_per_s": tokens / dt,
            "peak_mem_gib": _peak_gib()}


def save_for_vllm(model, proc, tmp: Path) -> Path:
    folder = tmp / "model"
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def free_cuda() -> None:
    """Return freed blocks to the driver: vLLM sizes its share from the memory free when it starts."""
    import gc

    import torch

    gc.collect()
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()


def bench_vllm(folder: Path, proc, batch: int, new_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from qponder.prompts import student_messages

    llm = LLM(model=str(folder), limit_mm_per_prompt={"image": 1}, gpu_memory_utilization=0.5, dtype="bfloat16")
    text = proc.apply_chat_template(student_messages(), tokenize=False, add_generation_prompt=True)
    reqs = [{"prompt": text, "multi_modal_data": {"image": im}} for im in images(batch)]
    params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=1.0)
    llm.generate(reqs[:2], SamplingParams(max_tokens=8, min_tokens=8), use_tqdm=False)
    t0 = time.perf_counter()
    llm.generate(reqs, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    return {"batch": batch, "new_tokens": new_tokens, "seconds": dt, "generated_tokens_per_s": batch * new_tokens / dt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=SHAPES, default="7b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--train-target-tokens", type=int, default=512)
    ap.add_argument("--train-steps", type=int, default=4, help="the first is a warm-up, left out of step_s")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--vllm", action="store_true")
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) | cpu (smoke test with --shape debug)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/gpu.json"))
    a = ap.parse_args(argv)
    import torch

    global DEVICE
    DEVICE = a.device
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench needs a CUDA GPU (or --device cpu --shape debug for a smoke test)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    model, proc, tmp = build(a.shape, a.attn)
    res = {"shape": a.shape, "attn": a.attn, "device": DEVICE,
           "gpu": torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else None,
           "params_b": sum(p.numel() for p in model.parameters()) / 1e9}
    res["generate_hf"] = bench_generate(model, proc, a.batch, a.new_tokens)
    print(json.dumps(res["generate_hf"]), flush=True)
    res["train"] = bench_train(model, proc, a.train_batch, a.train_target_tokens, a.train_steps)
    print(json.dumps(res["train"]), flush=True)
    if a.vllm:
        folder = save_for_vllm(model, proc, tmp)
        del model  # the training model's ~16 GB (7B bf16) must not sit beside vLLM's share
        free_cuda()
        res["generate_vllm"] = bench_vllm(folder, proc, a.batch, a.new_tokens)
    res["total_s"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
