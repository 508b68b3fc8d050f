"""``GET /``: one self-contained web page (HTML, CSS and JS inline) that scores images through ``/v1/score``.

Unauthenticated, because the page holds no data: the key is typed into it and sent by the browser with each score
request. A Content-Security-Policy with the hashes of the inline script and style lets the browser run only those
and talk only to this server, so the page needs no CDN and nothing it shows can load or run anything else.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from qponder.serve import require_serve_extra

require_serve_extra()

from fastapi import APIRouter  # noqa: E402
from fastapi.responses import HTMLResponse  # noqa: E402

PAGE = files("qponder.serve").joinpath("page.html").read_text(encoding="utf-8")


def _hashes(tag: str) -> str:
    """The CSP source list naming each inline ``<tag>`` block of the page by its sha256."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, flags=re.S)
    return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
                    for b in blocks)


HEADERS = {
    "Content-Security-Policy": (f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; "
                                "img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    """The scoring page; it calls only the public ``POST /v1/score``."""
    return HTMLResponse(PAGE, headers=HEADERS)
