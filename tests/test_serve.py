"""`qponder serve` end to end: a real server process on 127.0.0.1 with the tiny model, driven by the official
`openai` client and raw HTTP. The tiny model is untrained, so its text is random: tests check structure, types,
determinism and the batching counters, not scores.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
from PIL import Image

from qponder.serve.process import ServerProcess

MAX_IMAGE_BYTES = 300_000
API_KEY = "s3cret-test-key"
KEY_ENV = "QPONDER_TEST_SERVE_KEY"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def png_bytes(w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 9 + seed) % 256, (y * 5 + seed * 3) % 256, (x * y) % 256) for y in range(h) for x in range(w)])
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_header_only(width: int, height: int) -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


IMG = png_bytes()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    srv = ServerProcess(tiny_model_dir, "--api-key-env", KEY_ENV, "--max-batch", "8", "--batch-window-ms", "20",
                        "--allow-urls", "--allow-private-urls", "--url-timeout", "5",  # the image host is local
                        "--max-image-bytes", str(MAX_IMAGE_BYTES),
                        "--max-image-pixels", "1000000", "--max-new-tokens", "16", "--max-tokens-cap", "64",
                        "--max-n", "8", "--threads", "1", env={KEY_ENV: API_KEY}, log_path=log)
    srv.start()
    yield srv
    # SIGINT (Ctrl+C) is a graceful stop too: exit status 0, not 130 or death by the signal
    assert srv.stop(signal.SIGINT) == 0, srv.log_text()[-2000:]
    assert "stopped on SIGINT" in srv.log_text()
    assert "Traceback" not in srv.log_text(), srv.log_text()[-4000:]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def user_turn(text: str | None = "Rate this image.", image: bytes = IMG) -> list[dict]:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": data_url(image)}}]
    if text is not None:
        parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def assert_error(r: httpx.Response, status: int, code: str | None = None, words: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    assert words.lower() in err["message"].lower(), err
    return err


# ---------------------------------------------------------------------------------------------------------------

def test_health_and_models(server, http, client):
    h = http.get("/health").json()
    assert h["status"] == "ok" and isinstance(h["model"], str)
    assert h["queue"]["max_batch"] == 8 and h["queue"]["max_queue"] == 128
    for k in ("requests_served", "batches_run", "max_batch_size_seen"):
        assert isinstance(h["stats"][k], int)
    models = client.models.list()
    assert [m.id for m in models.data] == [h["model"]] and models.data[0].object == "model"
    assert client.models.retrieve(h["model"]).id == h["model"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("some-other-model")


def test_bearer_auth(server, client):
    assert httpx.get(server.url + "/health").status_code == 200  # unauthenticated by design
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"},
                    {"Authorization": f"Bearer {API_KEY}x"}, {"Authorization": "Bearer"}):
        r = httpx.get(server.url + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(server.url + "/v1/score", json={"image": data_url(IMG)})
    assert r.status_code == 401  # refused before the body is looked at
    r = httpx.post(server.url + "/v1/score", json={"image": data_url(IMG)}, headers=AUTH)
    assert r.status_code == 200 and isinstance(r.json()["raw"], str)
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="any", max_tokens=8, messages=user_turn())
    assert isinstance(client.chat.completions.create(model="any", max_tokens=8, messages=user_turn())
                      .choices[0].message.content, str)


SCORE_KEYS = {"score", "reasoning", "raw", "format_ok", "readout", "model", "latency_ms"}


def check_score_body(body: dict, model: str) -> None:
    assert SCORE_KEYS <= set(body)
    assert body["score"] is None or 1.0 <= body["score"] <= 5.0
    assert body["reasoning"] is None or isinstance(body["reasoning"], str)
    assert body["model"] == model and body["latency_ms"] > 0


def test_score_multipart_and_json_agree(http):
    model = http.get("/health").json()["model"]
    a = http.post("/v1/score", files={"image": ("x.png", IMG, "image/png")})
    b = http.post("/v1/score", json={"image": base64.b64encode(IMG).decode()})
    c = http.post("/v1/score", json={"image": data_url(IMG), "readout": "generate"})
    for r in (a, b, c):
        assert r.status_code == 200, r.text
        check_score_body(r.json(), model)
        assert isinstance(r.json()["raw"], str) and r.json()["readout"] == "generate"
        assert "levels_score" not in r.json() and "scores" not in r.json()
    # greedy decoding of the same image: all three upload paths must hand the model the same pixels
    assert a.json()["raw"] == b.json()["raw"] == c.json()["raw"]


def test_score_samples_readouts_and_seed(http):
    r = http.post("/v1/score", files={"image": ("x.png", IMG, "image/png")},
                  data={"samples": "3", "temperature": "0.9", "readout": "both", "seed": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["scores"]) == 3 and len(body["raws"]) == 3 and all(isinstance(t, str) for t in body["raws"])
    assert "std" in body and 1.0 <= body["levels_score"] <= 5.0 and body["readout"] == "both"
    assert 1.0 <= body["expected_score"] <= 5.0
    again = http.post("/v1/score", json={"image": data_url(IMG), "samples": 3, "temperature": 0.9,
                                         "readout": "both", "seed": 5}).json()
    assert again["raws"] == body["raws"]  # a seeded sampled request runs alone, so it is reproducible
    lv = http.post("/v1/score", json={"image": data_url(IMG), "readout": "levels"}).json()
    assert 1.0 <= lv["score"] <= 5.0 and lv["score"] == lv["levels_score"] and lv["raw"] is None
    ex = http.post("/v1/score", json={"image": data_url(IMG), "readout": "expected"}).json()
    assert 1.0 <= ex["score"] <= 5.0 and ex["score"] == ex["expected_score"] and isinstance(ex["raw"], str)


def test_chat_completions_with_the_openai_client(client, http):
    model = http.get("/health").json()["model"]
    r = client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "You are terse."}] + user_turn(),
        n=2, temperature=0.8, top_p=0.9, max_tokens=16)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == model
    assert isinstance(r.created, int) and len(r.choices) == 2
    for i, ch in enumerate(r.choices):
        assert ch.index == i and ch.message.role == "assistant" and isinstance(ch.message.content, str)
        assert ch.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 10 and 0 < u.completion_tokens <= 2 * 16
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_chat_greedy_seed_stop_and_token_aliases(client):
    greedy = client.chat.completions.create(model="any", messages=user_turn(), n=3, temperature=0, max_tokens=12)
    texts = [c.message.content for c in greedy.choices]
    assert len(set(texts)) == 1 and len(texts) == 3
    s1, s2 = (client.chat.completions.create(model="any", messages=user_turn(), temperature=1.0, seed=11,
                                             max_tokens=12) for _ in range(2))
    assert s1.choices[0].message.content == s2.choices[0].message.content
    text = texts[0]
    if len(text) >= 4:  # cut at a later substring of the (deterministic) greedy text
        stop = text[len(text) // 2:len(text) // 2 + 2]
        cut = client.chat.completions.create(model="any", messages=user_turn(), temperature=0, max_tokens=12,
                                             stop=[stop])
        assert cut.choices[0].message.content == text[:text.find(stop)]
        assert cut.choices[0].finish_reason == "stop"
    short = client.chat.completions.create(model="any", messages=user_turn(), temperature=0,
                                           max_completion_tokens=3)
    assert short.usage.completion_tokens <= 3
    trl = client.chat.completions.create(model="any", messages=user_turn(), temperature=0,
                                         extra_body={"max_completion_length": 3})
    assert trl.choices[0].message.content == short.choices[0].message.content


def test_the_distiller_client_works_against_the_server(server, http, monkeypatch):
    from qponder.openai_compat import AsyncOpenAIChatClient, OpenAIChatClient, image_message

    monkeypatch.setenv(KEY_ENV, API_KEY)
    model = http.get("/health").json()["model"]
    msgs = image_message(data_url(IMG), "Rate this image.", system="You are an image quality expert.")
    with OpenAIChatClient(server.url + "/v1", model=model, api_key_env=KEY_ENV, max_retries=0) as c:
        res = c.chat_with_info(msgs, n=2, temperature=0.7, top_p=0.95, max_tokens=8, seed=1)
    assert len(res.texts) == 2 and all(isinstance(t, str) for t in res.texts)
    assert set(res.finish_reasons) <= {"stop", "length"}
    assert res.usage["total_tokens"] == res.usage["prompt_tokens"] + res.usage["completion_tokens"]

    async def both():
        async with AsyncOpenAIChatClient(server.url, model=model, api_key_env=KEY_ENV, max_retries=0) as ac:
            return await asyncio.gather(ac.chat(msgs, temperature=0, max_tokens=8),
                                        ac.chat(msgs, temperature=0, max_tokens=8))

    a, b = asyncio.run(both())
    assert a == b and len(a) == 1


class _ImageHost(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]] = {}

    def do_GET(self):  # noqa: N802
        status, body = self.routes.get(self.path, (404, b"missing"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    _ImageHost.routes = {"/ok.png": (200, IMG), "/big.bin": (200, os.urandom(MAX_IMAGE_BYTES + 10)),
                         "/text.txt": (200, b"just some text")}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_image_urls_when_allowed(http, client, image_host):
    ok = http.post("/v1/score", json={"image": image_host + "/ok.png"})
    assert ok.status_code == 200 and isinstance(ok.json()["raw"], str)
    same = http.post("/v1/score", json={"image": data_url(IMG)})
    assert ok.json()["raw"] == same.json()["raw"]
    r = client.chat.completions.create(model="any", max_tokens=8, temperature=0, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_host + "/ok.png"}}, {"type": "text", "text": "rate"}]}])
    assert isinstance(r.choices[0].message.content, str)
    assert_error(http.post("/v1/score", json={"image": image_host + "/missing.png"}), 400, "image_fetch_failed", "404")
    assert_error(http.post("/v1/score", json={"image": image_host + "/big.bin"}), 413, "image_too_large")
    assert_error(http.post("/v1/score", json={"image": image_host + "/text.txt"}), 400, "invalid_image",
                 "not an image")
    assert_error(http.post("/v1/score", json={"image": "http://127.0.0.1:1/refused.png"}), 400,
                 "image_fetch_failed")


def _chat(**kw) -> dict:
    return {"json": {"model": "m", "messages": user_turn(), "max_tokens": 8, **kw}}


BAD_REQUESTS = [
    # (name, path, request kwargs, status, code, words in the message)
    ("score invalid json", "/v1/score", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     400, "invalid_json", "not valid JSON"),
    ("score json array", "/v1/score", {"json": [1, 2]}, 400, "invalid_json", "JSON object"),
    ("score empty body", "/v1/score", {"content": b"", "headers": {"content-type": "application/json"}}, 400,
     "invalid_json", "empty"),
    ("score missing image", "/v1/score", {"json": {"samples": 1}}, 400, "missing_field", "image"),
    ("score non-image base64", "/v1/score", {"json": {"image": base64.b64encode(b"hello world").decode()}}, 400,
     "invalid_image", "not an image"),
    ("score bad base64", "/v1/score", {"json": {"image": "%%%not base64%%%"}}, 400, "invalid_image", "base64"),
    ("score truncated upload", "/v1/score", {"files": {"image": ("t.png", IMG[: len(IMG) // 2], "image/png")}}, 400,
     "invalid_image", "truncated"),
    ("score non-image upload", "/v1/score", {"files": {"image": ("a.txt", b"plain text, not pixels", "text/plain")}},
     400, "invalid_image", "not an image"),
    ("score too many bytes", "/v1/score", {"files": {"image": ("b.png", b"\x89PNG" + bytes(MAX_IMAGE_BYTES), "x")}},
     413, "image_too_large", "bytes"),
    ("score too many pixels", "/v1/score", {"json": {"image": data_url(png_header_only(2000, 2000))}}, 413,
     "image_too_large", "pixels"),
    ("score body over limit", "/v1/score", {"content": b"x" * 2_000_000, "headers": {"content-type":
                                                                                      "application/json"}},
     413, "request_too_large", "bytes"),
    ("score multipart without image", "/v1/score", {"files": {"photo": ("x.png", IMG, "image/png")}}, 400,
     "missing_field", "'image'"),
    ("score bad samples", "/v1/score", {"files": {"image": ("x.png", IMG, "image/png")}, "data": {"samples": "abc"}},
     400, "invalid_value", "samples"),
    ("score unknown readout", "/v1/score", {"json": {"image": data_url(IMG), "readout": "vibes"}}, 400,
     "invalid_value", "readout"),
    ("score samples without temperature", "/v1/score", {"json": {"image": data_url(IMG), "samples": 2}}, 400,
     "invalid_value", "temperature"),
    ("score samples with levels", "/v1/score", {"json": {"image": data_url(IMG), "samples": 2, "temperature": 1,
                                                         "readout": "levels"}}, 400, "invalid_value", "readout"),
    ("score too many samples", "/v1/score", {"json": {"image": data_url(IMG), "samples": 99, "temperature": 1}},
     400, "invalid_value", "samples"),
    ("score wrong content type", "/v1/score", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type", "content type"),
    ("chat invalid json", "/v1/chat/completions", {"content": b"[{", "headers": {"content-type":
                                                                                 "application/json"}},
     400, "invalid_json", "not valid JSON"),
    ("chat missing messages", "/v1/chat/completions", {"json": {"model": "m"}}, 400, "missing_field", "messages"),
    ("chat messages not a list", "/v1/chat/completions", {"json": {"model": "m", "messages": "hi"}}, 400,
     "invalid_value", "messages"),
    ("chat stream", "/v1/chat/completions", _chat(stream=True), 400, "unsupported_parameter",
     "streaming is not supported"),
    ("chat tools", "/v1/chat/completions", _chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400,
     "unsupported_parameter", "tool"),
    ("chat no image", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "hi"}]}}, 400,
     "invalid_value", "image_url"),
    ("chat audio part", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}}, 400, "invalid_value",
     "input_audio"),
    ("chat multi-turn", "/v1/chat/completions", {"json": {"messages": user_turn() + [
        {"role": "assistant", "content": "ok"}]}}, 400, "unsupported_conversation", "assistant"),
    ("chat truncated image", "/v1/chat/completions", {"json": {"messages": user_turn(image=IMG[:200])}}, 400,
     "invalid_image", "truncated"),
    ("chat non-image data url", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGVsbG8="}}]}]}}, 400, "invalid_image",
     "not an image"),
    ("chat n too large", "/v1/chat/completions", _chat(n=50, temperature=1), 400, "invalid_value", "n: at most"),
    ("chat max_tokens too large", "/v1/chat/completions", _chat(max_tokens=100_000), 400, "invalid_value",
     "max_tokens"),
    ("chat token limits disagree", "/v1/chat/completions", _chat(max_completion_tokens=4), 400, "invalid_value",
     "disagree"),
    ("chat temperature out of range", "/v1/chat/completions", _chat(temperature=5), 400, "invalid_value",
     "temperature"),
]


def test_bad_inputs_get_4xx_json_errors_and_the_server_keeps_serving(http):
    before = http.get("/health").json()["stats"]
    for name, path, kwargs, status, code, words in BAD_REQUESTS:
        r = http.post(path, **kwargs)
        try:
            assert_error(r, status, code, words)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
    assert_error(http.get("/v1/nope"), 404, "not_found", "no such endpoint")
    assert_error(http.get("/v1/score"), 405, None, "not allowed")
    after = http.get("/health").json()
    # bad requests never reached the model, and the server still answers real work
    assert after["stats"]["batches_run"] == before["batches_run"]
    assert sum(int(v) for s, v in after["http"]["/v1/score"].items() if s.startswith("4")) >= 17
    assert http.post("/v1/score", files={"image": ("x.png", IMG, "image/png")}).status_code == 200


def test_concurrent_burst_is_batched_without_failures(server, http):
    before = http.get("/health").json()["stats"]
    images = [png_bytes(48 + 4 * (i % 3), 40, seed=i) for i in range(24)]

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=AUTH,
                                     limits=httpx.Limits(max_connections=32)) as ac:
            reqs = []
            for i, img in enumerate(images):
                if i % 2:
                    reqs.append(ac.post("/v1/score", json={"image": data_url(img)}))
                else:
                    reqs.append(ac.post("/v1/chat/completions", json={
                        "messages": user_turn(image=img), "max_tokens": 8, "temperature": 0}))
            return await asyncio.wait_for(asyncio.gather(*reqs), timeout=60)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 24, [r.text for r in responses if r.status_code != 200]
    for i, r in enumerate(responses):
        body = r.json()
        assert isinstance(body["raw"], str) if i % 2 else isinstance(body["choices"][0]["message"]["content"], str)
    after = http.get("/health").json()["stats"]
    served = after["requests_served"] - before["requests_served"]
    batches = after["batches_run"] - before["batches_run"]
    assert served == 24
    assert batches < 24 and after["max_batch_size_seen"] >= 2, after
