"""Turning untrusted request bytes into a PIL image the model can take, or a precise 4xx error.

The checks run cheapest first: byte size, then the pixel count from the header (before any pixel is decoded, so a
small file that would decode to gigapixels — a decompression bomb — is refused without allocating it), then a full
``verify()`` + decode (catches non-images and truncated files), EXIF orientation, RGB, and finally the same pixel
budget ``qponder score`` applies (``qponder.data``), so server and CLI scores agree.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import warnings
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from qponder.errors import QponderError


class ImageError(QponderError):
    """A request's image is unusable; ``status`` is the HTTP status to answer with, ``code`` the error code."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_image", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # refuse above this (header check, before decoding)
    budget_min_pixels: int | None = None  # resize into [budget_min, budget_max] like `qponder score`
    budget_max_pixels: int | None = None


_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


def is_http_url(text: str) -> bool:
    head = text[:8].lower()
    return head.startswith("http://") or head.startswith("https://")


def decode_base64_image(text: str, param: str = "image") -> bytes:
    """Bytes from a ``data:image/...;base64,`` URL or a bare base64 string (whitespace and newlines allowed)."""
    m = _DATA_URL.match(text)
    if m is not None:
        if not m.group("b64"):
            raise ImageError(f"{param}: only base64 data URLs are supported (data:image/...;base64,...)", param=param)
        mime = (m.group("mime") or "").lower()
        if mime and not mime.startswith("image/") and mime != "application/octet-stream":
            raise ImageError(f"{param}: the data URL's media type is {mime!r}, not an image", param=param)
        text = text[m.end():]
    elif text[:5].lower() == "data:":
        raise ImageError(f"{param}: malformed data URL (expected data:image/<type>;base64,<data>)", param=param)
    compact = "".join(text.split())
    if not compact:
        raise ImageError(f"{param}: empty image data", param=param)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{param}: not valid base64 (send the image bytes base64-encoded or as a data URL)",
                         param=param) from None


def decode_image(data: bytes, limits: ImageLimits, param: str = "image") -> Any:
    """Validated, EXIF-transposed RGB PIL image from untrusted bytes; ``ImageError`` (4xx) when unusable."""
    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        raise ImageError(f"{param}: empty image data", param=param)
    if len(data) > limits.max_bytes:
        raise ImageError(f"{param}: the image is {len(data)} bytes; this server accepts at most {limits.max_bytes}",
                         status=413, code="image_too_large", param=param)
    with warnings.catch_warnings():
        # Our own pixel limit replaces PIL's decompression-bomb warning; PIL's hard error (2x its limit) is mapped.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(BytesIO(data)) as probe:
                w, h = probe.size
                if w <= 0 or h <= 0:
                    raise ImageError(f"{param}: the image has no pixels ({w}x{h})", param=param)
                if w * h > limits.max_pixels:
                    raise ImageError(f"{param}: the image is {w}x{h} = {w * h} pixels; this server accepts at most "
                                     f"{limits.max_pixels}", status=413, code="image_too_large", param=param)
                probe.verify()  # structure/checksum check; the object is unusable afterwards, so reopen
            with Image.open(BytesIO(data)) as im:
                img = _prepare(im, limits.budget_min_pixels, limits.budget_max_pixels)
        except ImageError:
            raise
        except Image.DecompressionBombError:
            raise ImageError(f"{param}: the image has too many pixels", status=413, code="image_too_large",
                             param=param) from None
        except UnidentifiedImageError:
            raise ImageError(f"{param}: not an image (PIL cannot identify the bytes)", param=param) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as e:
            # PIL reports truncated or corrupt files with any of these, depending on the format plugin.
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ImageError(f"{param}: corrupt or truncated image ({msg})", param=param) from None
    return img


def _prepare(im, min_pixels: int | None, max_pixels: int | None):
    """Decode exactly like ``qponder.data.load_image`` (budget, EXIF transpose, RGB) from an opened image."""
    from qponder.data.images import prepare_image

    return prepare_image(im, min_pixels=min_pixels, max_pixels=max_pixels)


async def fetch_url(url: str, limits: ImageLimits, *, timeout: float = 10.0, param: str = "image_url") -> bytes:
    """GET an http(s) URL with a timeout and a byte cap (streamed, so an endless body cannot fill memory)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True, max_redirects=3) as client:
            async with client.stream("GET", url, headers={"Accept": "image/*"}) as r:
                if r.status_code != 200:
                    raise ImageError(f"{param}: fetching {url} gave HTTP {r.status_code}",
                                     code="image_fetch_failed", param=param)
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                    raise ImageError(f"{param}: {url} is {declared} bytes; this server accepts at most "
                                     f"{limits.max_bytes}", status=413, code="image_too_large", param=param)
                buf = bytearray()
                async for chunk in r.aiter_bytes():
                    buf += chunk
                    if len(buf) > limits.max_bytes:
                        raise ImageError(f"{param}: {url} is larger than {limits.max_bytes} bytes", status=413,
                                         code="image_too_large", param=param)
                return bytes(buf)
    except ImageError:
        raise
    except httpx.TimeoutException:
        raise ImageError(f"{param}: fetching {url} timed out after {timeout:g} s", code="image_fetch_failed",
                         param=param) from None
    except (httpx.HTTPError, ValueError) as e:
        raise ImageError(f"{param}: could not fetch {url} ({type(e).__name__}: {e})", code="image_fetch_failed",
                         param=param) from None
