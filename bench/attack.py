"""The attacker of the benchmark's abuse scenario, in a process of its own.

Five attacks at once, each from one loopback address of its own, each
bounded in time: a slowloris (up to 300 connections that never finish
their hello, replaced as the server closes them), a flooder (maximum-size
chats as fast as the server takes them; it reads its echoes so that only
the rate limit slows it), a who amplifier (963 who requests per write,
again and again, in the benchmark's crowded room), a churner (connections
opened, said hello on and dropped as fast as it can, never more than 20
open) and a resume flooder (its own session, resumed from its very first
id over and over, each time on a new connection, plus guessed tokens).
Counts what it managed and reports them.  It runs at the lowest priority
(nice 19): on the benchmark's one machine it stands for an attacker whose
CPU is its own, so that what is measured is what the attack costs the
server, not what a busy attacker costs the machine.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import threading
import time

from loadgen import proto

SLOWLORIS, FLOODER, AMPLIFIER = "127.0.0.66", "127.0.0.77", "127.0.0.88"
CHURNER, RESUMER = "127.0.0.99", "127.0.0.55"
SLOW_CONNECTIONS = 300
PUBLISH_EVERY = 0.25  # seconds between updates of the counts the benchmark reads


class Attack:
    def __init__(self, process: multiprocessing.Process, counts) -> None:
        self.process = process
        self.counts = counts

    def report(self) -> dict:
        return dict(self.counts)

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)


def start_attack(port: int, seconds: float, kinds: tuple[str, ...] = ()) -> Attack:
    """The attacks named in ``kinds`` (all of ATTACKS when empty), for
    ``seconds``, in a process of their own."""
    manager = multiprocessing.Manager()
    counts = manager.dict()
    process = multiprocessing.Process(target=run_attack, args=(port, seconds, counts, kinds),
                                      daemon=True)
    process.start()
    return Attack(process, counts)


def run_attack(port: int, seconds: float, counts, kinds: tuple[str, ...] = ()) -> None:
    os.nice(19)  # an attacker's CPU is its own: here it takes only what the server and
    # the ordinary users leave (the kernel's work for its sockets still counts against us)
    deadline = time.monotonic() + seconds
    totals = {"slowloris_opened": 0, "slowloris_closed_by_server": 0,
              "flood_chats_sent": 0, "flooder_connections": 0,
              "who_requests_sent": 0, "amplifier_connections": 0,
              "churn_connections": 0, "churn_throttled": 0,
              "resumes_tried": 0, "resumes_granted": 0, "resumes_throttled": 0}
    lock = threading.Lock()
    published = [0.0]

    def add(key: str, amount: int = 1) -> None:
        with lock:
            totals[key] += amount
            now = time.monotonic()
            if now - published[0] >= PUBLISH_EVERY:  # each update is a round trip to
                published[0] = now                   # the manager: a process's CPU
                counts.update(totals)

    threads = [threading.Thread(target=ATTACKS[kind], args=(port, deadline, add), daemon=True)
               for kind in kinds or ATTACKS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 2)
    with lock:
        counts.update(totals)


def connect(port: int, source: str, timeout: float = 2.0) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def slowloris(port: int, deadline: float, add) -> None:
    half_hello = proto.encode(proto.Hello("slowloris"))[:-4]
    open_socks: list[socket.socket] = []
    while time.monotonic() < deadline:
        while len(open_socks) < SLOW_CONNECTIONS and time.monotonic() < deadline:
            try:
                sock = connect(port, SLOWLORIS)
                sock.sendall(half_hello)
                sock.setblocking(False)
                open_socks.append(sock)
                add("slowloris_opened")
            except OSError:
                break
        time.sleep(0.5)
        for sock in list(open_socks):
            try:
                if sock.recv(4096):
                    continue  # an error packet: the close follows
            except BlockingIOError:
                continue
            except OSError:
                pass
            open_socks.remove(sock)
            sock.close()
            add("slowloris_closed_by_server")
    for sock in open_socks:
        sock.close()


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass


def flooder(port: int, deadline: float, add) -> None:
    overhead = len(proto.encode(proto.ChatFrom("flooder", ""))) - proto.HEADER_SIZE
    chat = proto.encode(proto.Chat("f" * (proto.MAX_PAYLOAD - overhead - proto.SESSION_EXTRA)))
    # (the largest chat the server takes: room for a session copy's id and time)
    pester(port, FLOODER, "flooder", chat, "flood_chats_sent", 1, "flooder_connections",
           deadline, add)


def amplifier(port: int, deadline: float, add, room: str = "crowd") -> None:
    requests = proto.encode(proto.WhoRequest()) * 963
    pester(port, AMPLIFIER, "amplifier", requests, "who_requests_sent", 963,
           "amplifier_connections", deadline, add, first=proto.encode(proto.EnterRoom(room)))


def pester(port: int, source: str, nick: str, data: bytes, sent_key: str, per_send: int,
           connections_key: str, deadline: float, add, first: bytes = b"") -> None:
    """Say hello (and ``first``), then send ``data`` again and again until
    the deadline (reading whatever comes back); reconnect if dropped."""
    while time.monotonic() < deadline:
        try:
            sock = connect(port, source)
            sock.settimeout(None)  # blocks while the server is not reading us: the point
            sock.sendall(proto.encode(proto.Hello(nick)) + first)
            add(connections_key)
            threading.Thread(target=drain, args=(sock,), daemon=True).start()
            while time.monotonic() < deadline:
                sock.sendall(data)
                add(sent_key, per_send)
        except OSError:
            time.sleep(0.2)
        finally:
            try:
                sock.close()
            except NameError:
                pass


class Packets:
    """The packets a socket receives, one at a time (empty: it closed)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.decoder, self.waiting = sock, proto.PacketDecoder(), []

    def next(self) -> dict:
        while not self.waiting:
            data = self.sock.recv(1 << 16)
            if not data:
                return {}
            self.waiting += [json.loads(p) for p in self.decoder.feed(data)]
        return self.waiting.pop(0)


def first_packet(sock: socket.socket) -> dict:
    return Packets(sock).next()


def churner(port: int, deadline: float, add) -> None:
    """Open, say hello, drop: 20 at a time, as fast as the server lets it."""
    number = 0
    while time.monotonic() < deadline:
        batch = []
        for _ in range(20):
            try:
                sock = connect(port, CHURNER)
                number += 1
                sock.sendall(proto.encode(proto.Hello(f"churn{number}")))
                batch.append(sock)
                add("churn_connections")
            except OSError:
                break
        for sock in batch:
            try:
                if first_packet(sock).get("code") == "throttled":
                    add("churn_throttled")
            except OSError:
                pass
            sock.close()


def resumer(port: int, deadline: float, add) -> None:
    """Its own session, resumed from its first id again and again on new
    connections (each replay as long as the chat since then), each time
    followed by a guessed token on the same connection."""
    token = first = nick = None
    while time.monotonic() < deadline:
        try:
            sock = connect(port, RESUMER)
            packets = Packets(sock)
            if token is None:  # a session of its own: its join's id, its token
                sock.sendall(proto.encode(proto.Hello(f"resumer{int(time.time() * 10)}",
                                                      session=True)))
                joined = packets.next()
                nick, first, token = joined.get("nick"), joined.get("id"), \
                    packets.next().get("token")
                sock.close()  # dropped, not quit: the session waits to be resumed
                continue
            sock.sendall(proto.encode(proto.Hello(nick, session=True, resume=token,
                                                  after=first)))
            add("resumes_tried")
            answer = packets.next()
            if answer.get("type") == "resumed":
                add("resumes_granted")
            elif answer.get("code") == "throttled":
                add("resumes_throttled")
            elif answer.get("code") == "session-expired":
                token = None  # it missed too much: start another
                sock.sendall(proto.encode(proto.Hello(nick, session=True,
                                                      resume="guessed", after=first)))
                add("resumes_tried")
                if packets.next().get("code") == "throttled":
                    add("resumes_throttled")
            sock.close()
        except OSError:
            time.sleep(0.05)


ATTACKS = {"slowloris": slowloris, "flooder": flooder, "amplifier": amplifier,
           "churner": churner, "resumer": resumer}
