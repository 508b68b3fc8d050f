"""Loading Qwen-VL models and processors (real checkpoints, hub ids, LoRA adapters).

One code path serves a 0.3M-parameter CPU test model and Qwen2.5-VL-7B on a GPU:

* ``load_model_and_processor(path_or_id, ...)`` reads the family from the checkpoint's ``config.json``, picks the
  processor backend, and stacks a PEFT adapter on its base when the folder is an adapter.
* The stock Qwen-VL processors need a torchvision-backed video processor. The PyPI torchvision wheel is a CUDA build
  that breaks beside CPU torch, so without a working torchvision we use *image-only* processor subclasses that drop
  the ``video_processor`` attribute (no video input; images are processed by the same Qwen2-VL image processor).
  Which one loaded, and why, is logged once per process (a WARNING when ``auto`` falls back to image-only).

The tiny models the demo and the tests use are built in ``qponder.demo.tiny_model``; this module only loads folders.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qponder.errors import QponderError

log = logging.getLogger(__name__)

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# ---------------------------------------------------------------------------------------------------------------
# Image-only processors (no torchvision needed)
# ---------------------------------------------------------------------------------------------------------------

def _image_only_classes() -> dict[str, tuple[type, type]]:
    """family -> (config class, image-only processor class); defined lazily so importing qponder stays cheap."""
    global _IMAGE_ONLY
    if _IMAGE_ONLY is not None:
        return _IMAGE_ONLY
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLProcessor,
        Qwen3VLConfig,
        Qwen3VLProcessor,
    )

    def make(base: type, name: str, video_type: str) -> type:
        # ProcessorMixin derives its attribute list from __init__'s signature, so leaving `video_processor` out of
        # the signature is what makes the class loadable without a video processor.
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)  # a saved stock-loadable config carries one (see to_dict)
            base.__init__(self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                          chat_template=chat_template, **kwargs)

        def to_dict(self) -> dict:
            # The stock processor needs a video processor config to load; derive it from the image processor's
            # patching (the stock class fills in the rest with its defaults).
            out = base.to_dict(self)
            image = out.get("image_processor") or {}
            out.setdefault("video_processor", {"video_processor_type": video_type, **{
                k: image[k] for k in ("patch_size", "temporal_patch_size", "merge_size") if k in image}})
            return out

        # __name__ is the stock class's: transformers writes `processor_class` (processor_config.json,
        # tokenizer_config.json) from it, and a saved checkpoint must name a class that stock transformers, vLLM and
        # a user's script can load. __qualname__ keeps our name for logs and reprs.
        return type(base.__name__, (base,), {"__init__": __init__, "to_dict": to_dict, "__module__": __name__,
                                             "__qualname__": name})

    _IMAGE_ONLY = {
        "qwen2_vl": (Qwen2VLConfig, make(Qwen2VLProcessor, "Qwen2VLImageOnlyProcessor", "Qwen2VLVideoProcessor")),
        "qwen2_5_vl": (Qwen2_5_VLConfig, make(Qwen2_5_VLProcessor, "Qwen2_5_VLImageOnlyProcessor",
                                               "Qwen2VLVideoProcessor")),
        "qwen3_vl": (Qwen3VLConfig, make(Qwen3VLProcessor, "Qwen3VLImageOnlyProcessor", "Qwen3VLVideoProcessor")),
    }
    from transformers import AutoProcessor

    for cfg_cls, proc_cls in _IMAGE_ONLY.values():
        AutoProcessor.register(cfg_cls, proc_cls, exist_ok=True)
    return _IMAGE_ONLY


_IMAGE_ONLY: dict[str, tuple[type, type]] | None = None


def torchvision_works() -> bool:
    """True when torchvision imports cleanly (GPU machines); False on CPU boxes with the CUDA-only wheel."""
    return _torchvision_status()[0]


def _torchvision_status() -> tuple[bool, str]:
    """(works, why): the why is what the processor log line reports, so a user can tell why video is off."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return False, "not installed"
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # the CUDA wheel beside CPU torch raises RuntimeError at import
        first = (str(e).strip().splitlines() or [""])[0]  # one log line, however long the import error is
        return False, f"import failed: {type(e).__name__}: {first}"
    return True, "works"


_ANNOUNCED: set[tuple[str, str]] = set()


def _announce_processor(proc: Any, backend: str, tv_reason: str | None) -> None:
    """Log once per process per (class, reason) which processor loaded and why; loops that reload stay quiet."""
    name = type(proc).__qualname__
    if backend == "stock":
        why, level = "stock; requested", logging.INFO
    elif backend == "image-only":
        why, level = "image-only: requested; video input disabled", logging.INFO
    elif tv_reason is None:
        why, level = "stock; torchvision works", logging.INFO
    else:  # auto fell back: a GPU box with a broken torchvision should not lose video silently
        why = f"image-only: torchvision is missing or broken: {tv_reason}; video input disabled"
        level = logging.WARNING
    if (name, why) in _ANNOUNCED:
        return
    _ANNOUNCED.add((name, why))
    log.log(level, "processor: %s (%s)", name, why)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise QponderError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def detect_family(config: dict, where: str = "") -> str:
    """Map a config's ``model_type`` to one of FAMILIES."""
    mt = config.get("model_type", "")
    aliases = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl",
               "qwen3_vl_moe": "qwen3_vl"}
    if mt in aliases:
        return aliases[mt]
    raise QponderError(
        f"{where or 'model'}: unsupported model_type {mt!r}; qponder supports {', '.join(FAMILIES)}"
    )


def _check_family(family: str | None) -> None:
    if family is not None and family not in FAMILIES:
        raise QponderError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise QponderError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def load_processor(path_or_id: str | os.PathLike, family: str | None = None, *, backend: str = "auto",
                   padding_side: str = "left", min_pixels: int | None = None, max_pixels: int | None = None):
    """Load a Qwen-VL processor. ``backend``: ``auto`` (stock when torchvision works), ``stock`` or ``image-only``."""
    _check_family(family)
    if backend not in ("auto", "stock", "image-only"):
        raise QponderError(f"unknown processor backend {backend!r}; use auto, stock or image-only")
    path = str(path_or_id)
    if family is None:
        family = _family_of(path)
    tv_reason = None  # why auto fell back to image-only; None when it did not
    use_stock = backend == "stock"
    if backend == "auto":
        use_stock, why = _torchvision_status()
        tv_reason = None if use_stock else why
    try:
        if use_stock:
            from transformers import AutoProcessor

            proc = AutoProcessor.from_pretrained(path)
        else:
            proc_cls = _image_only_classes()[family][1]
            proc = proc_cls.from_pretrained(path)
    except QponderError:
        raise
    except Exception as e:
        raise QponderError(f"could not load the processor from {path!r}: {type(e).__name__}: {e}") from e
    _announce_processor(proc, backend, tv_reason)
    proc.tokenizer.padding_side = padding_side
    if min_pixels is not None or max_pixels is not None:
        set_pixel_budget(proc, min_pixels=min_pixels, max_pixels=max_pixels)
    return proc


def set_pixel_budget(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set the image processor's pixel budget (Qwen-VL's min_pixels / max_pixels)."""
    ip = processor.image_processor
    size = dict(getattr(ip, "size", None) or {})
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
        if hasattr(ip, "min_pixels"):
            ip.min_pixels = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
        if hasattr(ip, "max_pixels"):
            ip.max_pixels = int(max_pixels)
    ip.size = size


def _local_dir(path: str) -> Path | None:
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise QponderError(f"{p}: expected a model folder, found a file")
        return p
    # Looks like a path (absolute, ./, ../, more than one slash, or its parent folder exists here) but is missing:
    # say so instead of asking the hub.
    if (path.startswith((".", "/", "~")) or path.count("/") > 1 or (os.sep != "/" and os.sep in path)
            or ("/" in path and p.parent.is_dir())):
        raise QponderError(f"{path}: model folder does not exist")
    return None


def _family_of(path: str) -> str:
    local = _local_dir(path)
    if local is not None:
        cfg_file = local / "config.json"
        if not cfg_file.exists():
            adapter = local / "adapter_config.json"
            if adapter.exists():
                base = _read_json(adapter).get("base_model_name_or_path")
                if not base:
                    raise QponderError(f"{adapter}: no base_model_name_or_path; pass the base model explicitly")
                return _family_of(base)
            raise QponderError(f"{local}: no config.json (not a transformers model folder)")
        return detect_family(_read_json(cfg_file), str(cfg_file))
    try:
        from transformers import AutoConfig

        return detect_family(AutoConfig.from_pretrained(path).to_dict(), path)
    except QponderError:
        raise
    except Exception as e:
        raise QponderError(f"{path!r} is not a local folder and could not be fetched as a hub id "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); without "
                           "internet, pass a local checkpoint folder (or set HF_HUB_OFFLINE=1 to use the cache "
                           "only)") from e


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    family: str
    path: str
    device: str
    is_adapter: bool = False


def load_model_and_processor(path_or_id: str | os.PathLike, family: str | None = None, *, dtype: str = "auto",
                             device: str = "auto", base_model: str | None = None, merge_adapter: bool = False,
                             processor_backend: str = "auto", attn_implementation: str | None = None,
                             padding_side: str = "left", min_pixels: int | None = None,
                             max_pixels: int | None = None, trainable: bool = False) -> LoadedModel:
    """Load a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint (folder or hub id) or a PEFT adapter folder.

    For an adapter folder the base model comes from ``base_model`` or the adapter's ``base_model_name_or_path``;
    with ``merge_adapter`` the LoRA weights are merged into the base (faster inference, plain model object).
    """
    _check_family(family)
    path = str(path_or_id)
    local = _local_dir(path)
    is_adapter = bool(local and (local / "adapter_config.json").exists() and not (local / "config.json").exists())
    base_path = path
    if is_adapter:
        base_path = base_model or _read_json(local / "adapter_config.json").get("base_model_name_or_path")
        if not base_path:
            raise QponderError(f"{local}/adapter_config.json: no base_model_name_or_path; pass base_model")
    detected = _family_of(base_path)
    if family is not None and family != detected:
        raise QponderError(f"{path}: family {family!r} was requested but the checkpoint is {detected!r}")
    family = detected
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)

    from transformers import AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(base_path, **kwargs)
    except Exception as e:
        raise QponderError(f"could not load model weights from {base_path!r}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(local), is_trainable=trainable)
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(device)
    if not trainable:
        model.eval()  # dropout off; callers wrap forward passes in torch.inference_mode themselves
    # The adapter folder may carry its own processor (saved by `qponder sft`); otherwise use the base's.
    # (transformers 5 writes processor_config.json; older checkpoints preprocessor_config.json)
    own = is_adapter and any((local / f).exists() for f in ("processor_config.json", "preprocessor_config.json"))
    proc_src = str(local) if own else base_path
    processor = load_processor(proc_src, family, backend=processor_backend, padding_side=padding_side,
                               min_pixels=min_pixels, max_pixels=max_pixels)
    return LoadedModel(model=model, processor=processor, family=family, path=path, device=device,
                       is_adapter=is_adapter and not merge_adapter)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def zero3_disabled_for_load():
    """Load a whole (unpartitioned) model while DeepSpeed ZeRO-3 trains another one, e.g. a frozen reader model.

    Under ZeRO-3 transformers builds every model inside ``deepspeed.zero.Init`` and loads it with collectives: a model
    loaded lazily in one reward call gets placeholder weights (its forward fails with "'weight' must be 2-D") or
    hangs. Hiding the ZeRO-3 config for the load gives each rank a full copy instead (for a 7B reader in bf16, about
    15 GB per GPU). Yields whether ZeRO-3 was active."""
    try:
        import transformers.integrations.deepspeed as hf_ds
    except ImportError:  # pragma: no cover - transformers always has it
        yield False
        return
    ref = hf_ds._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    if config is None or not config.is_zero3():
        yield False
        return
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield True
    finally:
        hf_ds.set_hf_deepspeed_config(config)
