"""Cold-start distillation: ask a teacher to reason about each training image, filter against the MOS, write SFT data.

Files in ``out``:

* ``decisions.jsonl`` -- the journal and audit log: one fsynced line per finished image (``qponder.io.append_jsonl``),
  kept or rejected, with the reason, the raw teacher texts, attempts and HTTP statuses. It is the source of truth
  for resuming.
* ``sft.jsonl`` -- the kept rows, exactly what ``qponder sft`` reads (``SFT_FIELDS``). Derived from the journal
  (appended right after it, fsynced at the end of the run): on start-up and at the end it is checked against the
  kept decisions and rewritten atomically if a crash left it behind.
* ``errors.jsonl`` -- samples whose requests failed at the transport level (server down, retries exhausted). They
  are *not* decided: a re-run tries them again.
* ``run.json`` (settings that must not change within one output folder), ``distill_config.yaml``, ``stats.json``,
  ``card.json`` + ``README.md`` (dataset card), ``score_error_hist.png``.

Re-running with the same ``out`` skips every image already in the journal, so a crash or Ctrl-C costs at most the
requests in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from qponder.data.registry import dataset_loader
from qponder.data.schema import upgrade_mos_names
from qponder.distill.backends import TeacherBackend, TeacherReply, TeacherRequest, make_backend
from qponder.distill.config import DistillSettings
from qponder.distill.filtering import (
    Candidate,
    Decision,
    check_completion,
    decide,
    error_histogram_png,
    summarize,
)
from qponder.errors import QponderError
from qponder.prompts import format_target, get_teacher_prompt, prompt_fingerprint

log = logging.getLogger(__name__)

SFT_FIELDS = ("image", "image_id", "mos", "mos_native", "dataset", "split", "reasoning", "teacher_score", "target")
DECISIONS_FILE = "decisions.jsonl"
SFT_FILE = "sft.jsonl"
ERRORS_FILE = "errors.jsonl"
RUN_FILE = "run.json"
CONFIG_FILE = "distill_config.yaml"
STATS_FILE = "stats.json"
CARD_JSON = "card.json"
CARD_MD = "README.md"
HIST_FILE = "score_error_hist.png"
FORMAT_VERSION = 1
_OUTPUTS = (DECISIONS_FILE, SFT_FILE, ERRORS_FILE, RUN_FILE, CONFIG_FILE, STATS_FILE, CARD_JSON, CARD_MD, HIST_FILE)


@dataclass
class DistillResult:
    out: Path
    sft_path: Path
    decisions_path: Path
    n_selected: int
    n_skipped: int  # already decided by an earlier run
    n_kept: int  # decided in this run
    n_rejected: int
    n_errors: int  # failed at the transport level in this run; a re-run retries them
    stats: dict[str, Any] = field(default_factory=dict)  # over the whole output folder
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.n_errors == 0


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------

def select_samples(cfg: DistillSettings) -> list:
    """The samples to distil: a registered dataset (``demo``) or a manifest, split filter, then the first
    ``max_samples``."""
    split = cfg.split if cfg.split not in (None, "", "all") else None
    load = dataset_loader(cfg.data)
    if load is not None:
        samples = load(split, seed=cfg.demo_seed, size=cfg.demo_size)
    else:
        from qponder.data import load_samples

        samples = load_samples(cfg.data, cfg.data_root, dataset=cfg.dataset, split=split)
    if cfg.max_samples is not None:
        samples = samples[: cfg.max_samples]
    if not samples:
        raise QponderError(f"{cfg.data}: no samples selected (split {split or 'all'})")
    return samples


def sft_record(decision: dict) -> dict:
    """The SFT row of a kept decision (``SFT_FIELDS``, in that order)."""
    return {k: decision[k] for k in SFT_FIELDS}


# ---------------------------------------------------------------------------------------------------------------
# Resume state
# ---------------------------------------------------------------------------------------------------------------

def read_decisions(out: Path) -> list[dict]:
    """Journal records, first occurrence per image id (a truncated last line is skipped)."""
    from qponder.io import read_jsonl

    path = out / DECISIONS_FILE
    if not path.exists():
        return []
    seen: set[str] = set()
    rows = []
    for r in read_jsonl(path):
        iid = r.get("image_id") if isinstance(r, dict) else None
        if iid is None:
            raise QponderError(f"{path}: a record has no image_id; this is not a qponder decisions file")
        if iid in seen:
            log.warning("%s: image %s is recorded twice; keeping the first record", path, iid)
            continue
        seen.add(iid)
        rows.append(upgrade_mos_names(r))
    return rows


def reconcile_sft(out: Path, decisions: Sequence[dict]) -> bool:
    """Make sft.jsonl hold exactly the kept decisions, each once, in journal order. True when it was rewritten.

    A crash between the two appends of one sample leaves a kept decision without its SFT row (the journal is
    written first); a truncated last line leaves garbage. Both are repaired here from the journal.
    """
    from qponder.io import json_dumps, read_jsonl, write_text_atomic

    path = out / SFT_FILE
    expected = [sft_record(d) for d in decisions if d.get("decision") == "kept"]
    if path.exists():
        raw = path.read_bytes()
        try:
            current_ids = [r.get("image_id") for r in read_jsonl(path)]
        except QponderError:
            current_ids = None
        if current_ids == [r["image_id"] for r in expected] and (not raw or raw.endswith(b"\n")):
            return False
        log.warning("%s: does not match %s (interrupted run?); rebuilding it from the journal", path,
                    DECISIONS_FILE)
    elif not expected:
        return False
    write_text_atomic("".join(json_dumps(r, indent=None) + "\n" for r in expected), path)
    return True


def _run_info(cfg: DistillSettings, backend: TeacherBackend) -> dict[str, Any]:
    tp = get_teacher_prompt(cfg.prompt)
    return {
        "format_version": FORMAT_VERSION,
        "prompt": tp.name,
        "prompt_fingerprint": prompt_fingerprint(tp.system, tp.user),
        "mos_informed": tp.mos_informed,
        "teacher": backend.teacher_id,
        "filter": dataclasses.asdict(cfg.filter),
    }


def _check_same_run(out: Path, info: dict[str, Any], has_decisions: bool) -> None:
    import json

    path = out / RUN_FILE
    if not path.exists() or not has_decisions:
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return
    for key in ("format_version", "prompt", "prompt_fingerprint", "teacher", "filter"):
        if old.get(key) != info.get(key):
            raise QponderError(
                f"{out}: holds a distillation run with a different {key} ({old.get(key)!r}, now {info.get(key)!r}); "
                "mixing them would make one dataset with two recipes. Use another --out, or --set overwrite=true "
                "to start this folder again.")


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------

class _Journal:
    """Serialised appends. The thread lock (not an asyncio lock) is what guarantees one writer: a cancelled
    coroutine's write still runs to the end in its worker thread.

    Each decision is one fsynced line in the journal before it counts as done. The matching sft.jsonl line is only
    flushed (fsynced once, on close): it is derived data, and ``reconcile_sft`` rebuilds it from the journal if a
    crash loses or tears it -- half the fsyncs, the same guarantee.
    """

    def __init__(self, out: Path):
        self.out = out
        self._lock = threading.Lock()
        self._sft = None

    def write_decision(self, row: dict) -> None:
        from qponder.io import append_jsonl, json_dumps

        with self._lock:
            append_jsonl(self.out / DECISIONS_FILE, row)  # the journal first: sft.jsonl is rebuilt from it
            if row["decision"] == "kept":
                if self._sft is None:
                    self._sft = open(self.out / SFT_FILE, "ab")
                self._sft.write((json_dumps(sft_record(row), indent=None) + "\n").encode("utf-8"))
                self._sft.flush()

    def close(self) -> None:
        import os

        with self._lock:
            if self._sft is not None:
                os.fsync(self._sft.fileno())
                self._sft.close()
                self._sft = None

    def write_error(self, row: dict) -> None:
        from qponder.io import append_jsonl

        with self._lock:
            append_jsonl(self.out / ERRORS_FILE, row)

    def write_many(self, records: Sequence[tuple[str, dict]]) -> None:
        for kind, row in records:
            if kind == "error":
                self.write_error(row)
            else:
                self.write_decision(row)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class _Item:
    sample: Any
    system: str | None
    user: str
    mos_in_prompt: float | None  # the MOS the teacher was told, when its reasoning must not quote it
    payload: Any = None
    candidates: list[Candidate] = field(default_factory=list)
    attempts: int = 0
    requests: int = 0
    statuses: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    unreadable: str | None = None
    t0: float = field(default_factory=time.perf_counter)

    def n_valid(self) -> int:
        return sum(1 for c in self.candidates if c.valid)


class _Abort(Exception):
    pass


class _Runner:
    def __init__(self, cfg: DistillSettings, backend: TeacherBackend, journal: _Journal, bar: Any):
        self.cfg = cfg
        self.backend = backend
        self.journal = journal
        self.bar = bar
        self.tp = get_teacher_prompt(cfg.prompt)
        self.kept = self.rejected = self.errors = 0
        self.consecutive_errors = 0

    def _item(self, sample: Any) -> _Item:
        mos = float(sample.mos)
        informed = self.tp.mos_informed
        return _Item(sample=sample, system=self.tp.system, user=self.tp.render_user(mos if informed else None),
                     mos_in_prompt=mos if informed and self.cfg.filter.reject_mos_leak else None)

    @staticmethod
    def _prepare(backend: TeacherBackend, items: list[_Item]) -> None:
        for it in items:
            try:
                it.payload = backend.prepare(it.sample)
            except QponderError as e:
                it.unreadable = str(e)

    def _seed(self, attempt: int) -> int | None:
        s = self.cfg.teacher.seed
        if self.backend.deterministic:  # its seed only picks the wording of each of the K samples
            return attempt * self.cfg.filter.k_samples
        if s is None:
            return None if self.cfg.teacher.backend == "openai" else attempt
        return s + attempt * 1000

    async def process(self, samples: Sequence[Any]) -> None:
        f = self.cfg.filter
        items = [self._item(s) for s in samples]
        await asyncio.to_thread(self._prepare, self.backend, items)
        for attempt in range(1 + f.max_format_retries):
            pending = [it for it in items if it.unreadable is None and it.error is None and it.n_valid() < f.k_samples]
            if not pending or (attempt > 0 and self.backend.deterministic):
                break
            temp = self.cfg.teacher.temperature
            if attempt > 0 and temp <= 0:
                temp = self.cfg.teacher.retry_temperature
            reqs = [TeacherRequest(image_id=it.sample.image_id, payload=it.payload, system=it.system, user=it.user,
                                   n=f.k_samples - it.n_valid(), temperature=temp, seed=self._seed(attempt))
                    for it in pending]
            replies = await self.backend.generate(reqs)
            for it, rep in zip(pending, replies):
                it.attempts += 1
                if isinstance(rep, BaseException):
                    if getattr(rep, "fatal", False):
                        raise _Abort(str(rep)) from rep
                    if not isinstance(rep, Exception):
                        raise rep
                    it.error = rep
                    it.requests += int(getattr(rep, "attempts", 1) or 1)
                    continue
                assert isinstance(rep, TeacherReply)
                it.requests += rep.requests
                it.statuses += rep.statuses
                it.candidates += [check_completion(t, min_reasoning_chars=f.min_reasoning_chars,
                                                   mos_in_prompt=it.mos_in_prompt) for t in rep.texts]
        records = [self._record(it) for it in items]
        await asyncio.to_thread(self.journal.write_many, records)  # one thread hop per chunk, one fsync per line
        for kind, row in records:
            self._account(kind, row)

    def _record(self, it: _Item) -> tuple[str, dict]:
        """("error", errors.jsonl row) for a transport failure, else ("decision", decisions.jsonl row)."""
        s = it.sample
        if it.error is not None:
            e = it.error
            return "error", {"image_id": s.image_id, "image": s.image, "error": f"{type(e).__name__}: {e}",
                             "status": getattr(e, "status", None), "attempts": it.attempts, "requests": it.requests,
                             "teacher": self.backend.teacher_id, "time": _now()}
        f = self.cfg.filter
        mos = float(s.mos)
        if it.unreadable is not None:
            d = Decision(False, "unreadable_image", it.unreadable)
        else:
            d = decide(it.candidates, mos, tolerance=f.tolerance, k_samples=f.k_samples, max_std=f.max_std,
                       select=f.select)
        chosen = it.candidates[d.chosen] if d.chosen is not None else None
        reasoning = chosen.reasoning if chosen is not None else None
        return "decision", {
            "image_id": s.image_id, "image": s.image, "dataset": s.dataset, "split": s.split,
            "mos": round(mos, 6), "mos_native": s.mos_native,
            "decision": "kept" if d.kept else "rejected", "reason": d.reason, "detail": d.detail,
            "teacher_score": d.teacher_score, "score_error": d.score_error,
            "scores": list(d.scores), "scores_std": d.scores_std, "chosen": d.chosen,
            "reasoning": reasoning,
            "target": format_target(reasoning, d.teacher_score) if d.kept else None,
            "candidates": [{"text": c.text, "score": c.score, "valid": c.valid, "problem": c.problem}
                           for c in it.candidates],
            "attempts": it.attempts, "requests": it.requests, "statuses": it.statuses,
            "teacher": self.backend.teacher_id, "prompt": self.tp.name,
            "elapsed_s": round(time.perf_counter() - it.t0, 3), "time": _now(),
        }

    def _account(self, kind: str, row: dict) -> None:
        if kind == "error":
            self.errors += 1
            self.consecutive_errors += 1
            self._tick()
            if self.consecutive_errors >= self.cfg.max_consecutive_errors:
                raise _Abort(f"{self.consecutive_errors} samples in a row failed; the last error: {row['error']} "
                             f"(see {self.journal.out / ERRORS_FILE}; a re-run retries them)")
            return
        self.consecutive_errors = 0
        if row["decision"] == "kept":
            self.kept += 1
        else:
            self.rejected += 1
        self._tick()

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(kept=self.kept, rejected=self.rejected, errors=self.errors, refresh=False)

    async def run(self, todo: Sequence[Any]) -> None:
        chunks = [list(todo[i:i + self.backend.max_batch]) for i in range(0, len(todo), self.backend.max_batch)]
        it = iter(chunks)

        async def worker() -> None:
            for chunk in it:  # shared iterator: each worker takes the next chunk when it is free
                await self.process(chunk)

        await self.backend.start()
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(self.backend.concurrency, len(chunks))):
                    tg.create_task(worker())
        except* _Abort as eg:
            raise QponderError(f"distillation stopped: {eg.exceptions[0]}") from None
        except* QponderError as eg:
            raise eg.exceptions[0] from None
        finally:
            await self.backend.aclose()


def _prepare_out(cfg: DistillSettings) -> Path:
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise QponderError(f"{out}: exists and is not a folder")
    if cfg.overwrite and out.exists():
        for name in _OUTPUTS:
            p = out / name
            if p.exists():
                p.unlink()
        stale = [p for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        for p in stale:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_distill(cfg: DistillSettings, *, samples: Sequence[Any] | None = None,
                backend: TeacherBackend | None = None) -> DistillResult:
    """Distil ``samples`` (default: from ``cfg``) with ``backend`` (default: from ``cfg.teacher``). Resumable."""
    from qponder.config import save_config
    from qponder.io import write_json_atomic

    t0 = time.perf_counter()
    cfg.validate()
    backend = backend or make_backend(cfg.teacher)
    samples = list(samples) if samples is not None else select_samples(cfg)
    out = _prepare_out(cfg)
    decisions = read_decisions(out)
    info = _run_info(cfg, backend)
    _check_same_run(out, info, bool(decisions))
    write_json_atomic(info, out / RUN_FILE)
    save_config(cfg, out / CONFIG_FILE)
    reconcile_sft(out, decisions)
    done = {d["image_id"] for d in decisions}
    todo = [s for s in samples if s.image_id not in done]
    ids = [s.image_id for s in samples]
    if len(set(ids)) != len(ids):
        raise QponderError("the selected samples contain the same image_id twice")

    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(samples), initial=len(samples) - len(todo), unit="img", desc="distill",
                   file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    journal = _Journal(out)
    runner = _Runner(cfg, backend, journal, bar)
    stopped: QponderError | None = None
    try:
        if todo:
            asyncio.run(runner.run(todo))
    except QponderError as e:  # an aborted run still gets stats and a card for what it finished
        stopped = e
    finally:
        journal.close()
        if bar is not None:
            bar.close()
    stats = write_reports(out, cfg, backend, info)
    if stopped is not None:
        raise stopped
    return DistillResult(out=out, sft_path=out / SFT_FILE, decisions_path=out / DECISIONS_FILE,
                         n_selected=len(samples), n_skipped=len(samples) - len(todo), n_kept=runner.kept,
                         n_rejected=runner.rejected, n_errors=runner.errors, stats=stats,
                         elapsed_s=round(time.perf_counter() - t0, 3))


# ---------------------------------------------------------------------------------------------------------------
# Reports: stats, histogram, dataset card
# ---------------------------------------------------------------------------------------------------------------

def write_reports(out: Path, cfg: DistillSettings, backend: TeacherBackend, info: dict[str, Any]) -> dict[str, Any]:
    """stats.json, score_error_hist.png, card.json and README.md over every decision in ``out``."""
    from qponder.io import read_jsonl, write_json_atomic, write_text_atomic

    decisions = read_decisions(out)
    reconcile_sft(out, decisions)
    if not (out / SFT_FILE).exists():  # nothing kept (yet): an empty file, so `qponder sft` says "no records"
        write_text_atomic("", out / SFT_FILE)
    stats = summarize(decisions, cfg.filter.tolerance)
    errors_path = out / ERRORS_FILE
    failed_ids = {r.get("image_id") for r in read_jsonl(errors_path)} if errors_path.exists() else set()
    decided = {d["image_id"] for d in decisions}
    stats["n_pending_errors"] = len(failed_ids - decided)
    write_json_atomic(stats, out / STATS_FILE)
    hist = False
    if cfg.histogram:
        hist = error_histogram_png(decisions, out / HIST_FILE, cfg.filter.tolerance)
    tp = get_teacher_prompt(cfg.prompt)
    splits = sorted({str(d.get("split")) for d in decisions if d.get("decision") == "kept"})
    datasets = sorted({str(d.get("dataset")) for d in decisions})
    card = {
        "name": f"qponder distilled reasoning ({', '.join(datasets) or cfg.data})",
        "created": _now(),
        "format_version": FORMAT_VERSION,
        "records": {"sft": SFT_FILE, "decisions": DECISIONS_FILE, "errors": ERRORS_FILE},
        "sft_fields": list(SFT_FIELDS),
        "counts": {"kept": stats["n_kept"], "rejected": stats["n_rejected"], "decided": stats["n_decided"],
                   "pending_errors": stats["n_pending_errors"]},
        "kept_rate": stats["kept_rate"],
        "rejection_reasons": {k: v for k, v in stats["reasons"].items() if k != "kept"},
        "score_error": stats["score_error"],
        "teacher_srcc_vs_mos": stats["teacher_srcc"],
        "teacher": backend.describe(),
        "prompt": {"name": tp.name, "fingerprint": info["prompt_fingerprint"], "mos_informed": tp.mos_informed,
                   "system": tp.system, "user": tp.user},
        "filter": dataclasses.asdict(cfg.filter),
        "data": {"source": cfg.data, "dataset": cfg.data if dataset_loader(cfg.data) else cfg.dataset,
                 "split": cfg.split, "max_samples": cfg.max_samples, "datasets": datasets, "kept_splits": splits},
        "histogram": HIST_FILE if hist else None,
    }
    write_json_atomic(card, out / CARD_JSON)
    write_text_atomic(_card_markdown(card, backend), out / CARD_MD)
    return stats


def _card_markdown(card: dict[str, Any], backend: TeacherBackend) -> str:
    t = card["teacher"]
    f = card["filter"]
    c = card["counts"]
    se = card["score_error"] or {}
    lines = [
        f"# {card['name']}",
        "",
        "SFT data for Q-Ponder stage 1, written by `qponder distill`: a teacher model reasoned about each image, and "
        "its answer was kept only when its score agreed with the human MOS.",
        "",
    ]
    if backend.card_note:
        lines += [f"> {backend.card_note}", ""]
    lines += [
        "| | |", "|---|---|",
        f"| teacher | `{t.get('id')}` |",
        f"| prompt | `{card['prompt']['name']}` (fingerprint `{card['prompt']['fingerprint']}`"
        f"{', MOS-informed' if card['prompt']['mos_informed'] else ', blind'}) |",
        f"| tolerance | ±{f['tolerance']:g} on the 1-5 scale (normalised MOS) |",
        f"| K samples | {f['k_samples']}" + (f" (std ≤ {f['max_std']:g}, keep the {f['select']})" if f["k_samples"] > 1
                                               else f" (keep the {f['select']} valid answer)") + " |",
        f"| data | {card['data']['source']} (split {card['data']['split'] or 'all'}) |",
        f"| kept | {c['kept']} of {c['decided']} decided"
        + (f" ({100 * card['kept_rate']:.1f} %)" if card["kept_rate"] is not None else "") + " |",
    ]
    if c.get("pending_errors"):
        lines.append(f"| pending | {c['pending_errors']} image(s) failed at the transport level; re-run to retry |")
    if se:
        lines.append(f"| teacher - MOS | MAE {se['mae']:.3f}, RMSE {se['rmse']:.3f}, bias {se['mean']:+.3f} |")
    if card.get("teacher_srcc_vs_mos") is not None:
        lines.append(f"| teacher SRCC vs MOS | {card['teacher_srcc_vs_mos']:.3f} (all decided images) |")
    lines += ["", "## Rejections", ""]
    if card["rejection_reasons"]:
        from qponder.distill.filtering import REASONS

        lines += ["| reason | images | meaning |", "|---|---|---|"]
        for k, v in card["rejection_reasons"].items():
            lines.append(f"| `{k}` | {v} | {REASONS.get(k, '')} |")
    else:
        lines.append("None.")
    if card.get("histogram"):
        lines += ["", f"![score error histogram]({card['histogram']})"]
    lines += [
        "", "## Files", "",
        f"- `{SFT_FILE}`: one JSON object per line with `{'`, `'.join(SFT_FIELDS)}`; `image` is an absolute path, "
        "`mos` the MOS normalised to 1-5, `mos_native` the same score on the dataset's own scale, `target` the "
        "assistant text "
        "`<think>reasoning</think>\\n<answer>score</answer>` (`qponder.prompts.format_target`).",
        f"- `{DECISIONS_FILE}`: every decision (kept or rejected, `reason`, `detail`), the raw teacher texts "
        "(`candidates`), attempts, requests and HTTP statuses, for auditing.",
        f"- `{ERRORS_FILE}`: requests that failed for good (not decided; a re-run retries them).",
        f"- `{STATS_FILE}`, `{CARD_JSON}`: the numbers above as JSON (the card also holds the full prompt text).",
        "",
    ]
    return "\n".join(lines)
