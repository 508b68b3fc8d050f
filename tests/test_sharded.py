"""Sharded scoring: `eval` / `score` under a 2-process launch write what one process writes, resume from the shards a
killed run left (of any process count), and refuse shards written with other settings."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

from qponder.cli import main as cli_main
from qponder.errors import QponderError
from qponder.evaluate import EvalSettings, evaluate, make_scorer
from qponder.infer import QualityScorer, Shard, current_shard, merge_shards, score_files, shard_files, shard_path

SRC = Path(__file__).resolve().parents[1] / "src"


def _launch_two(*qponder_args: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` of 2 CPU processes (gloo) running ``python -m qponder ARGS``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), "-m", "qponder", *qponder_args]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(SRC))
    env.pop("RANK", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@contextmanager
def _one_thread():
    """The reference run with the launched processes' thread count, so no float is summed in another order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _folder(tmp_path: Path, n: int) -> Path:
    """``n`` images of three sizes (several batches of unequal pixel counts) and one unreadable file."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (56 + 28 * (i % 3), 84), (37 * i % 255, 120, 200 - 9 * i)).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    return folder


def _without_seconds(d: dict) -> dict:
    return {k: _without_seconds(v) if isinstance(v, dict) else v for k, v in d.items() if k != "seconds"}


def test_two_process_eval_writes_what_one_process_writes(tiny_model_dir, tmp_path):
    args = dict(benchmarks=["demo"], max_samples=9, max_new_tokens=8, batch_size=2, readout="both", device="cpu")
    with _one_thread():
        evaluate(EvalSettings(model=str(tiny_model_dir), out=str(tmp_path / "one"), progress=False, **args))
    done = _launch_two("eval", "--model", str(tiny_model_dir), "--benchmarks", "demo", "--max-samples", "9",
                       "--batch-size", "2", "--readout", "both", "--out", str(tmp_path / "two"),
                       "--set", "max_new_tokens=8", "--set", "device=cpu", "--set", "progress=false")
    one, two = tmp_path / "one", tmp_path / "two"
    assert done.stdout.count("# Evaluation of") == 1  # rank 0 alone prints the results
    assert (two / "demo" / "predictions.jsonl").read_bytes() == (one / "demo" / "predictions.jsonl").read_bytes()
    assert not shard_files(two / "demo" / "predictions.jsonl")
    m1, m2 = (json.loads((d / "demo" / "metrics.json").read_text()) for d in (one, two))
    assert m2["scored_now"] == 9 and m2["levels"]["n_valid"] == 9  # totals over both processes
    assert _without_seconds(m2) == _without_seconds(m1)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert _without_seconds(r2) == _without_seconds(r1)
    assert (two / "results.md").read_text() == (one / "results.md").read_text()


def test_two_processes_resume_a_killed_three_process_score_run(tiny_model_dir, tmp_path, capsys):
    """Shards of another process count (one with a half-written last line) count as done; the merged file is the
    one-process file, byte for byte, and the shards are gone."""
    folder = _folder(tmp_path, 7)
    base = ["score", str(folder), "--model", str(tiny_model_dir), "--max-new-tokens", "8", "--batch-size", "2",
            "--readout", "both"]
    ref = tmp_path / "ref.jsonl"
    with _one_thread():
        assert cli_main(base + ["--out", str(ref)]) == 0
    capsys.readouterr()
    lines = ref.read_text().splitlines(keepends=True)
    out = tmp_path / "scores.jsonl"
    shard_path(out, 0, 3).write_text(lines[0] + lines[3])
    shard_path(out, 2, 3).write_text(lines[5] + lines[6][: len(lines[6]) // 2])  # killed mid-line
    done = _launch_two(*base, "--out", str(out))
    assert out.read_bytes() == ref.read_bytes()
    assert not shard_files(out)
    assert done.stderr.count("scored 4 image(s), 3 already done, 1 unreadable") == 1  # rank 0: the totals
    assert done.stderr.count("skipped unreadable image") == 1  # by the rank whose batch holds it


def _score(scorer, folder, out, **kw):
    paths = sorted(str(p) for p in folder.iterdir())
    return score_files(scorer, paths, out_path=str(out), readout="levels", progress=False, **kw)


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return QualityScorer(str(tiny_model_dir), device="cpu", max_new_tokens=8, batch_size=2)


def test_one_process_continues_a_sharded_run(scorer, tmp_path):
    folder = _folder(tmp_path, 5)
    ref = tmp_path / "ref.jsonl"
    _score(scorer, folder, ref)
    lines = ref.read_text().splitlines(keepends=True)
    out = tmp_path / "s.jsonl"
    shard_path(out, 1, 2).write_text(lines[1] + lines[2][:10])
    stats = _score(scorer, folder, out)
    assert (stats.scored, stats.skipped_done) == (4, 1)
    assert not shard_files(out)

    def by_image(p):
        return {r["image"]: r for r in map(json.loads, p.read_text().splitlines())}

    assert by_image(out) == by_image(ref)


def test_a_shard_written_with_other_settings_is_refused(scorer, tmp_path):
    folder = _folder(tmp_path, 2)
    other = tmp_path / "other.jsonl"
    score_files(scorer, sorted(str(p) for p in folder.iterdir()), out_path=str(other), readout="both",
                progress=False)
    out = tmp_path / "s.jsonl"
    shard = shard_path(out, 0, 2)
    shard.write_text(other.read_text())
    with pytest.raises(QponderError, match=f"{shard}: already holds predictions made with other settings"):
        _score(scorer, folder, out)
    assert not out.exists() and shard.read_text() == other.read_text()


def test_merge_keeps_the_file_and_adds_in_plan_order_or_refuses_when_a_shard_is_missing(tmp_path):
    out = tmp_path / "p.jsonl"
    out.write_text('{"image": "c", "v": 0}\n')
    a, b = shard_path(out, 0, 2), shard_path(out, 1, 2)
    a.write_text('{"image": "b", "v": 1}\n{"image": "c", "v": 9}\n')
    b.write_text('{"image": "a", "v": 2}\n{"image": "x", "v": 3}\n')
    with pytest.raises(QponderError, match="in no shard file beside it .e.g. d.; the output folder must be"):
        merge_shards(out, [a, b], order=["a", "b", "c"], expect={"a", "d"})
    assert a.exists() and out.read_text() == '{"image": "c", "v": 0}\n'
    assert merge_shards(out, [a, b], order=["a", "b", "c"], expect={"a", "b"}) == 3
    assert [json.loads(x)["v"] for x in out.read_text().splitlines()] == [0, 2, 1, 3]
    assert not a.exists() and not b.exists()


def test_shard_names_and_launcher_environment(tmp_path, monkeypatch):
    out = tmp_path / "predictions.jsonl"
    assert shard_path(out, 3, 8) == tmp_path / "predictions.rank3-of-8.jsonl"
    for name in ("predictions.rank0-of-2.jsonl", "predictions.rank1-of-2.jsonl", "predictions.rank9-of-12.jsonl",
                 "predictions.rank0-of-2.jsonl.tmp", "other.rank0-of-2.jsonl", "predictions.rankA-of-2.jsonl"):
        (tmp_path / name).write_text("")
    assert [p.name for p in shard_files(out)] == ["predictions.rank0-of-2.jsonl", "predictions.rank1-of-2.jsonl",
                                                  "predictions.rank9-of-12.jsonl"]
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert current_shard() == Shard() and Shard().device("auto") == "auto"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(QponderError, match="RANK between 0 and 3"):
        current_shard()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(QponderError, match="MASTER_ADDR and MASTER_PORT unset"):
        current_shard()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert current_shard() == Shard(rank=2, world=4, local_rank=0)
    if not torch.cuda.is_available():
        assert Shard(rank=1, world=2, local_rank=1).device("auto") == "cpu"


def test_score_over_several_processes_needs_an_output_file(tiny_model_dir, tmp_path, monkeypatch, capsys):
    p = tmp_path / "one.png"
    Image.new("RGB", (56, 56)).save(p)
    for k, v in (("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(k, v)
    assert cli_main(["score", str(p), "--model", str(tiny_model_dir)]) == 2
    assert "scoring over 2 processes needs --out" in capsys.readouterr().err


def test_vllm_gets_tensor_parallel_size_and_is_not_sharded(tiny_model_dir, monkeypatch):
    """vLLM cannot run here: a stand-in ``vllm`` module records what ``vllm.LLM`` is given."""
    given = {}

    class LLM:
        def __init__(self, **kw):
            given.update(kw)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM))
    cfg = EvalSettings(model=str(tiny_model_dir), backend="vllm", tensor_parallel_size=2)
    assert make_scorer(cfg).backend == "vllm:tp2"
    assert given["tensor_parallel_size"] == 2 and given["model"] == str(tiny_model_dir)
    with pytest.raises(QponderError, match="backend vllm runs in one process .here 2.*--tensor-parallel-size"):
        make_scorer(cfg, processes=2)
    # the weights' dtype reaches vLLM and the resume record; a device vLLM cannot honour is refused, not ignored
    given.clear()
    cfg16 = EvalSettings(model=str(tiny_model_dir), backend="vllm", dtype="float16")
    assert make_scorer(cfg16).backend == "vllm:float16" and given["dtype"] == "float16"
    assert given["gpu_memory_utilization"] == 0.85
    # a levels reader loads a second model onto the first GPU after scoring: vLLM leaves room for it
    make_scorer(EvalSettings(model=str(tiny_model_dir), backend="vllm", consistency_reader="levels",
                             consistency_model=str(tiny_model_dir)))
    assert given["gpu_memory_utilization"] == 0.5
    make_scorer(EvalSettings(model=str(tiny_model_dir), backend="vllm", gpu_memory_utilization=0.7))
    assert given["gpu_memory_utilization"] == 0.7
    given.clear()
    for device in ("cuda:3", "cpu"):
        with pytest.raises(QponderError, match=f"device '{device}': vLLM runs on the GPUs it sees.*CUDA_VISIBLE_DEV"):
            make_scorer(EvalSettings(model=str(tiny_model_dir), backend="vllm", device=device))
    assert not given  # refused before vLLM started
    monkeypatch.setattr("qponder.evaluate._vllm_usable", lambda: True)  # as on a GPU machine with vLLM
    assert make_scorer(EvalSettings(model=str(tiny_model_dir), dtype="float16")).backend == "vllm:float16"
    auto_cpu = make_scorer(EvalSettings(model=str(tiny_model_dir), device="cpu", dtype="float32"))
    assert auto_cpu.backend == "hf:float32"  # auto with a device vLLM cannot honour takes HF
