"""`qponder serve` under pressure, on one server process (no auth, --max-batch 1, --max-queue 1): a full queue
answers 503 + Retry-After, and SIGTERM with a request in flight lets it finish, then the process exits 0.

The tests run in file order: the last one stops the server (auth on, SIGINT and the rest: test_serve.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import threading
import time

import httpx
import pytest
from PIL import Image

from qponder.serve.process import ServerProcess


def data_url(w: int = 56, h: int = 40) -> str:
    b = io.BytesIO()
    Image.new("RGB", (w, h), (w % 256, 120, h % 256)).save(b, "PNG")
    return "data:image/png;base64," + base64.b64encode(b.getvalue()).decode()


# n=16 sampled sequences of up to 300 tokens: ~1 s on the tiny model, and sampling makes an early stop of all 16
# sequences practically impossible, so the request is reliably still running when the test acts.
SLOW_CHAT = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url()}}]}],
             "n": 16, "temperature": 1.0, "max_tokens": 300}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = ServerProcess(tiny_model_dir, "--max-batch", "1", "--max-queue", "1", "--max-new-tokens", "16",
                        "--threads", "1", log_path=tmp_path_factory.mktemp("serve-limits") / "server.log")
    srv.start()
    yield srv
    srv.kill()  # normally stopped already by the shutdown test


def alive(srv: ServerProcess) -> ServerProcess:
    assert srv.proc.poll() is None, "the server was stopped: run this module's tests in file order"
    return srv


def wait_in_flight(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(url + "/health", timeout=5).json()["queue"]["in_flight"] > 0:
            return
        time.sleep(0.01)
    raise AssertionError("the slow request never started")


def start_slow(url: str) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def go():
        out["response"] = httpx.post(url + "/v1/chat/completions", json=SLOW_CHAT, timeout=120)

    t = threading.Thread(target=go)
    t.start()
    wait_in_flight(url)
    return t, out


def test_auth_is_off_without_api_key_env(server):
    srv = alive(server)
    assert httpx.get(srv.url + "/v1/models").status_code == 200
    r = httpx.post(srv.url + "/v1/score", json={"image": data_url()}, headers={"Authorization": "Bearer anything"})
    assert r.status_code == 200 and isinstance(r.json()["raw"], str)


def test_full_queue_answers_503_with_retry_after(server):
    srv = alive(server)
    before = httpx.get(srv.url + "/health").json()["stats"]
    slow, out = start_slow(srv.url)

    async def burst():
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
            return await asyncio.gather(*(ac.post("/v1/score", json={"image": data_url(40 + i)}) for i in range(6)))

    responses = asyncio.run(burst())
    slow.join(60)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            err = r.json()["error"]
            assert err["code"] == "queue_full" and err["type"] == "server_error"
    assert out["response"].status_code == 200 and len(out["response"].json()["choices"]) == 16
    after = httpx.get(srv.url + "/health").json()["stats"]
    assert after["requests_rejected"] - before["requests_rejected"] == statuses.count(503)
    assert after["max_batch_size_seen"] == 1  # --max-batch 1 is honoured
    # the queue drained: the server takes work again
    assert httpx.post(srv.url + "/v1/score", json={"image": data_url()}).status_code == 200


def test_sigterm_finishes_the_in_flight_request_then_exits_0(server):
    srv = alive(server)
    slow, out = start_slow(srv.url)
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    slow.join(60)
    r = out["response"]
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and len(body["choices"]) == 16
    rc = srv.proc.wait(30)
    assert rc == 0, srv.log_text()[-2000:]
    assert time.monotonic() - t0 < 30
    log = srv.log_text()
    assert "stopped on SIGTERM" in log and "Traceback" not in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=2)
