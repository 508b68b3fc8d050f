"""Turning untrusted request bytes into a PIL image the model can take, or a precise 4xx error.

The checks run cheapest first: byte size, then the pixel count from the header (before any pixel is decoded, so a
small file that would decode to gigapixels — a decompression bomb — is refused without allocating it), then a full
``verify()`` + decode (catches non-images and truncated files), EXIF orientation, RGB, and finally the same pixel
budget ``qponder score`` applies (``qponder.data``), so server and CLI scores agree.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from qponder.errors import QponderError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


#: ``ipaddress`` flags that make an address internal, in the order they are reported (loopback before private).
_INTERNAL = (("unspecified", "is_unspecified"), ("loopback", "is_loopback"), ("link-local", "is_link_local"),
             ("multicast", "is_multicast"), ("reserved", "is_reserved"), ("private", "is_private"))
_REDIRECTS = (301, 302, 303, 307, 308)

AddressPolicy = Callable[[IPAddress], "str | None"]


def address_refusal(ip: IPAddress) -> str | None:
    """Why the server must not fetch from ``ip`` ("loopback", "private", ...), or None for a public address.

    An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) reaches the IPv4 host it carries, so it is judged as that.
    Anything not globally routable (e.g. carrier-grade NAT 100.64.0.0/10) is refused too: the server must not become
    a proxy into networks the client cannot reach itself.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for rule, flag in _INTERNAL:
        if getattr(ip, flag):
            return rule
    return None if ip.is_global else "non-public"


async def resolve_host(host: str, port: int, param: str = "image_url") -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal is itself); a host that does not resolve is a 400."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ImageError(f"{param}: cannot resolve the image URL's host {host!r} ({reason})",
                         code="image_fetch_failed", param=param) from None
    seen: dict[IPAddress, None] = {}
    for info in infos:
        seen.setdefault(ipaddress.ip_address(info[4][0].split("%")[0]), None)
    return list(seen)


def check_addresses(host: str, addresses: list[IPAddress], policy: AddressPolicy | None,
                    param: str = "image_url", hop: int = 0) -> None:
    """Refuse (400) unless ``policy`` allows every address ``host`` resolved to; a None policy allows all.

    Every address, not just the first: a name with one public and one internal address would otherwise let a
    connection attempt fall through to the internal one.
    """
    if policy is None:
        return
    for ip in addresses:
        rule = policy(ip)
        if rule is not None:
            where = "image URL" if hop == 0 else f"image URL's redirect {hop} (host {host})"
            raise ImageError(f"{param}: the {where} resolves to a {rule} address ({ip}); start the server with "
                             "--allow-private-urls to allow it", code="image_url_forbidden", param=param)


async def fetch_url(url: str, limits: ImageLimits, *, timeout: float = 10.0, param: str = "image_url",
                    policy: AddressPolicy | None = address_refusal, max_redirects: int = 3) -> bytes:
    """GET an http(s) image URL within ``timeout`` seconds in all and ``limits.max_bytes``, following redirects
    ourselves so ``policy`` judges every hop's addresses before anything connects to them (an internal host is never
    contacted, so no error can tell what it would have answered).

    Each hop connects to the very address that was checked (the URL's host is replaced by that IP; Host header,
    TLS SNI and certificate verification keep the hostname), so a second DNS answer cannot swap in an internal
    address between check and connect (DNS rebinding). ``policy=None`` (``--allow-private-urls``) allows any host.
    Environment proxies are ignored: going through one would connect somewhere other than the checked address.
    """
    import httpx

    try:
        async with asyncio.timeout(timeout), httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            target = _http_url(url, param)
            for hop in range(max_redirects + 1):
                r = await _open_checked(client, target, policy, param, hop)
                try:
                    if r.status_code in _REDIRECTS and "location" in r.headers:
                        target = _http_url(str(target.join(r.headers["location"])), param)
                        continue
                    return await _read_image(r, url, limits, param)
                finally:
                    await r.aclose()
            raise ImageError(f"{param}: fetching {url} was redirected more than {max_redirects} times",
                             code="image_fetch_failed", param=param)
    except ImageError:
        raise
    except (TimeoutError, httpx.TimeoutException):
        raise ImageError(f"{param}: fetching {url} timed out after {timeout:g} s", code="image_fetch_failed",
                         param=param) from None
    except (httpx.HTTPError, ValueError) as e:
        raise ImageError(f"{param}: could not fetch {url} ({type(e).__name__}: {e})", code="image_fetch_failed",
                         param=param) from None


def _http_url(text: str, param: str):
    import httpx

    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError):
        raise ImageError(f"{param}: not a valid URL: {text!r}", param=param) from None
    if url.scheme not in ("http", "https"):
        raise ImageError(f"{param}: only http and https image URLs can be fetched, not {url.scheme or 'no'}: URLs",
                         code="image_url_forbidden", param=param)
    if not url.raw_host:
        raise ImageError(f"{param}: the URL {text!r} names no host", param=param)
    return url


async def _open_checked(client, url, policy: AddressPolicy | None, param: str, hop: int):
    """Response headers of GET ``url`` from an address ``policy`` allows; tries each resolved address in turn."""
    import httpx

    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await resolve_host(host, port, param)
    check_addresses(host, addresses, policy, param, hop)
    headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*"}
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}

    def request(ip: IPAddress):
        return client.build_request("GET", url.copy_with(host=str(ip)), headers=headers, extensions=extensions)

    for ip in addresses[:-1]:
        try:
            return await client.send(request(ip), stream=True)
        except httpx.ConnectError:
            pass
    return await client.send(request(addresses[-1]), stream=True)


async def _read_image(r, url: str, limits: ImageLimits, param: str) -> bytes:
    """The body of a final (non-redirect) response, streamed against the byte cap."""
    if r.status_code != 200:
        raise ImageError(f"{param}: fetching {url} gave HTTP {r.status_code}", code="image_fetch_failed", param=param)
    declared = r.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise ImageError(f"{param}: {url} is {declared} bytes; this server accepts at most {limits.max_bytes}",
                         status=413, code="image_too_large", param=param)
    buf = bytearray()
    async for chunk in r.aiter_bytes():
        buf += chunk
        if len(buf) > limits.max_bytes:
            raise ImageError(f"{param}: {url} is larger than {limits.max_bytes} bytes", status=413,
                             code="image_too_large", param=param)
    return bytes(buf)
