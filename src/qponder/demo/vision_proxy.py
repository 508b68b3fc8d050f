"""Proxy pretraining of a tiny model's vision tower on low-level image statistics (no human labels).

A real run starts from a pretrained VLM whose vision tower already encodes sharpness, noise, compression and
exposure. A tiny model built offline (``qponder tiny-model``) has a random vision tower, and trained from scratch on
a few photographs it memorises the scenes instead of the distortions (measured: test SRCC about 0 on unseen
photographs; see ``benchmarks/bench_learning.py``). This step is the cheapest stand-in for that pretraining: the
vision tower and merger learn to predict, from random crops of reference photographs with random KADID-10k
distortions,

* the rule teacher's global measurements of the view (re-blur ratio, edge steepness, noise sigma, blocking,
  pixelation, exposure, contrast, saturation; :func:`qponder.demo.rule_teacher.measure`), from the mean of the
  merged tokens, and
* per merged token, local statistics of its cell (Laplacian energy at two scales and their ratio, second-difference
  residual, mean luminance, log contrast, saturation).

No MOS and no distortion label is a target, so the tower learns measurable image statistics, not the demo's labels;
only training photographs are used (the caller chooses them). The regression heads are thrown away. The result is
written into the model folder and recorded in its ``qponder_tiny.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qponder.errors import QponderError

GLOBAL_TARGETS = ("blur", "log_edge", "log_noise", "log_blocking", "pixelation", "mean", "p5", "p95", "clip_hi",
                  "clip_lo", "contrast", "saturation")
LOCAL_TARGETS = ("log_lap1", "log_lap2", "lap_ratio", "log_residual", "mean", "log_contrast", "saturation")
MAX_GRID = 8  # merged tokens per side of a view (8 x 8 = the small model's 64-token budget)


@dataclass
class VisionProxySettings:
    samples: int = 6000             # distorted views of the references (3000 left the tower undertrained: README)
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-3
    distorted_fraction: float = 0.9  # the rest of the views are undistorted
    seed: int = 0
    progress: bool = True


def global_targets(view: np.ndarray) -> np.ndarray:
    """The rule teacher's measurements of one HxWx3 uint8 view, on scales where a squared error makes sense."""
    from qponder.demo.rule_teacher import measure

    m = measure(view)
    return np.array([m.blur, math.log(m.edge + 1e-3), math.log1p(m.noise), math.log1p(10.0 * max(m.blocking, 0.0)),
                     m.pixelation, m.mean, m.p5, m.p95, m.clip_hi, m.clip_lo, m.contrast, m.saturation],
                    dtype=np.float32)


def local_targets(view: np.ndarray, cell: int) -> np.ndarray:
    """Per ``cell`` x ``cell`` block (raster order, the order of a Qwen-VL vision tower's merged tokens):
    :data:`LOCAL_TARGETS`. Returns (blocks, 7)."""
    from scipy import ndimage

    a = view.astype(np.float32) / 255.0
    h, w = a.shape[:2]
    if h % cell or w % cell or cell % 2:
        raise ValueError(f"view of {w}x{h} px does not tile into {cell} px cells")
    y = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gh, gw = h // cell, w // cell

    def cells(z: np.ndarray, c: int) -> np.ndarray:
        return z.reshape(gh, c, gw, c).mean(axis=(1, 3)).ravel()

    lap1 = np.abs(ndimage.laplace(y))
    y2 = y.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    lap2 = np.abs(ndimage.laplace(y2))
    k = np.array([1.0, -2.0, 1.0], dtype=np.float32)
    resid = np.abs(ndimage.correlate1d(ndimage.correlate1d(y, k, axis=0), k, axis=1))
    mx, mn = a.max(axis=2), a.min(axis=2)
    sat = (mx - mn) / np.maximum(mx, 1e-3)
    f1, f2 = np.log(cells(lap1, cell) + 1e-3), np.log(cells(lap2, cell // 2) + 1e-3)
    mean = cells(y, cell)
    sd = np.sqrt(np.maximum(cells(y * y, cell) - mean ** 2, 0.0))
    return np.stack([f1, f2, f1 - f2, np.log(cells(resid, cell) + 1e-3), mean, np.log(sd + 1e-3),
                     cells(sat, cell)], axis=1).astype(np.float32)


def proxy_views(references: Sequence[np.ndarray], n: int, side: int, seed: int = 0,
                distorted_fraction: float = 0.9, distortions: Optional[Sequence[str]] = None) -> list[np.ndarray]:
    """``n`` random ``side`` px crops of the references (random flips), min-max stretched like KADID's input, most of
    them with a random KADID-10k distortion at a random level. Deterministic given ``seed``."""
    return list(_iter_proxy_views(references, n, side, seed, distorted_fraction, distortions))


def _iter_proxy_views(references: Sequence[np.ndarray], n: int, side: int, seed: int = 0,
                      distorted_fraction: float = 0.9, distortions: Optional[Sequence[str]] = None):
    """:func:`proxy_views`, one view at a time (one random stream, drawn in order)."""
    from qponder.demo.data import SIZES
    from qponder.demo.kadid import DISTORTIONS, mapmm, to_float, to_uint8

    usable = [r for r in references if min(r.shape[:2]) >= side]
    if not usable:
        raise QponderError(f"vision proxy pretraining needs reference images of at least {side}x{side} px")
    keys = list(distortions or SIZES["default"])
    rng = np.random.default_rng([7, int(seed)])
    for _ in range(n):
        ref = usable[int(rng.integers(len(usable)))]
        top = int(rng.integers(0, ref.shape[0] - side + 1))
        left = int(rng.integers(0, ref.shape[1] - side + 1))
        v = ref[top:top + side, left:left + side]
        if rng.random() < 0.5:
            v = v[:, ::-1]
        v = to_uint8(mapmm(to_float(np.ascontiguousarray(v))))
        if rng.random() < distorted_fraction:
            v = DISTORTIONS[keys[int(rng.integers(len(keys)))]].apply(v, int(rng.integers(1, 6)), rng)
        yield v


def _view_geometry(processor, config) -> tuple[int, int]:
    """(cell, side): merged-token cell size in pixels and the view side that fits the processor's pixel budget."""
    vc = config.vision_config
    cell = int(vc.patch_size) * int(vc.spatial_merge_size)
    size = getattr(processor.image_processor, "size", None) or {}
    longest = (size.get("longest_edge") or getattr(processor.image_processor, "max_pixels", None)
               or (MAX_GRID * cell) ** 2)
    grid = max(2, min(MAX_GRID, int(math.isqrt(int(longest)) // cell)))
    return cell, grid * cell


def _view_targets(views: Sequence[np.ndarray], cell: int) -> tuple[np.ndarray, np.ndarray]:
    """(global, local) targets of ``views``, stacked: (n, 12) and (n, tokens, 7)."""
    return np.stack([global_targets(v) for v in views]), np.stack([local_targets(v, cell) for v in views])


def _workers(workers: Optional[int]) -> int:
    """``workers``, or by default the cores this process may use, at most 8."""
    if workers is not None:
        return workers
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


_CHUNK = 64  # views measured per task


def view_targets(views: Sequence[np.ndarray], cell: int,
                 workers: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`global_targets` and :func:`local_targets` of every view, in ``workers`` threads (default: the cores
    this process may use, at most 8). Making and measuring 6000 views was a fifth of the pretraining, the measuring
    most of it; NumPy and SciPy release the GIL in these filters and reductions (1.7x on 2 cores). The same arrays
    for any worker count."""
    workers = _workers(workers)
    if workers <= 1 or len(views) <= _CHUNK:
        return _view_targets(views, cell)
    from concurrent.futures import ThreadPoolExecutor

    parts = [views[i:i + _CHUNK] for i in range(0, len(views), _CHUNK)]
    with ThreadPoolExecutor(workers) as pool:
        return _joined(list(pool.map(lambda part: _view_targets(part, cell), parts)))


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The (global, local) targets of consecutive chunks of views, as one pair of arrays in view order."""
    return np.concatenate([g for g, _ in parts]), np.concatenate([loc for _, loc in parts])


def proxy_views_and_targets(references: Sequence[np.ndarray], n: int, side: int, cell: int, seed: int = 0,
                            distorted_fraction: float = 0.9, workers: Optional[int] = None
                            ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """:func:`proxy_views` and their :func:`view_targets`, each chunk of views measured by the worker threads while
    this thread draws the next: drawing a view (~19 ms) and measuring it (~22 ms) cost about the same, so on 2
    cores doing both at once beats drawing all, then measuring. The same views and arrays as the two calls."""
    workers = _workers(workers)
    views_iter = _iter_proxy_views(references, n, side, seed, distorted_fraction)
    if workers <= 1:
        views = list(views_iter)
        return (views, *_view_targets(views, cell))
    from concurrent.futures import ThreadPoolExecutor

    views: list[np.ndarray] = []
    chunk: list[np.ndarray] = []
    with ThreadPoolExecutor(workers) as pool:
        futures = []
        for v in views_iter:
            views.append(v)
            chunk.append(v)
            if len(chunk) == _CHUNK:
                futures.append(pool.submit(_view_targets, chunk, cell))
                chunk = []
        if chunk:
            futures.append(pool.submit(_view_targets, chunk, cell))
        return (views, *_joined([f.result() for f in futures]))


@contextlib.contextmanager
def patch_embedding_as_matmul(visual):
    """Run the vision tower's patch embedding as the matrix product it is. Qwen-VL towers embed each flattened
    patch with a Conv3d whose kernel equals its stride; on CPU that convolution takes 4-5x as long, forward and
    backward, as the same product (88 vs 18 ms forward for 4096 patches), and a proxy step of 16 views 0.87 s instead
    of 0.74 at one thread (``benchmarks/bench_train.py``). Same weights, same result up to float rounding; the
    module's own forward is back after the block."""
    import torch

    embed = getattr(visual, "patch_embed", None)
    proj = getattr(embed, "proj", None)
    if not (isinstance(proj, torch.nn.Conv3d) and tuple(proj.kernel_size) == tuple(proj.stride)
            and tuple(proj.padding) == (0, 0, 0) and proj.groups == 1):
        yield
        return

    def forward(hidden_states):
        weight = proj.weight.reshape(proj.out_channels, -1)
        out = hidden_states.reshape(-1, weight.shape[1]).to(weight.dtype) @ weight.t()
        return out if proj.bias is None else out + proj.bias

    embed.forward = forward
    try:
        yield
    finally:
        del embed.forward


def merged_tokens(visual, inputs):
    """The tower's merged tokens for image-processor ``inputs`` of same-size views, flat: (views x tokens, hidden)."""
    out = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    return out.pooler_output if hasattr(out, "pooler_output") else (out[0] if isinstance(out, tuple) else out)


def encode(model, processor, views: Sequence[np.ndarray]):
    """Merged vision tokens of same-size views: (batch, tokens, hidden)."""
    from PIL import Image

    inputs = processor.image_processor(images=[Image.fromarray(v) for v in views], return_tensors="pt")
    with patch_embedding_as_matmul(model.model.visual):
        tokens = merged_tokens(model.model.visual, inputs)
    return tokens.reshape(len(views), -1, tokens.shape[-1])


def _correlations(pred: np.ndarray, target: np.ndarray) -> list[Optional[float]]:
    """Pearson r per target column (rows flattened); None where the target is constant. (Not R^2: a held-out
    photograph's own spread of, say, mean luminance is tiny, which makes R^2 meaningless there.)"""
    pred, target = pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1])
    out: list[Optional[float]] = []
    for j in range(target.shape[1]):
        t, p = target[:, j], pred[:, j]
        out.append(round(float(np.corrcoef(p, t)[0, 1]), 3) if t.std() > 1e-9 and p.std() > 1e-9 else None)
    return out


def pretrain_vision(model_dir: str | Path, references: Sequence[np.ndarray], settings: VisionProxySettings,
                    heldout: Sequence[np.ndarray] = (), sources: Sequence[str] = ()) -> dict:
    """Train the vision tower and merger of the model in ``model_dir`` on the proxy targets and save it back.

    ``references``: training photographs (HxWx3 uint8); ``heldout``: other photographs whose views give the
    reported held-out correlations per target (never trained on). Returns what was done, and records it in the
    folder's ``qponder_tiny.json``.
    """
    import torch

    from qponder.io import write_json_atomic
    from qponder.models import load_model_and_processor

    if settings.samples < settings.batch_size:
        raise QponderError(f"vision proxy pretraining: samples ({settings.samples}) < batch_size "
                           f"({settings.batch_size})")
    t0 = time.time()
    model_dir = Path(model_dir)
    lm = load_model_and_processor(str(model_dir), device="cpu", dtype="float32")
    model, processor = lm.model, lm.processor
    cell, side = _view_geometry(processor, model.config)
    torch.manual_seed(settings.seed)
    views, g, loc = proxy_views_and_targets(references, settings.samples, side, cell, settings.seed,
                                            settings.distorted_fraction)
    g_mu, g_sd = g.mean(0), g.std(0) + 1e-6
    l_mu, l_sd = loc.reshape(-1, loc.shape[-1]).mean(0), loc.reshape(-1, loc.shape[-1]).std(0) + 1e-6
    g_n = torch.from_numpy((g - g_mu) / g_sd)
    l_n = torch.from_numpy((loc - l_mu) / l_sd)
    data_seconds = time.time() - t0

    hidden = model.config.text_config.hidden_size
    global_head = torch.nn.Linear(hidden, g.shape[1])
    local_head = torch.nn.Linear(hidden, loc.shape[-1])
    for p in model.parameters():
        p.requires_grad_(False)
    visual = model.model.visual
    for p in visual.parameters():
        p.requires_grad_(True)
    params = [p for p in visual.parameters()] + list(global_head.parameters()) + list(local_head.parameters())
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    per_epoch = settings.samples // settings.batch_size
    total = per_epoch * settings.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.learning_rate, total_steps=total, pct_start=0.05)
    rng = np.random.default_rng([11, settings.seed])
    losses: list[float] = []
    visual.train()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="vision proxy pretraining", disable=not settings.progress)
    for _ in range(settings.epochs):
        order = rng.permutation(settings.samples)
        for b in range(per_epoch):
            idx = order[b * settings.batch_size:(b + 1) * settings.batch_size]
            tokens = encode(model, processor, [views[i] for i in idx])
            loss = torch.nn.functional.mse_loss(global_head(tokens.mean(1)), g_n[idx]) \
                + torch.nn.functional.mse_loss(local_head(tokens), l_n[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    visual.eval()

    report: dict = {"settings": asdict(settings), "view_side": side, "cell": cell, "n_references": len(references),
                    "sources": list(sources), "global_targets": list(GLOBAL_TARGETS),
                    "local_targets": list(LOCAL_TARGETS),
                    "loss_first": round(float(np.mean(losses[:10])), 4),
                    "loss_last": round(float(np.mean(losses[-10:])), 4)}
    if heldout:
        hv = proxy_views(heldout, 256, side, settings.seed + 1, settings.distorted_fraction)
        hg, hl = view_targets(hv, cell)
        hg, hl = (hg - g_mu) / g_sd, (hl - l_mu) / l_sd
        with torch.inference_mode():
            pg, pl = [], []
            for i in range(0, len(hv), 32):
                tok = encode(model, processor, hv[i:i + 32])
                pg.append(global_head(tok.mean(1)).numpy())
                pl.append(local_head(tok).numpy())
        report["heldout_r_global"] = dict(zip(GLOBAL_TARGETS, _correlations(np.concatenate(pg), hg)))
        report["heldout_r_local"] = dict(zip(LOCAL_TARGETS, _correlations(np.concatenate(pl), hl)))
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(model_dir)
    report["seconds"] = {"data": round(data_seconds, 1), "total": round(time.time() - t0, 1)}
    meta_path = model_dir / "qponder_tiny.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["vision_pretrain"] = report
    meta["note"] = ("randomly initialised, then the vision tower was proxy-pretrained on low-level image statistics "
                    "(no human labels); not a trained quality model")
    write_json_atomic(meta, meta_path)
    return report


def pretrain_on_demo(model_dir: str | Path, demo_seed: int, settings: VisionProxySettings) -> dict:
    """:func:`pretrain_vision` on the training photographs of the demo split ``demo_seed`` (held-out figures from its
    val photograph); the test photographs are never used."""
    from qponder.demo.data import split_photos, working_image

    train, val = split_photos("train", demo_seed), split_photos("val", demo_seed)
    return pretrain_vision(model_dir, [np.asarray(working_image(p)) for p in train], settings,
                           heldout=[np.asarray(working_image(p)) for p in val],
                           sources=[f"demo photo {p.name}" for p in train])
