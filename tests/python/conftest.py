"""Fixtures for the Python tests: real mymps servers and connected clients.

- ``mymps_server`` (session): one server, ``mymps serve --listen
  tcp://127.0.0.1:0 --device cpu``, started from ``target/debug/mymps`` (the
  environment variable ``MYMPS_BIN`` names another binary,
  ``MYMPS_TEST_DEVICE`` another device). It yields a :class:`ServerProcess`
  with ``.host``, ``.port`` and ``.addr`` and is stopped at the end.
- ``client`` (function): ``MympsClient(host, port)`` connected to it, closed
  afterwards.
- ``zmq_server`` (session): the same on ``zmq://127.0.0.1:0`` (ZeroMQ).
- ``server_factory`` (function): ``server_factory("--max-payload", "1000")``
  starts a further server of its own (for tests that kill it or need other
  settings; ``listen="zmq://127.0.0.1:0"`` for ZeroMQ); all are stopped
  after the test.

Build first: ``cargo build -p mymps`` and ``scripts/build-python.sh``.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_LISTENING = re.compile(r"^mymps: listening on ((\w+)://(\S+):(\d+))\s*$")


def server_binary() -> Path:
    """The server binary: $MYMPS_BIN, else target/debug/mymps."""
    path = Path(os.environ.get("MYMPS_BIN", REPO / "target" / "debug" / "mymps"))
    if not path.is_file():
        pytest.fail(
            f"mymps server binary not found at {path}: build it with "
            "`cargo build -p mymps` or set MYMPS_BIN",
            pytrace=False,
        )
    return path


class ServerProcess:
    """A running ``mymps serve`` process on 127.0.0.1 with a port the system chose."""

    def __init__(
        self, *extra_args: str, device: Optional[str] = None, listen: str = "tcp://127.0.0.1:0"
    ) -> None:
        device = device or os.environ.get("MYMPS_TEST_DEVICE", "cpu")
        self.args = [
            str(server_binary()),
            "serve",
            "--listen",
            listen,
            "--device",
            device,
            # The tests' model files are made in temporary folders.
            *([] if "--model-root" in extra_args else ["--model-root", tempfile.gettempdir()]),
            *extra_args,
        ]
        self.log = tempfile.NamedTemporaryFile(
            prefix="mymps-server-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        try:
            line = self._first_line(STARTUP_TIMEOUT_S)
            m = _LISTENING.match(line)
            if not m:
                raise RuntimeError(f"unexpected first line from the server: {line!r}")
        except BaseException:
            self.stop()
            raise
        self.lines: List[str] = [line]
        self._lines_changed = threading.Condition()
        self.addr: str = m.group(1)
        self.scheme: str = m.group(2)
        self.host: str = m.group(3)
        self.port: int = int(m.group(4))
        # Keep draining stdout so that the server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()

    def _first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"the server did not report its address within {timeout} s; "
                    f"log: {self.log_text()}"
                )
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                line = self.proc.stdout.readline()
                if line:
                    return line
                raise RuntimeError(
                    f"the server exited (status {self.proc.wait(STOP_TIMEOUT_S)}) before "
                    f"listening: {' '.join(self.args)}\nlog: {self.log_text()}"
                )

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lines_changed:
                self.lines.append(line)
                self._lines_changed.notify_all()

    def wait_line(self, pattern: str, timeout: float = STARTUP_TIMEOUT_S) -> "re.Match[str]":
        """The first stdout line matching ``pattern`` (waiting for it)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lines_changed:
            while True:
                for line in self.lines:
                    m = rx.match(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    raise RuntimeError(
                        f"no line matching {pattern!r} from the server; lines: {self.lines}; "
                        f"log: {self.log_text()}"
                    )
                self._lines_changed.wait(min(left, 0.5))

    def log_text(self) -> str:
        """The server's stderr so far."""
        try:
            return Path(self.log.name).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kills the server at once (SIGKILL), as a crash would."""
        if self.alive():
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stops the server: SIGTERM, then SIGKILL if it does not exit in time."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"<mymps server {getattr(self, 'addr', '?')} pid {self.proc.pid}>"


@pytest.fixture(scope="session")
def mymps_server() -> Iterator[ServerProcess]:
    """One real server for the whole session."""
    server = ServerProcess()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def zmq_server() -> Iterator[ServerProcess]:
    """One real server on ``zmq://127.0.0.1:0`` for the whole session."""
    server = ServerProcess(listen="zmq://127.0.0.1:0")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(mymps_server: ServerProcess):
    """A MympsClient connected to the session's server, closed afterwards."""
    from mymps import MympsClient

    c = MympsClient(mymps_server.host, mymps_server.port)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def server_factory():
    """Starts servers of the test's own: ``server_factory(*extra_args)``."""
    started: List[ServerProcess] = []

    def start(
        *extra_args: str, device: Optional[str] = None, listen: str = "tcp://127.0.0.1:0"
    ) -> ServerProcess:
        s = ServerProcess(*extra_args, device=device, listen=listen)
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            s.stop()
