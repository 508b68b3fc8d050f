"""`qponder eval`: score each benchmark's test split, then SRCC/KRCC/PLCC (raw and logistic)/RMSE, tables, plots.

Per benchmark ``<out>/<name>/predictions.jsonl`` (one line per image: score, samples, reasoning, raw text, mos) is
appended as images are scored, so a killed evaluation resumes where it stopped and gives the same numbers as an
uninterrupted one (fixed batch plan, per-batch seeds; see ``qponder.infer``). Unparsable answers are excluded from
the correlations and counted (``parse_failure_rate``), never replaced by a random score. Results: ``results.json``,
``results.md`` (rows = benchmarks, columns = metrics, plus the unweighted mean over benchmarks) and
``<name>/scatter.png`` (prediction vs MOS with the fitted 4-parameter logistic). With generated answers (readout
generate/both) each benchmark also gets :func:`qponder.metrics.consistency_summary`: the answer against the score its
own reasoning implies (``consistency_reader``: ``lexicon``, or ``levels`` with ``consistency_model``) and the answers'
diversity, in results.json and a second results.md table.

Under ``accelerate launch`` / ``torchrun`` every process scores its share of each benchmark (``qponder.infer``'s
sharding); rank 0 merges the predictions, then computes all metrics and reports, so the other processes never wait
on a judge or a plot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from qponder.errors import QponderError

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["n", "n_valid", "parse_failure_rate", "srcc", "krcc", "plcc", "plcc_logistic4", "rmse"]
CONSISTENCY_NOTE = ("s_r is the score the reasoning alone implies ({reader} reader); pairs missing s_r or the answer "
                    "are excluded (the rest counted in n_consistency); a level is the score rounded half up to 1-5; "
                    "distinct answers at 2 decimals, entropy of the 0.25-wide bins over [1, 5].")


@dataclass
class EvalSettings:
    model: str = ""
    benchmarks: list[str] = field(default_factory=lambda: ["demo"])
    data_root: Optional[str] = None
    split: Optional[str] = "default"  # default: each benchmark's test split (KonIQ official test; whole set elsewhere)
    max_samples: Optional[int] = None
    demo_seed: int = 0  # benchmark "demo": which seeded photo split (must match the training's)
    out: str = "runs/eval"
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    readout: str = "generate"  # generate | levels | expected | both (generate + levels + expected)
    batch_size: int = 8
    max_new_tokens: int = 256
    device: str = "auto"
    dtype: str = "auto"
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    seed: int = 0
    backend: str = "auto"  # auto (vLLM when installed and a GPU is present; hf under several processes) | hf | vllm
    tensor_parallel_size: int = 1  # vLLM: GPUs one model is split over (passed to vllm.LLM)
    # vLLM: the share of each GPU it takes (vllm.LLM's gpu_memory_utilization). None: 0.85, or 0.5 when a levels
    # reader loads a second model onto the first GPU for the consistency metrics (a 7B reader needs ~17 GB more)
    gpu_memory_utilization: Optional[float] = None
    judge_url: Optional[str] = None  # OpenAI-compatible judge for description quality
    judge_model: str = "judge"
    judge_api_key_env: Optional[str] = None
    judge_max_samples: Optional[int] = None
    consistency_reader: str = "lexicon"  # reasoning -> implied score for the consistency metrics: lexicon | levels
    consistency_model: Optional[str] = None  # levels reader: the model that reads the reasoning (e.g. the SFT model)
    progress: bool = True


def benchmark_samples(name: str, data_root: Optional[str], split: Optional[str],
                      max_samples: Optional[int], demo_seed: int = 0) -> list[Any]:
    """The samples of one benchmark's evaluation split, through the data layer (a registered dataset such as
    ``demo`` needs no data root)."""
    from qponder.data.registry import dataset_loader, get_benchmark

    load = dataset_loader(name)
    if load is not None:
        samples = load(get_benchmark(name).default_split if split == "default" else split, seed=demo_seed)
    else:
        from qponder.data import load_benchmark

        if not data_root:
            raise QponderError(f"benchmark {name!r} needs --data-root (the folder holding the datasets)")
        samples = load_benchmark(name, data_root, split=split)
    if not samples:
        raise QponderError(f"benchmark {name!r} has no samples for split {split!r}")
    if max_samples:
        samples = samples[:max_samples]
    return samples


def expand_benchmarks(spec: str | list[str]) -> list[str]:
    """``"protocol-a"`` -> the protocol's test sets; names/aliases -> registry names (``demo`` included)."""
    from qponder.data import get_benchmark, get_protocol

    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item.lower().replace("_", "-").startswith("protocol"):
            names = list(get_protocol(item.lower().replace("protocol", "").strip("-_ ")).test)
        else:
            names = [get_benchmark(item).name]
        out += [n for n in names if n not in out]
    if not out:
        raise QponderError(f"no benchmarks in {spec!r}")
    return out


def _safe_dirname(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def evaluate(cfg: EvalSettings, scorer=None) -> dict[str, dict]:
    """Run the evaluation; returns ``{benchmark: metrics}`` and writes the files described in the module doc."""
    from qponder.infer import current_shard, score_files
    from qponder.io import read_jsonl, write_json_atomic, write_text_atomic
    from qponder.metrics import CONSISTENCY_KEYS, answer_diversity, consistency_summary, implied_scores, summarize
    from qponder.report import markdown_table, scatter_plot

    if not cfg.benchmarks:
        raise QponderError("no benchmarks given")
    cfg.benchmarks = expand_benchmarks(cfg.benchmarks)  # aliases and protocol names, from flags or recipes
    if cfg.samples > 1 and cfg.temperature <= 0:
        raise QponderError("samples > 1 needs temperature > 0")
    shard = current_shard()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if shard.main:
        write_json_atomic({k: v for k, v in asdict(cfg).items()}, out / "eval_config.json")
    # Resolve every benchmark before loading the model: a wrong path fails in a second, not after the first set.
    per_bench = {b: benchmark_samples(b, cfg.data_root, cfg.split, cfg.max_samples, cfg.demo_seed)
                 for b in cfg.benchmarks}
    # Built before scoring on every process (a levels model loads on first use, by rank 0 alone), so a wrong reader
    # name or a levels reader without a model fails in a second, everywhere.
    reader = consistency_reader(cfg) if cfg.readout != "levels" else None
    if scorer is None:
        scorer = make_scorer(cfg, shard.world, shard.device(cfg.device))
    scored = {}  # every benchmark scored first (all processes), then the reports (rank 0 alone)
    for bench, samples in per_bench.items():
        bdir = out / _safe_dirname(bench)
        bdir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        extra = [{"image_id": s.image_id, "mos": s.mos, "mos_native": s.mos_native, "dataset": bench,
                  "path": s.image} for s in samples]
        stats = score_files(scorer, [s.image for s in samples], out_path=str(bdir / "predictions.jsonl"),
                            names=[s.image_id for s in samples], samples=cfg.samples, readout=cfg.readout,
                            temperature=cfg.temperature, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                            extra=extra, progress=cfg.progress, shard=shard)
        scored[bench] = (stats, time.time() - t0)
    if not shard.main:
        return {}
    results: dict[str, dict] = {}
    for bench, samples in per_bench.items():
        bdir = out / _safe_dirname(bench)
        pred_file = bdir / "predictions.jsonl"
        stats, seconds = scored[bench]
        t0 = time.time()
        records = {r["image"]: r for r in read_jsonl(pred_file)}
        wanted = [s.image_id for s in samples]
        missing = [w for w in wanted if w not in records]
        if missing:
            log.warning("%s: %d image(s) could not be scored (unreadable); they count as failures", bench,
                        len(missing))
        preds = [records[w]["score"] if w in records else None for w in wanted]
        mos = [s.mos for s in samples]
        summary = summarize(preds, mos)
        lengths = [len(records[w]["raw"][0]) for w in wanted if w in records and records[w].get("raw")]
        summary["mean_output_chars"] = (sum(lengths) / len(lengths)) if lengths else None
        if cfg.readout == "both":
            for key, field in (("levels", "levels_score"), ("expected", "expected_score")):
                values = [records[w].get(field) if w in records else None for w in wanted]
                summary[key] = summarize(values, mos, name=f"{bench} ({key})") | answer_diversity(values)
        if reader is not None:  # the level-only read-out writes no answer of its own to compare
            texts = [records[w].get("reasoning") if w in records else None for w in wanted]
            summary.update(consistency_summary(implied_scores(reader, texts), preds, name=bench))
        summary["seconds"] = round(seconds + time.time() - t0, 2)  # scoring + reading back + metrics
        summary["scored_now"] = stats.scored
        if cfg.judge_url:
            from qponder.judge import judge_descriptions

            summary["description"] = judge_descriptions(
                [records[w] for w in wanted if w in records], bdir / "judgements.jsonl", url=cfg.judge_url,
                model=cfg.judge_model, api_key_env=cfg.judge_api_key_env, max_samples=cfg.judge_max_samples)
        results[bench] = summary
        scatter_plot(preds, mos, bdir / "scatter.png", title=f"{bench}: predicted vs MOS")
        write_json_atomic(summary, bdir / "metrics.json")
    write_json_atomic({"model": scorer.model_name, "split": cfg.split, "readout": cfg.readout,
                       "samples": cfg.samples, "temperature": cfg.temperature, "results": results},
                      out / "results.json")
    table = markdown_table(results, columns=METRIC_COLUMNS)
    header = (f"# Evaluation of `{scorer.model_name}`\n\nsplit: {cfg.split}, readout: {cfg.readout}, samples: "
              f"{cfg.samples}, temperature: {cfg.temperature}. SRCC/KRCC/PLCC exclude unparsable answers "
              f"(counted in parse_failure_rate); plcc_logistic4 is PLCC after the VQEG 4-parameter logistic fit; "
              f"RMSE on the 1-5 scale.\n\n")
    if cfg.readout == "both":
        table += ("\n## Read-outs after the reasoning\n\nlevels: the probability-weighted level word; expected: the "
                  "expected answer under the model's own distribution (see qponder.infer).\n\n"
                  + markdown_table({f"{b} ({k})": r[k] for b, r in results.items() for k in ("levels", "expected")},
                                   columns=[*METRIC_COLUMNS, "distinct_answers"], mean_row=False,
                                   first_header="dataset (read-out)"))
    if reader is not None:
        table += (f"\n## Reasoning vs answer\n\n{CONSISTENCY_NOTE.format(reader=cfg.consistency_reader)}\n\n"
                  + markdown_table(results, columns=list(CONSISTENCY_KEYS)))
    write_text_atomic(header + table + "\n", out / "results.md")
    return results


def consistency_reader(cfg: EvalSettings):
    """The reader behind the consistency metrics (``qponder.rewards.readers``, the same readers the consistency
    reward uses, so eval measures what GRPO optimised): ``lexicon``, or ``levels`` reading with
    ``consistency_model`` on the evaluation's device."""
    from qponder.rewards.readers import build_reader

    params: dict[str, Any] = {}
    if cfg.consistency_model:
        params["model"] = cfg.consistency_model
    if cfg.consistency_reader == "levels":
        if not cfg.consistency_model:
            raise QponderError("--consistency-reader levels needs --consistency-model (the model that reads the "
                               "reasoning, normally the SFT checkpoint)")
        params.update(device=cfg.device, dtype=cfg.dtype)
    elif cfg.consistency_model:
        raise QponderError(f"--consistency-model is only used with --consistency-reader levels, not "
                           f"{cfg.consistency_reader!r}")
    return build_reader(cfg.consistency_reader, **params)


VLLM_DEVICES = ("auto", "cuda", "cuda:0")  # what vLLM can honour: it places itself on the visible GPUs


def make_scorer(cfg: EvalSettings, processes: int = 1, device: str | None = None):
    """HF generate by default; vLLM when asked for (or auto with vLLM installed and a GPU present), in one process:
    vLLM spreads a model over GPUs itself (``tensor_parallel_size``) and is not run once per sharding process."""
    from qponder.infer import QualityScorer

    backend = cfg.backend
    adapter = (Path(cfg.model) / "adapter_config.json").exists() and not (Path(cfg.model) / "config.json").exists()
    if backend == "auto":
        # vLLM only for what it can do here: generated answers from a full checkpoint.
        backend = ("vllm" if processes == 1 and _vllm_usable() and cfg.readout == "generate" and not adapter
                   and cfg.device in VLLM_DEVICES else "hf")
    if backend == "vllm" and processes > 1:
        raise QponderError(f"backend vllm runs in one process (here {processes}): start qponder eval without "
                           "accelerate launch / torchrun and give --tensor-parallel-size, or use --backend hf")
    if backend == "vllm":
        if cfg.readout != "generate":
            raise QponderError("the vLLM backend reads generated answers only; use --backend hf for the level "
                               "read-out")
        if adapter:
            raise QponderError(f"{cfg.model}: a LoRA adapter folder; export a merged model (qponder sft --merge) "
                               "for the vLLM backend, or use --backend hf")
        if cfg.device not in VLLM_DEVICES:
            raise QponderError(f"device {cfg.device!r}: vLLM runs on the GPUs it sees, from the first; choose them "
                               "with CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=3 for cuda:3) and leave device "
                               "auto, or use --backend hf")
        from qponder.infer_vllm import VLLMScorer

        return VLLMScorer(cfg.model, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_p=cfg.top_p, batch_size=max(cfg.batch_size, 64), seed=cfg.seed,
                          min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, dtype=cfg.dtype,
                          tensor_parallel_size=cfg.tensor_parallel_size,
                          gpu_memory_utilization=cfg.gpu_memory_utilization or (
                              0.5 if cfg.consistency_reader == "levels" else 0.85))
    if backend != "hf":
        raise QponderError(f"unknown backend {cfg.backend!r}; use auto, hf or vllm")
    return QualityScorer(cfg.model, device=device or cfg.device, dtype=cfg.dtype, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed,
                         min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)


def _vllm_usable() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()
