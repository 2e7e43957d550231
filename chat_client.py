"""The terminal chat client: the program around termchat.client.

Owns the socket (plain or TLS), the two threads and the terminal UI
(chosen at run time through ``ui_backend``: curses by default, ``--ui
ansi`` for plain escapes).  What to send and show is decided by
:class:`termchat.client.core.ClientCore`; this module carries out its
effects.

Threads, and what each may touch:

- The main thread runs ``ChatClient.run``: it alone calls the UI's
  ``read_command`` (which draws), and for each line typed asks the core
  what to do and sends it.
- The receiver thread runs ``ChatClient.receive_loop``: it alone reads
  the socket, makes new connections (swapping ``connection`` under
  ``send_lock``) and waits between tries; it feeds each packet to the core
  and shows the lines through ``print_message``, which queues them for
  the main thread to draw.
- The core (session, view) is touched by both, only under ``lock``;
  effects are carried out after the lock is released, so a send that
  blocks never stops the other thread.  Sending holds ``send_lock``;
  ``print_message``, ``bell`` and ``stop_input`` are safe from either
  thread, and the log file has ``log_lock``.

Usage: ``python chat_client.py NICK HOST PORT [--ui curses|ansi] [--tls]``.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterable, Sequence, TextIO

from termchat.args import add_version, first_line_of, int_in_range, program_name
from termchat.client.commands import KEYS
from termchat.client.core import ClientCore
from termchat.client.effects import (Effect, Hangup, Leave, Ring, Send, Show, ShowOlder,
                                     Wake)
from termchat.client.formatting import Line, log_line, stamped
from termchat.client.session import Timeouts
from termchat.wire import protocol as proto
import ui_backend


class Quit(Exception):
    """The user asked to leave."""


class ChatClient:
    """The connection to the server (opened again when it is lost), the
    threads, and the effects of the core carried out."""

    def __init__(self, core: ClientCore, connection, ui,
                 reconnect: Callable[[], Any], timestamps: bool = False,
                 log: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.connection = connection        # a socket or a TlsStream
        self.open_connection = reconnect    # a new connection to the same server
        self.ui = ui
        self.timestamps = timestamps
        self.log = log                      # --log: every line shown, appended
        self.clock = clock
        self.lock = threading.Lock()        # the core
        self.send_lock = threading.Lock()   # sending, and swapping the connection
        self.log_lock = threading.Lock()
        self.wake = threading.Event()       # the receiver: connect now, or stop waiting
        self.disconnected = False           # the receiver has ended
        self.failure: BaseException | None = None

    # ---- main thread ----

    def run(self) -> bool:
        """Read and act on lines until the user quits (True) or the client
        gives up (False)."""
        receiver = threading.Thread(target=self.receive_loop, name="receiver", daemon=True)
        receiver.start()
        try:
            while True:
                line = self.ui.read_command(self.prompt, self.complete, self.at_top)
                for part in line.split("\n"):
                    self.handle_line(part)
        except (Quit, KeyboardInterrupt):
            self.leave()
            return True
        except EOFError:
            if self.disconnected:  # the receiver ended (refused, no answer, a crash)
                return False
            self.leave()
            return True

    def prompt(self) -> str:
        with self.lock:
            return self.core.prompt()

    def complete(self, word: str, at_line_start: bool, before: str = "") -> list[str]:
        with self.lock:
            return self.core.complete(word, at_line_start, before)

    def at_top(self) -> None:
        """PageUp reached the top of the scrollback."""
        self.locked(lambda: self.core.at_top(self.clock()))

    def handle_line(self, line: str) -> None:
        with self.lock:
            effects = self.core.line(line)
        self.apply(effects, typed=True)

    def leave(self) -> None:
        """The user quits: a session server is told; no more tries."""
        with self.lock:
            effects = self.core.leave()
        self.apply(effects)
        self.wake.set()

    # ---- both threads ----

    def apply(self, effects: Iterable[Effect], typed: bool = False) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self.send(effect.message, typed)
            elif isinstance(effect, Show):
                self.show(effect.line, effect.when)
            elif isinstance(effect, ShowOlder):
                self.ui.print_older([self.stamp(line, None) for line in effect.lines])
            elif isinstance(effect, Ring):
                self.ui.bell()
            elif isinstance(effect, Hangup):
                close_quietly(self.connection, only_shutdown=True)
            elif isinstance(effect, Wake):
                self.wake.set()
            elif isinstance(effect, Leave):
                raise Quit

    def send(self, message: proto.Message, typed: bool = False) -> None:
        """Send a packet; one the user typed that cannot go is said so (the
        receiver notices the broken connection)."""
        try:
            with self.send_lock:
                self.connection.sendall(proto.encode(message))
        except OSError:
            if typed:
                with self.lock:
                    effects = self.core.not_sent()
                self.apply(effects)

    def stamp(self, line: Line, when: float | None) -> Line:
        return stamped(line, time.time() if when is None else when) if self.timestamps \
            else line

    def show(self, line: Line, when: float | None) -> None:
        """Show a line (``when``: the server's time of it, None: now) and log it."""
        when = time.time() if when is None else when
        self.ui.print_message(self.stamp(line, when))
        if self.log is not None:
            with self.log_lock:
                self.log.write(log_line(line, when))
                self.log.flush()

    def locked(self, step: Callable[[], list[Effect]]) -> None:
        """One step of the core, under the lock; its effects after it."""
        with self.lock:
            effects = step()
        self.apply(effects)

    # ---- receiver thread ----

    def receive_loop(self) -> None:
        try:
            while True:
                self.read_until_closed()
                self.locked(lambda: self.core.session.lost(self.clock()))
                if not self.connect_again():
                    return
        except BaseException as exc:  # shown after the terminal is restored
            self.failure = exc
        finally:
            self.disconnected = True
            self.ui.stop_input()

    def read_until_closed(self) -> None:
        decoder = proto.PacketDecoder()
        while True:
            with self.lock:
                if not self.core.session.connected:
                    return  # done with this connection (a password typed, the user quit)
                wait = self.core.session.wait(self.clock())
            try:
                if not readable(self.connection, wait):
                    self.locked(lambda: self.core.session.tick(self.clock()))
                    continue
                data = self.connection.recv(1 << 16)
            except (OSError, ValueError):  # ValueError: closed by the main thread
                data = b""
            if not data:
                return
            for payload in decoder.feed(data):
                self.locked(lambda: self.core.receive(payload))

    def connect_again(self) -> bool:
        """Wait for the next try and make it, until a connection is up and
        has said hello (True) or the client is done (False)."""
        while True:
            self.wake.clear()
            now = self.clock()
            with self.lock:
                session = self.core.session
                effects = session.tick(now)
                ended, due, wait = session.ended, session.due_to_connect(now), session.wait(now)
            self.apply(effects)
            if ended:
                return False
            if not due:
                self.wake.wait(wait)
                continue
            try:
                connection = self.open_connection()
            except (OSError, UnicodeError):
                with self.lock:
                    self.core.session.failed(self.clock())
                continue
            with self.send_lock:
                old, self.connection = self.connection, connection
            close_quietly(old)
            with self.lock:
                hello = self.core.opened(self.clock())
            self.send(hello)
            return True


def readable(connection, timeout: float | None) -> bool:
    """Whether the connection has something to read within ``timeout``
    seconds (None: wait as long as it takes)."""
    pending = getattr(connection, "pending", None)
    if pending is not None and pending():
        return True
    while True:
        try:
            return bool(select.select([connection], [], [], timeout)[0])
        except InterruptedError:
            continue


# --------------------------------------------------------------------------
# Start-up


def nick_argument(text: str) -> str:
    nick = proto.normalize(text)  # as the server will announce it
    problem = proto.name_problem(nick)
    if problem:
        raise argparse.ArgumentTypeError(f"invalid nick {proto.quote(nick)!r}: {problem}")
    return nick


def seconds_argument(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 to 3600)")
    return seconds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    keys = "\n".join(f"  {name:30} {summary}" for name, summary in KEYS)
    parser = argparse.ArgumentParser(
        prog=program_name(), description="Terminal chat client.",
        epilog=f"keys:\n{keys}\n\nType /help in the client for its commands.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(parser)
    parser.add_argument("nick", type=nick_argument, metavar="NICK", help="your nickname")
    parser.add_argument("host", metavar="HOST", help="server host name or address")
    parser.add_argument("port", type=int_in_range("port", 1, 65535), metavar="PORT",
                        help="server port")
    parser.add_argument("--ui", choices=sorted(ui_backend.BACKENDS), default=ui_backend.DEFAULT,
                        help=f"terminal backend (default {ui_backend.DEFAULT})")
    parser.add_argument("--no-color", action="store_true",
                        help="no colours (also when NO_COLOR is set)")
    parser.add_argument("--timestamps", action="store_true", help="show the time of each line")
    parser.add_argument("--bell", action="store_true",
                        help="ring the terminal bell when someone names you or sends you a DM")
    parser.add_argument("--log", metavar="FILE",
                        help="append every line shown, with its date and time, to FILE")
    parser.add_argument("--password-file", metavar="FILE",
                        help="the server's password, from the file's first line (without "
                             "it, the client asks when the server wants one)")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS, checking the server's certificate and name")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="trust this CA certificate (PEM) instead of the system's; "
                             "implies --tls")
    parser.add_argument("--answer-timeout", type=seconds_argument, default=Timeouts.give_up,
                        metavar="SECONDS",
                        help="give up on a server that has not answered within SECONDS "
                             f"(default {Timeouts.give_up:g}; a notice comes sooner)")
    return parser.parse_args(argv)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificates checked against the system's CAs (or only ``ca_file``),
    host names checked, TLS 1.2 or later."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class TlsStream:
    """A TLS connection the two threads share: the receiver reads while the
    main thread sends.  OpenSSL must not be entered from both at once, so
    each TLS call holds one lock and never blocks; waiting for the socket
    happens outside the lock.  Offers what ChatClient uses of a socket."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> int:
        """Bytes OpenSSL has already decrypted (a select on the socket
        would not see them)."""
        with self.lock:
            return self.sock.pending()

    def recv(self, size: int) -> bytes:
        return self.retried(lambda: self.sock.recv(size))

    def sendall(self, data: bytes) -> None:
        view, sent = memoryview(data), 0
        while sent < len(view):
            sent += self.retried(lambda: self.sock.send(view[sent:]))

    def retried(self, call: Callable[[], Any]) -> Any:
        """One TLS call, under the lock, again after each wait it needs."""
        while True:
            with self.lock:
                try:
                    return call()
                except ssl.SSLWantReadError:
                    wanted = "read"
                except ssl.SSLWantWriteError:
                    wanted = "write"
            self.wait(wanted)

    def wait(self, wanted: str) -> None:
        sockets = [self.sock]
        try:
            select.select(sockets if wanted == "read" else [],
                          sockets if wanted == "write" else [], [], 1.0)
        except ValueError as exc:  # closed by the other thread
            raise OSError("connection closed") from exc

    def shutdown(self, how: int) -> None:
        with self.lock:
            self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


def connect(host: str, port: int, tls: ssl.SSLContext | None = None):
    """A connection to the server (a TlsStream with ``tls``): OSError if it
    cannot be made, ssl.SSLError if TLS cannot be set up with it."""
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # typed lines go at once
    if tls is None:
        sock.settimeout(None)
        return sock
    try:
        return TlsStream(tls.wrap_socket(sock, server_hostname=host))  # handshakes (10 s)
    except BaseException:
        sock.close()
        raise


# OpenSSL's verify codes for a certificate whose issuer is not trusted here
# (self-signed, or signed by a CA the system does not know)
UNTRUSTED = frozenset({2, 18, 19, 20, 21})


def connection_problem(exc: BaseException) -> str:
    """Why a connection could not be made, in words for the user."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = ("; if the server uses a certificate of its own (self-signed, or from its "
                "own CA), trust that with --tls-ca FILE") if exc.verify_code in UNTRUSTED else ""
        return f"the server's certificate is not trusted: {exc.verify_message}{hint}"
    if isinstance(exc, ssl.SSLError):
        return (f"TLS handshake failed ({exc.reason or exc}): does the server speak TLS? "
                "(the server's --tls-cert)")
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)):
        return "the connection was reset while setting up"
    return getattr(exc, "strerror", None) or str(exc)


def fail(message: str) -> int:
    print(f"{program_name()}: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ui = ui_backend.load(args.ui)
        ui_backend.check(ui)  # before anyone sees us join
    except ui_backend.BackendUnavailable as exc:
        return fail(str(exc))
    try:
        log = open(args.log, "a", encoding="utf-8") if args.log else None
    except OSError as exc:
        return fail(f"cannot open the log file {args.log}: {exc.strerror}")
    try:
        password = first_line_of(args.password_file, "password") if args.password_file else None
    except ValueError as exc:
        return fail(str(exc))
    try:
        tls = tls_context(args.tls_ca) if args.tls or args.tls_ca else None
    except (OSError, ssl.SSLError) as exc:
        return fail(f"cannot use the CA file {args.tls_ca}: "
                    f"{getattr(exc, 'strerror', None) or exc}")
    server = f"{args.host}:{args.port}"
    core = ClientCore(args.nick, server, password=password, bell=args.bell,
                      timeouts=Timeouts.answering_within(args.answer_timeout),
                      now=time.monotonic())
    try:
        sock = connect(args.host, args.port, tls)
        sock.sendall(proto.encode(core.first_hello()))
    except (OSError, UnicodeError) as exc:
        return fail(f"cannot connect to {server}: {connection_problem(exc)}")
    color = not args.no_color and not os.environ.get("NO_COLOR")
    client = ChatClient(core, sock, ui, timestamps=args.timestamps, log=log,
                        reconnect=lambda: connect(args.host, args.port, tls))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ui_backend.start(ui, color=color)
    except ui_backend.BackendUnavailable as exc:
        sock.close()
        return fail(str(exc))
    try:
        user_ended = client.run()
    except Exception:
        ui.end_windows()
        traceback.print_exc()
        return 1
    finally:
        ui.end_windows()
        close_quietly(client.connection)
    return report_exit(client, user_ended)


def close_quietly(sock, only_shutdown: bool = False) -> None:
    """Shut a connection down (which wakes a thread reading it) and close it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    if not only_shutdown:
        sock.close()


def report_exit(client: ChatClient, user_ended: bool) -> int:
    """After the terminal is restored: say why the client ended."""
    if client.failure is not None:
        traceback.print_exception(client.failure)
        return 1
    reason = client.core.session.exit_reason
    if reason is not None:
        return fail(reason)
    if not user_ended:
        return fail("disconnected from server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
