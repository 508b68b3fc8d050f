"""In-process tests of the serving building blocks: batcher, image decoding, request parsing, CLI start-up errors.

The HTTP endpoints themselves are tested against a real server process in test_serve.py / test_serve_limits.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from qponder.serve.batcher import BatcherClosed, DynamicBatcher, QueueFull
from qponder.serve.images import ImageError, ImageLimits, decode_base64_image, decode_image, is_http_url


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------------------------------
# batcher
# ---------------------------------------------------------------------------------------------------------------

class Recorder:
    """A run_batch that records what it was given and on which thread; optionally blocks until released."""

    def __init__(self, block: bool = False):
        self.calls: list[tuple] = []
        self.threads: set[int] = set()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.entered = threading.Event()

    def __call__(self, key, payloads):
        self.entered.set()
        self.release.wait(10)
        self.threads.add(threading.get_ident())
        self.calls.append((key, list(payloads)))
        for p in payloads:
            if p == "bad":
                raise ValueError("bad payload")
        return [(key, p, "done") for p in payloads]


def test_batcher_groups_up_to_max_batch_in_one_worker_thread():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=4, window_ms=50, max_queue=100)
        await b.start()
        results = await asyncio.gather(*(b.submit("k", i) for i in range(10)))
        await b.close()
        return b, results

    b, results = run(main())
    assert results == [("k", i, "done") for i in range(10)]
    assert [len(p) for _, p in rec.calls] == [4, 4, 2]
    assert len(rec.threads) == 1 and threading.get_ident() not in rec.threads
    assert b.stats.batches == 3 and b.stats.max_batch_size == 4 and b.stats.completed == 10
    assert dict(b.stats.batch_sizes) == {4: 2, 2: 1}


def test_batcher_never_mixes_keys_and_serves_oldest_first():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=8, window_ms=20, max_queue=100)
        await b.start()
        order = ["a", "b", "a", "c", "b", "a"]
        results = await asyncio.gather(*(b.submit(k, f"{k}{i}") for i, k in enumerate(order)))
        await b.close()
        return results

    results = run(main())
    assert [r[1] for r in results] == ["a0", "b1", "a2", "c3", "b4", "a5"]
    for key, payloads in rec.calls:
        assert all(p.startswith(key) for p in payloads)
    assert [k for k, _ in rec.calls] == ["a", "b", "c"]  # by each key's oldest request


def test_batcher_window_does_not_delay_a_request_that_already_waited():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=8, window_ms=300, max_queue=10)
        await b.start()
        t0 = time.perf_counter()
        await b.submit("k", 1)  # waits the full window for batch-mates that never come
        first = time.perf_counter() - t0
        await b.close()
        return first

    first = run(main())
    assert 0.25 <= first < 5


def test_batcher_full_queue_rejects_and_recovers():
    rec = Recorder(block=True)

    async def main():
        b = DynamicBatcher(rec, max_batch=1, window_ms=0, max_queue=2)
        await b.start()
        running = asyncio.ensure_future(b.submit("k", "slow"))
        while b.in_flight == 0:
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(b.submit("k", i)) for i in range(2)]
        await asyncio.sleep(0.01)
        assert b.waiting == 2
        with pytest.raises(QueueFull) as exc:
            await b.submit("k", "one too many")
        assert exc.value.retry_after >= 1
        rec.release.set()
        done = await asyncio.gather(running, *queued)
        after = await b.submit("k", "later")  # the queue drained: accepted again
        await b.close()
        return b, done, after

    b, done, after = run(main())
    assert [d[1] for d in done] == ["slow", 0, 1] and after[1] == "later"
    assert b.stats.rejected == 1


def test_batcher_isolates_a_failing_request():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=8, window_ms=30, max_queue=10)
        await b.start()
        res = await asyncio.gather(*(b.submit("k", p) for p in ["x", "bad", "y"]), return_exceptions=True)
        await b.close()
        return b, res

    b, res = run(main())
    assert res[0] == ("k", "x", "done") and res[2] == ("k", "y", "done")
    assert isinstance(res[1], ValueError)
    assert b.stats.failed == 1 and b.stats.completed == 2


def test_batcher_skips_cancelled_requests_and_drains_on_close():
    rec = Recorder(block=True)

    async def main():
        b = DynamicBatcher(rec, max_batch=1, window_ms=0, max_queue=10)
        await b.start()
        first = asyncio.ensure_future(b.submit("k", "first"))
        while b.in_flight == 0:
            await asyncio.sleep(0.005)
        gone = asyncio.ensure_future(b.submit("k", "gone"))
        kept = asyncio.ensure_future(b.submit("k", "kept"))
        await asyncio.sleep(0.01)
        gone.cancel()
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosed):
            await b.submit("k", "after close")
        rec.release.set()
        await closing
        return first.result(), kept.result()

    first, kept = run(main())
    assert first[1] == "first" and kept[1] == "kept"
    assert [p for _, ps in rec.calls for p in ps] == ["first", "kept"]


# ---------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------

LIMITS = ImageLimits(max_bytes=2_000_000, max_pixels=4_000_000)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def gradient(w: int = 96, h: int = 64, mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 5) % 256, (y * 7) % 256, (x + y) % 256) for y in range(h) for x in range(w)])
    return img.convert(mode)


def test_decode_gives_upright_rgb_and_matches_load_image(tmp_path):
    from qponder.data import load_image

    for name, img, fmt, kw in [
        ("rgba.png", gradient(mode="RGBA"), "PNG", {}),
        ("grey.png", gradient(mode="L"), "PNG", {}),
        ("photo.jpg", gradient(120, 80), "JPEG", {"quality": 90}),
    ]:
        data = encode(img, fmt, **kw)
        (tmp_path / name).write_bytes(data)
        for budget in [(None, None), (None, 2000), (20000, 40000)]:
            limits = ImageLimits(max_bytes=10**7, max_pixels=10**7, budget_min_pixels=budget[0],
                                 budget_max_pixels=budget[1])
            got = decode_image(data, limits)
            want = load_image(tmp_path / name, min_pixels=budget[0], max_pixels=budget[1])
            assert got.mode == "RGB" and got.size == want.size, (name, budget)
            assert got.tobytes() == want.tobytes(), (name, budget)
            if budget[1]:
                assert got.size[0] * got.size[1] <= budget[1]


def test_decode_applies_exif_orientation():
    img = gradient(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(encode(img, "JPEG", exif=exif), LIMITS)
    assert out.size == (40, 80)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_refused(fmt, cut):
    data = encode(gradient(160, 120), fmt)
    with pytest.raises(ImageError) as exc:
        decode_image(data[: int(len(data) * cut)], LIMITS)
    assert exc.value.status == 400 and exc.value.code == "invalid_image"
    assert "truncated" in str(exc.value) or "not an image" in str(exc.value)


def test_non_image_and_empty_bytes_are_refused():
    for data, words in [(b"%PDF-1.4 not an image", "not an image"), (b"", "empty"),
                        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image")]:
        with pytest.raises(ImageError) as exc:
            decode_image(data, LIMITS)
        assert words in str(exc.value) and exc.value.status == 400


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds no pixel data: tests the check before decoding."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_size_limits_answer_413_before_decoding():
    with pytest.raises(ImageError) as exc:
        decode_image(encode(gradient()), ImageLimits(max_bytes=100, max_pixels=10**6))
    assert exc.value.status == 413 and "bytes" in str(exc.value)
    t0 = time.perf_counter()
    with pytest.raises(ImageError) as exc:  # a 100k x 100k "bomb": refused from the header, in milliseconds
        decode_image(png_header_only(100_000, 100_000), LIMITS)
    assert exc.value.status == 413 and "pixels" in str(exc.value)
    assert time.perf_counter() - t0 < 1.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_decoder(data):
    try:
        img = decode_image(data, LIMITS)
    except ImageError as e:
        assert e.status in (400, 413)
    else:
        assert img.mode == "RGB"


_VALID = {fmt: encode(gradient(40, 30), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP")}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(_VALID)), st.integers(min_value=0, max_value=10**6),
       st.integers(min_value=0, max_value=255), st.booleans())
def test_truncated_or_corrupted_valid_files_never_crash(fmt, pos, byte, truncate):
    data = _VALID[fmt]
    pos %= len(data)
    data = data[:pos] if truncate else data[:pos] + bytes([byte]) + data[pos + 1:]
    try:
        img = decode_image(data, LIMITS)
    except ImageError as e:
        assert e.status in (400, 413)  # a corrupted size field can claim a huge image: refused from the header
    else:
        assert img.mode == "RGB" and img.size[0] > 0


@given(st.binary(max_size=512),
       st.sampled_from(["", "data:image/png;base64,", "data:application/octet-stream;base64,"]),
       st.integers(min_value=0, max_value=3))
def test_base64_round_trip(data, prefix, wrap):
    text = base64.b64encode(data).decode()
    if wrap:  # line-wrapped base64 (MIME style) is accepted
        text = "\n".join(text[i:i + 19 * wrap] for i in range(0, len(text), 19 * wrap))
    if not data:
        with pytest.raises(ImageError):
            decode_base64_image(prefix + text)
        return
    assert decode_base64_image(prefix + text) == data


@pytest.mark.parametrize("text, words", [
    ("not base64 !!", "not valid base64"),
    ("data:text/plain;base64,aGVsbG8=", "not an image"),
    ("data:image/png,rawbytes", "only base64 data URLs"),
    ("data:garbage", "malformed data URL"),
    ("   ", "empty"),
])
def test_bad_base64_is_refused_by_name(text, words):
    with pytest.raises(ImageError) as exc:
        decode_base64_image(text, param="messages.image_url")
    assert words in str(exc.value) and str(exc.value).startswith("messages.image_url:")


def test_http_url_detection():
    assert is_http_url("https://x/y.png") and is_http_url("HTTP://x") and not is_http_url("data:image/png;base64,")
    assert not is_http_url("ftp://x") and not is_http_url("aGVsbG8=")


# ---------------------------------------------------------------------------------------------------------------
# request parsing
# ---------------------------------------------------------------------------------------------------------------

from qponder.serve.errors import ApiError  # noqa: E402
from qponder.serve.routes.chat import apply_stop, split_messages  # noqa: E402
from qponder.serve.schemas import ChatCompletionRequest  # noqa: E402

IMG = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def chat(messages, **kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **kw})


def test_split_messages_accepts_system_then_one_user_turn():
    req = chat([{"role": "system", "content": "sys one"},
                {"role": "developer", "content": [{"type": "text", "text": "sys two"}]},
                {"role": "user", "content": [{"type": "text", "text": "a"}, IMG, {"type": "text", "text": "b"}]}])
    assert split_messages(req) == ("sys one\n\nsys two", "a\nb", "data:image/png;base64,AAAA")
    # a bare string image_url is accepted as {"url": ...}
    req = chat([{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,BB"}]}])
    assert split_messages(req) == (None, "", "data:image/png;base64,BB")


@pytest.mark.parametrize("messages, code", [
    ([{"role": "user", "content": "text only"}], "invalid_value"),
    ([{"role": "user", "content": [IMG, IMG]}], "invalid_value"),
    ([{"role": "user", "content": [IMG]}, {"role": "assistant", "content": "x"}], "unsupported_conversation"),
    ([{"role": "user", "content": [IMG]}, {"role": "user", "content": [IMG]}], "unsupported_conversation"),
    ([{"role": "user", "content": [IMG]}, {"role": "system", "content": "late"}], "invalid_value"),
    ([{"role": "system", "content": "only system"}], "missing_field"),
    ([{"role": "system", "content": [IMG]}, {"role": "user", "content": [IMG]}], "invalid_value"),
])
def test_split_messages_refuses_what_it_cannot_answer(messages, code):
    with pytest.raises(ApiError) as exc:
        split_messages(chat(messages))
    assert exc.value.status == 400 and exc.value.code == code and exc.value.message


def test_chat_request_options():
    req = chat([{"role": "user", "content": [IMG]}], max_completion_tokens=7, stop="x", user="ignored")
    assert req.token_limit() == (7, "max_completion_tokens") and req.stop_list() == ["x"]
    assert chat([{"role": "user", "content": [IMG]}], max_tokens=5, max_completion_length=5).token_limit()[0] == 5
    with pytest.raises(ValueError, match="disagree"):
        chat([{"role": "user", "content": [IMG]}], max_tokens=5, max_completion_tokens=6).token_limit()
    assert chat([{"role": "user", "content": [IMG]}], stream=True).unsupported()[0] == "stream"
    assert chat([{"role": "user", "content": [IMG]}], tools=[{"type": "function"}]).unsupported()[0] == "tools"
    assert chat([{"role": "user", "content": [IMG]}], response_format={"type": "json_object"}).unsupported()[0] \
        == "response_format"
    assert chat([{"role": "user", "content": [IMG]}], response_format={"type": "text"}).unsupported() is None


@pytest.mark.parametrize("body, want", [
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text: field required"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages.0.content.0.image_url.url: field required"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content: content must be a string or a list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role: Input should be 'system'"),
    ({"messages": [IMG]}, "messages.0.role: field required"),
])
def test_validation_errors_name_the_field(body, want):
    from pydantic import ValidationError

    from qponder.serve.schemas import validation_message

    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate(body)
    msg, param = validation_message(exc.value)
    assert msg.startswith(want) and msg.startswith(param)


@given(st.text(max_size=60), st.lists(st.text(min_size=1, max_size=3), max_size=4))
def test_apply_stop_cuts_before_the_first_stop_sequence(text, stops):
    out, finish = apply_stop(text, "length", stops)
    assert text.startswith(out)
    assert not any(s in out for s in stops)
    if any(s in text for s in stops):
        assert finish == "stop" and any(text[len(out):].startswith(s) for s in stops)
    else:
        assert (out, finish) == (text, "length")


# ---------------------------------------------------------------------------------------------------------------
# command start-up errors (fail before any model is loaded)
# ---------------------------------------------------------------------------------------------------------------

def qponder(*args: str, pre: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    code = f"import sys; {pre}\nfrom qponder.cli import main\nsys.exit(main({list(args)!r}))"
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_serve_without_the_extra_names_the_extra():
    r = qponder("serve", "--model", "nowhere", pre="sys.modules['fastapi'] = None")
    assert r.returncode == 2
    assert "error: qponder serve needs the 'serve' extra: pip install 'qponder[serve]'" in r.stderr


def test_serve_refuses_an_unset_key_variable_and_a_busy_port(tmp_path):
    r = qponder("serve", "--model", str(tmp_path), "--api-key-env", "QPONDER_TEST_UNSET_KEY",
                env={"QPONDER_TEST_UNSET_KEY": ""})
    assert r.returncode == 2 and "QPONDER_TEST_UNSET_KEY" in r.stderr and "not set or is empty" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = qponder("serve", "--model", str(tmp_path), "--port", str(port))
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr
    r = qponder("serve", "--model", str(tmp_path / "no" / "such-model"), "--port", "0")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_the_served_model_gets_the_pixel_budget_like_eval(tiny_model_dir):
    # Regression: create_app loaded the scorer without min/max pixels, so the processor kept its own budget and
    # could resize again what decode_image had fitted -- server scores then differed from `qponder eval`'s.
    from qponder.serve.app import ServeConfig, create_app

    app = create_app(ServeConfig(model=str(tiny_model_dir), device="cpu", min_pixels=28 * 28 * 4,
                                 max_pixels=28 * 28 * 64))
    ip = app.state.scorer.processor.image_processor
    assert (ip.size["shortest_edge"], ip.size["longest_edge"]) == (28 * 28 * 4, 28 * 28 * 64)
    assert app.state.config.limits().budget_max_pixels == 28 * 28 * 64
