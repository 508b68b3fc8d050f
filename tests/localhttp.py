"""Real HTTP servers on 127.0.0.1 for tests that talk to OpenAI-compatible endpoints (no mocks)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def send_json(handler: BaseHTTPRequestHandler, status: int, body: Any = b"",
              headers: dict[str, str] | None = None) -> None:
    """Write one response: ``body`` is bytes as they are, anything else as JSON. A client that already gave up
    (timeout tests) is not an error."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        handler.send_response(status)
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except OSError:
        pass


def chat_completion(texts: list[str], model: str = "test", **extra: Any) -> dict:
    """An OpenAI chat-completions response body with one choice per text."""
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                        for i, t in enumerate(texts)], **extra}


class LocalServer:
    """A threaded HTTP server for ``handler_cls`` on a free 127.0.0.1 port; use as a context manager."""

    def __init__(self, handler_cls: type[BaseHTTPRequestHandler], host: str = "127.0.0.1"):
        self.httpd = ThreadingHTTPServer((host, 0), handler_cls)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None
        self.origin = f"http://{host}:{self.httpd.server_address[1]}"
        self.url = self.origin + "/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def routes_handler(routes: dict[str, tuple[int, bytes, dict[str, str]]],
                   hits: list[tuple[str, str]]) -> type[BaseHTTPRequestHandler]:
    """A handler class answering ``GET path`` with ``routes[path]`` = (status, body, headers), 404 otherwise; it
    appends (path, Host header) to ``hits``, so a test can show a server was (or was never) contacted."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append((self.path, self.headers.get("Host", "")))
            status, body, headers = routes.get(self.path, (404, b"missing", {}))
            send_json(self, status, body, headers)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
