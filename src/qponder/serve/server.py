"""Running the app under uvicorn with a graceful stop on SIGTERM/SIGINT.

On a signal uvicorn stops accepting connections, waits (up to ``graceful_timeout``) for in-flight requests to get
their responses, then runs the app's lifespan shutdown, which drains the batcher. Stock uvicorn then re-raises the
signal so the process dies *by* it; a server stopped on purpose after a clean drain should exit 0, so our subclass
only records the signal.

We bind the listening socket ourselves: a port in use becomes a one-line ``QponderError`` instead of uvicorn's
``sys.exit(1)``, and ``--port 0`` works (the chosen port is printed).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading

from qponder.errors import QponderError
from qponder.serve import require_serve_extra

require_serve_extra()

import uvicorn  # noqa: E402

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulServer(uvicorn.Server):
    """uvicorn.Server that does not re-raise the signal it shut down on (exit status 0 after a clean drain)."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    @property
    def stop_signal(self) -> str | None:
        return signal.Signals(self._captured_signals[0]).name if self._captured_signals else None


def bind_socket(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise QponderError(f"serve: cannot resolve host {host!r} ({e})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise QponderError(f"serve: cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def run_server(app, sock: socket.socket, *, graceful_timeout: float = 30.0, log_level: str = "warning",
               announce=None) -> str | None:
    """Serve ``app`` on a socket from ``bind_socket`` until SIGTERM/SIGINT; returns the signal's name (or None).

    Binding comes first (before the model loads) so a port in use fails in a second, not after loading weights;
    clients are refused, not hung, until the server listens.
    """
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "trace", "info"),
                            timeout_graceful_shutdown=graceful_timeout, lifespan="on", server_header=False)
    server = GracefulServer(config)
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    (announce or (lambda line: print(line, file=sys.stderr, flush=True)))(
        f"qponder serve: listening on http://{shown}:{bound_port}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return server.stop_signal
