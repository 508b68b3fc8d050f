"""Proxy pretraining of the tiny model's vision tower: the targets measure what they say, views are reproducible,
and pretraining changes the vision tower only and records what it did."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from qponder.errors import QponderError
from qponder.demo.vision_proxy import (
    GLOBAL_TARGETS,
    LOCAL_TARGETS,
    VisionProxySettings,
    global_targets,
    local_targets,
    patch_embedding_as_matmul,
    pretrain_vision,
    proxy_views,
    proxy_views_and_targets,
    view_targets,
)


def _texture(side: int = 224, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = 0.5 + 0.25 * np.sin(40 * x + 7 * np.sin(9 * y)) * np.cos(31 * y)
    img = np.stack([base, 0.8 * base + 0.1, 1 - base], -1) + rng.normal(0, 0.02, (side, side, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return np.clip(ndimage.gaussian_filter(img.astype(np.float32), (sigma, sigma, 0)), 0, 255).astype(np.uint8)


def test_local_targets_follow_blur_noise_and_position():
    img = _texture()
    sharp, soft = local_targets(img, 28), local_targets(_blur(img, 2.0), 28)
    assert sharp.shape == (64, len(LOCAL_TARGETS))
    lap = LOCAL_TARGETS.index("log_lap1")
    assert (soft[:, lap] < sharp[:, lap]).all()                    # blur removes fine detail in every cell
    noisy = np.clip(img + np.random.default_rng(1).normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    res = LOCAL_TARGETS.index("log_residual")
    assert (local_targets(noisy, 28)[:, res] > sharp[:, res]).all()
    # raster order: cell k is row k // 8, column k % 8 (the order of a Qwen-VL tower's merged tokens)
    half = np.zeros((224, 224, 3), np.uint8)
    half[:28, 28:56] = 255
    mean = local_targets(half, 28)[:, LOCAL_TARGETS.index("mean")]
    assert mean[1] == pytest.approx(1.0) and np.delete(mean, 1).max() == 0.0
    with pytest.raises(ValueError, match="does not tile"):
        local_targets(img[:200], 28)


def test_global_targets_are_the_rule_teachers_measurements():
    img = _texture()
    sharp, soft = global_targets(img), global_targets(_blur(img, 2.0))
    assert sharp.shape == (len(GLOBAL_TARGETS),) and np.isfinite(sharp).all()
    blur = GLOBAL_TARGETS.index("blur")
    assert soft[blur] > sharp[blur]


def test_proxy_views_are_seeded_crops_of_the_references():
    refs = [_texture(300, 0), _texture(260, 1)]
    a = proxy_views(refs, 12, 112, seed=3)
    assert [v.shape for v in a] == [(112, 112, 3)] * 12 and all(v.dtype == np.uint8 for v in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, proxy_views(refs, 12, 112, seed=3)))
    assert not all(np.array_equal(x, y) for x, y in zip(a, proxy_views(refs, 12, 112, seed=4)))
    clean = proxy_views(refs, 4, 112, seed=3, distorted_fraction=0.0)
    assert all(v.min() == 0 and v.max() == 255 for v in clean)      # KADID's min-max stretch of the input
    with pytest.raises(QponderError, match="at least 400x400"):
        proxy_views(refs, 2, 400)


def test_view_targets_are_the_same_arrays_for_any_worker_count():
    refs = [_texture(300, 0), _texture(260, 1)]
    views = proxy_views(refs, 150, 112, seed=5)                       # three chunks of 64, the last one short
    one, two = view_targets(views, 28, workers=1), view_targets(views, 28, workers=2)
    assert one[0].shape == (150, len(GLOBAL_TARGETS)) and one[1].shape == (150, 16, len(LOCAL_TARGETS))
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    assert np.array_equal(one[1][37], local_targets(views[37], 28))   # row i is view i
    assert np.array_equal(one[0][149], global_targets(views[149]))


@pytest.mark.parametrize("workers", [1, 2])
def test_views_drawn_while_measured_are_the_views_and_targets_of_the_two_calls(workers):
    refs = [_texture(300, 0), _texture(260, 1)]
    views, g, loc = proxy_views_and_targets(refs, 150, 112, 28, seed=5, workers=workers)   # 2 full chunks + 22
    alone = proxy_views(refs, 150, 112, seed=5)
    assert len(views) == 150 and all(np.array_equal(a, b) for a, b in zip(views, alone))
    g1, loc1 = view_targets(alone, 28, workers=1)
    assert np.array_equal(g, g1) and np.array_equal(loc, loc1)
    with pytest.raises(QponderError, match="at least 400x400"):
        proxy_views_and_targets(refs, 2, 400, 28, workers=workers)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_patch_embedding_as_matmul_is_the_convolution(tiny_model_dirs, family):
    """Same output and weight gradients as the tower's Conv3d (Qwen3-VL's has a bias), and the module's own forward
    is back afterwards."""
    import torch

    from qponder.models import load_model_and_processor

    visual = load_model_and_processor(str(tiny_model_dirs[family]), device="cpu", dtype="float32").model.model.visual
    embed = visual.patch_embed
    pixels = torch.randn(4 * 64, embed.proj.weight[0].numel(), generator=torch.Generator().manual_seed(0))

    def run():
        embed.zero_grad()
        out = embed(pixels)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        return out.detach(), [p.grad.clone() for p in embed.parameters()]

    conv_out, conv_grads = run()
    with patch_embedding_as_matmul(visual):
        assert "forward" in vars(embed)
        mm_out, mm_grads = run()
    assert "forward" not in vars(embed)
    assert (embed.proj.bias is not None) == (family == "qwen3_vl") and len(conv_grads) == len(mm_grads)
    torch.testing.assert_close(mm_out, conv_out, rtol=1e-4, atol=1e-4)
    for a, b in zip(mm_grads, conv_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_pretraining_trains_the_vision_tower_only_and_records_it(tmp_path):
    from qponder.demo.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "m", size="tiny", seed=0)
    before = load_file(str(model / "model.safetensors"))
    refs = [_texture(256, s) for s in range(3)]
    report = pretrain_vision(model, refs, VisionProxySettings(samples=96, epochs=2, batch_size=16, progress=False),
                             heldout=[_texture(256, 9)], sources=["synthetic"])
    after = load_file(str(model / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all("visual" in k for k in changed)            # the language model is untouched
    assert any("merger" in k for k in changed) and any("blocks" in k for k in changed)
    assert report["view_side"] == 112 and report["cell"] == 28        # the tiny model's 4x4-token budget
    assert report["loss_last"] < report["loss_first"]
    assert set(report["heldout_r_local"]) == set(LOCAL_TARGETS)
    assert all(r is None or -1 <= r <= 1 for r in report["heldout_r_global"].values())
    meta = json.loads((model / "qponder_tiny.json").read_text())
    assert meta["vision_pretrain"]["sources"] == ["synthetic"] and meta["size"] == "tiny"
    with pytest.raises(QponderError, match="samples"):
        pretrain_vision(model, refs, VisionProxySettings(samples=4, batch_size=16, progress=False))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_cli_builds_a_proxy_pretrained_model_for_every_family(tmp_path, family, capsys):
    """`qponder tiny-model --vision-pretrain-samples N` pretrains on the demo's training photographs only (merged
    tokens: 28 px cells for Qwen2-VL, 32 px for Qwen3-VL)."""
    from qponder.cli import main
    from qponder.demo.data import assign_splits

    out = tmp_path / family
    assert main(["tiny-model", str(out), "--family", family, "--vision-pretrain-samples", "32",
                 "--vision-pretrain-epochs", "1", "--demo-seed", "1"]) == 0
    assert "proxy-pretrained on 10 demo training photographs" in capsys.readouterr().out
    vp = json.loads((out / "qponder_tiny.json").read_text())["vision_pretrain"]
    assert vp["cell"] == (32 if family == "qwen3_vl" else 28)
    held_out = {photo for photo, split in assign_splits(1).items() if split != "train"}
    assert not {s.split()[-1] for s in vp["sources"]} & held_out
