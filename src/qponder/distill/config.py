"""Settings of ``qponder distill`` (one dataclass tree; every key can be set in a recipe or with ``--set``).

Defaults are the offline demo: the demo's ``rule`` teacher on the demo dataset's train split (both from the
``qponder.demo`` plugin). Secrets never live here: ``teacher.api_key_env`` names the environment variable that
holds the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from qponder.errors import QponderError
from qponder.prompts import DEFAULT_TEACHER_PROMPT, get_teacher_prompt


@dataclass
class TeacherSettings:
    """Which teacher answers, and how requests are sent."""

    backend: str = "rule"  # openai | local | a plugin's backend (the CPU demo's offline "rule" teacher)
    # openai: an OpenAI-compatible server (vLLM, SGLang, a hosted API). base_url may be empty: then it is read from
    # the environment variable named by base_url_env.
    base_url: str = ""
    base_url_env: str = "QPONDER_TEACHER_BASE_URL"
    model: str = ""  # openai: served model name; local: model folder / hub id (loaded through qponder.models)
    api_key_env: str = "OPENAI_API_KEY"  # NAME of the variable holding the key; unset variable = no auth header
    concurrency: int = 8  # requests in flight (openai)
    timeout_s: float = 120.0  # per HTTP request
    max_retries: int = 5  # HTTP retries on 429 / 5xx / connection errors / timeouts
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0  # cap on a server's Retry-After
    supports_n: bool = True  # server accepts n > 1 in one request; else K samples are K requests
    image_format: Literal["original", "PNG", "JPEG"] = "original"  # original bytes (JPEG/PNG/WEBP) or re-encode
    max_pixels: Optional[int] = None  # downscale larger images before sending (then re-encoded as PNG)
    extra_body: dict[str, Any] = field(default_factory=dict)  # extra request fields, e.g. {top_k: 20} for vLLM
    # generation
    temperature: float = 0.0  # > 0 needed when filter.k_samples > 1 (except for the deterministic rule teacher)
    retry_temperature: float = 0.7  # format retries of a greedy (temperature 0) teacher sample at this temperature
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: Optional[int] = None  # forwarded to the server (openai) / generation seed (local)
    # rule (the demo's offline stand-in) backend: "varied" phrasing per image like a real teacher, or "fixed" phrasing
    rule_wording: Literal["varied", "fixed"] = "varied"
    # local (transformers) backend
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 4
    min_pixels: Optional[int] = None


@dataclass
class FilterSettings:
    """When a teacher answer becomes an SFT sample."""

    tolerance: float = 0.5  # keep when |teacher score - normalised MOS| <= tolerance (1-5 scale)
    k_samples: int = 1  # sampled rationales per image; > 1 enables the agreement check
    max_std: float = 0.5  # K > 1: keep only when the population std of the K scores <= max_std
    select: Literal["first", "best"] = "first"  # which valid rationale is kept: first, or closest to the MOS
    max_format_retries: int = 2  # re-ask up to N times when an answer breaks the output format
    min_reasoning_chars: int = 20  # a shorter <think> block counts as a format failure
    reject_mos_leak: bool = True  # MOS-informed prompts: reject reasoning that mentions the human score


@dataclass
class DistillSettings:
    data: str = "demo"  # a manifest file (CSV / JSON / JSONL) or a registered dataset ("demo": the CPU demo's)
    data_root: Optional[str] = None  # folder the manifest's image paths are relative to (default: its folder)
    dataset: str = "custom"  # registry name for the manifest (sets the MOS range used for normalisation)
    split: Optional[str] = "train"  # train | val | test; null or "all" = every row
    max_samples: Optional[int] = None  # first N samples after the split filter (in manifest order)
    demo_seed: int = 0
    demo_size: str = "default"
    out: str = "runs/distill"
    prompt: str = DEFAULT_TEACHER_PROMPT  # a name in qponder.prompts.TEACHER_PROMPTS
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    filter: FilterSettings = field(default_factory=FilterSettings)
    max_consecutive_errors: int = 20  # abort when this many samples in a row fail at the transport level
    progress: bool = True  # tqdm progress bar on stderr
    histogram: bool = True  # write score_error_hist.png (matplotlib, Agg)
    overwrite: bool = False  # delete an earlier run's outputs in `out` instead of resuming it

    def validate(self) -> None:
        """Raise QponderError for settings that cannot work, before any request is sent."""
        t, f = self.teacher, self.filter
        get_teacher_prompt(self.prompt)
        if not self.data:
            raise QponderError("data is empty: use 'demo' or a manifest path")
        if self.max_samples is not None and self.max_samples < 1:
            raise QponderError(f"max_samples must be >= 1, got {self.max_samples}")
        # (field, value, lower bound, bound excluded?)
        for name, value, low, strict in (
                ("filter.tolerance", f.tolerance, 0, False), ("filter.k_samples", f.k_samples, 1, False),
                ("filter.max_std", f.max_std, 0, False), ("filter.max_format_retries", f.max_format_retries, 0, False),
                ("teacher.concurrency", t.concurrency, 1, False), ("teacher.batch_size", t.batch_size, 1, False),
                ("teacher.timeout_s", t.timeout_s, 0, True), ("teacher.max_retries", t.max_retries, 0, False)):
            if value < low or (strict and value == low):
                raise QponderError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
        from qponder.distill.backends import backend_class

        backend = backend_class(t.backend)  # an unknown name fails here, before any request
        if f.k_samples > 1 and t.temperature <= 0 and not backend.deterministic:
            raise QponderError("filter.k_samples > 1 needs teacher.temperature > 0 (greedy samples are identical)")
        if t.backend in ("openai", "local") and not t.model:
            raise QponderError(f"teacher.model is required for the {t.backend} backend "
                               + ("(the served model name)" if t.backend == "openai" else "(a model folder)"))
        if self.max_consecutive_errors < 1:
            raise QponderError(f"max_consecutive_errors must be >= 1, got {self.max_consecutive_errors}")
