"""Distillation end to end against a real teacher server on 127.0.0.1 (good, malformed, slow, 429, 500, 4xx answers
on a per-image script), resume after SIGKILL of `python -m qponder distill`, the local tiny-model backend, output
records and the dataset card."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from localhttp import LocalServer, send_json
from qponder.config import load_config
from qponder.distill import SFT_FIELDS, DistillSettings, run_distill
from qponder.distill.filtering import REASONS
from qponder.errors import QponderError
from qponder.parsing import parse_completion
from qponder.prompts import format_target, get_teacher_prompt, prompt_fingerprint

REPO = Path(__file__).resolve().parents[1]
GOOD_REASONING = ("[{name}] The image is sharp, flat regions are clean and colours look natural. "
                  "Overall, the quality is good.")


class TeacherServer:
    """An OpenAI-compatible teacher whose answers follow a script per image.

    The image is recognised by the SHA-256 of the bytes in the request's data URL (the distiller sends original
    file bytes). ``script[name]`` is a list of steps, one per request for that image; the last step repeats.
    Steps: ("good", score) | ("scores", [s, ...]) one choice per requested n | ("texts", [score or None, ...])
    exactly these choices, None = malformed | ("malformed",) | ("short", score) | ("leak", score) |
    ("slow", seconds, score) | ("status", code, {headers}).
    """

    def __init__(self, image_paths: dict[str, Path], script: dict[str, list], latency: float = 0.0):
        self.by_hash = {hashlib.sha256(p.read_bytes()).hexdigest(): name for name, p in image_paths.items()}
        self.script = script
        self.latency = latency
        self.calls: dict[str, int] = defaultdict(int)
        self.log: list[dict] = []
        self.lock = threading.Lock()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers, body = srv.answer(req)
                send_json(self, status, body, headers)

        self.local = LocalServer(Handler)
        self.url = self.local.url

    def answer(self, req: dict) -> tuple[int, dict, dict]:
        user = req["messages"][-1]["content"]
        url = next(b["image_url"]["url"] for b in user if b["type"] == "image_url")
        text = next(b["text"] for b in user if b["type"] == "text")
        name = self.by_hash[hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()]
        with self.lock:
            k = self.calls[name]
            self.calls[name] += 1
            steps = self.script.get(name, [("good", 3.0)])
            step = steps[min(k, len(steps) - 1)]
            self.log.append({"name": name, "step": step[0], "t": time.monotonic(), "n": req.get("n", 1),
                             "temperature": req.get("temperature"), "user": text})
        if self.latency:
            time.sleep(self.latency)
        n = req.get("n", 1)
        kind = step[0]
        if kind == "status":
            return step[1], (step[2] if len(step) > 2 else {}), {"error": {"message": f"scripted {step[1]}"}}
        if kind == "slow":
            time.sleep(step[1])
            texts = [format_target(GOOD_REASONING.format(name=name), step[2])] * n
        elif kind == "good":
            texts = [format_target(GOOD_REASONING.format(name=name), step[1])] * n
        elif kind == "scores":
            texts = [format_target(GOOD_REASONING.format(name=name), s) for s in (step[1] * n)[:n]]
        elif kind == "texts":
            texts = [format_target(GOOD_REASONING.format(name=name), x) if x is not None else "no tags, 3/5"
                     for x in step[1]]
        elif kind == "malformed":
            texts = ["The quality looks fine to me, maybe 3 out of 5."] * n
        elif kind == "short":
            texts = [format_target("ok", step[1])] * n
        elif kind == "leak":
            texts = [format_target(f"[{name}] Human raters gave it a mean opinion score, and it is sharp and "
                                   "clean. Overall, the quality is good.", step[1])] * n
        else:
            raise AssertionError(kind)
        return 200, {}, {"choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                      "finish_reason": "stop"} for i, t in enumerate(texts)]}

    def __enter__(self):
        self.local.__enter__()
        return self

    def __exit__(self, *exc):
        self.local.__exit__(*exc)


def make_images(root: Path, n: int, mos: list[float] | None = None, split: str = "train") -> tuple[Path, dict]:
    """n distinct 24x24 PNGs and a manifest ``image,mos,split`` (MOS on the custom 1-5 range)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {}
    rows = []
    for i in range(n):
        name = f"img{i:02d}"
        p = root / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(p)
        paths[name] = p
        rows.append({"image": p.name, "mos": f"{(mos[i] if mos else 1.5 + (i % 7) * 0.5):.2f}", "split": split})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "mos", "split"])
        w.writeheader()
        w.writerows(rows)
    return manifest, paths


def _cfg(manifest: Path, out: Path, url: str, **sets) -> DistillSettings:
    base = {"data": str(manifest), "out": str(out), "teacher.backend": "openai", "teacher.base_url": url,
            "teacher.model": "scripted-teacher", "teacher.api_key_env": "", "teacher.concurrency": 4,
            "teacher.timeout_s": 0.4, "teacher.max_retries": 3, "teacher.backoff_base_s": 0.01,
            "teacher.backoff_max_s": 0.05, "progress": False, "filter.tolerance": 0.5}
    base.update(sets)
    return load_config(DistillSettings, None, [f"{k}={v}" for k, v in base.items()])


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------------


def test_scripted_server_end_to_end_records_retries_and_card(tmp_path):
    mos = [3.0, 2.5, 4.0, 3.5, 2.0, 3.0, 4.5, 3.0, 2.0, 3.0]
    manifest, paths = make_images(tmp_path / "data", 10, mos)
    script = {
        "img00": [("good", 3.1)],
        "img01": [("status", 429, {"Retry-After": "0.3"}), ("good", 2.6)],
        "img02": [("status", 500), ("status", 503), ("good", 4.0)],
        "img03": [("malformed",), ("good", 3.4)],
        "img04": [("malformed",)],  # never valid
        "img05": [("good", 4.6)],  # 1.6 away from the MOS
        "img06": [("slow", 1.5, 4.5), ("good", 4.4)],  # first answer arrives after the timeout
        "img07": [("status", 400), ("good", 3.0)],  # a client error: not retried; a re-run tries again
        "img08": [("good", 2.5)],  # exactly at the tolerance
        "img09": [("short", 3.0)],  # reasoning too short, every time
    }
    out = tmp_path / "out"
    with TeacherServer(paths, script) as srv:
        res = run_distill(_cfg(manifest, out, srv.url))
        assert (res.n_kept, res.n_rejected, res.n_errors) == (6, 3, 1)
        assert not res.complete
        by = {d["image_id"].split("/")[-1][:5]: d for d in _jsonl(out / "decisions.jsonl")}
        assert sorted(by) == [f"img{i:02d}" for i in range(10) if i != 7]
        assert {k for k, d in by.items() if d["decision"] == "kept"} == {"img00", "img01", "img02", "img03",
                                                                        "img06", "img08"}
        assert by["img01"]["statuses"] == [429, 200] and by["img01"]["requests"] == 2
        t429 = [e["t"] for e in srv.log if e["name"] == "img01"]
        assert t429[1] - t429[0] >= 0.28  # Retry-After honoured
        assert by["img02"]["statuses"] == [500, 503, 200] and by["img02"]["requests"] == 3
        assert by["img06"]["statuses"][0] == "ReadTimeout" and by["img06"]["teacher_score"] == 4.4
        assert by["img03"]["attempts"] == 2 and [c["valid"] for c in by["img03"]["candidates"]] == [False, True]
        assert by["img03"]["candidates"][0]["problem"] == "invalid_format"
        assert by["img03"]["candidates"][0]["text"].startswith("The quality looks fine")  # raw text kept
        retry_temps = [e["temperature"] for e in srv.log if e["name"] == "img03"]
        assert retry_temps == [0.0, 0.7]  # a greedy teacher is re-asked with some temperature
        assert by["img04"]["reason"] == "invalid_format" and by["img04"]["attempts"] == 3
        assert by["img05"]["reason"] == "out_of_tolerance" and by["img05"]["score_error"] == pytest.approx(1.6)
        assert by["img08"]["decision"] == "kept"  # |2.5 - 2.0| == tolerance
        assert by["img09"]["reason"] == "reasoning_too_short"
        for d in by.values():
            assert d["reason"] in REASONS and d["teacher"] == "openai:scripted-teacher"
        errors = _jsonl(out / "errors.jsonl")
        assert len(errors) == 1 and errors[0]["status"] == 400 and "HTTP 400" in errors[0]["error"]
        assert sum(1 for e in srv.log if e["name"] == "img07") == 1  # 4xx: no retry

        sft = _jsonl(out / "sft.jsonl")
        assert len(sft) == 6
        for r in sft:
            assert tuple(r) == SFT_FIELDS
            name = Path(r["image"]).stem
            assert Path(r["image"]).is_absolute() and Path(r["image"]) == paths[name].resolve()
            assert r["reasoning"] == GOOD_REASONING.format(name=name)  # the right answer went to the right image
            assert r["target"] == format_target(r["reasoning"], r["teacher_score"])
            p = parse_completion(r["target"])
            assert p.format_ok and p.score == r["teacher_score"]
            assert r["mos"] == mos[int(name[3:])] and r["split"] == "train" and r["dataset"] == "custom"

        card = json.loads((out / "card.json").read_text())
        tp = get_teacher_prompt("expert-blind-v1")
        assert card["prompt"]["fingerprint"] == prompt_fingerprint(tp.system, tp.user)
        assert card["teacher"]["id"] == "openai:scripted-teacher" and card["filter"]["tolerance"] == 0.5
        assert card["counts"] == {"kept": 6, "rejected": 3, "decided": 9, "pending_errors": 1}
        assert card["rejection_reasons"] == {"invalid_format": 1, "out_of_tolerance": 1, "reasoning_too_short": 1}
        readme = (out / "README.md").read_text()
        assert "expert-blind-v1" in readme and card["prompt"]["fingerprint"] in readme and "±0.5" in readme
        assert (out / "score_error_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert json.loads((out / "stats.json").read_text())["n_pending_errors"] == 1

        # Re-run: only the failed image is asked again; everything else is skipped.
        n_before = len(srv.log)
        res2 = run_distill(_cfg(manifest, out, srv.url))
        assert (res2.n_skipped, res2.n_kept, res2.n_errors) == (9, 1, 0) and res2.complete
        assert [e["name"] for e in srv.log[n_before:]] == ["img07"]
    ids = [d["image_id"] for d in _jsonl(out / "decisions.jsonl")]
    assert len(ids) == len(set(ids)) == 10
    assert json.loads((out / "card.json").read_text())["counts"]["pending_errors"] == 0


def test_mos_informed_prompt_leak_check_and_k_sample_agreement(tmp_path):
    manifest, paths = make_images(tmp_path / "data", 4, [3.0, 3.0, 3.0, 3.0])
    script = {
        "img00": [("scores", [2.8, 3.05, 3.3])],  # agree (std 0.2): keep the one closest to the MOS
        "img01": [("scores", [1.5, 3.0, 4.5])],  # disagree
        "img02": [("leak", 3.0)],  # quotes the human score every time
        "img03": [("texts", [3.0, None, None]), ("texts", [3.1, None]), ("texts", [3.2])],  # 1 valid per request
    }
    out = tmp_path / "out"
    with TeacherServer(paths, script) as srv:
        cfg = _cfg(manifest, out, srv.url, prompt="expert-mos-v1", **{
            "filter.k_samples": 3, "filter.max_std": 0.3, "filter.select": "best", "teacher.temperature": 0.8,
            "teacher.supports_n": "true"})
        run_distill(cfg)
        assert all("mean opinion score of 3.00" in e["user"] for e in srv.log)  # the MOS reached the teacher
        assert [e["n"] for e in srv.log if e["name"] == "img00"] == [3]
        assert [e["n"] for e in srv.log if e["name"] == "img03"] == [3, 2, 1]
    by = {d["image_id"][-9:-4]: d for d in _jsonl(out / "decisions.jsonl")}
    assert by["img00"]["decision"] == "kept" and by["img00"]["teacher_score"] == 3.05
    assert by["img00"]["scores"] == [2.8, 3.05, 3.3] and by["img00"]["chosen"] == 1
    assert by["img01"]["reason"] == "disagreement" and by["img01"]["scores_std"] > 0.3
    assert by["img02"]["reason"] == "mos_leak" and by["img02"]["attempts"] == 3
    # img03: 3 valid answers needed; each request asks only for the ones still missing
    assert by["img03"]["attempts"] == 3 and by["img03"]["decision"] == "kept"
    assert by["img03"]["scores"] == [3.0, 3.1, 3.2] and len(by["img03"]["candidates"]) == 6
    card = json.loads((out / "card.json").read_text())
    assert card["prompt"]["name"] == "expert-mos-v1" and card["prompt"]["mos_informed"] is True


def test_k_samples_without_server_side_n(tmp_path):
    manifest, paths = make_images(tmp_path / "data", 2, [3.0, 3.0])
    with TeacherServer(paths, {"img00": [("good", 3.1)], "img01": [("good", 3.2)]}) as srv:
        res = run_distill(_cfg(manifest, tmp_path / "out", srv.url, **{
            "filter.k_samples": 2, "teacher.temperature": 0.5, "teacher.supports_n": "false"}))
        assert res.n_kept == 2
        assert all(e["n"] == 1 for e in srv.log) and len(srv.log) == 4  # K requests of one answer each


def test_fatal_status_aborts_the_run(tmp_path):
    manifest, paths = make_images(tmp_path / "data", 3)
    script = {f"img{i:02d}": [("status", 401)] for i in range(3)}
    with TeacherServer(paths, script) as srv:
        with pytest.raises(QponderError, match="401"):
            run_distill(_cfg(manifest, tmp_path / "out", srv.url, **{"teacher.concurrency": 1}))
        assert len(srv.log) == 1
    assert not (tmp_path / "out" / "decisions.jsonl").exists()


def test_consecutive_transport_errors_abort_and_are_retried_later(tmp_path):
    manifest, paths = make_images(tmp_path / "data", 6)
    script = {f"img{i:02d}": [("status", 503), ("good", 3.0)] for i in range(6)}
    out = tmp_path / "out"
    with TeacherServer(paths, script) as srv:
        with pytest.raises(QponderError, match="3 samples in a row failed"):
            run_distill(_cfg(manifest, out, srv.url, max_consecutive_errors=3,
                             **{"teacher.max_retries": 0, "teacher.concurrency": 1}))
        assert len(_jsonl(out / "errors.jsonl")) == 3
        assert json.loads((out / "card.json").read_text())["counts"]["pending_errors"] == 3  # card despite abort
        res = run_distill(_cfg(manifest, out, srv.url, **{"teacher.max_retries": 0, "teacher.concurrency": 1}))
    assert res.n_kept + res.n_rejected == 6 - 0 - res.n_errors
    assert res.n_errors == 3  # the three never-tried images hit their scripted 503 now, the others succeed
    assert {d["image_id"][-9:-4] for d in _jsonl(out / "decisions.jsonl")} == {"img00", "img01", "img02"}


def test_changed_settings_refuse_to_mix_and_overwrite_starts_again(tmp_path):
    manifest, paths = make_images(tmp_path / "data", 2)
    out = tmp_path / "out"
    with TeacherServer(paths, {}) as srv:
        run_distill(_cfg(manifest, out, srv.url))
        with pytest.raises(QponderError, match="different filter"):
            run_distill(_cfg(manifest, out, srv.url, **{"filter.tolerance": 0.2}))
        with pytest.raises(QponderError, match="different prompt"):
            run_distill(_cfg(manifest, out, srv.url, prompt="expert-mos-v1"))
        res = run_distill(_cfg(manifest, out, srv.url, overwrite="true", **{"filter.tolerance": 0.2}))
    assert res.n_skipped == 0 and len(_jsonl(out / "decisions.jsonl")) == 2


def test_sft_file_is_repaired_from_the_journal(tmp_path):
    """A crash between the journal append and the sft append, or mid-line, is repaired on the next start."""
    manifest, paths = make_images(tmp_path / "data", 5, [3.0] * 5)
    out = tmp_path / "out"
    with TeacherServer(paths, {}) as srv:
        run_distill(_cfg(manifest, out, srv.url))
        sft = (out / "sft.jsonl").read_text().splitlines(keepends=True)
        assert len(sft) == 5
        (out / "sft.jsonl").write_text("".join(sft[:3]) + sft[3][:25])  # row 4 cut, row 5 missing
        with open(out / "decisions.jsonl", "a") as f:
            f.write('{"image_id": "data/img9')  # a torn journal line
        res = run_distill(_cfg(manifest, out, srv.url))
        assert res.n_skipped == 5 and not srv.log[5:]  # nothing re-asked
    assert (out / "sft.jsonl").read_text() == "".join(sft)


def _write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_resume_after_sigkill_loses_and_duplicates_nothing(tmp_path):
    n = 40
    manifest, paths = make_images(tmp_path / "data", n)
    script = {}
    for i in range(n):
        name = f"img{i:02d}"
        mos = 1.5 + (i % 7) * 0.5
        off = (0.9 if mos < 4 else -0.9) if i % 6 == 0 else 0.2  # every 6th out of tolerance
        score = round(min(5.0, mos + off), 2)
        steps = [("good", score)]
        if i % 5 == 1:
            steps = [("malformed",), ("good", score)]
        if i % 8 == 3:
            steps = [("status", 500), ("good", score)]
        script[name] = steps
    out = tmp_path / "out"
    recipe = {"data": str(manifest), "out": str(out), "progress": False,
              "teacher": {"backend": "openai", "model": "scripted", "api_key_env": "", "concurrency": 3,
                          "backoff_base_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 5},
              "filter": {"tolerance": 0.5}}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with TeacherServer(paths, script, latency=0.08) as srv:
        recipe["teacher"]["base_url"] = srv.url
        cfg_file = _write_yaml(tmp_path / "distill.yaml", recipe)
        cmd = [sys.executable, "-m", "qponder", "distill", "--config", str(cfg_file)]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        journal = out / "decisions.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 10:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        complete_lines = journal.read_bytes().split(b"\n")[:-1]  # a last line without newline is torn
        done_before = [json.loads(line)["image_id"] for line in complete_lines]
        assert 10 <= len(done_before) < n, "the run was not killed part-way"
        with open(journal, "ab") as f:  # what a kill in the middle of a write leaves behind
            f.write(b'{"image_id": "data/img99.png", "decision": "ke')
        n_log = len(srv.log)

        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        asked_again = {e["name"] for e in srv.log[n_log:]}
    decisions = _jsonl(journal)
    ids = [d["image_id"] for d in decisions]
    assert len(ids) == n and len(set(ids)) == n  # every image exactly once
    assert sorted(Path(i).stem for i in ids) == sorted(paths)
    assert ids[:len(done_before)] == done_before  # nothing recorded before the kill was lost or rewritten
    assert not asked_again & {Path(i).stem for i in done_before}  # and none of it was asked again
    sft_ids = [r["image_id"] for r in _jsonl(out / "sft.jsonl")]
    assert sft_ids == [d["image_id"] for d in decisions if d["decision"] == "kept"]
    assert len(sft_ids) == len(set(sft_ids))
    for d in decisions:  # the same decisions an uninterrupted run makes
        i = int(Path(d["image_id"]).stem[3:])
        assert (d["decision"] == "kept") == (i % 6 != 0), d


def test_cli_summary_and_errors(tmp_path):
    manifest, paths = make_images(tmp_path / "data", 3)
    out = tmp_path / "out"
    from qponder.cli import main

    with TeacherServer(paths, {"img02": [("status", 400)]}) as srv:
        code = main(["distill", "--data", str(manifest), "--out", str(out), "--teacher", "openai", "--model", "t",
                     "--base-url", srv.url, "--no-progress", "--set", "teacher.api_key_env=",
                     "--max-samples", "3"])
    assert code == 1  # one image failed: the summary says so and the exit status tells scripts
    assert len(_jsonl(out / "decisions.jsonl")) == 2
    assert main(["distill", "--set", "filter.k_samples=2", "--set", "teacher.backend=openai",
                 "--set", "teacher.model=x", "--out", str(tmp_path / "o2")]) == 2  # greedy K>1: config error
    assert main(["distill", "--set", "filter.tolerence=1"]) == 2  # typo'd key


def test_local_tiny_model_backend_records_are_well_formed(tmp_path, tiny_model_dir):
    manifest, paths = make_images(tmp_path / "data", 3)
    out = tmp_path / "out"
    cfg = load_config(DistillSettings, None, [
        f"data={manifest}", f"out={out}", "progress=false", "teacher.backend=local", f"teacher.model={tiny_model_dir}",
        "teacher.device=cpu", "teacher.dtype=float32", "teacher.max_tokens=12", "teacher.batch_size=2",
        "filter.max_format_retries=1"])
    res = run_distill(cfg)
    assert res.n_kept + res.n_rejected == 3 and res.n_errors == 0
    decisions = _jsonl(out / "decisions.jsonl")
    assert sorted(Path(d["image_id"]).stem for d in decisions) == sorted(paths)
    for d in decisions:
        assert d["teacher"] == f"local:{tiny_model_dir}" and d["reason"] in REASONS
        assert 1 <= d["attempts"] <= 2 and len(d["candidates"]) == d["attempts"]
        assert all(isinstance(c["text"], str) for c in d["candidates"])
        if d["decision"] == "kept":
            assert parse_completion(d["target"]).format_ok
        else:
            assert d["target"] is None
    kept = [d["image_id"] for d in decisions if d["decision"] == "kept"]
    assert [r["image_id"] for r in _jsonl(out / "sft.jsonl")] == kept  # usually empty: the model is random
