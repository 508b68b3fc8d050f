"""`qponder eval` end to end on the tiny model and the demo test split: every file produced and well-formed,
and an interrupted run resumed gives the same predictions and numbers as an uninterrupted one."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from qponder.cli import main as cli_main
from qponder.errors import QponderError
from qponder.evaluate import EvalSettings, evaluate, expand_benchmarks


def _cfg(model, out, **kw) -> EvalSettings:
    base = dict(model=str(model), benchmarks=["demo"], out=str(out), max_samples=10, max_new_tokens=10,
                batch_size=4, readout="both", device="cpu", progress=False)
    base.update(kw)
    return EvalSettings(**base)


def test_expand_benchmarks():
    assert expand_benchmarks("demo") == ["demo"]
    assert expand_benchmarks("KonIQ-10k, LIVE-Wild,koniq") == ["koniq10k", "livec"]
    a = expand_benchmarks("protocol-a")
    assert a[0] == "koniq10k" and "csiq" in a and len(a) == 7
    with pytest.raises(QponderError, match="unknown dataset"):
        expand_benchmarks("imagenet")


def test_eval_writes_every_file(tiny_model_dir, tmp_path):
    out = tmp_path / "ev"
    results = evaluate(_cfg(tiny_model_dir, out))
    m = results["demo"]
    assert m["n"] == 10 and 0 <= m["n_valid"] <= 10
    assert m["parse_failure_rate"] == pytest.approx(1 - m["n_valid"] / 10)
    assert m["levels"]["n_valid"] == 10  # the level read-out always gives a number
    assert m["expected"]["n_valid"] == 10 and 1 <= m["expected"]["distinct_answers"] <= 10  # and so does expected
    for f in ("results.json", "results.md", "eval_config.json", "demo/predictions.jsonl", "demo/scatter.png",
              "demo/metrics.json"):
        assert (out / f).exists(), f
    assert (out / "demo" / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    preds = [json.loads(x) for x in (out / "demo" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 10
    assert all({"image", "score", "raw", "mos", "reasoning", "levels_score", "expected_score"} <= set(p)
               for p in preds)
    table = (out / "results.md").read_text()
    assert "| demo" in table and "srcc" in table.lower()
    assert "| demo (levels) |" in table and "| demo (expected) |" in table and "| mean" not in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["demo"]["n"] == 10


def test_eval_writes_reasoning_vs_answer(tiny_model_dir, tmp_path, monkeypatch):
    """The consistency keys come from the predictions' own reasoning through the chosen reader. The tiny model
    writes no parsable answers, so its finished predictions are given known reasoning and answers and the
    evaluation resumes from them (nothing is re-scored)."""
    from qponder.metrics import CONSISTENCY_KEYS

    out = tmp_path / "ev"
    evaluate(_cfg(tiny_model_dir, out, max_samples=6, readout="generate"))
    pred = out / "demo" / "predictions.jsonl"
    texts = ["The quality is excellent.", "The quality is poor.", "The quality is good.", "The quality is bad.",
             None, "The quality is fair."]
    answers = [4.9, 4.0, 4.1, 1.0, 3.0, None]  # poor (2) answered 4.0: off by two levels
    recs = [json.loads(x) for x in pred.read_text().splitlines()]
    for r, t, a in zip(recs, texts, answers):
        r.update(reasoning=t, score=a)
    pred.write_text("".join(json.dumps(r) + "\n" for r in recs))
    m = evaluate(_cfg(tiny_model_dir, out, max_samples=6, readout="generate"))["demo"]
    assert m["scored_now"] == 0
    # pairs: excellent 5|4.9, poor 2|4.0, good 4|4.1, bad 1|1.0 (no reasoning / no answer: excluded)
    assert m["n_consistency"] == 4
    assert m["consistency_mae"] == pytest.approx((0.1 + 2.0 + 0.1 + 0.0) / 4)
    assert m["off_by_more_than_one_level"] == pytest.approx(0.25)
    assert m["distinct_answers"] == 5
    saved = json.loads((out / "results.json").read_text())["results"]["demo"]
    for k in CONSISTENCY_KEYS:
        assert saved[k] == pytest.approx(m[k]), k
    md = (out / "results.md").read_text()
    assert "## Reasoning vs answer" in md and "consistency_srcc" in md.split("## Reasoning vs answer")[1]

    # the levels reader is built by name with the model, and reads only the texts there are
    import qponder.rewards.readers as readers

    seen = []
    monkeypatch.setitem(readers._READERS, "levels",
                        lambda **kw: seen.append(kw) or (lambda t: seen.append(list(t)) or [4.0] * len(t)))
    m2 = evaluate(_cfg(tiny_model_dir, out, max_samples=6, readout="generate", consistency_reader="levels",
                       consistency_model="sft-dir"))["demo"]
    assert seen[0] == {"model": "sft-dir", "device": "cpu", "dtype": "auto"}
    assert sorted(seen[1]) == sorted(t for t in texts if t)
    assert m2["n_consistency"] == 4 and m2["off_by_more_than_one_level"] == pytest.approx(0.25)  # bad (1) vs 4
    with pytest.raises(QponderError, match="needs --consistency-model"):
        evaluate(_cfg(tiny_model_dir, tmp_path / "x", consistency_reader="levels"))
    with pytest.raises(QponderError, match="only used with --consistency-reader levels"):
        evaluate(_cfg(tiny_model_dir, tmp_path / "x", consistency_model="m"))
    levels_only = evaluate(_cfg(tiny_model_dir, tmp_path / "lo", max_samples=4, readout="levels"))["demo"]
    assert "n_consistency" not in levels_only  # the level read-out writes no answer to compare


def test_interrupted_eval_resumes_to_the_same_result(tiny_model_dir, tmp_path):
    full = evaluate(_cfg(tiny_model_dir, tmp_path / "full", readout="levels"))
    part_dir = tmp_path / "part"
    evaluate(_cfg(tiny_model_dir, part_dir, readout="levels"))
    pred = part_dir / "demo" / "predictions.jsonl"
    lines = pred.read_text().splitlines()
    # a kill after 3 finished images, in the middle of writing the 4th line
    pred.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    (part_dir / "results.json").unlink()
    resumed = evaluate(_cfg(tiny_model_dir, part_dir, readout="levels"))
    assert resumed["demo"]["scored_now"] == 7
    for k in ("n", "n_valid", "srcc", "krcc", "plcc", "plcc_logistic4", "rmse"):
        assert resumed["demo"][k] == pytest.approx(full["demo"][k], nan_ok=True), k

    def by_image(p):
        return {r["image"]: r["score"] for r in map(json.loads, p.read_text().splitlines()) if r.get("image")
                and not r.get("error") and "score" in r}

    assert by_image(pred) == pytest.approx(by_image(tmp_path / "full" / "demo" / "predictions.jsonl"))


def test_eval_cli_and_errors(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["eval", "--model", str(tiny_model_dir), "--benchmarks", "demo", "--out", str(out),
                     "--max-samples", "4", "--readout", "levels", "--set", "device=cpu"]) == 0
    assert "| demo" in capsys.readouterr().out
    assert cli_main(["eval", "--model", str(tiny_model_dir), "--benchmarks", "koniq10k", "--out", str(out)]) == 2
    assert "needs --data-root" in capsys.readouterr().err
    assert cli_main(["eval", "--model", str(tiny_model_dir), "--benchmarks", "koniq10k", "--data-root",
                     str(tmp_path), "--out", str(out)]) == 2
    assert "not found under" in capsys.readouterr().err
    assert cli_main(["eval", "--model", str(tiny_model_dir), "--benchmarks", "demo", "--out", str(out),
                     "--consistency-reader", "levels"]) == 2
    assert "needs --consistency-model" in capsys.readouterr().err
    assert cli_main(["eval", "--model", str(tiny_model_dir), "--benchmarks", "demo", "--out", str(out),
                     "--consistency-reader", "nope"]) == 2
    assert "unknown consistency reader 'nope'" in capsys.readouterr().err


def test_eval_on_a_pyiqa_layout(tiny_model_dir, tmp_path):
    """A user's KonIQ folder in pyiqa's layout is found and evaluated on its official test split only."""
    root = tmp_path / "data"
    imgs = root / "koniq10k" / "1024x768"
    imgs.mkdir(parents=True)
    (root / "meta_info").mkdir()
    rows = ["name,mos,std,split"]
    for i in range(6):
        Image.new("RGB", (64, 48), (30 * i, 100, 150)).save(imgs / f"{i}.jpg")
        rows.append(f"{i}.jpg,{1.5 + 0.5 * i},0.3,{'test' if i % 2 else 'train'}")
    (root / "meta_info" / "meta_info_KonIQ10kDataset.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "ev"
    res = evaluate(_cfg(tiny_model_dir, out, benchmarks=["koniq10k"], data_root=str(root), readout="levels",
                        max_samples=None))
    assert res["koniq10k"]["n"] == 3 and res["koniq10k"]["n_valid"] == 3
    preds = [json.loads(x) for x in (out / "koniq10k" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["mos"] for p in preds) == [2.0, 3.0, 4.0]  # the test rows, MOS already on 1-5
