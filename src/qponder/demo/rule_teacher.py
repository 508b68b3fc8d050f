"""``rule``: a deterministic, offline stand-in for a teacher VLM (for the demo, tests and benchmarks).

**This is not a real teacher.** It measures a handful of classical no-reference image statistics and turns them
into an IQA-style rationale and a 1-5 score, so the whole distil -> SFT -> GRPO pipeline runs on a CPU without any
download. A real run uses Qwen2.5-VL-72B (or similar) through the ``openai`` backend.

Measurements (luminance Y in [0, 1], on a central crop of at most 224x224 px at native resolution, so pixel-level
artefacts keep their size; about 3 ms per image):

* blur — Crété-Roffet's re-blur ratio: how much of the image's pixel-to-pixel variation survives a 9-tap box blur
  (1 = nothing to lose, i.e. already blurry), and edge steepness: the 99th-percentile neighbour difference over the
  5-95 % luminance range;
* noise — sigma of the separable second-difference residual ([1,-2,1] x [1,-2,1], norm 6) from its median absolute
  value over the 30 % least active pixels (robust to texture), in 8-bit units;
* blocking — excess of the mean neighbour difference across 8x8 block borders over the largest one at any other
  offset, relative to the typical one (plus a floor so smooth images do not blow the ratio up);
* pixelation — fraction of rows/columns that copy their neighbour wherever they have structure (the signature of
  nearest-neighbour upscaling; flat areas do not count);
* exposure/contrast — mean luminance, 5th/95th percentiles, fractions clipped near white / black, RMS contrast;
* colour — mean HSV saturation.

Score (1-5): ``CALIBRATION["intercept"]`` minus one non-negative penalty per defect; each penalty is a sum of hinge
functions of that defect's measurement with non-negative weights (monotone: a worse measurement never raises the
score). The weights were fitted by non-negative least squares on the demo dataset's **train split only** — see
:func:`fit_calibration` and the comment at ``CALIBRATION``. Defects the demo's distortions do not contain (dark
images, flat contrast) get no weight from that fit, so they cost nothing here. The rationale names every quality factor with a
standard descriptor (sharp / soft / blurry, clean / noisy, blocky, pixelated, over- / underexposed, dull / vivid),
graded slightly / moderately / severely by the size of its penalty, and ends with "Overall, the quality is
<level>." where <level> is the :data:`qponder.prompts.LEVELS` word nearest to the score. Wording varies with a
generator seeded by the image id (and the sample index), so rationales are not all identical but a rerun writes
the same text.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from qponder.prompts import LEVELS, format_target

ANALYSIS_SIDE = 224  # analysis window (central crop) in pixels
_EPS = 1e-9


@dataclass(frozen=True)
class Measurements:
    """What the rule teacher measured on one image (all floats; see the module docstring)."""

    blur: float  # re-blur ratio in [0, 1]; higher = blurrier
    edge: float  # edge steepness; lower = softer
    noise: float  # noise sigma in 8-bit units
    blocking: float  # relative excess difference at 8x8 block borders; ~0 for natural images
    pixelation: float  # fraction of repeated rows/columns in [0, 1]
    mean: float  # mean luminance in [0, 1]
    p5: float
    p95: float
    clip_hi: float  # fraction of pixels at >= 250/255
    clip_lo: float  # fraction of pixels at <= 5/255
    contrast: float  # RMS contrast (std of luminance)
    saturation: float  # mean HSV saturation in [0, 1]

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 5) for k, v in asdict(self).items()}


def _as_rgb_array(image: Any) -> np.ndarray:
    """float32 RGB array in [0, 1], central crop of at most ANALYSIS_SIDE x ANALYSIS_SIDE."""
    if isinstance(image, np.ndarray):
        arr = image
    else:  # PIL
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        if w > ANALYSIS_SIDE or h > ANALYSIS_SIDE:
            cw, ch = min(w, ANALYSIS_SIDE), min(h, ANALYSIS_SIDE)
            left, top = (w - cw) // 2, (h - ch) // 2
            image = image.crop((left, top, left + cw, top + ch))
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    h, w = arr.shape[:2]
    if h > ANALYSIS_SIDE or w > ANALYSIS_SIDE:
        top, left = (h - min(h, ANALYSIS_SIDE)) // 2, (w - min(w, ANALYSIS_SIDE)) // 2
        arr = arr[top:top + ANALYSIS_SIDE, left:left + ANALYSIS_SIDE]
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1 / 255.0)
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _box_blur_1d(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.uniform_filter1d(x, size, axis=axis, mode="nearest")


def _reblur_ratio(y: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> float:
    """Crété-Roffet et al. (2007) no-reference blur: share of neighbour variation a 9-tap box blur does not remove."""
    out = 0.0
    for axis, d in ((1, dx), (0, dy)):
        total = float(d.sum())
        if total <= _EPS:
            out = max(out, 1.0)
            continue
        db = np.abs(np.diff(_box_blur_1d(y, 9, axis), axis=axis))
        out = max(out, float(np.minimum(d, db).sum()) / total)
    return out


def _kth(values: np.ndarray, q: float) -> float:
    v = values.ravel()
    if v.size == 0:
        return 0.0
    k = min(v.size - 1, max(0, int(q * v.size)))
    return float(np.partition(v, k)[k])


def _block_excess(profile: np.ndarray) -> float:
    """How much the mean neighbour difference across the 8-px grid lines exceeds that at *every* other offset.

    Comparing with the largest other offset (not their mean) keeps coarser periodic structure out: 2x or 4x
    pixelation also has jumps at the grid lines, but equally at offsets 1, 3, 5.
    """
    if profile.size < 16:
        return 0.0
    n = profile.size - profile.size % 8
    by_offset = profile[:n].reshape(-1, 8).mean(axis=0)
    others = np.delete(by_offset, 7)
    return (float(by_offset[7]) - float(others.max())) / (float(others.mean()) + 0.01)


def _repeated_lines(d_across: np.ndarray, d_along: np.ndarray) -> float:
    """Fraction of columns that copy their right neighbour wherever the column itself has structure.

    ``d_across``: |differences between neighbouring columns| (rows x cols-1); ``d_along``: |differences down each
    column| (rows-1 x cols). Only positions with real vertical structure (> 6/255) count, so flat sky or a flat
    JPEG block (equal in every direction) is not mistaken for nearest-neighbour upscaling, which copies whole
    textured columns.
    """
    active = d_along[:, :-1] > 6.0 / 255.0
    same = d_across[:-1, :] < 0.5 / 255.0
    n = active.sum(axis=0)
    k = (active & same).sum(axis=0)
    ok = n >= 8
    if not ok.any():
        return 0.0
    return float(((k[ok] / n[ok]) > 0.9).mean())


def measure(image: Any) -> Measurements:
    """Measure one image (PIL image or HxWx3 uint8/float array)."""
    from scipy import ndimage

    a = _as_rgb_array(image)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    h, w = y.shape
    if h < 4 or w < 4:
        raise ValueError(f"image of {w}x{h} px is too small to assess")
    dx = np.abs(np.diff(y, axis=1))
    dy = np.abs(np.diff(y, axis=0))

    hist = np.bincount(np.clip(y * 255.0 + 0.5, 0, 255).astype(np.int32).ravel(), minlength=256)
    cdf = np.cumsum(hist) / y.size
    p5 = float(np.searchsorted(cdf, 0.05)) / 255.0
    p95 = float(np.searchsorted(cdf, 0.95)) / 255.0

    grad = np.maximum(dx[:-1, :], dy[:, :-1])
    edge = _kth(grad, 0.99) / max(p95 - p5, 0.05)

    k = np.array([1.0, -2.0, 1.0], dtype=np.float32)
    resid = ndimage.correlate1d(ndimage.correlate1d(y, k, axis=0), k, axis=1)[1:-1, 1:-1]
    activity = ndimage.uniform_filter(grad, 5)[: resid.shape[0], : resid.shape[1]]
    resid = resid[: activity.shape[0], : activity.shape[1]]
    flat = activity <= _kth(activity, 0.3)
    rr = np.abs(resid[flat])
    noise = 1.4826 * _kth(rr, 0.5) / 6.0 * 255.0 if rr.size else 0.0

    blocking = 0.5 * (_block_excess(dx.mean(axis=0)) + _block_excess(dy.mean(axis=1)))
    pixelation = 0.5 * (_repeated_lines(dx, dy) + _repeated_lines(dy.T, dx.T))

    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    saturation = float(((mx - mn) / np.maximum(mx, 1e-3)).mean())
    return Measurements(
        blur=_reblur_ratio(y, dx, dy), edge=float(edge), noise=float(noise), blocking=float(blocking),
        pixelation=pixelation, mean=float(y.mean()), p5=p5, p95=p95, clip_hi=float(1.0 - cdf[249]),
        clip_lo=float(cdf[5]), contrast=float(y.std()), saturation=saturation,
    )


# -----------------------------------------------------------------------------------------------------------------
# Score model: intercept - sum of per-defect penalties, each a non-negative combination of hinges
# -----------------------------------------------------------------------------------------------------------------

DEFECTS = ("blur", "noise", "blocking", "pixelation", "overexposure", "underexposure", "contrast")


def _drivers(m: Measurements) -> dict[str, list[tuple[str, float]]]:
    """Per defect: (feature name, value) where larger always means worse."""
    return {
        "blur": [("reblur", m.blur - 0.28), ("softness", 3.0 - m.edge)],
        "noise": [("log2_sigma", math.log2(max(m.noise, 1e-3) / 2.0))],
        "blocking": [("block", m.blocking)],
        "pixelation": [("dup", m.pixelation)],
        "overexposure": [("clip_hi", m.clip_hi), ("bright", m.mean - 0.6), ("lifted_black", m.p5 - 0.3)],
        "underexposure": [("clip_lo", m.clip_lo - 0.02), ("dark", 0.15 - m.mean)],
        "contrast": [("flat", 0.08 - m.contrast)],
    }


#: Hinge knots per (defect, feature): basis max(0, value - knot).
KNOTS: dict[tuple[str, str], tuple[float, ...]] = {
    ("blur", "reblur"): (0.0, 0.15, 0.35),
    ("blur", "softness"): (0.0, 1.0),
    ("noise", "log2_sigma"): (0.0, 1.0),
    ("blocking", "block"): (0.3, 0.8, 1.5),
    ("pixelation", "dup"): (0.0, 0.3),
    ("overexposure", "clip_hi"): (0.0, 0.05),
    ("overexposure", "bright"): (0.0, 0.15),
    ("overexposure", "lifted_black"): (0.0,),
    ("underexposure", "clip_lo"): (0.0,),
    ("underexposure", "dark"): (0.0,),
    ("contrast", "flat"): (0.0,),
}


def basis_names() -> list[str]:
    return [f"{d}.{f}>{t:g}" for (d, f), ts in KNOTS.items() for t in ts]


def _basis(m: Measurements) -> dict[str, float]:
    out = {}
    for defect, feats in _drivers(m).items():
        for fname, value in feats:
            for t in KNOTS[(defect, fname)]:
                out[f"{defect}.{fname}>{t:g}"] = max(0.0, value - t)
    return out


# Calibration (do not edit by hand): `fit_calibration(load_demo_samples("train"))` — NNLS of the human MOS of the
# 1,600 demo TRAIN images (demo v2, seed 0, size "default": 10 photographs x 4 crops x 8 KADID distortions x 5
# levels) on [1, -basis], i.e. the intercept and non-negative penalty weights; zero weights are dropped.
# `text_offsets` is each defect's median penalty over the same images (what an image without that defect pays;
# rationales describe only the excess). Val/test were not used. Fit result on train/val/test: SRCC 0.871 / 0.910 /
# 0.860. Re-run `python -m qponder.demo.rule_teacher --calibrate` after changing measure(), KNOTS or the demo
# data (a test checks the match).
CALIBRATION: dict[str, Any] = {
    "intercept": 4.6648,
    "weights": {
        "blur.reblur>0": 4.8863,
        "blur.softness>1": 0.3768,
        "noise.log2_sigma>1": 0.9445,
        "blocking.block>0.3": 1.7293,
        "pixelation.dup>0": 3.4323,
        "pixelation.dup>0.3": 0.4168,
        "overexposure.clip_hi>0": 3.849,
        "overexposure.bright>0": 1.7747
    },
    "text_offsets": {
        "blur": 0.6958,
        "noise": 0.0,
        "blocking": 0.0,
        "pixelation": 0.0,
        "overexposure": 0.0025,
        "underexposure": 0.0,
        "contrast": 0.0
    }
}


def penalties(m: Measurements, calibration: dict[str, Any] | None = None) -> dict[str, float]:
    """Score points each defect costs (>= 0)."""
    cal = calibration or CALIBRATION
    weights = cal["weights"]
    out = {d: 0.0 for d in DEFECTS}
    for name, value in _basis(m).items():
        wgt = weights.get(name, 0.0)
        if wgt:
            out[name.split(".", 1)[0]] += wgt * value
    return out


def visible_penalties(m: Measurements, calibration: dict[str, Any] | None = None,
                      pens: dict[str, float] | None = None) -> dict[str, float]:
    """Penalties beyond what a typical image without that defect gets (what the rationale describes)."""
    cal = calibration or CALIBRATION
    pens = pens if pens is not None else penalties(m, cal)
    offsets = cal.get("text_offsets", {})
    return {d: max(0.0, p - offsets.get(d, 0.0)) for d, p in pens.items()}


def score_of(m: Measurements, calibration: dict[str, Any] | None = None) -> float:
    """Calibrated 1-5 score, rounded to two decimals (the output format's precision)."""
    cal = calibration or CALIBRATION
    s = cal["intercept"] - sum(penalties(m, cal).values())
    return round(min(5.0, max(1.0, s)), 2)


def fit_calibration(samples: Sequence[Any], *, load=None) -> dict[str, Any]:
    """Fit CALIBRATION on labelled samples (``.image`` path, ``.mos``) by non-negative least squares."""
    from scipy.optimize import nnls

    if load is None:
        from qponder.data import load_image as load
    names = basis_names()
    rows, ys = [], []
    for s in samples:
        b = _basis(measure(load(s.image)))
        rows.append([1.0] + [-b[n] for n in names])
        ys.append(float(s.mos))
    coef, _ = nnls(np.asarray(rows), np.asarray(ys))
    weights = {n: round(float(c), 4) for n, c in zip(names, coef[1:]) if c > 1e-4}
    cal = {"intercept": round(float(coef[0]), 4), "weights": weights, "text_offsets": {}}
    # What each defect costs a typical image that does not have it (most training images are distorted in one way
    # only, so the median over all of them is the "unaffected" level); rationales describe the excess over it.
    pens = [penalties(measure(load(s.image)), cal) for s in samples]
    cal["text_offsets"] = {d: round(float(np.median([p[d] for p in pens])), 4) for d in DEFECTS}
    return cal


# -----------------------------------------------------------------------------------------------------------------
# Rationale
# -----------------------------------------------------------------------------------------------------------------

def level_word(score: float) -> str:
    """The LEVELS word (no leading space) nearest to ``score``."""
    word, _ = min(LEVELS, key=lambda lv: (abs(lv[1] - score), -lv[1]))
    return word.strip()


def _grade(p: float) -> str | None:
    """Intensifier for a penalty of ``p`` score points (None: not a visible defect)."""
    if p < 0.2:
        return None
    if p < 0.6:
        return "slightly"
    if p < 1.2:
        return "moderately"
    return "severely"


_SHARP = (
    "Fine details and edges are sharp and well defined.",
    "The image is sharp, with crisp edges and clear fine texture.",
    "Edges look crisp and fine detail is well resolved.",
)
_BLURRY = {
    "slightly": ("The image is slightly soft; the finest details are a little smeared.",
                 "Edges are slightly soft, so fine texture is not fully crisp."),
    "moderately": ("The image is moderately blurry: edges are soft and fine detail is lost.",
                   "Edges are moderately blurred; textures are smeared and lack definition."),
    "severely": ("The image is severely blurry; edges are smeared and almost no fine detail remains.",
                 "The image is severely blurred: structures are washed into soft shapes and detail is gone."),
}
_CLEAN = (
    "Flat regions are clean, with no visible noise.",
    "No noticeable noise or grain appears in smooth areas.",
    "Smooth areas look clean and free of grain.",
)
_NOISY = {
    "slightly": ("The image is slightly noisy in flat regions.", "Smooth areas are slightly grainy."),
    "moderately": ("The image is moderately noisy; grain is clearly visible in flat regions.",
                   "Smooth areas are moderately noisy, and the grain partly masks fine texture."),
    "severely": ("The image is severely noisy; strong grain covers the whole frame and hides detail.",
                 "Every region is severely noisy, and the grain obscures the content."),
}
_NO_ARTEFACTS = (
    "There are no visible compression artefacts.",
    "I see no blocking, ringing or other compression artefacts.",
    "No compression artefacts are noticeable.",
)
_BLOCKY = {
    "slightly": ("Smooth areas are slightly blocky from compression.",
                 "Faint 8x8 block edges make the image slightly blocky: mild compression artefacts."),
    "moderately": ("The image is moderately blocky, with clear compression artefacts around edges and in "
                   "gradients.", "Compression artefacts are moderately strong: visible blocks and ringing around "
                   "edges."),
    "severely": ("The image is severely blocky; strong compression artefacts break surfaces into flat squares.",
                 "Compression artefacts are severely visible: coarse blocks replace texture and colour "
                 "gradients."),
}
_PIXELATED = {
    "slightly": ("Edges are slightly pixelated, with small jagged steps.",
                 "The image is slightly pixelated, giving some edges a stair-stepped look."),
    "moderately": ("The image is moderately pixelated; enlarged pixels make edges jagged.",
                   "Edges are moderately pixelated, with visible square steps."),
    "severely": ("The image is severely pixelated: large square pixels replace the detail.",
                 "The content is severely pixelated into coarse blocks of colour."),
}
_OVER = {
    "slightly": ("The image is slightly overexposed; highlights are a bit washed out.",
                 "The exposure is slightly too bright, fading the lighter tones."),
    "moderately": ("The image is moderately overexposed; bright areas are washed out and lose detail.",
                   "The tones are moderately overexposed, so highlights wash out."),
    "severely": ("The image is severely overexposed; large areas are clipped to white and look washed out.",
                 "Much of the frame is severely overexposed, bleaching highlight detail."),
}
_UNDER = {
    "slightly": ("The image is slightly underexposed; shadows are a bit dark.",),
    "moderately": ("The image is moderately underexposed; shadow detail is hard to see.",),
    "severely": ("The image is severely underexposed; much of it is crushed to black.",),
}
_FLAT = {
    "slightly": ("Contrast is slightly low, giving a somewhat flat look.",),
    "moderately": ("Contrast is moderately low and the image looks flat.",),
    "severely": ("Contrast is severely low; the image looks dull and flat.",),
}
_EXPOSURE_OK = (
    "Exposure is well balanced{contrast}.",
    "The exposure looks appropriate{contrast}.",
    "Brightness is well balanced{contrast}.",
)
_COLOUR = {
    "dull": ("Colours are dull and muted.", "The colours look dull and desaturated."),
    "natural": ("Colours look natural.", "Colour rendition appears natural."),
    "vivid": ("Colours are vivid and well saturated.", "The colours look vivid."),
}
_OVERALL_OPEN = (
    "Weighing these factors, {main}.",
    "Taken together, {main}.",
    "Considering everything, {main}.",
)


def _contrast_phrase(m: Measurements) -> str:
    if m.contrast >= 0.22:
        return " and contrast is strong"
    if m.contrast >= 0.12:
        return " with good contrast"
    return " but contrast is rather low"


def rationale(m: Measurements, score: float, rng: random.Random, pens: dict[str, float] | None = None) -> str:
    """Natural-language assessment consistent with ``score``; the wording is drawn from ``rng``."""
    pens = visible_penalties(m, pens=pens)
    grades = {d: _grade(p) for d, p in pens.items()}
    defects = sorted((d for d in DEFECTS if grades[d]), key=lambda d: -pens[d])
    tables = {"blur": _BLURRY, "noise": _NOISY, "blocking": _BLOCKY, "pixelation": _PIXELATED,
              "overexposure": _OVER, "underexposure": _UNDER, "contrast": _FLAT}
    sentences = [rng.choice(tables[d][grades[d]]) for d in defects]  # worst defect first
    coarse = any(grades[d] in ("moderately", "severely") for d in ("blocking", "pixelation"))
    if not grades["blur"] and not coarse:  # "sharp" would mislead next to coarse blocks
        sentences.append(rng.choice(_SHARP))
    if not grades["noise"]:
        sentences.append(rng.choice(_CLEAN))
    if not grades["blocking"] and not grades["pixelation"]:
        sentences.append(rng.choice(_NO_ARTEFACTS))
    if not (grades["overexposure"] or grades["underexposure"]):
        contrast = "" if grades["contrast"] else _contrast_phrase(m)
        sentences.append(rng.choice(_EXPOSURE_OK).format(contrast=contrast))
    colour = "dull" if m.saturation < 0.15 else ("vivid" if m.saturation > 0.5 else "natural")
    sentences.append(rng.choice(_COLOUR[colour]))
    if defects:
        names = {"blur": "the blur is", "noise": "the noise is", "blocking": "the compression artefacts are",
                 "pixelation": "the pixelation is", "overexposure": "the overexposure is",
                 "underexposure": "the underexposure is", "contrast": "the low contrast is"}
        main = f"{names[defects[0]]} what most lowers the perceived quality"
        if len(defects) > 1:
            main += f", followed by {names[defects[1]].rsplit(' ', 1)[0]}"
    else:
        main = "no defect is strong enough to noticeably hurt the perceived quality"
    sentences.append(rng.choice(_OVERALL_OPEN).format(main=main))
    sentences.append(f"Overall, the quality is {level_word(score)}.")
    return " ".join(sentences)


def _rng_for(image_id: str, sample: int) -> random.Random:
    return random.Random(zlib.crc32(f"{image_id}\x00{sample}".encode("utf-8")))


class _FirstPhrasing:
    """Stands in for the wording rng when ``wording="fixed"``: always the first phrasing of each sentence."""

    @staticmethod
    def choice(options):
        return options[0]


WORDINGS = ("varied", "fixed")


@dataclass(frozen=True)
class RuleOutput:
    reasoning: str
    score: float
    text: str  # the completion, exactly in the output format
    measurements: Measurements
    penalties: dict[str, float]


def assess(image: Any, image_id: str, sample: int = 0, wording: str = "varied") -> RuleOutput:
    """Assess one image. Deterministic in (image pixels, image_id, sample).

    ``wording="varied"`` draws each sentence's phrasing from (image_id, sample), as a real teacher varies its
    language; ``"fixed"`` always uses the first phrasing, so the text depends on what is measured only (a small
    student trained on CPU then spends its capacity on the image-dependent words).
    """
    if wording not in WORDINGS:
        raise ValueError(f"unknown wording {wording!r}; use one of {WORDINGS}")
    m = measure(image)
    pens = penalties(m)
    score = score_of(m)
    rng = _rng_for(image_id, sample) if wording == "varied" else _FirstPhrasing()
    reasoning = rationale(m, score, rng, pens)
    return RuleOutput(reasoning=reasoning, score=score, text=format_target(reasoning, score), measurements=m,
                      penalties={k: round(v, 4) for k, v in pens.items()})


def _main(argv: list[str] | None = None) -> int:
    """``python -m qponder.demo.rule_teacher --calibrate`` prints a fresh CALIBRATION; ``--eval`` the SRCCs."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calibrate", action="store_true", help="fit on the demo train split and print the constants")
    ap.add_argument("--eval", action="store_true", help="SRCC/PLCC vs MOS per demo split")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from qponder.demo.data import load_demo_samples

    if args.calibrate:
        print(json.dumps(fit_calibration(load_demo_samples("train", seed=args.seed)), indent=4))
    if args.eval:
        print(json.dumps(evaluate_on_demo(seed=args.seed), indent=2))
    return 0


def evaluate_on_demo(seed: int = 0, splits: Sequence[str] = ("train", "val", "test")) -> dict[str, dict]:
    """SRCC / PLCC of the rule teacher's score vs the demo MOS, per split, and the mean time per image."""
    import time

    from scipy.stats import pearsonr, spearmanr

    from qponder.data import load_image
    from qponder.demo.data import load_demo_samples

    out = {}
    for split in splits:
        samples = load_demo_samples(split, seed=seed)
        t0 = time.perf_counter()
        preds = [assess(load_image(s.image), s.image_id).score for s in samples]
        dt = (time.perf_counter() - t0) / max(1, len(samples))
        mos = [s.mos for s in samples]
        out[split] = {"n": len(samples), "srcc": round(float(spearmanr(preds, mos)[0]), 4),
                      "plcc": round(float(pearsonr(preds, mos)[0]), 4),
                      "ms_per_image": round(dt * 1000, 2)}
    return out


if __name__ == "__main__":
    raise SystemExit(_main())
