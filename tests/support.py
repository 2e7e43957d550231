"""Test helpers: start the real server, and a raw-socket protocol client."""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from termchat.wire import protocol as proto
from tests.forkserver import ForkServer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 10.0


def wait_for(condition: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT,
              interval: float = 0.01, describe: Callable[[], str] = lambda: "") -> Any:
    """Poll until condition() is truthy; fail with describe() on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting\n{describe()}")
        time.sleep(interval)


class ServerProcess:
    """The real chat_server.py on a free loopback port: forked from a
    process that has imported it (tests/forkserver.py: a start in 30 ms, not
    0.3 s), or as `python chat_server.py` with fresh_interpreter=True, a
    preexec_fn, or where servers are not forked (FORKING)."""

    def __init__(self, *extra: str, port: int = 0, env: dict | None = None,
                 preexec_fn=None, fresh_interpreter: bool = False) -> None:
        self.log_file = tempfile.NamedTemporaryFile(
            prefix="chat_server_", suffix=".log", delete=False)
        argv = [str(ROOT / "chat_server.py"), str(port), "--host", "127.0.0.1", *extra]
        environment = dict(os.environ, **(env or {}))
        if fresh_interpreter or preexec_fn or not FORKING:
            self.proc = subprocess.Popen(
                [sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=self.log_file,
                cwd=ROOT, env=environment, preexec_fn=preexec_fn)
        else:
            self.proc = fork_server().start(argv, environment, ROOT, self.log_file.name,
                                            timeout=DEFAULT_TIMEOUT)
        match = wait_for(self._listening_line, describe=self.log_text)
        self.port = int(match.group(1))
        self.host = "127.0.0.1"

    def _listening_line(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{self.log_text()}")
        return re.search(r"listening on \S+:(\d+)", self.log_text())

    def log_text(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=DEFAULT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        if os.path.exists(self.log_file.name):
            os.unlink(self.log_file.name)


def run_server(*arguments: str, input: str | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess:
    """`python chat_server.py ARGUMENTS` in the project's folder, run to its
    end (forked as ServerProcess's are, where they are): its exit status and
    what it wrote, as subprocess.run(..., capture_output=True, text=True)."""
    argv = ["chat_server.py", *arguments]
    if not FORKING:
        return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, input=input)
    with tempfile.TemporaryDirectory(prefix="chat_server_run_") as folder:
        files = {name: Path(folder) / name for name in ("stdin", "stdout", "stderr")}
        files["stdin"].write_text(input or "")
        proc = fork_server().start(argv, dict(os.environ), ROOT, str(files["stderr"]),
                                   timeout=DEFAULT_TIMEOUT, stdin=str(files["stdin"]),
                                   stdout=str(files["stdout"]))
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(DEFAULT_TIMEOUT)
            raise
        return subprocess.CompletedProcess(argv, proc.returncode,
                                           files["stdout"].read_text(errors="replace"),
                                           files["stderr"].read_text(errors="replace"))


# Servers are forked (tests/forkserver.py) where Linux can tell the fork
# server that a child ended (pidfd), unless TERMCHAT_TESTS_EXEC=1 asks for a
# fresh interpreter for every server (to check that no test depends on it).
FORKING = hasattr(os, "pidfd_open") and not os.environ.get("TERMCHAT_TESTS_EXEC")
_fork_server: list[ForkServer] = []  # started on first use, ended with the test run


def fork_server() -> ForkServer:
    if not _fork_server or _fork_server[0].proc.poll() is not None:
        _fork_server[:] = [ForkServer()]
        atexit.register(_fork_server[0].close)
    return _fork_server[0]


class RawClient:
    """A protocol client over a real socket, for exact packet checks."""

    def __init__(self, port: int, nick: str | None = None, host: str = "127.0.0.1",
                 source: str | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=DEFAULT_TIMEOUT,
                                             source_address=(source, 0) if source else None)
        self.decoder = proto.PacketDecoder()
        self.received: list[dict] = []
        self.unread = 0          # index of the first message expect() has not consumed
        self.closed = False
        self.nick = nick
        if nick is not None:
            self.send({"type": "hello", "nick": nick})

    def send(self, message: dict | bytes) -> None:
        data = message if isinstance(message, bytes) else proto.encode_object(message)
        self.sock.sendall(data)

    def chat(self, text: str) -> None:
        self.send({"type": "chat", "message": text})

    def _pump(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        for payload in self.decoder.feed(data):
            self.received.append(json.loads(payload.decode("utf-8")))

    def expect(self, predicate: Callable[[dict], bool] | dict,
               timeout: float = DEFAULT_TIMEOUT) -> dict:
        """Wait for the next unread message matching predicate (a dict means
        equality); messages before it are consumed."""
        if isinstance(predicate, dict):
            wanted = predicate
            predicate = lambda message: message == wanted  # noqa: E731
        deadline = time.monotonic() + timeout
        while True:
            while self.unread < len(self.received):
                message = self.received[self.unread]
                self.unread += 1
                if predicate(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                raise AssertionError(
                    f"{self.nick}: no matching message (closed={self.closed}); got:\n"
                    + describe_messages(self.received))
            self._pump(min(remaining, 0.5))

    def wait_until(self, condition: Callable[[list[dict]], bool],
                   timeout: float = DEFAULT_TIMEOUT) -> None:
        """Read until condition(all messages received so far) holds."""
        deadline = time.monotonic() + timeout
        while not condition(self.received):
            if time.monotonic() > deadline or self.closed:
                raise AssertionError(f"{self.nick}: condition not met (closed={self.closed}); "
                                     "got:\n" + describe_messages(self.received))
            self._pump(0.1)

    def expect_next(self, wanted: dict, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """The very next unread message must equal wanted."""
        got = self.expect(lambda message: True, timeout)
        assert got == wanted, f"{self.nick}: expected {wanted}, got {got}"
        return got

    def expect_closed(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.closed:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.nick}: connection still open")
            self._pump(0.2)

    def drain(self, quiet: float = 0.2) -> list[dict]:
        """Read until nothing arrives for `quiet` seconds; return unread."""
        before = len(self.received)
        while True:
            count = len(self.received)
            self._pump(quiet)
            if len(self.received) == count or self.closed:
                break
        self.unread = len(self.received)
        return self.received[before:]

    def close(self) -> None:
        self.sock.close()


def describe_messages(messages: list[dict], last: int = 20) -> str:
    """The last few messages, each cut short, for a readable failure."""
    shown = [repr(m)[:200] for m in messages[-last:]]
    skipped = len(messages) - len(shown)
    return (f"... {skipped} earlier\n" if skipped else "") + "\n".join(shown)


SESSION_EXPIRED = {"type": "error", "message": "session expired", "code": "session-expired"}


def join(nick: str) -> dict:
    return {"type": "join", "nick": nick}


def leave(nick: str) -> dict:
    return {"type": "leave", "nick": nick}


def chat_from(nick: str, text: str) -> dict:
    return {"type": "chat", "nick": nick, "message": text}
