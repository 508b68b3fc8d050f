"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1: payloads, auth from an env var, retries
(429 with Retry-After, 5xx, timeouts, refused connections), no retry on other 4xx, sync and async."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from localhttp import LocalServer, send_json
from qponder.errors import QponderError
from qponder.openai_compat import (
    AsyncOpenAIChatClient,
    OpenAIChatClient,
    OpenAICompatError,
    RetryPolicy,
    chat_completions_url,
    image_message,
    image_to_data_url,
    parse_chat_response,
    parse_retry_after,
)

FAST = RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05, jitter=0.5)


class _Server:
    """A scripted chat-completions server: each request takes the next (status, headers, body, delay) step; when
    the script runs out, the last step repeats. Every request is recorded (time, headers, JSON body)."""

    def __init__(self, *steps):
        self.steps = list(steps) or [(200, {}, None, 0.0)]
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    i = len(server.requests)
                    server.requests.append({"t": time.monotonic(), "path": self.path,
                                            "headers": dict(self.headers), "json": json.loads(body)})
                    status, headers, payload, delay = server.steps[min(i, len(server.steps) - 1)]
                if delay:
                    time.sleep(delay)
                req = server.requests[i]["json"]
                if payload is None:  # a normal answer: n choices, deliberately listed in reverse index order
                    n = req.get("n", 1)
                    payload = {"choices": [{"index": k, "message": {"role": "assistant", "content": f"answer {k}"},
                                            "finish_reason": "stop"} for k in reversed(range(n))],
                               "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
                send_json(self, status, payload, headers)

        self.local = LocalServer(Handler)
        self.url = self.local.url

    def __enter__(self):
        self.local.__enter__()
        return self

    def __exit__(self, *exc):
        self.local.__exit__(*exc)


def _msgs():
    img = Image.new("RGB", (8, 8), (10, 200, 30))
    return image_message(image_to_data_url(img), "Rate it.", system="You are an expert.")


# ---------------------------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------------------------

def test_image_to_data_url_round_trips_pixels_and_keeps_original_bytes(tmp_path):
    img = Image.new("RGB", (5, 4))
    img.putdata([(i * 10 % 256, i * 7 % 256, i * 3 % 256) for i in range(20)])
    url = image_to_data_url(img)
    assert url.startswith("data:image/png;base64,")
    back = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert list(back.convert("RGB").getdata()) == list(img.getdata())  # PNG: lossless
    assert image_to_data_url(img, format="JPEG").startswith("data:image/jpeg;base64,")

    jpg = tmp_path / "a.jpg"
    img.save(jpg, quality=30)
    url = image_to_data_url(jpg, format=None)
    assert url == "data:image/jpeg;base64," + base64.b64encode(jpg.read_bytes()).decode()  # no re-encoding
    bmp = tmp_path / "b.bmp"
    img.save(bmp)
    url = image_to_data_url(str(bmp), format=None)  # not a web format: re-encoded losslessly
    assert url.startswith("data:image/png;base64,")
    with pytest.raises(QponderError, match="not found"):
        image_to_data_url(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(QponderError, match="cannot read image"):
        image_to_data_url(tmp_path / "bad.png")


def test_chat_completions_url():
    assert chat_completions_url("http://h:8000/v1") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("https://api.x.com/v1/chat/completions") == "https://api.x.com/v1/chat/completions"
    for bad in ("", "h:8000/v1", "ftp://h"):
        with pytest.raises(QponderError):
            chat_completions_url(bad)


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_parse_retry_after_reads_any_delta(x):
    assert parse_retry_after(repr(x)) == pytest.approx(x)


@settings(max_examples=200)
@given(retry=st.integers(0, 20), jitter=st.floats(0, 1), base=st.floats(0.001, 5), cap=st.floats(0.01, 100),
       r=st.floats(0, 1, exclude_max=True))
def test_backoff_is_exponential_capped_and_jittered(retry, jitter, base, cap, r):
    class Fixed:
        def random(self):
            return r

    pol = RetryPolicy(backoff_base_s=base, backoff_max_s=cap, jitter=jitter)
    d = min(cap, base * 2 ** retry)
    got = pol.delay(retry, rng=Fixed())
    assert d * (1 - jitter) - 1e-9 <= got <= d + 1e-9
    assert pol.delay(retry, retry_after=1e9) == pol.max_retry_after_s  # Retry-After wins, capped


def test_parse_chat_response_orders_choices_and_rejects_garbage():
    body = json.dumps({"choices": [{"index": 1, "message": {"content": "b"}},
                                   {"index": 0, "message": {"content": [{"type": "text", "text": "a"}]}}]})
    texts, _, _ = parse_chat_response(body)
    assert texts == ["a", "b"]
    with pytest.raises(OpenAICompatError, match="not JSON"):
        parse_chat_response(b"<html>")
    with pytest.raises(OpenAICompatError, match="no choices"):
        parse_chat_response(b'{"error": "x"}')


# ---------------------------------------------------------------------------------------------------------------
# against a real server
# ---------------------------------------------------------------------------------------------------------------

def test_sync_chat_sends_openai_payload_and_bearer_key_from_env(monkeypatch):
    monkeypatch.setenv("QP_TEST_KEY", "sekret-123")
    with _Server() as srv, OpenAIChatClient(srv.url, model="teacher-72b", api_key_env="QP_TEST_KEY",
                                            extra_body={"top_k": 20}) as c:
        texts = c.chat(_msgs(), n=3, temperature=0.7, max_tokens=64, seed=5)
    assert texts == ["answer 0", "answer 1", "answer 2"]  # ordered by index
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sekret-123"
    body = req["json"]
    assert body["model"] == "teacher-72b" and body["n"] == 3 and body["temperature"] == 0.7
    assert body["max_tokens"] == 64 and body["seed"] == 5 and body["top_k"] == 20
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You are an expert."}
    assert user["content"][0]["type"] == "image_url"
    assert user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert user["content"][1] == {"type": "text", "text": "Rate it."}


def test_no_key_no_header_and_401_names_the_variable(monkeypatch):
    monkeypatch.delenv("QP_MISSING_KEY", raising=False)
    with _Server((401, {}, {"error": "no key"}, 0)) as srv:
        with OpenAIChatClient(srv.url, model="m", api_key_env="QP_MISSING_KEY", retry=FAST) as c:
            with pytest.raises(OpenAICompatError, match="QP_MISSING_KEY") as ei:
                c.chat(_msgs())
    assert ei.value.status == 401 and ei.value.fatal and not ei.value.retryable
    assert len(srv.requests) == 1 and "Authorization" not in srv.requests[0]["headers"]


def test_429_honours_retry_after_then_succeeds():
    with _Server((429, {"Retry-After": "0.4"}, {"error": "slow down"}, 0), (200, {}, None, 0)) as srv:
        with OpenAIChatClient(srv.url, model="m", api_key_env=None,
                              retry=RetryPolicy(max_retries=3, backoff_base_s=0.001, jitter=0)) as c:
            res = c.chat_with_info(_msgs())
    assert res.texts == ["answer 0"] and res.attempts == 2 and res.statuses == [429, 200]
    gap = srv.requests[1]["t"] - srv.requests[0]["t"]
    assert gap >= 0.38, f"Retry-After not honoured: retried after {gap:.3f}s"


def test_5xx_retried_with_backoff_until_success():
    with _Server((500, {}, {"error": "boom"}, 0), (503, {}, b"unavailable", 0), (200, {}, None, 0)) as srv:
        with OpenAIChatClient(srv.url, model="m", api_key_env=None, retry=FAST) as c:
            res = c.chat_with_info(_msgs())
    assert res.statuses == [500, 503, 200] and res.attempts == 3 and len(srv.requests) == 3


def test_other_4xx_is_not_retried_and_reports_status_and_body():
    with _Server((400, {}, {"error": {"message": "image too large for context"}}, 0)) as srv:
        with OpenAIChatClient(srv.url, model="m", api_key_env=None, retry=FAST) as c:
            with pytest.raises(OpenAICompatError, match=r"HTTP 400.*image too large") as ei:
                c.chat(_msgs())
    assert ei.value.status == 400 and not ei.value.retryable and not ei.value.fatal
    assert len(srv.requests) == 1


def test_retries_exhausted_raise_a_retryable_error():
    with _Server((502, {}, b"bad gateway", 0)) as srv:
        with OpenAIChatClient(srv.url, model="m", api_key_env=None, retry=FAST) as c:
            with pytest.raises(OpenAICompatError, match=r"HTTP 502.*after 4 attempts") as ei:
                c.chat(_msgs())
    assert ei.value.retryable and ei.value.attempts == 4 and len(srv.requests) == 4


def test_timeout_is_retried():
    with _Server((200, {}, None, 1.0), (200, {}, None, 0)) as srv:
        with OpenAIChatClient(srv.url, model="m", api_key_env=None, timeout=0.25, retry=FAST) as c:
            res = c.chat_with_info(_msgs())
    assert res.texts == ["answer 0"] and res.statuses[0] == "ReadTimeout" and res.attempts == 2


def test_refused_connection_is_retried_then_fails_clearly():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    with OpenAIChatClient(f"http://127.0.0.1:{port}/v1", model="m", api_key_env=None, retry=FAST) as c:
        with pytest.raises(OpenAICompatError, match="ConnectError") as ei:
            c.chat(_msgs())
    assert ei.value.attempts == 4 and ei.value.status is None and ei.value.retryable


def test_non_json_200_is_an_error_without_retry():
    with _Server((200, {}, b"<html>proxy page</html>", 0)) as srv:
        with OpenAIChatClient(srv.url, model="m", api_key_env=None, retry=FAST) as c:
            with pytest.raises(OpenAICompatError, match="not JSON"):
                c.chat(_msgs())
    assert len(srv.requests) == 1


def test_async_client_runs_requests_concurrently_and_retries():
    async def main(url):
        async with AsyncOpenAIChatClient(url, model="m", api_key_env=None, retry=FAST, max_connections=16) as c:
            t0 = time.perf_counter()
            out = await asyncio.gather(*[c.chat(_msgs(), n=2) for _ in range(12)])
            return out, time.perf_counter() - t0

    with _Server((503, {}, b"warming up", 0.0), (200, {}, None, 0.4)) as srv:
        out, dt = asyncio.run(main(srv.url))
    assert all(o == ["answer 0", "answer 1"] for o in out)
    assert len(srv.requests) == 13  # one 503 retried once
    assert dt < 0.4 * 12 / 2, f"12 requests of 0.4 s took {dt:.2f}s: not concurrent"  # one at a time: 4.8 s
