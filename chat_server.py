"""The chat server's transport: command line, sockets and one selector loop.

The listening sockets and every client socket sit in one ``selectors``
selector.  This module knows the chat only through :class:`termchat.core.core.ChatCore`
(connected / received / connection_lost / tick / cluster_event) and writes
out what :class:`termchat.core.delivery.Delivery` queued for each connection: one
``send`` per socket per loop turn, never blocking.  A client whose queue
passes the bound is dropped, so no client can stall the others.

Usage: ``python chat_server.py PORT [--host ADDR] [limits] [--redis URL ...]``
(``--help`` lists them).  With ``--redis`` the server is one node of a
cluster (see termchat/cluster/link.py).

With ``--tls-cert``/``--tls-key`` the port speaks only TLS.  A new
connection's first byte is peeked at: a TLS ClientHello starts the
handshake, which the loop steps like any other I/O (never blocking);
anything else is a plain-text client, told in plain text to use TLS.  A
plain port tells a TLS client the reverse (as plain bytes: its handshake
then fails at once instead of hanging).
"""

from __future__ import annotations

import argparse
import enum
import errno
import logging
import os
import selectors
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Sequence

from termchat.wire import protocol as proto
from termchat.world import model as world_model
from termchat.args import (add_version, first_line_of, float_at_least, int_in_range,
                           program_name, read_text)
from termchat.store.sqlite import open_store
from termchat.store.keeping import StateKeeper
from termchat.world.files import load_world
from termchat.core.core import Access, ChatCore, Limits, SessionSettings
from termchat.core.ports import NO_STORE
from termchat.core.gate import format_address
from termchat.server.door import TURNED_AWAY_PER_TURN, Door
from termchat.server.waker import WAKE, Waker
from termchat.server.writes import WriteOrder
from termchat.core.delivery import Delivery, Outlet

log = logging.getLogger("chat_server")

RECV_SIZE = 1 << 14      # per readable socket per turn: bounds a turn's fan-out
SEND_BATCH = 1 << 18     # bytes joined for one send
BACKLOG = 4096
KERNEL_SEND_BUFFER = 1 << 18
ACCEPTS_PER_TURN = 64
LINGER_SECONDS = 2.0
KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 6}  # dead after ~2 min
TLS_RECORD = 1 << 14     # what one TLS write takes: one record
TLS_HANDSHAKE = 0x16     # the first byte of a TLS ClientHello
TLS_SILENCE = 1.0        # a TLS client speaks at once: one silent this long is plain
NOT_TLS = "this server speaks TLS only: connect with --tls"
ONLY_PLAIN = "this server does not speak TLS: connect without --tls"
REDIS_URL_VARIABLE = "CHAT_REDIS_URL"


def announce(message: str, *args: object) -> None:
    """Start and stop lines: logged whatever the level, so that scripts
    (and people) can always see where the server listens."""
    log.log(max(logging.INFO, log.getEffectiveLevel()), message, *args)


class Tls(enum.Enum):
    """Where a connection on a TLS port is in setting up TLS."""

    SNIFF = "sniff"          # nothing read yet: is it a TLS ClientHello?
    HANDSHAKE = "handshake"  # handshaking; the loop steps it when the socket is ready
    UP = "up"                # TLS is up: reads and writes go through it


class Connection(Outlet):
    """One client socket: the delivery outlet plus what the transport needs."""

    __slots__ = ("sock", "fd", "peer", "decoder", "deadline", "events", "tls",
                 "tls_wants_write", "fresh", "accepted")

    def __init__(self, sock: socket.socket, peer: str, tls: Tls | None, now: float) -> None:
        super().__init__()
        self.sock = sock
        self.fd = sock.fileno()  # the selector's key, whatever becomes of the socket object
        self.peer = peer
        self.decoder = proto.PacketDecoder()
        self.deadline = 0.0     # when a closing connection is cut regardless
        self.events = selectors.EVENT_READ  # what the selector watches for
        self.tls = tls          # None: plain text
        self.tls_wants_write = False  # the handshake waits for the socket to take more
        self.fresh = True       # nothing read yet (a plain port checks the first bytes)
        self.accepted = now      # (the core's clock for it too: one float for both)

    @property
    def setting_up(self) -> bool:
        """TLS is not up yet: nothing can be written."""
        return self.tls is Tls.SNIFF or self.tls is Tls.HANDSHAKE

    def __repr__(self) -> str:
        return f"<connection {self.peer}>"


class ChatServer:
    """The selector loop around one chat core."""

    def __init__(self, listeners: Sequence[socket.socket], limits: Limits = Limits(),
                 redis_url: str | None = None, heartbeat: float = 1.0,
                 sessions: SessionSettings = SessionSettings(),
                 access: Access = Access(), tls: ssl.SSLContext | None = None,
                 world_state: world_model.WorldState | None = None,
                 state_file: Path | None = None, store=None) -> None:
        self.listeners = list(listeners)
        self.tls = tls                      # the port speaks only TLS
        self.tls_buffered: set[Connection] = set()  # decrypted bytes wait inside TLS
        self.selector = selectors.DefaultSelector()
        self.connections: set[Connection] = set()
        self.lingering: dict[Connection, None] = {}  # in deadline order
        self.door = Door(self.selector)    # connections refused, listeners resting
        self.running = False
        self.waker = Waker()
        self.link = None
        if redis_url:
            from termchat.cluster.link import ClusterLink
            self.link = ClusterLink(redis_url, self.waker.wake, heartbeat,
                                    history_seconds=sessions.resume_grace + 30)
        self.delivery = Delivery(limits.max_queue)
        self.keeper = StateKeeper(store, world_state, state_file)  # --db and --state
        self.writes = WriteOrder()  # who a turn writes: new output first, a share a turn
        self.write_later: list[Connection] = []  # writable while the store had writes
        # pending: written at the end of the turn, after one commit, not one commit each
        self.core = ChatCore(self.delivery, limits, self.link, sessions,
                             wall_offset=time.time() - time.monotonic(), access=access,
                             world_state=world_state, store=store or NO_STORE)
        if store is not None:
            self.core.restore(store.load(), time.monotonic())
        self.core_due: float | None = None  # when the core next wants a tick

    # ------------------------------------------------------------------
    # The loop

    def run(self) -> None:
        """Serve until stop() is called or a SIGINT/SIGTERM arrives."""
        for listener in self.listeners:
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ, None)
        self.waker.register(self.selector)
        self.running = True
        if self.link:
            self.link.start()
        try:
            while self.running:
                for key, mask in self.selector.select(self.next_timeout()):
                    self.dispatch(key, mask)
                self.read_tls_buffered()
                self.core_due = self.core.tick(time.monotonic())
                self.expire_lingering()
                self.keeper.end_turn(self.core, time.monotonic())  # before the turn's output
                self.flush()
        finally:
            if self.link:
                self.link.stop()
            self.close_all()
            self.keeper.close()

    def dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        conn = key.data
        if conn is None:
            self.accept(key.fileobj)  # type: ignore[arg-type]
        elif conn is WAKE:
            self.waker.drain()
            if self.link:
                now = time.monotonic()
                for event in self.link.take_events():
                    self.core.cluster_event(event, now)
        else:
            self.fenced(conn, self.serve, conn, mask)

    def fenced(self, conn: Connection, action, *args) -> None:
        """A bug in one connection's I/O costs that connection only."""
        try:
            action(*args)
        except Exception:
            log.exception("internal error on %r; dropping it", conn)
            self.drop(conn, "internal error")

    def serve(self, conn: Connection, mask: int) -> None:
        if conn.tls is not None and conn.setting_up:  # (plain: one comparison per event)
            self.set_up_tls(conn)
            return
        if mask & selectors.EVENT_READ and not conn.gone:
            self.on_readable(conn)
        if mask & selectors.EVENT_WRITE and not conn.gone:
            if self.keeper.pending:
                self.write_later.append(conn)
            else:
                self.write(conn)

    def next_timeout(self) -> float | None:
        if self.delivery.busy or self.tls_buffered or self.writes:
            return 0
        due = [next(iter(self.lingering)).deadline] if self.lingering else []
        door_due = self.door.next_due()
        if door_due is not None:
            due.append(door_due)
        if self.core_due is not None:
            due.append(self.core_due)
        kept_due = self.keeper.next_due()  # retention ages rows on an idle server too
        if kept_due is not None:
            due.append(kept_due)
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def stop(self) -> None:
        """Ask the loop to end; safe from a signal handler or another thread."""
        self.running = False
        self.waker.wake()

    def close_all(self) -> None:
        count = len(self.connections)
        for conn in list(self.connections):
            self.discard(conn)
        self.door.close_all()
        for sock in self.listeners:
            sock.close()
        self.waker.close()
        self.selector.close()
        announce("server stopped, closed %d connection(s)", count)

    # ------------------------------------------------------------------
    # Accepting, reading and writing

    def accept(self, listener: socket.socket) -> None:
        """Up to ACCEPTS_PER_TURN new connections, of which at most
        TURNED_AWAY_PER_TURN refused at the door (then the door rests:
        churn waits in the listen backlog, not the chat)."""
        turned = 0
        for _ in range(ACCEPTS_PER_TURN):
            if turned >= TURNED_AWAY_PER_TURN:
                self.door.rest(listener, time.monotonic())
                return
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self.door.refuse_one(listener)
                else:
                    log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            now = time.monotonic()
            if self.tls is None:  # (on a TLS port the error waits for the handshake)
                refusal = self.core.turned_away(address, now)
                if refusal is not None:
                    self.door.turn_away(sock, refusal, now)
                    turned += 1
                    continue
            # Each turn's output goes in one send already: Nagle would only delay it.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A fixed kernel buffer: what a stuck client can cost is this plus
            # --max-queue, rather than whatever autotuning grows it to (4 MiB).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SEND_BUFFER)
            set_keepalive(sock)
            conn = Connection(sock, format_address(address), Tls.SNIFF if self.tls else None, now)
            self.connections.add(conn)
            self.selector.register(conn.fd, selectors.EVENT_READ, conn)  # (by fd: no int of its own)
            self.core.connected(conn, address, now)

    def read_from(self, conn: Connection, size: int, flags: int = 0) -> bytes | None:
        """What the socket has (None: nothing yet, or it is gone and dropped)."""
        try:
            data = conn.sock.recv(size, flags)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            return None
        except OSError as exc:
            self.drop(conn, f"connection error: {exc.strerror or exc}")
            return None
        if not data:
            self.drop(conn, "closed the connection")
            return None
        return data

    def on_readable(self, conn: Connection) -> None:
        data = self.read_from(conn, RECV_SIZE)
        if data is None:
            return
        if conn.tls is Tls.UP and conn.sock.pending():
            self.tls_buffered.add(conn)  # the selector cannot see these bytes
        if conn.closing:
            return  # lingering after an error: read and discard
        if conn.fresh:
            conn.fresh = False
            if conn.tls is None and looks_like_tls(data):
                self.core.refuse(conn, ONLY_PLAIN, proto.Code.BAD_PACKET, time.monotonic())
                return
        self.core.received(conn, conn.decoder.feed(data), time.monotonic())

    def read_tls_buffered(self) -> None:
        """Read what TLS decrypted but the last read did not take."""
        while self.tls_buffered:
            conn = self.tls_buffered.pop()
            if not conn.gone:
                self.fenced(conn, self.on_readable, conn)

    # ------------------------------------------------------------------
    # Setting up TLS: sniff the first byte, then step the handshake

    def set_up_tls(self, conn: Connection) -> None:
        if conn.tls is Tls.SNIFF:
            self.sniff(conn)
        if conn.tls is Tls.HANDSHAKE:
            self.step_handshake(conn)

    def sniff(self, conn: Connection) -> None:
        """A TLS ClientHello starts the handshake; a plain-text client is
        told, in plain text, that this port speaks TLS."""
        first = self.read_from(conn, 1, socket.MSG_PEEK)
        if first is None:
            return
        if first[0] != TLS_HANDSHAKE:
            conn.tls = None
            conn.fresh = False
            self.core.refuse(conn, NOT_TLS, proto.Code.TLS_ONLY, time.monotonic())
            if conn.out:
                self.write(conn)
        else:
            self.selector.unregister(conn.fd)  # the TLS socket takes over the descriptor
            events, conn.events = conn.events, 0
            try:
                conn.sock = self.tls.wrap_socket(conn.sock, server_side=True,
                                                 do_handshake_on_connect=False)
            except (ssl.SSLError, OSError) as exc:  # it went away meanwhile (a reset, say)
                self.drop(conn, f"TLS set-up failed: {getattr(exc, 'reason', None) or exc}")
                return
            self.selector.register(conn.fd, events, conn)
            conn.events = events
            conn.tls = Tls.HANDSHAKE

    def step_handshake(self, conn: Connection) -> None:
        """One step of the handshake: as far as the socket allows now."""
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.set_handshake_write(conn, False)
            return
        except ssl.SSLWantWriteError:
            self.set_handshake_write(conn, True)
            return
        except (ssl.SSLError, OSError) as exc:
            self.drop(conn, f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
            return
        conn.tls = Tls.UP
        self.set_handshake_write(conn, False)
        if conn.out:
            self.write(conn)       # an error queued while handshaking (a ban, say)
        if not conn.gone and conn.sock.pending():
            self.tls_buffered.add(conn)

    def set_handshake_write(self, conn: Connection, wanted: bool) -> None:
        if conn.tls_wants_write != wanted:
            conn.tls_wants_write = wanted
            self.update_interest(conn)

    def write(self, conn: Connection) -> None:
        """Send as much of the queue as the socket takes, in one send (what
        the database must keep is committed first)."""
        self.keeper.commit(self.core)
        if not conn.out:
            self.set_write_interest(conn, False)
            if conn.closing:
                self.half_close(conn)
            return
        if conn.tls is not None and conn.setting_up:
            return  # written once TLS is up
        batch, later = take_batch(conn.out)
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        try:
            sent = send_tls(conn.sock, data) if conn.tls else conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.drop(conn, f"send failed: {exc.strerror or exc}")
            return
        if sent < len(data):
            later.insert(0, memoryview(data)[sent:])  # no copy of shared chunks
        conn.out = later or None  # an idle connection holds no list
        conn.queued -= sent
        self.set_write_interest(conn, bool(later))
        if not later and conn.closing:
            self.half_close(conn)

    def set_write_interest(self, conn: Connection, wanted: bool) -> None:
        if conn.want_write != wanted:
            conn.want_write = wanted
            self.update_interest(conn)

    def update_interest(self, conn: Connection) -> None:
        """Watch for reading unless the core paused it, for writing while
        output waits (a socket watched for nothing leaves the selector)."""
        events = (0 if conn.paused else selectors.EVENT_READ) | \
            (selectors.EVENT_WRITE if conn.want_write or conn.tls_wants_write else 0)
        if events == conn.events:
            return
        if not events:
            self.selector.unregister(conn.fd)
        elif not conn.events:
            self.selector.register(conn.fd, events, conn)
        else:
            self.selector.modify(conn.fd, events, conn)
        conn.events = events

    def flush(self) -> None:
        """End of a turn: distribute the broadcasts, drop the clients whose
        queues overflowed (which may broadcast leaves), start the linger of
        connections the core closed, then write."""
        while self.delivery.log or self.delivery.overflowed:
            for conn in self.delivery.end_turn():
                self.drop(conn, f"output queue passed {self.delivery.max_queue} bytes")
        deadline = time.monotonic() + LINGER_SECONDS
        for conn in self.delivery.take_closed():
            if not conn.gone and conn.tls is Tls.HANDSHAKE:
                self.drop(conn, "closed during the TLS handshake")  # it cannot be told why
                continue
            if conn.tls is Tls.SNIFF and time.monotonic() - conn.accepted >= TLS_SILENCE:
                conn.tls = None  # silent (the hello timeout): told in plain text
                self.write(conn)
            if not conn.gone:  # cut once its error is written, or at the deadline
                conn.deadline = deadline
                self.lingering[conn] = None
                if not conn.out:  # nothing left to say (a quit): the end goes out now
                    self.half_close(conn)
        for conn in self.delivery.take_input_changes():
            if not conn.gone:
                self.fenced(conn, self.update_interest, conn)
        for conn in self.writes.this_turn(self.delivery.take_dirty()):
            if not conn.gone:
                self.fenced(conn, self.write, conn)
        later, self.write_later = self.write_later, []
        for conn in later:
            if not conn.gone:
                self.fenced(conn, self.write, conn)

    # ------------------------------------------------------------------
    # Ending connections

    def drop(self, conn: Connection, reason: str) -> None:
        """The connection is gone: tell the core, then forget it."""
        if conn.gone:
            return
        self.core.connection_lost(conn, reason, time.monotonic())
        self.discard(conn)

    def discard(self, conn: Connection) -> None:
        self.delivery.forget(conn)
        self.connections.discard(conn)
        self.tls_buffered.discard(conn)
        self.lingering.pop(conn, None)
        if conn.events:
            self.selector.unregister(conn.fd)
            conn.events = 0
        conn.sock.close()

    def half_close(self, conn: Connection) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.drop(conn, "closed after an error")

    def expire_lingering(self) -> None:
        now = time.monotonic()
        self.door.expire(now)
        while self.lingering:
            conn = next(iter(self.lingering))
            if conn.deadline > now:
                return
            self.drop(conn, "closed after an error")


def take_batch(queue: list) -> tuple[list, list]:
    """Split a queue into what one send should try (about SEND_BATCH bytes)
    and the rest, so a long queue is not joined again on every turn."""
    size = 0
    for index, chunk in enumerate(queue):
        size += len(chunk)
        if size >= SEND_BATCH:
            return queue[:index + 1], queue[index + 1:]
    return queue, []


def send_tls(sock: ssl.SSLSocket, data: bytes | memoryview) -> int:
    """Send over TLS a record at a time until the socket is full; how much
    went.  A record the socket half took is finished by the next call,
    which starts with the same bytes (our queue keeps them first)."""
    view = memoryview(data)
    sent = 0
    while sent < len(view):
        try:
            sent += sock.send(view[sent:sent + TLS_RECORD])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            break
    return sent


def looks_like_tls(data: bytes) -> bool:
    """A TLS ClientHello (record type 22, version 3.x) on a plain port: as
    a chat packet it would claim 5.5 KB and wait for them forever."""
    return len(data) >= 2 and data[0] == TLS_HANDSHAKE and data[1] == 3


def set_keepalive(sock: socket.socket) -> None:
    """TCP keepalive, so a vanished host does not hold its nick forever."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE.items():
        if hasattr(socket, name):  # Linux names; others keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


# ----------------------------------------------------------------------
# Start-up


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program_name(), description="Multi-user chat server.")
    add_version(parser)
    parser.add_argument("port", type=int_in_range("port", 0, 65535), metavar="PORT",
                        help="TCP port to listen on (0 picks a free one)")
    parser.add_argument("--host", metavar="ADDR",
                        help="address to listen on (default: all, IPv4 and IPv6)")
    defaults = Limits()
    limits = parser.add_argument_group("limits for a public server (0 turns one off)")
    limits.add_argument("--hello-timeout", type=float_at_least("timeout", 0),
                        default=defaults.hello_timeout, metavar="SECONDS",
                        help="close a connection that has not said hello by then (default 10)")
    limits.add_argument("--max-per-ip", type=int_in_range("count", 0),
                        default=defaults.max_per_ip, metavar="N",
                        help="open connections from one address, IPv6 /64 (default 32)")
    limits.add_argument("--rate", type=float_at_least("rate", 0), default=defaults.rate,
                        metavar="PER_SECOND",
                        help="packets a client may send per second; past it the server stops "
                             "reading from it for a while (default 5)")
    limits.add_argument("--burst", type=int_in_range("burst", 1), default=defaults.burst,
                        metavar="N", help="packets at once before --rate applies (default 20)")
    limits.add_argument("--connect-rate", type=float_at_least("rate", 0),
                        default=defaults.connect_rate, metavar="PER_SECOND",
                        help="new connections a second from one address, IPv6 /64; past it "
                             "one is refused before its hello (default 1)")
    limits.add_argument("--connect-burst", type=int_in_range("burst", 1),
                        default=defaults.connect_burst, metavar="N",
                        help="new connections at once before --connect-rate applies "
                             "(default 32)")
    limits.add_argument("--max-queue", type=int_in_range("size", 1),
                        default=defaults.max_queue, metavar="BYTES",
                        help="drop a client whose unsent output passes this (default 1 MiB)")
    parser.add_argument("--history", type=int_in_range("count", 0, 1000), default=20,
                        metavar="N", help="recent messages a session client gets on joining "
                                          "(default 20)")
    parser.add_argument("--resume-grace", type=float_at_least("grace", 0), default=60.0,
                        metavar="SECONDS", help="how long a session client whose connection "
                                                "was lost stays present (default 60)")
    parser.add_argument("--password-file", metavar="FILE",
                        help="a server password (the file's first line): hello must carry it")
    parser.add_argument("--op-password-file", metavar="FILE",
                        help="the operators' password (the file's first line), for /op")
    parser.add_argument("--motd", metavar="FILE",
                        help="a message of the day, sent to each user after joining")
    mud = parser.add_argument_group("world mode: the chat as a MUD")
    mud.add_argument("--world", metavar="FILE",
                     help="rooms become the places of this TOML world ('builtin': the one "
                          "shipped, Gull Point)")
    mud.add_argument("--state", metavar="FILE",
                     help="keep where every item and player is in FILE (JSON, written "
                          "atomically) across restarts")
    tls = parser.add_argument_group("TLS (both, or neither)")
    tls.add_argument("--tls-cert", metavar="FILE",
                     help="serve only TLS on the port, with this certificate chain (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    durable = parser.add_argument_group("durable state (a single server)")
    durable.add_argument("--db", metavar="FILE",
                         help="keep sessions, history, bans and the world in this SQLite "
                              "database, so that a restart forgets nothing (made if new)")
    durable.add_argument("--keep", type=int_in_range("count", 1), default=10_000, metavar="N",
                         help="messages kept per room in the database (default 10000)")
    durable.add_argument("--keep-days", type=float_at_least("days", 1e-6), default=30.0,
                         metavar="D", help="nothing older is kept (default 30)")
    parser.add_argument("--redis", metavar="URL",
                        help="join a cluster through Redis, e.g. redis://127.0.0.1:6379/0 "
                             f"(a URL with a password is better given by ${REDIS_URL_VARIABLE} "
                             "or --redis-url-file: the command line is public)")
    parser.add_argument("--redis-url-file", metavar="FILE",
                        help="read the Redis URL from the first line of FILE")
    parser.add_argument("--reuse-port", action="store_true",
                        help="let several server processes share the port (SO_REUSEPORT)")
    parser.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS",
                        help="cluster heartbeat; a node silent for 3 beats is dead (default 1)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        type=str.upper, help="logging level (default INFO)")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.state and not args.world:
        parser.error("--state needs --world")
    if args.state and args.db:
        parser.error("--state and --db: with --db the world's state is kept in the database")
    return args


def shared_world(url: str, state: world_model.WorldState) -> world_model.WorldState:
    """In a cluster the world's state lives in Redis: ours (from --state,
    or the world as it begins) only fills in what Redis does not have."""
    from termchat.cluster.link import share_world_state
    import redis
    try:
        data = share_world_state(url, state.to_data())
    except redis.RedisError as exc:
        raise ValueError(f"cannot read the world's state from Redis: {exc}") from None
    return world_model.WorldState.from_data(state.world, data)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server's TLS settings (TLS 1.2 and later), or None for plain
    text; a certificate or key that cannot be used is a ValueError."""
    if not cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:
        raise ValueError(f"cannot read the TLS certificate or key: {exc.strerror or exc} "
                         f"({exc.filename or cert})") from None
    except ssl.SSLError as exc:
        raise ValueError(f"cannot use the TLS certificate {cert} with the key {key}: "
                         f"{exc.reason or exc}") from None
    return context


def open_listeners(host: str | None, port: int,
                   reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets: one dual-stack socket when no host is given."""
    options = {"backlog": BACKLOG, "reuse_port": reuse_port}
    if host is None:
        if socket.has_dualstack_ipv6():
            try:
                return [socket.create_server(("::", port), family=socket.AF_INET6,
                                             dualstack_ipv6=True, **options)]
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise
        return [socket.create_server(("0.0.0.0", port), **options)]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return [socket.create_server(address[:2], family=family, **options)]


def cluster_url(args: argparse.Namespace) -> str | None:
    """The Redis URL from --redis, --redis-url-file or the environment,
    checked: a malformed URL or a refused password is a ValueError (a Redis
    that does not answer yet is not: the link retries)."""
    url = args.redis or os.environ.get(REDIS_URL_VARIABLE)
    if args.redis_url_file:
        try:
            url = Path(args.redis_url_file).read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ValueError(f"cannot read the Redis URL from {args.redis_url_file}: "
                             f"{getattr(exc, 'strerror', None) or 'empty file'}") from None
    if not url:
        return None
    try:
        import redis
    except ImportError:
        raise ValueError("a cluster needs the redis package: pip install -e '.[cluster]'") \
            from None
    from termchat.cluster.link import masked_url
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {masked_url(url)!r}: {exc}") from None
    try:
        client.ping()
    except redis.AuthenticationError:
        raise ValueError(f"Redis at {masked_url(url)} refused the password") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ValueError(f"Redis at {masked_url(url)} needs a password") from None
        raise ValueError(f"Redis at {masked_url(url)} answered: {exc}") from None
    except redis.RedisError as exc:
        log.warning("cluster: Redis at %s does not answer yet (%s); will keep trying",
                    masked_url(url), exc)
    finally:
        client.close()
    return url


MOTD_LINES = 50


def read_access(args: argparse.Namespace) -> Access:
    """Passwords and the message of the day from their files (secrets never
    come from the command line); a file that cannot be read is a ValueError."""
    def secret(path: str | None, what: str) -> str | None:
        return first_line_of(path, what) if path else None

    lines = read_text(args.motd, "message of the day").splitlines() if args.motd else []
    motd = tuple(line.rstrip() for line in lines[:MOTD_LINES])
    return Access(server_password=secret(args.password_file, "password"),
                  op_password=secret(args.op_password_file, "operator password"),
                  motd=tuple(line for line in motd if line))


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the limit."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit: %s", exc)
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    raise_open_file_limit()
    try:
        listeners = open_listeners(args.host, args.port, args.reuse_port)
    except (OSError, UnicodeError) as exc:
        where = f"{args.host or '*'}:{args.port}"
        reason = "address already in use" if getattr(exc, "errno", None) == errno.EADDRINUSE \
            else getattr(exc, "strerror", None) or str(exc)
        print(f"{program_name()}: cannot listen on {where}: {reason}", file=sys.stderr)
        return 1
    if args.db and (args.redis or args.redis_url_file or os.environ.get(REDIS_URL_VARIABLE)):
        print(f"{program_name()}: --db is for a single server: in a cluster Redis keeps the "
              "state", file=sys.stderr)
        return 2
    try:
        redis_url = cluster_url(args)
    except ValueError as exc:
        print(f"{program_name()}: {exc}", file=sys.stderr)
        return 2
    limits = Limits(max_queue=args.max_queue, hello_timeout=args.hello_timeout,
                    max_per_ip=args.max_per_ip, rate=args.rate, burst=args.burst,
                    connect_rate=args.connect_rate, connect_burst=args.connect_burst)
    sessions = SessionSettings(history=args.history, resume_grace=args.resume_grace)
    store = None
    try:
        access = read_access(args)
        tls = tls_context(args.tls_cert, args.tls_key)
        world_state = load_world(args.world, args.state)
        if world_state and redis_url:  # a cluster keeps the world in Redis
            world_state = shared_world(redis_url, world_state)
        if args.db:
            store = open_store(args.db, args.keep, args.keep_days)
            saved_world = store.load_world() if world_state else None
            if saved_world is not None:
                world_state = world_model.WorldState.from_data(world_state.world, saved_world)
    except ValueError as exc:
        print(f"{program_name()}: {exc}", file=sys.stderr)
        return 2
    if hasattr(signal, "SIGXFSZ"):  # a file size limit is a failing write, not a death
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    server = ChatServer(listeners, limits, redis_url=redis_url, heartbeat=args.heartbeat,
                        sessions=sessions, access=access, tls=tls, world_state=world_state,
                        state_file=Path(args.state) if args.state and not redis_url else None,
                        store=store)
    if store is not None:
        announce("state kept in the database %s", args.db)
    elif not redis_url:
        announce("no --db: sessions, history and bans are kept in memory only, and a "
                 "restart forgets them")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stop())
    if world_state:
        announce("world mode: %s, %d places", world_state.world.name,
                 len(world_state.world.places))
    for listener in listeners:
        announce("listening on %s%s", format_address(listener.getsockname()),
                 " (TLS only)" if tls else "")
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
