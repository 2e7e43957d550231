"""The chaos run's clients: session protocol clients in the run's own
selectors loop, each deciding what to do on every packet with the
terminal client's own session logic (termchat.client.session: the hello,
the token, the last id shown, the resume, the fresh join when it expired,
the backoff), and recording what happened to it for the checker.

Owns one client's socket, its traffic (unique numbered payloads: room
chats, DMs, room moves, never a chat while a move or a room check is in
flight) and its part of the history: the sessions and the stays of
chaos_check, the messages it sent and the ones it received.

Beyond the terminal client, two things a chaos client needs: it knows
every node address (a connection that dies before saying anything sends
it to the next one, so the users of a dead node resume on another), and
a connection that has answered nothing for ECHO_TIMEOUT seconds after it
was sent something is taken for dead (a silently dropped path) and hung
up.  After each reconnection it asks ``who``, which names the room it is
really in, before it says anything.
"""

from __future__ import annotations

import errno
import random
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from termchat.client.effects import Hangup, Send  # noqa: E402
from termchat.client.session import ClientSession, Phase, Timeouts  # noqa: E402
from termchat.wire import protocol as proto  # noqa: E402

from chaos_check import Receipt, Sent, Session, Stay, WhoAnswer  # noqa: E402

ECHO_TIMEOUT = 5.0
EXPIRY_MARGIN = 1.0  # seconds: a server's grace may begin this long before our last packet
TIMEOUTS = Timeouts(notice=3.0, give_up=20.0, first_retry=0.5, longest_retry=4.0)
ROOMS = ("lobby", "games", "music")


def node_of(packet_id: str) -> str:
    """The node a session id was given on (NUMBER.NODE.STREAMID.COUNT)."""
    parts = packet_id.split(".")
    return parts[1] if len(parts) > 1 else ""


def payload_of(nick: str, seq: int) -> str:
    return f"{nick}#{seq}"


def expired_session_end(heard_live: float | None, expired: float | None, grace: float,
                        last_loss: float) -> float:
    """Until when a session that fell back to a fresh join was owed what
    was said.  Told it expired after its grace (counted from the last
    packet heard on its last live connection: its server cannot have
    begun the grace before that), it was owed nothing sent after that
    packet.  Told so sooner, the server broke its promise: it was owed
    everything up to its last connection lost before the fresh join."""
    if heard_live is not None and expired is not None and \
            expired >= heard_live + grace - EXPIRY_MARGIN:
        return heard_live
    return last_loss


@dataclass
class Counts:
    resumes: int = 0
    fresh: int = 0
    connections: int = 0
    hangups: int = 0       # connections taken for dead (nothing came back)
    misplaced: int = 0     # a room told that the cluster never learned
    halted: int = 0        # told to stop reconnecting (never expected here)


class ChaosClient:
    def __init__(self, nick: str, addresses: list[tuple[str, int]], home: int,
                 room: str, selector: selectors.BaseSelector, records,
                 rng: random.Random, now: float) -> None:
        self.nick = nick
        self.addresses = addresses
        self.home = home
        self.target = home           # the address index the next connection goes to
        self.goal_room = room        # where it goes first
        self.selector = selector
        self.records = records       # the run's History, appended to
        self.rng = rng
        self.session = ClientSession(f"chaos:{nick}", timeouts=TIMEOUTS, now=now)
        self.sock: socket.socket | None = None
        self.connecting = False
        self.decoder = proto.PacketDecoder()
        self.out = bytearray()
        self.node = ""               # the current connection's node, from its ids
        self.heard_at = now          # last packet on the current connection
        self.unanswered_since: float | None = None
        self.counts = Counts()
        self.errors: dict[str, int] = {}
        # the checker's view of this user
        self.number = -1             # its session number (fresh joins count up)
        self.session_start = 0.0
        self.stay: tuple[str, float, str] | None = None  # the room it is certainly in,
        # since when, and the node it moved there on (empty: not by a move)
        self.last_loss: float | None = None
        self.heard_live: float | None = None  # the last packet on the last live connection
        self.expired_at: float | None = None  # told its session expired (then a fresh join)
        self.grace = 0.0             # the session's, as the server granted it
        self.checking_room = False   # asked who after a reconnection, no answer yet
        self.moving_to: str | None = None
        self.seq = 0
        self.replay_left = 0
        self.next_action = now + rng.uniform(0.5, 3.0)
        self.who_answer: WhoAnswer | None = None
        self.asked_final_who = False
        self.trace: list[tuple[float, str]] = []  # its connections, hellos and answers

    # ---- state the run asks about ----

    @property
    def live(self) -> bool:
        return (self.session.phase is Phase.LIVE and not self.checking_room
                and self.stay is not None)

    @property
    def local_port(self) -> int | None:
        try:
            return self.sock.getsockname()[1] if self.sock else None
        except OSError:
            return None

    # ---- connecting ----

    def connect(self, now: float) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        code = sock.connect_ex(self.addresses[self.target])
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._unreachable(now)
            return
        self.sock, self.connecting = sock, True
        self.decoder, self.out = proto.PacketDecoder(), bytearray()
        self.node, self.heard_at, self.unanswered_since = "", now, None
        self.counts.connections += 1
        self.trace.append((now, f"connect {self.target}"))
        self.selector.register(sock, selectors.EVENT_WRITE, self._on_ready)

    def restart(self, now: float) -> None:
        """The first hello failed for good (a loaded machine): start over."""
        if self.sock is not None:
            self._close(True)
        self.session = ClientSession(f"chaos:{self.nick}", timeouts=TIMEOUTS, now=now)
        self.connect(now)

    def _unreachable(self, now: float) -> None:
        self.target = (self.target + 1) % len(self.addresses)
        self.session.failed(now)

    def _opened(self, now: float) -> None:
        self.connecting = False
        hello = self.session.opened(self.nick, now)
        self.trace.append((now, "resume" if hello.resume else "hello"))
        self._send(hello, now)

    def hang_up(self, now: float, reset: bool = True) -> None:
        """Close the connection (RST) and reconnect later, as after a loss."""
        if self.sock is None:
            return
        self._close(reset)
        self._lost(now)

    def _close(self, reset: bool) -> None:
        sock, self.sock = self.sock, None
        self.selector.unregister(sock)
        if reset:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        sock.close()

    def _lost(self, now: float) -> None:
        heard = self.session.heard
        self.trace.append((now, "lost" if heard else "lost unheard"))
        if self.session.phase is Phase.LIVE:
            self.heard_live = self.heard_at
        self.session.lost(now)
        self.last_loss = now
        self.checking_room, self.replay_left, self.unanswered_since = False, 0, None
        if self.session.phase is Phase.HALTED:
            self.counts.halted += 1
            self.session.reconnect()
        # closed before a word: try the next node; otherwise its home first
        self.target = (self.target + 1) % len(self.addresses) if not heard else self.home

    # ---- the loop's calls ----

    def _on_ready(self, sock: socket.socket, mask: int) -> None:
        self._ready(sock, mask, time.monotonic())

    def _ready(self, sock: socket.socket, mask: int, now: float) -> None:
        if self.connecting:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._close(False)
                self._unreachable(now)
                return
            self._opened(now)
            if self.sock is None:
                return
        if mask & selectors.EVENT_READ:
            self._read(now)
        if self.sock is not None:
            self._flush(now)

    def tick(self, now: float) -> None:
        if self.sock is None:
            if self.session.due_to_connect(now):
                self.connect(now)
            return
        for effect in self.session.tick(now):
            if isinstance(effect, Hangup):
                self.counts.hangups += 1
                self.hang_up(now)
                return
        if self.unanswered_since is not None and now - self.unanswered_since > ECHO_TIMEOUT:
            self.counts.hangups += 1
            self.hang_up(now)

    def act(self, now: float, others: list[str], pace: float, chatting: bool) -> None:
        """Its turn, if due: a chat, sometimes a DM or a room move."""
        if not self.live or self.moving_to is not None or now < self.next_action:
            return
        self.next_action = now + pace * self.rng.uniform(0.5, 1.5)
        if self.stay[0] != self.goal_room:
            self._move(self.goal_room, now)
            return
        if not chatting:
            return
        roll = self.rng.random()
        if roll < 0.04:
            self.goal_room = self.rng.choice([r for r in ROOMS if r != self.stay[0]])
            self._move(self.goal_room, now)
        elif roll < 0.14 and len(others) > 1:
            self.say(now, to=self._someone_else(others))
        else:
            self.say(now)

    def _someone_else(self, nicks: list[str]) -> str:
        index = self.rng.randrange(len(nicks))
        if nicks[index] == self.nick:
            index = (index + 1) % len(nicks)
        return nicks[index]

    def say(self, now: float, to: str | None = None) -> None:
        self.seq += 1
        payload = sys.intern(payload_of(self.nick, self.seq))
        message = proto.SendDirect(to, payload) if to else proto.Chat(payload)
        self.records.sent.append(Sent(payload, self.nick, self.seq, now, node=self.node,
                                      room=None if to else self.stay[0], to=to))
        self._send(message, now)

    def ask_who(self, now: float) -> None:
        self.who_answer = None
        self.asked_final_who = True
        self._send(proto.WhoRequest(), now)

    def finish(self, now: float) -> None:
        """The run is over: its last stay and session end (at the loss if
        it is not back)."""
        end = now if self.live else (self.last_loss or now)
        if self.stay is not None:
            self._end_stay(end)
        if self.number >= 0:
            self.records.sessions.append(Session(self.nick, self.number, self.session_start, end))
        if self.sock is not None:
            self._close(True)

    # ---- sockets ----

    def _send(self, message: proto.Message, now: float) -> None:
        if self.sock is None or self.connecting:
            return
        self.out += proto.encode(message)
        if self.unanswered_since is None:
            self.unanswered_since = now
        self._flush(now)

    def _flush(self, now: float) -> None:
        if self.out:
            try:
                sent = self.sock.send(self.out)
                del self.out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close(False)
                self._lost(now)
                return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        if self.selector.get_key(self.sock).events != events:
            self.selector.modify(self.sock, events, self._on_ready)

    def _read(self, now: float) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(False)
            self._lost(now)
            return
        self.heard_at, self.unanswered_since = now, None
        try:
            payloads = self.decoder.feed(data)
        except proto.ProtocolError:
            self.hang_up(now)
            return
        for payload in payloads:
            if self.sock is None:
                return
            self._packet(payload, now)

    # ---- packets ----

    def _packet(self, payload: bytes, now: float) -> None:
        try:
            message, meta = proto.parse_server_packet(payload)
        except proto.ProtocolError:
            return  # a type this client does not know
        phase = self.session.phase
        _, effects = self.session.received(message, meta, self.nick)
        if "id" in meta and node_of(meta["id"]) != self.node:
            self.node = node_of(meta["id"])
            self.trace.append((now, "on " + self.node))
        replay = self.replay_left > 0 and not isinstance(message, proto.Resumed)
        if replay:
            self.replay_left -= 1
        self._note(message, meta, phase, replay, now)
        for effect in effects:
            if isinstance(effect, Send):
                self._send(effect.message, now)
            elif isinstance(effect, Hangup):
                self.hang_up(now)
                return

    def _note(self, message, meta, phase: Phase, replay: bool, now: float) -> None:
        if isinstance(message, proto.Joined) and message.nick == self.nick:
            if phase is Phase.CONNECTING or self.number < 0:
                self._begin_session(now)
            elif phase is Phase.REJOINING:
                self.counts.fresh += 1
                self._end_session()
                self._begin_session(now)
        elif isinstance(message, proto.SessionGranted):
            self.grace = message.grace
        elif isinstance(message, proto.Resumed):
            self.trace.append((now, "resumed"))
            self.counts.resumes += 1
            self.replay_left = message.missed
            self.checking_room = True
            self._send(proto.WhoRequest(), now)
        elif isinstance(message, (proto.ChatFrom, proto.DirectFrom)):
            if not meta.get("history"):
                self.records.receipts.append(Receipt(
                    self.nick, self.number, sys.intern(message.message), now, node=self.node,
                    replay=replay))
        elif isinstance(message, proto.EnteredRoom) and message.nick == self.nick:
            if self.stay is None or self.stay[0] != message.room:
                if self.stay is not None:
                    self._end_stay(now)
                self.stay = (message.room, now, self.node)
            self.moving_to = None
        elif isinstance(message, proto.EnteredRoom):
            self.records.entered.append((message.nick, message.room, now, self.node))
        elif isinstance(message, proto.WhoList):
            self._who(message, now)
        elif isinstance(message, proto.Error):
            self.trace.append((now, f"error {message.code}"))
            self.errors[message.code or "?"] = self.errors.get(message.code or "?", 0) + 1
            if message.code == proto.Code.SESSION_EXPIRED:
                self.expired_at = now
            if message.code == proto.Code.BAD_PACKET and self.moving_to is not None:
                self.moving_to = None  # (never expected: a move refused)

    def _who(self, answer: proto.WhoList, now: float) -> None:
        if self.checking_room:
            self.checking_room = False
            if self.stay is not None and self.stay[0] != answer.room:
                self.counts.misplaced += 1  # told a move the cluster never learned:
                self.stay = (answer.room, self.last_loss, "")  # for it, there was no stay
            elif self.stay is None:  # a move in flight when the connection went
                self.stay = (answer.room, now, "")
            self.moving_to = None
            self.goal_room = self.stay[0] if self.rng.random() < 0.5 else self.goal_room
        elif self.asked_final_who:
            self.who_answer = WhoAnswer(self.nick, self.node, answer.room, answer.nicks)

    def _move(self, room: str, now: float) -> None:
        self._end_stay(now)
        self.moving_to = room
        self._send(proto.EnterRoom(room), now)

    # ---- the checker's records ----

    def _begin_session(self, now: float) -> None:
        self.number += 1
        self.session_start = now
        self.stay = ("lobby", now, "")
        self.moving_to = None

    def _end_session(self) -> None:
        end = expired_session_end(self.heard_live, self.expired_at, self.grace, self.last_loss)
        if self.stay is not None:
            self._end_stay(end)
        self.records.sessions.append(Session(self.nick, self.number, self.session_start, end))

    def _end_stay(self, end: float) -> None:
        room, start, node = self.stay
        self.stay = None
        if end > start:
            self.records.stays.append(Stay(self.nick, self.number, room, start, end, node))
