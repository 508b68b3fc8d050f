"""Model loading: all three Qwen-VL families, tiny builder determinism, LoRA adapters, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from qponder.cli import main as cli_main
from qponder.errors import QponderError
from qponder.demo.tiny_model import build_tiny_model
from qponder.models import (
    FAMILIES,
    count_parameters,
    load_model_and_processor,
    load_processor,
)
from qponder.prompts import LEVELS, student_messages


def _image(w=112, h=84, color=(200, 80, 40)):
    img = Image.new("RGB", (w, h), color)
    for x in range(0, w, 8):
        for y in range(h):
            img.putpixel((x, y), (0, 0, 0))
    return img


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_forwards_and_generates_with_an_image(tiny_model_dirs, family):
    lm = load_model_and_processor(tiny_model_dirs[family], device="cpu")
    assert lm.family == family
    assert "ImageOnly" in type(lm.processor).__qualname__  # no torchvision on CPU boxes
    msgs = student_messages(_image())
    inputs = lm.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                              return_tensors="pt")
    n_img = int((inputs["input_ids"] == lm.processor.image_token_id).sum())
    assert n_img > 0 and inputs["pixel_values"].shape[0] == 4 * n_img
    with torch.inference_mode():
        out = lm.model(**inputs)
        assert torch.isfinite(out.logits).all()
        gen = lm.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert gen.shape[1] > inputs["input_ids"].shape[1]


def test_tiny_model_is_deterministic_given_seed(tmp_path):
    a = load_model_and_processor(build_tiny_model(tmp_path / "a", seed=3), device="cpu").model
    b = load_model_and_processor(build_tiny_model(tmp_path / "b", seed=3), device="cpu").model
    c = load_model_and_processor(build_tiny_model(tmp_path / "c", seed=4), device="cpu").model
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    # the tokenizer is trained locally and identically too
    ta = (tmp_path / "a" / "tokenizer.json").read_text()
    assert ta == (tmp_path / "c" / "tokenizer.json").read_text()


def test_tiny_tokenizer_has_qwen_tokens_and_single_token_levels(tiny_model_dir):
    tok = load_processor(tiny_model_dir).tokenizer
    for t in ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>", "<think>", "</answer>"):
        assert tok.convert_tokens_to_ids(t) is not None and tok.convert_tokens_to_ids(t) != tok.unk_token_id
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for word, _ in LEVELS:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word


def test_small_size_is_bigger(tmp_path):
    small = load_model_and_processor(build_tiny_model(tmp_path / "s", size="small"), device="cpu").model
    assert 2e6 < count_parameters(small) < 1e7


def proc_base_budget(path) -> int:
    return load_processor(path).image_processor.size.get("longest_edge")


def test_lora_adapter_folder_loads_on_its_base(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model_and_processor(tiny_model_dir, device="cpu").model
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    peft_model = get_peft_model(base, cfg)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    meta = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert meta["base_model_name_or_path"] == str(tiny_model_dir)

    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        expected = peft_model(input_ids=ids).logits
    lm = load_model_and_processor(adapter_dir, device="cpu")
    assert lm.is_adapter and lm.family == "qwen2_5_vl"
    merged = load_model_and_processor(adapter_dir, device="cpu", merge_adapter=True)
    assert not merged.is_adapter
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, expected)
        torch.testing.assert_close(merged.model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-4)
        plain = load_model_and_processor(tiny_model_dir, device="cpu").model(input_ids=ids).logits
    assert not torch.allclose(plain, expected)  # the adapter really changes the output
    # an adapter folder that carries its own processor (as `qponder sft` saves it) is loaded with that processor
    proc = load_processor(tiny_model_dir, max_pixels=4 * 28 * 28)
    proc.save_pretrained(adapter_dir)
    own = load_model_and_processor(adapter_dir, device="cpu").processor
    assert own.image_processor.size.get("longest_edge") == 4 * 28 * 28 != proc_base_budget(tiny_model_dir)


def test_missing_and_corrupt_folders_give_clear_errors(tmp_path):
    with pytest.raises(QponderError, match="does not exist"):
        load_model_and_processor(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QponderError, match="no config.json"):
        load_model_and_processor(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(QponderError, match="not valid JSON"):
        load_model_and_processor(bad)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(QponderError, match="unsupported model_type 'llama'"):
        load_model_and_processor(other)


def test_corrupt_weights_and_family_mismatch(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(QponderError, match="could not load model weights"):
        load_model_and_processor(broken)
    with pytest.raises(QponderError, match="family 'qwen3_vl' was requested"):
        load_model_and_processor(tiny_model_dir, family="qwen3_vl")
    with pytest.raises(QponderError, match="unknown model family"):
        load_model_and_processor(tiny_model_dir, family="llava")


def test_cli_tiny_model_builds_a_folder_that_reloads_and_generates(tmp_path, capsys):
    out = tmp_path / "m"
    assert cli_main(["tiny-model", str(out), "--family", "qwen2_vl"]) == 0
    assert "untrained" in capsys.readouterr().out
    lm = load_model_and_processor(out)
    inputs = lm.processor.apply_chat_template(student_messages(_image()), add_generation_prompt=True,
                                              tokenize=True, return_dict=True, return_tensors="pt")
    gen = lm.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 4 or gen[0, -1] == lm.processor.tokenizer.eos_token_id


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["tiny-model", str(tmp_path / "x"), "--family", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: unknown model family 'nope'; choose one of qwen2_vl, qwen2_5_vl, qwen3_vl"]


def test_dct_patch_embedding_is_an_orthonormal_frequency_bank(tmp_path):
    import numpy as np

    from qponder.demo.tiny_model import dct_filter_bank

    bank = dct_filter_bank(64, 14)
    flat = bank.reshape(64, -1)
    gram = flat @ flat.T
    norms = np.sqrt(np.diag(gram))
    # float32 sums of 1176 products (diagonal up to ~376): the BLAS kernel's summation order alone moves the
    # off-diagonals by up to ~8e-5 (OpenBLAS Haswell 5e-5) and norms[0] by up to 5e-6 (sequential accumulation,
    # as in reference BLAS or numpy without BLAS); a real defect is orders of magnitude larger.
    np.testing.assert_allclose(gram, np.diag(norms ** 2), atol=1e-3)  # orthogonal
    assert norms[0] == pytest.approx(1.0, rel=1e-4) and norms[:56].max() == pytest.approx(1 + np.hypot(13, 13), rel=1e-4)
    # a flat (DC) patch excites only the DC luminance filter; a checkerboard only high-frequency ones
    flat_patch = np.ones((3, 2, 14, 14), dtype=np.float32)
    resp = np.abs(flat.dot(flat_patch.ravel()))
    # resp[0] = sqrt(1176) ~ 34; the others are 0 up to float32 summation error (1.3e-4 when accumulated in order)
    assert resp.argmax() == 0 and (resp[1:] < 1e-3).all()
    checker = np.indices((14, 14)).sum(0) % 2 * 2.0 - 1.0
    energy = flat.dot(np.broadcast_to(checker, (3, 2, 14, 14)).ravel()) ** 2
    assert energy[0] < 1e-8 and energy[28:56].sum() > 0.9 * energy.sum()  # filters are ordered low -> high

    dct = load_model_and_processor(build_tiny_model(tmp_path / "d"), device="cpu").model
    rnd = load_model_and_processor(build_tiny_model(tmp_path / "r", vision_init="random"), device="cpu").model
    w = dict(dct.named_parameters())["model.visual.patch_embed.proj.weight"].detach().numpy()
    np.testing.assert_allclose(w, dct_filter_bank(*w.shape[:1], w.shape[-1]), atol=1e-6)
    assert not np.allclose(w, dict(rnd.named_parameters())["model.visual.patch_embed.proj.weight"].detach().numpy())
    with pytest.raises(QponderError, match="unknown vision_init"):
        build_tiny_model(tmp_path / "x", vision_init="imagenet")


def test_a_missing_relative_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(QponderError, match="runs/final: model folder does not exist"):
        load_model_and_processor("runs/final")


def test_the_processor_that_loads_is_named_once_with_its_reason(tiny_model_dir, monkeypatch, caplog):
    import qponder.models as models

    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if torchvision were not installed, on any box
    monkeypatch.setattr(models, "_ANNOUNCED", set(), raising=False)
    with caplog.at_level("INFO", logger="qponder.models"):
        for _ in range(3):  # a loop that reloads says it once
            load_processor(tiny_model_dir)
        load_processor(tiny_model_dir, backend="image-only")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("processor:")]
    assert lines == [
        ("WARNING", "processor: Qwen2_5_VLImageOnlyProcessor (image-only: torchvision is missing or broken: "
                    "not installed; video input disabled)"),
        ("INFO", "processor: Qwen2_5_VLImageOnlyProcessor (image-only: requested; video input disabled)"),
    ]


def test_a_broken_torchvision_is_reported_with_its_import_error(tmp_path, monkeypatch):
    from qponder.models import _torchvision_status

    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist\\nmore detail")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    assert _torchvision_status() == (False, "import failed: RuntimeError: operator torchvision::nms does not exist")


_STOCK_LOAD = """
import json, sys
from pathlib import Path
from transformers import AutoProcessor
from transformers.models.auto.processing_auto import processor_class_from_name
d = Path(sys.argv[1])
proc = json.loads((d / "processor_config.json").read_text())
tok = json.loads((d / "tokenizer_config.json").read_text())
cls = processor_class_from_name(proc["processor_class"])
print(proc["processor_class"], tok["processor_class"], cls.__module__.split(".")[0],
      proc["video_processor"]["video_processor_type"])
try:
    print("loaded", type(AutoProcessor.from_pretrained(d)).__name__)
except ImportError as e:  # the stock video processor needs torchvision, which CPU boxes lack
    print("needs-torchvision", str(e).split()[0])
"""


def test_saved_processors_name_stock_classes_that_stock_transformers_resolves(tiny_model_dirs):
    """A checkpoint must load where qponder is not imported (a GPU box, vLLM, a user's script): its files name the
    stock processor class and carry a video processor config, so AutoProcessor builds the stock processor (given
    torchvision) instead of falling back to a bare tokenizer. Checked in a fresh process."""
    import importlib.util

    for family, path in tiny_model_dirs.items():
        stock = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}
        video = "Qwen3VLVideoProcessor" if family == "qwen3_vl" else "Qwen2VLVideoProcessor"
        done = subprocess.run([sys.executable, "-c", _STOCK_LOAD, str(path)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        names, load = done.stdout.strip().splitlines()[-2:]
        assert names.split() == [stock[family], stock[family], "transformers", video], family
        if importlib.util.find_spec("torchvision") is None:
            assert load == f"needs-torchvision {video}", (family, load)  # past class and config resolution
        else:
            assert load == f"loaded {stock[family]}", (family, load)
        assert type(load_processor(path)).__name__ == stock[family]  # and qponder itself still loads it
