"""Image loading the way Qwen-VL sees images: RGB, EXIF-upright, resized into a pixel budget.

Qwen-VL processors cap the number of vision tokens with ``min_pixels`` / ``max_pixels`` (one merged token covers
28x28 px on Qwen2/2.5-VL, 32x32 on Qwen3-VL). Resizing here, before the processor, keeps memory bounded when a
dataset has 12-megapixel photos (SPAQ) and lets CPU runs use a tiny budget; the processor's own resize then has
nothing left to do. Aspect ratio is kept; pass ``factor`` to also snap sides to the patch grid like the processor.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from qponder.errors import QponderError

# Decompression-bomb guard: IQA photos are at most ~50 MP; refuse anything far larger instead of exhausting RAM.
Image.MAX_IMAGE_PIXELS = 200_000_000


def fit_pixels(height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None,
               factor: int = 1) -> tuple[int, int]:
    """Target (height, width) with ``min_pixels <= h*w <= max_pixels``, aspect ratio kept as closely as integers allow.

    With ``factor > 1`` both sides are multiples of ``factor`` (Qwen-VL's ``smart_resize`` rule: round to the grid
    first, then scale down with floor / up with ceil only if the rounded size leaves the budget). With
    ``factor == 1`` an image already inside the budget is returned unchanged.
    """
    h, w, f = int(height), int(width), int(factor)
    if h < 1 or w < 1:
        raise QponderError(f"image size {w}x{h} is empty")
    if f < 1:
        raise QponderError(f"factor must be >= 1, got {factor}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise QponderError(f"min_pixels ({min_pixels}) is larger than max_pixels ({max_pixels})")
    if max_pixels is not None and max_pixels < f * f:
        raise QponderError(f"max_pixels ({max_pixels}) is smaller than one {f}x{f} patch")
    hb = max(f, round(h / f) * f)
    wb = max(f, round(w / f) * f)
    if max_pixels is not None and hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb = max(f, math.floor(h / beta / f) * f)
        wb = max(f, math.floor(w / beta / f) * f)
        # An extreme aspect ratio can leave the short side clamped at one patch; shrink the long side to fit.
        while hb * wb > max_pixels:
            if hb >= wb:
                hb -= f
            else:
                wb -= f
    elif min_pixels is not None and hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb = math.ceil(h * beta / f) * f
        wb = math.ceil(w * beta / f) * f
        # Rounding up can overshoot a tight budget (min close to max); the upper bound wins: it protects memory.
        while max_pixels is not None and hb * wb > max_pixels:
            if hb >= wb:
                hb -= f
            else:
                wb -= f
    return hb, wb


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparent areas composited on white (dropping alpha would expose arbitrary hidden colours)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale to 8 bits instead of clipping everything above 255 to white.
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def prepare_image(img: Image.Image, min_pixels: int | None = None, max_pixels: int | None = None,
                  factor: int = 1) -> Image.Image:
    """Upright RGB image inside the pixel budget, from an opened PIL image (for callers holding bytes, e.g. the
    server). Decoding errors propagate as PIL raises them; :func:`load_image` turns them into QponderError."""
    orientation = img.getexif().get(0x0112, 1)
    swapped = orientation in (5, 6, 7, 8)
    h0, w0 = (img.width, img.height) if swapped else (img.height, img.width)
    th, tw = fit_pixels(h0, w0, min_pixels, max_pixels, factor)
    if img.format == "JPEG" and th * tw * 4 <= h0 * w0:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the target): much faster for big photos.
        img.draft("RGB", (tw, th) if not swapped else (th, tw))
    img.load()
    out = _to_rgb(ImageOps.exif_transpose(img))
    if (out.height, out.width) != (th, tw):
        out = out.resize((tw, th), Image.Resampling.BICUBIC)
    return out


def load_image(path: str | os.PathLike | BinaryIO, min_pixels: int | None = None, max_pixels: int | None = None,
               factor: int = 1) -> Image.Image:
    """Open an image as RGB, honour its EXIF orientation, and resize it into ``[min_pixels, max_pixels]``.

    ``path`` may also be a binary file object. Resampling is bicubic, as in Qwen-VL's processors. Raises
    :class:`QponderError` naming the file when it is missing, not an image, or truncated/corrupt.
    """
    name = getattr(path, "name", "<image bytes>") if hasattr(path, "read") else str(path)
    src = path if hasattr(path, "read") else Path(path)
    try:
        with Image.open(src) as img:
            return prepare_image(img, min_pixels, max_pixels, factor)
    except FileNotFoundError:
        raise QponderError(f"{name}: image file not found") from None
    except IsADirectoryError:
        raise QponderError(f"{name}: is a folder, not an image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise QponderError(f"{name}: cannot read image ({type(e).__name__}: {e})") from None


def verify_image(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a readable image, or None when it decodes completely.

    Decodes every byte (``verify()`` alone misses truncated JPEGs) but lets JPEGs decode at 1/8 scale, which still
    walks the whole entropy-coded stream, so checking a 10k-image benchmark takes seconds, not minutes.
    """
    p = Path(path)
    if not p.exists():
        return "image file not found"
    if not p.is_file():
        return "not a regular file"
    try:
        with Image.open(p) as img:
            img.verify()
        with Image.open(p) as img:
            if img.format == "JPEG":
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"unreadable or corrupt image ({type(e).__name__}: {e})"
    return None
