"""Inference: batching == one-by-one, level read-out, N-sample means, `qponder score` resume and bad files."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from PIL import Image

from qponder.cli import main as cli_main
from qponder.errors import QponderError
from qponder.infer import (
    QualityScorer,
    batch_plan,
    expand_image_paths,
    expected_level_score,
    level_token_ids,
    mean_and_std,
)


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return QualityScorer(str(tiny_model_dir), device="cpu", max_new_tokens=12, batch_size=4)


def _images(n):
    return [Image.new("RGB", (56 + 28 * (i % 3), 84), (40 * i % 255, 120, 200 - 10 * i)) for i in range(n)]


def test_mean_and_std_ignore_unparsable():
    assert mean_and_std([None, None]) == (None, None)
    m, s = mean_and_std([2.0, None, 4.0])
    assert m == 3.0 and s == 1.0  # population std


def test_batch_plan_sorts_by_size_and_covers_everything():
    plan = batch_plan([30, 10, 20, 10, 40], 2)
    assert plan == [[1, 3], [2, 0], [4]]
    assert sorted(i for b in plan for i in b) == list(range(5))
    with pytest.raises(QponderError):
        batch_plan([1], 0)


def test_expected_level_score_is_the_probability_weighted_mean():
    logits = torch.full((1, 10), -1e9)
    ids = [1, 2, 3, 4, 5]  # excellent, good, fair, poor, bad
    logits[0, 2] = 0.0
    logits[0, 3] = 0.0  # good and fair equally likely -> 3.5
    assert expected_level_score(logits, ids) == pytest.approx([3.5])


def test_batched_generation_equals_one_by_one(scorer):
    imgs = _images(3)
    batched = scorer.generate(imgs, seed=0)
    single = [scorer.generate([im], seed=0)[0] for im in imgs]
    assert batched == single


def test_level_scores_are_in_range_and_batch_invariant(scorer):
    imgs = _images(3)
    together = scorer.level_scores(imgs)
    alone = [scorer.level_scores([im])[0] for im in imgs]
    assert all(1.0 <= s <= 5.0 for s in together)
    assert together == pytest.approx(alone, abs=1e-5)
    after = scorer.level_scores(imgs, reasonings=["The image is sharp.", None, "Very blurry."])
    assert all(1.0 <= s <= 5.0 for s in after)


def test_expected_answer_by_hand():
    """sum_d p(d) (d + E[fraction | d]) with hand-made logits: a toy vocabulary where ids 1-5 are the digits 1-5
    and the fraction tokens are id 6 ("5" -> 0.5) and id 7 ("25" -> 0.25)."""
    import math

    import torch

    from qponder.infer import AnswerTokens, expected_answer

    tok = AnswerTokens(leading=(1, 2, 3, 4, 5), fraction_ids=(6, 7), fraction_values=(0.5, 0.25))
    big = 50.0
    lead = torch.full((3, 8), -big)
    lead[0, 3] = big                       # surely "3"
    lead[1, 2] = lead[1, 3] = big          # "2" or "3", evenly
    lead[2, 5] = big                       # surely "5": only 5.00 is a valid answer
    frac = torch.full((3, 4, 8), -big)
    frac[:, :, 6] = big                    # after every "d.": surely "5" -> .5
    frac[1, 1, 6] = frac[1, 1, 7] = 0.0    # row 1 after "2.": ".5" or ".25", evenly -> .375
    got = expected_answer(lead, frac, tok)
    assert got == pytest.approx([3.5, 0.5 * 2.375 + 0.5 * 3.5, 5.0], abs=1e-6)
    assert all(not math.isnan(x) for x in got)


def test_expected_scores_are_per_image_whatever_the_batch(scorer):
    """Five forward passes per image over shuffled batches: each image's value is what it gets alone (a mix-up of
    rows between images would show here) and lies in [1, 5]."""
    imgs = _images(3)
    reasonings = ["The image is sharp. Overall, the quality is good.", None, "Very blurry."]
    together = scorer.expected_scores(imgs, reasonings)
    alone = [scorer.expected_scores([im], [r])[0] for im, r in zip(imgs, reasonings)]
    assert together == pytest.approx(alone, abs=1e-5)
    assert all(1.0 <= s <= 5.0 for s in together) and len(set(round(s, 6) for s in together)) == 3
    res = scorer.score_batch(imgs, ["a", "b", "c"], readout="expected")
    assert [r.score for r in res] == [r.expected_score for r in res]
    assert res[0].expected_score == pytest.approx(scorer.expected_scores([imgs[0]], [res[0].reasoning])[0], abs=1e-5)


def test_level_token_ids_are_distinct(scorer):
    ids = level_token_ids(scorer.processor.tokenizer)
    assert len(set(ids)) == 5


def test_samples_give_a_mean_and_spread(scorer):
    res = scorer.score_batch(_images(2), ["a", "b"], samples=3, temperature=1.0, readout="both")
    for r in res:
        assert len(r.raw) == 3 and len(r.scores) == 3 and len(r.format_ok) == 3
        valid = [s for s in r.scores if s is not None]
        if valid:
            assert r.score == pytest.approx(sum(valid) / len(valid))
        else:
            assert r.score is None and r.std is None
        assert 1 <= r.levels_score <= 5 and 1 <= r.expected_score <= 5
    with pytest.raises(QponderError, match="temperature > 0"):
        scorer.score_batch(_images(1), ["a"], samples=2, temperature=0.0)
    with pytest.raises(QponderError, match="unknown readout"):
        scorer.score_batch(_images(1), ["a"], readout="vibes")


def test_expand_image_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.jpg", "notes.txt", "sub/c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name) if name.endswith(("png", "jpg")) else (tmp_path / name).write_text("x")
    assert [p.split("/")[-1] for p in expand_image_paths([str(tmp_path)])] == ["a.jpg", "b.png"]
    assert len(expand_image_paths([str(tmp_path)], recursive=True)) == 3
    with pytest.raises(QponderError, match="no such file"):
        expand_image_paths([str(tmp_path / "missing.png")])


def _folder_with_a_broken_image(tmp_path, n):
    """``n`` readable images and ``broken.png``, which has a PNG signature and nothing else."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(_images(n)):
        im.save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    return folder


def test_score_command_resumes_and_skips_unreadable(tiny_model_dir, tmp_path, capsys):
    folder = _folder_with_a_broken_image(tmp_path, 5)
    out = tmp_path / "scores.jsonl"
    args = ["score", str(folder), "--model", str(tiny_model_dir), "--out", str(out), "--max-new-tokens", "8",
            "--batch-size", "2", "--readout", "both"]
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert "skipped unreadable image" in err and "broken.png" in err
    assert "scored 5 image(s), 0 already done, 1 unreadable" in err
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    good = [r for r in recs if not r.get("error")]
    assert len(good) == 5 and len({r["image"] for r in good}) == 5
    for r in good:
        assert isinstance(r["raw"][0], str) and r["model"] == str(tiny_model_dir)
        assert 1 <= r["levels_score"] <= 5 and (r["score"] is None or 1 <= r["score"] <= 5)
    # resume: nothing new to score, records unchanged
    first = out.read_text()
    assert cli_main(args) == 0
    assert "scored 0 image(s), 5 already done, 1 unreadable" in capsys.readouterr().err
    assert [json.loads(x) for x in out.read_text().splitlines() if "error" not in x] == \
        [json.loads(x) for x in first.splitlines() if "error" not in x]


def _as_a_terminal_shows(text: str) -> list[str]:
    """The lines a terminal leaves on screen: each carriage return starts overwriting its line from column 0."""
    shown = []
    for raw in text.split("\n"):
        line = ""
        for part in raw.split("\r"):
            line = part + line[len(part):]
        shown.append(line.rstrip())
    return shown


def test_score_reports_an_unreadable_image_on_its_own_line_beside_the_progress_bar(tiny_model_dir, tmp_path, capsys):
    folder = _folder_with_a_broken_image(tmp_path, 2)
    assert cli_main(["score", str(folder), "--model", str(tiny_model_dir), "--max-new-tokens", "4",
                     "--readout", "levels", "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "scoring:" in err and "img/s" in err  # the progress bar was drawn on the same stream
    shown = [line for line in _as_a_terminal_shows(err) if "skipped unreadable image" in line]
    assert len(shown) == 1 and shown[0].startswith("skipped unreadable image: ") and "broken.png" in shown[0]
    assert "scoring:" not in shown[0] and "%|" not in shown[0]


def test_score_command_prints_jsonl_without_out(tiny_model_dir, tmp_path, capsys):
    p = tmp_path / "one.png"
    _images(1)[0].save(p)
    assert cli_main(["score", str(p), "--model", str(tiny_model_dir), "--readout", "levels"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["image"] == str(p) and rec["readout"] == "levels" and math.isfinite(rec["score"])


def test_score_command_errors(tiny_model_dir, tmp_path, capsys):
    assert cli_main(["score", str(tmp_path / "nope.png"), "--model", str(tiny_model_dir)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    p = tmp_path / "x.png"
    _images(1)[0].save(p)
    assert cli_main(["score", str(p), "--model", str(tmp_path / "missing-model")]) == 2
    assert "model folder does not exist" in capsys.readouterr().err
    assert cli_main(["score", str(p), "--model", str(tiny_model_dir), "--samples", "3"]) == 2
    assert "--temperature > 0" in capsys.readouterr().err


def test_score_output_written_with_other_settings_is_refused(tiny_model_dir, tmp_path, capsys):
    p = tmp_path / "one.png"
    _images(1)[0].save(p)
    out = tmp_path / "s.jsonl"
    base = ["score", str(p), "--model", str(tiny_model_dir), "--out", str(out), "--max-new-tokens", "4"]
    assert cli_main(base) == 0
    assert cli_main(base + ["--readout", "levels"]) == 2
    err = capsys.readouterr().err
    assert "already holds predictions made with other settings" in err and str(out) in err
    assert "readout 'generate', now 'levels'" in err  # what differs is named
    assert len(out.read_text().splitlines()) == 1  # nothing mixed in
    other_limit = list(base)
    other_limit[base.index("--max-new-tokens") + 1] = "5"
    assert cli_main(other_limit) == 2  # another token limit: not in the record, named as a kind
    err = capsys.readouterr().err
    assert "the same model, readout and backend, but another prompt, sampling, token limit" in err
    assert len(out.read_text().splitlines()) == 1


def test_resume_never_mixes_backends(tiny_model_dir, tmp_path, capsys):
    """The backend (HF with its weight dtype, or vLLM) is part of what a resumed file must match: `--backend auto`
    or another dtype would otherwise append differently computed answers to the same predictions."""
    p = tmp_path / "one.png"
    _images(1)[0].save(p)
    out = tmp_path / "s.jsonl"
    base = ["score", str(p), "--model", str(tiny_model_dir), "--out", str(out), "--max-new-tokens", "4"]
    assert cli_main(base + ["--dtype", "float32"]) == 0
    assert json.loads(out.read_text())["backend"] == "hf:float32"
    assert cli_main(base + ["--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "already holds predictions made with other settings" in err
    assert "backend 'hf:float32', now 'hf:bfloat16'" in err
    assert len(out.read_text().splitlines()) == 1
    assert cli_main(base + ["--dtype", "float32"]) == 0  # the same backend resumes



def test_resume_knows_the_model_however_its_folder_is_spelled(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Records name a local model by its absolute path: a run resumed from another working directory, with the
    folder given relatively, matches the file instead of being refused as another model."""
    p = tmp_path / "one.png"
    _images(1)[0].save(p)
    out = tmp_path / "s.jsonl"
    assert cli_main(["score", str(p), "--model", str(tiny_model_dir), "--out", str(out), "--max-new-tokens", "4"]) == 0
    monkeypatch.chdir(tiny_model_dir.parent)
    rel = ["score", str(p), "--model", os.path.join(".", tiny_model_dir.name, ""), "--out", str(out),
           "--max-new-tokens", "4"]
    assert cli_main(rel) == 0
    assert "0 image(s), 1 already done" in capsys.readouterr().err
    assert [json.loads(x)["model"] for x in out.read_text().splitlines()] == [str(tiny_model_dir)]
    # a model that is not a local folder (a hub id) is named as given, and is another model
    from qponder import infer
    assert infer.model_identity("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"
    # a file an older qponder wrote (the folder as spelled, relative) still resumes from where it was written
    older = tmp_path / "older.jsonl"
    with monkeypatch.context() as m:
        m.setattr(infer, "model_identity", lambda name: name)
        assert cli_main(rel[:4] + ["--out", str(older), "--max-new-tokens", "4"]) == 0
    assert json.loads(older.read_text())["model"] == rel[3]
    assert cli_main(["score", str(p), "--model", str(tiny_model_dir), "--out", str(older), "--max-new-tokens",
                     "4"]) == 0
    assert "0 image(s), 1 already done" in capsys.readouterr().err and len(older.read_text().splitlines()) == 1

# -- batch invariance and reproducibility (issue 16.5) ---------------------------------------------------------------

def _mixed_images(n):
    """``n`` images of 6 different sizes (so 2-15 vision-token rows per image: left padding of every length);
    image 0 is the smallest, so in a batch it is the one padded most."""
    sides = [(28, 28), (56, 84), (112, 56), (84, 140), (168, 112), (140, 196)]
    return [Image.new("RGB", sides[i % len(sides)], (37 * i % 255, 255 - 23 * i % 255, 90 + 11 * i % 160))
            for i in range(n)]


@pytest.mark.parametrize("readout", ["generate", "levels"])
def test_greedy_scores_do_not_depend_on_the_batch(scorer, readout):
    """Left padding, attention masks and mrope position ids must not leak into a greedy score: an image scored alone,
    in a batch of 8 and in a batch of 32 of mixed sizes gets the same text and score (the CLI batches by size, the
    server by arrival: a score must not depend on its neighbours)."""
    imgs = _mixed_images(32)
    names = [f"img{i}" for i in range(32)]
    alone = [scorer.score_batch([im], [n], readout=readout)[0] for im, n in zip(imgs, names)]
    order = [5, 0, 17, 3, 30, 12, 9, 22]  # image 0 (the smallest) in the middle of a batch of 8
    eight = scorer.score_batch([imgs[i] for i in order], [names[i] for i in order], readout=readout)
    rest = [i for i in range(32) if i not in order]
    order32 = rest[:12] + order + rest[12:]
    all32 = scorer.score_batch([imgs[i] for i in order32], [names[i] for i in order32], readout=readout)
    for batch_order, got in ((order, eight), (order32, all32)):
        for i, res in zip(batch_order, got):
            if readout == "generate":
                assert res.raw == alone[i].raw and res.score == alone[i].score, (len(batch_order), i)
            else:
                assert res.score == pytest.approx(alone[i].score, abs=1e-5), (len(batch_order), i)
    assert len({r.raw[0] if readout == "generate" else round(r.score, 4) for r in alone}) > 1  # inputs matter


def _score_lines(out: str) -> list[dict]:
    return [{k: r[k] for k in ("image", "scores", "raw", "score", "std")}
            for r in map(json.loads, out.strip().splitlines())]


def test_sampled_scores_are_reproducible_with_a_seed(tiny_model_dir, tmp_path, capsys):
    """`qponder score --samples N --seed S` twice prints the same samples; another seed draws others."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(_mixed_images(5)):
        im.save(folder / f"img{i}.png")
    args = ["score", str(folder), "--model", str(tiny_model_dir), "--samples", "3", "--temperature", "1.0",
            "--max-new-tokens", "12", "--batch-size", "2"]
    runs = []
    for seed in ("7", "7", "8"):
        assert cli_main(args + ["--seed", seed]) == 0
        runs.append(_score_lines(capsys.readouterr().out))
    assert len(runs[0]) == 5 and runs[0] == runs[1]
    assert [r["raw"] for r in runs[0]] != [r["raw"] for r in runs[2]]
