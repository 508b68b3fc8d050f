"""`qponder serve` on the network's edge: which image URLs the server may fetch (issue 16.6) and a request body over
the limit answered with its 413 instead of a connection reset (issue 16.7).

Everything talks to real HTTP servers on 127.0.0.1 (tests/localhttp.py) and to a real `qponder serve` process; the
redirect tests reach a second loopback address (127.0.0.2) so one hop can be allowed and the next refused.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import socket

import httpx
import openai
import pytest
from PIL import Image

from localhttp import LocalServer, routes_handler
from qponder.serve.bodies import DrainUnreadBody
from qponder.serve.images import (
    ImageError, ImageLimits, address_refusal, check_addresses, fetch_url, resolve_host,
)
from qponder.serve.process import ServerProcess

LIMITS = ImageLimits(max_bytes=300_000)
OVER_LIMIT = 4 * 1024 * 1024


def png() -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 60, 20)).save(b, "PNG")
    return b.getvalue()


PNG = png()


@pytest.fixture
def hosts():
    """Two image hosts: ``a`` on 127.0.0.1 and ``b`` on 127.0.0.2, with their route tables and request logs."""
    a_routes: dict = {"/ok.png": (200, PNG, {})}
    b_routes: dict = {"/secret.png": (200, PNG, {})}
    a_hits: list = []
    b_hits: list = []
    with LocalServer(routes_handler(a_routes, a_hits)) as a, \
            LocalServer(routes_handler(b_routes, b_hits), host="127.0.0.2") as b:
        yield {"a": a, "b": b, "a_routes": a_routes, "a_hits": a_hits, "b_hits": b_hits}


def only_127_0_0_1(ip) -> str | None:
    """The real policy, except that 127.0.0.1 counts as public: it stands in for an allowed first hop."""
    return None if ip == ipaddress.ip_address("127.0.0.1") else address_refusal(ip)


def fetch(url: str, **kw) -> bytes:
    return asyncio.run(fetch_url(url, LIMITS, timeout=5, **kw))


def refused(url: str, **kw) -> ImageError:
    with pytest.raises(ImageError) as exc:
        fetch(url, **kw)
    assert exc.value.status == 400 and str(exc.value).startswith("image_url:"), str(exc.value)
    return exc.value


@pytest.mark.parametrize("address, rule", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
    ("::ffff:192.168.0.1", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("100.64.0.1", "non-public"),
    ("93.184.216.34", None), ("8.8.8.8", None), ("::ffff:93.184.216.34", None), ("2606:4700:4700::1111", None),
])
def test_address_policy(address, rule):
    assert address_refusal(ipaddress.ip_address(address)) == rule


def test_every_resolved_address_is_checked():
    addresses = asyncio.run(resolve_host("localhost", 80))
    assert addresses and all(address_refusal(ip) == "loopback" for ip in addresses)
    public, private = ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.7")
    check_addresses("example.test", [public], address_refusal)  # allowed: no exception
    with pytest.raises(ImageError, match=r"private address \(10\.0\.0\.7\)"):
        check_addresses("example.test", [public, private], address_refusal)
    check_addresses("example.test", [public, private], None)  # --allow-private-urls


def test_loopback_urls_are_refused_by_default_and_fetched_with_the_flag(hosts):
    for url in (hosts["a"].origin + "/ok.png", hosts["a"].origin.replace("127.0.0.1", "localhost") + "/ok.png"):
        err = refused(url)
        assert err.code == "image_url_forbidden"
        assert "resolves to a loopback address (127.0.0.1)" in str(err)
        assert "start the server with --allow-private-urls to allow it" in str(err)
    assert hosts["a_hits"] == []  # refused before connecting
    assert fetch(hosts["a"].origin + "/ok.png", policy=None) == PNG
    # the connection goes to the checked address, but the request still names the host the URL named
    port = hosts["a"].origin.rsplit(":", 1)[1]
    assert fetch(f"http://localhost:{port}/ok.png", policy=None) == PNG
    assert hosts["a_hits"][-1] == ("/ok.png", f"localhost:{port}")


def test_a_redirect_to_an_internal_address_is_refused_on_the_hop(hosts):
    a, b, routes = hosts["a"], hosts["b"], hosts["a_routes"]
    port_b = b.origin.rsplit(":", 1)[1]
    routes["/to-b"] = (302, b"", {"Location": b.origin + "/secret.png"})
    routes["/to-b-mapped"] = (301, b"", {"Location": f"http://[::ffff:127.0.0.2]:{port_b}/secret.png"})
    routes["/relative"] = (307, b"", {"Location": "/ok.png"})
    assert fetch(a.origin + "/relative", policy=only_127_0_0_1) == PNG  # the allowed first hop really is allowed
    err = refused(a.origin + "/to-b", policy=only_127_0_0_1)
    assert err.code == "image_url_forbidden" and "redirect 1 (host 127.0.0.2)" in str(err)
    assert "loopback address (127.0.0.2)" in str(err)
    err = refused(a.origin + "/to-b-mapped", policy=only_127_0_0_1)
    assert "redirect 1 (host ::ffff:127.0.0.2)" in str(err) and "loopback address" in str(err)
    assert hosts["b_hits"] == []  # the internal host was never contacted
    assert fetch(a.origin + "/to-b", policy=None) == PNG  # --allow-private-urls follows it
    assert hosts["b_hits"] == [("/secret.png", b.origin.removeprefix("http://"))]


def test_redirect_hops_are_limited(hosts):
    a, routes = hosts["a"], hosts["a_routes"]
    routes.update({f"/hop{i}": (302, b"", {"Location": f"/hop{i + 1}"}) for i in range(5)})
    routes["/hop5"] = (200, PNG, {})
    assert fetch(a.origin + "/hop2", policy=None) == PNG  # three redirects: within the limit
    err = refused(a.origin + "/hop0", policy=None)
    assert err.code == "image_fetch_failed" and "redirected more than 3 times" in str(err)
    assert len(hosts["a_hits"]) == 4 + 4  # the refused chain stopped at the fourth response


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x.png", "file:///etc/passwd", "gopher://example.com/"])
def test_other_schemes_are_refused(hosts, url):
    assert refused(url, policy=None).code == "image_url_forbidden"
    hosts["a_routes"]["/elsewhere"] = (302, b"", {"Location": url})
    err = refused(hosts["a"].origin + "/elsewhere", policy=None)
    assert "only http and https" in str(err)


def test_a_host_that_does_not_resolve_is_a_400():
    err = refused("http://no-such-host.invalid/x.png")
    assert err.code == "image_fetch_failed" and "cannot resolve" in str(err) and "no-such-host.invalid" in str(err)


# --- against a real `qponder serve` process ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = ServerProcess(tiny_model_dir, "--allow-urls", "--max-image-bytes", "300000", "--max-new-tokens", "8",
                        "--threads", "1", log_path=tmp_path_factory.mktemp("serve-net") / "server.log")
    srv.start()
    yield srv
    assert srv.stop() == 0
    assert "Traceback" not in srv.log_text(), srv.log_text()[-3000:]


def http_counts(srv: ServerProcess, path: str) -> dict:
    return httpx.get(srv.url + "/health", timeout=10).json()["http"].get(path, {})


def test_the_server_refuses_internal_and_non_http_urls(server, hosts):
    r = httpx.post(server.url + "/v1/score", json={"image": hosts["a"].origin + "/ok.png"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "image_url_forbidden" and err["param"] == "image"
    assert "loopback address (127.0.0.1)" in err["message"] and "--allow-private-urls" in err["message"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError, match="loopback address"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": hosts["b"].origin + "/secret.png"}}]}])
    assert hosts["a_hits"] == [] and hosts["b_hits"] == []
    r = httpx.post(server.url + "/v1/score", json={"image": "ftp://127.0.0.1/x.png"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"  # not fetched: not a URL it takes
    r = httpx.post(server.url + "/v1/score", json={"image": "http://no-such-host.invalid/x.png"}, timeout=30)
    assert r.status_code == 400 and "cannot resolve" in r.json()["error"]["message"]


def raw_post(url: str, body: bytes, version: str, connection: str = "") -> bytes:
    """POST over a bare socket and read to EOF: a reset from the server raises ConnectionResetError."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = (f"POST /v1/score HTTP/{version}\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"{connection}Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_a_body_over_the_limit_gets_its_413(server):
    body = b'{"image": "' + b"A" * OVER_LIMIT + b'"}'
    # A connection the server closes after answering (HTTP/1.0, "Connection: close", as proxies talk to upstreams)
    # was reset while the client still sent: the 413 never arrived.
    for version, connection in (("1.0", ""), ("1.1", "Connection: close\r\n")):
        answer = raw_post(server.url, body, version, connection)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b'"request_too_large"' in answer
    for kw in ({"content": body}, {"content": iter([body[i:i + 65536] for i in range(0, len(body), 65536)])}):
        r = httpx.post(server.url + "/v1/score", headers={"content-type": "application/json"}, timeout=30, **kw)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # and the server is fine


def test_the_openai_client_sees_413_and_does_not_retry(server):
    before = http_counts(server, "/v1/chat/completions").get("413", 0)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=2, timeout=30)
    big = "data:image/png;base64," + base64.b64encode(b"\0" * (3 * 1024 * 1024)).decode()
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": big}}]}])
    assert not isinstance(exc.value, openai.APIConnectionError)
    assert exc.value.status_code == 413 and "at most" in str(exc.value)
    assert http_counts(server, "/v1/chat/completions").get("413", 0) - before == 1  # one request: no retry


def test_draining_stops_at_its_bound():
    async def answer_unread(scope, receive, send):  # like a 413 or 401: answers without reading the body
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def run(headers: list, messages: list) -> tuple[int, list]:
        pending, sent = iter(messages), []

        async def receive():
            return next(pending)

        async def send(message):
            sent.append(message["type"])

        asyncio.run(DrainUnreadBody(answer_unread, max_drain=100)({"type": "http", "headers": headers}, receive,
                                                                   send))
        return len(messages) - len(list(pending)), sent

    part = {"type": "http.request", "body": b"x" * 60, "more_body": True}
    end = {"type": "http.request", "body": b"", "more_body": False}
    both = ["http.response.start", "http.response.body"]
    assert run([(b"content-length", b"60")], [part, end]) == (2, both)  # read to the end, then answered
    assert run([(b"content-length", b"1000")], [part] * 20) == (0, both)  # declared over the bound: not waited for
    assert run([(b"transfer-encoding", b"chunked")], [part] * 20) == (2, both)  # found over the bound: stops
