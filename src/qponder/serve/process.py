"""Start ``qponder serve`` in a child process and wait until it answers (tests, benchmarks, scripts).

The server is started with ``--port 0`` unless a port is given, so parallel runs never race for a port; the chosen
port is read from the server's ``listening on`` line. Output goes to a log file (a pipe nobody reads would block the
server once full).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qponder.errors import QponderError

_LISTENING = re.compile(r"qponder serve: listening on (http://\S+)")


class ServerProcess:
    """``with ServerProcess(model_dir, "--max-batch", "4") as srv: httpx.get(srv.url + "/health")``."""

    def __init__(self, model: str | os.PathLike, *args: str, env: dict[str, str] | None = None,
                 python: str = sys.executable, log_path: str | os.PathLike | None = None,
                 startup_timeout: float = 120.0):
        self.cmd = [python, "-m", "qponder", "serve", "--model", str(model), *args]
        if "--port" not in args:
            self.cmd += ["--port", "0"]
        self.env = {**os.environ, **(env or {})}
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="qponder-serve-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> ServerProcess:
        """Launch and wait until ``/health`` answers."""
        return self.launch().wait_ready()

    def launch(self) -> ServerProcess:
        """Start the process without waiting (launch several, then ``wait_ready`` each: they load in parallel)."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         stdin=subprocess.DEVNULL)
        self._launched = time.monotonic()
        return self

    def wait_ready(self) -> ServerProcess:
        import httpx

        assert self.proc is not None, "launch() first"
        deadline = self._launched + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise QponderError(f"qponder serve exited with status {self.proc.returncode} while starting:\n"
                                   + self.log_text()[-3000:])
            if not self.url:
                m = _LISTENING.search(self.log_text())
                if m:
                    self.url = m.group(1)
            if self.url:
                try:
                    if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self.kill()
        raise QponderError(f"qponder serve did not answer /health within {self.startup_timeout:g} s:\n"
                           + self.log_text()[-3000:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit status (killing the process if it outlives ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
