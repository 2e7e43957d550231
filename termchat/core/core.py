"""The chat itself, with no I/O: nicks, rooms, packet handlers, the cluster view,
sessions (resumed here or, in a cluster, from any node) and the routing of
world mode's packets to the world model (termchat.world.model).

The transport feeds events in:

- :meth:`ChatCore.connected` when a connection is accepted,
- :meth:`ChatCore.received` with the whole payloads a connection sent,
- :meth:`ChatCore.connection_lost` when it is gone, however it went,
- :meth:`ChatCore.tick` as time passes,
- :meth:`ChatCore.cluster_event` with what another node said.

and the core acts only through its outbox (a :class:`termchat.core.delivery.Delivery`:
send to one connection, broadcast to a room or everyone, move between rooms,
close after an error) and, in a cluster, through the link's queue-only
methods.  Time comes in with the events; nothing here reads a clock, opens a
socket or starts a thread.

Every entry point is fenced: an exception while handling one connection's
packet (including one held while its nick was claimed) costs that
connection only, and one while applying a cluster event
costs that event only; both are logged once with their traceback.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import secrets
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from termchat.cluster import events as cluster
from termchat.wire import protocol as proto
from termchat.world import model as world
from termchat.core.delivery import Outlet
from termchat.wire.protocol import Code

log = logging.getLogger("chat_core")

SESSION_EXPIRED = proto.Error("session expired", Code.SESSION_EXPIRED)

MISTAKES_LOGGED = 5  # a client's mistakes logged before the rest go unlogged
MAX_AWAY = 300       # characters of an away message
PEOPLE_SHOWN = 100   # world mode: people named in one look...
ITEMS_SHOWN = 50     # ...and items in a look or an inventory (with the world model's
# limits on names and descriptions, a look always fits in one packet)


@dataclass(frozen=True)
class Limits:
    """What one client or one address may cost; 0 turns a limit off."""

    max_queue: int = 1 << 20       # bytes of unsent output (and of held input)
    hello_timeout: float = 10.0    # seconds to complete hello
    max_per_ip: int = 32           # open connections from one address (IPv6: a /64)
    rate: float = 5.0              # packets per second that cost work...
    burst: int = 20                # ...with this many at once


@dataclass(frozen=True)
class SessionSettings:
    history: int = 20              # recent chats and emotes a session newcomer gets
    resume_grace: float = 60.0     # seconds a lost session stays present


@dataclass(frozen=True)
class Access:
    """Who may come in and who may moderate: the server password (hello
    must carry it), the operators' password, the message of the day."""
    server_password: str | None = None
    op_password: str | None = None
    motd: tuple[str, ...] = ()


RESUMES_PER_CONNECTION = 3  # resumes a connection may try before it is closed
WRONG_PASSWORDS = 5          # per address...
WRONG_PASSWORD_WINDOW = 60.0  # ...in this many seconds, then refused for a while

LOG_ENTRIES = 100_000   # chat events kept for resumes...
LOG_BYTES = 32 << 20    # ...and at most this many bytes of them


StreamId = tuple[int, int]
RESUME_WAIT = 2.0  # seconds a resume from another node waits for our stream reader


class LogEntry:
    """One chat event as sessions see it: its id and time, who it was for
    (None: everyone; a room key; or the set of user keys of a DM), and,
    for a move, who moved from where to where.

    In a cluster an entry also says where it came from, so that another
    node can tell what a client of this one has seen: ``origin`` and
    ``seq`` (the node that published it and its count there; None for what
    a node works out itself, such as the leaves of a dead node's users,
    ``cause`` naming that node), ``stream`` (its stream entry, once known)
    and the stamp its id carries: ``cursor``, the last stream entry this
    node had applied, and ``published``, how many events it had published.
    Each node's events reach every node in order, so those two numbers say
    exactly which events a client that saw this entry has seen."""

    __slots__ = ("number", "time", "message", "target", "mover", "old", "new", "size",
                 "node", "origin", "seq", "stream", "cursor", "published", "cause")

    def __init__(self, number: int, time: float, message: proto.Message, target,
                 size: int, mover: str | None = None, old: str | None = None,
                 new: str | None = None) -> None:
        self.number, self.time = number, time
        self.message, self.target, self.size = message, target, size
        self.mover, self.old, self.new = mover, old, new
        self.node: str | None = None  # this node's id, in a cluster
        self.origin: str | None = None
        self.seq = 0
        self.stream: StreamId | None = None
        self.cursor: StreamId = (0, 0)
        self.published = 0
        self.cause: str | None = None

    @property
    def id(self) -> str:
        if self.node is None:
            return f"{self.number:016d}"
        return f"{self.number:016d}.{self.node}.{self.cursor[0]}-{self.cursor[1]}." \
               f"{self.published}"

    def reaches(self, key: str, room: str) -> bool:
        target = self.target
        return target is None or target == room or (isinstance(target, frozenset)
                                                    and key in target)

    def packet(self, **extra: Any) -> bytes:
        return proto.encode(self.message, id=self.id, time=self.time, **extra)

    def seen_at(self, node: str, cursor: StreamId, published: int) -> bool:
        """Whether a client of ``node`` whose last entry there carried
        ``cursor`` and ``published`` has seen this entry (as that node's
        version of it)."""
        if self.cause == node:
            return False       # that node died: its clients never saw what followed
        if self.origin == node:
            return self.seq <= published
        if self.origin is not None:
            return self.stream is not None and self.stream <= cursor
        return self.cursor <= cursor


@dataclass(frozen=True)
class Position:
    """What a session's ``after`` id says: a log number here, and in a
    cluster the node it came from and that node's stamp."""
    number: int
    node: str | None = None
    cursor: StreamId = (0, 0)
    published: int = 0


def parse_position(after: str) -> Position | None:
    number, dot, rest = after.partition(".")
    try:
        if not dot:
            return Position(int(number))
        node, cursor, published = rest.split(".")
        return Position(int(number), node, cluster.stream_id(cursor), int(published))
    except ValueError:
        return None


def session_digest(token: str) -> str:
    """What Redis keeps of a session token: never the token itself."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:32]


class State(enum.Enum):
    """Where a connection is in its life; see TRANSITIONS."""

    GREETING = "greeting"  # connected, no hello yet
    CLAIMING = "claiming"  # said hello; the cluster is granting the nick
    JOINED = "joined"      # in the chat
    DETACHED = "detached"  # a session whose connection was lost: still present
    CLOSING = "closing"    # an error was sent; closes once it is written
    GONE = "gone"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.GREETING: frozenset({State.CLAIMING, State.JOINED, State.CLOSING, State.GONE}),
    State.CLAIMING: frozenset({State.GREETING, State.JOINED, State.CLOSING, State.GONE}),
    State.JOINED: frozenset({State.DETACHED, State.CLOSING, State.GONE}),
    State.DETACHED: frozenset({State.JOINED, State.GONE}),
    State.CLOSING: frozenset({State.GONE}),
    State.GONE: frozenset(),
}


class Outbox(Protocol):
    """What the core asks of the delivery layer."""

    def send(self, outlet: Outlet, packet: bytes) -> None: ...
    def broadcast(self, packet: bytes, room: str | None = None) -> None: ...
    def move(self, outlet: Outlet, room: str | None) -> None: ...
    def close(self, outlet: Outlet) -> None: ...
    def pause_input(self, outlet: Outlet, paused: bool) -> None: ...


class Room:
    """A named set of local members; the lobby always exists."""

    __slots__ = ("name", "key", "members")

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = proto.name_key(name)
        self.members: set[Client] = set()


class Client:
    """The chat's view of one connection."""

    __slots__ = ("outlet", "peer", "address", "state", "nick", "room", "held", "held_bytes",
                 "paused", "tokens", "refilled", "mistakes", "token", "joined_id", "missed",
                 "expires", "away", "operator", "ban_key", "pending", "resumes")

    def __init__(self, outlet: Outlet, peer: str, address: str | None, now: float,
                 burst: int) -> None:
        self.outlet = outlet
        self.peer = peer
        self.address = address  # counted against max_per_ip while set
        self.state = State.GREETING
        self.nick: str | None = None
        self.room: Room | None = None
        self.held: deque[bytes] | None = None  # payloads not handled yet, in order
        self.held_bytes = 0
        self.paused = False     # the transport stopped reading for us
        self.tokens = float(burst)
        self.refilled = now
        self.mistakes = 0
        self.token: str | None = None  # a session's: what a resume presents
        self.joined_id = 0             # the log entry of its join
        self.missed = 0                # bytes it would have received while detached
        self.expires = 0.0             # when a detached session ends
        self.away: str | None = None   # the away message, while away
        self.operator = False          # said the operators' password
        self.ban_key = address          # what a ban of this user holds out
        self.pending: proto.Hello | None = None  # a hello waiting on the cluster
        self.resumes = 0               # resumes tried on this connection

    def become(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"{self!r}: no transition from {self.state.name} to {state.name}")
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.nick or '?'} {self.peer}>"


class DetachedSessions:
    """The sessions whose connection was lost, found by what can reach them:
    an event for a room costs that room's detached sessions only, a DM its
    two names (a detached user can neither move nor rename)."""

    def __init__(self) -> None:
        self.keys: dict[Client, tuple[str, str]] = {}  # -> (name key, room key)
        self.by_room: dict[str, set[Client]] = {}
        self.by_name: dict[str, Client] = {}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def add(self, client: Client) -> None:
        name, room = proto.name_key(client.nick), client.room.key
        self.keys[client] = (name, room)
        self.by_room.setdefault(room, set()).add(client)
        self.by_name[name] = client

    def discard(self, client: Client) -> None:
        keys = self.keys.pop(client, None)
        if keys is None:
            return
        name, room = keys
        members = self.by_room[room]
        members.discard(client)
        if not members:
            del self.by_room[room]
        if self.by_name.get(name) is client:
            del self.by_name[name]

    def reached_by(self, entry: LogEntry) -> list[tuple[Client, str, str]]:
        """The detached sessions the entry could reach, with their keys."""
        target = entry.target
        if target is None:
            clients: Iterable[Client] = self.keys
        elif isinstance(target, str):
            clients = self.by_room.get(target, ())
        else:
            clients = [self.by_name[key] for key in target if key in self.by_name]
        return [(client, *self.keys[client]) for client in clients]


class RemoteUser:
    """A user on another node of the cluster.  When that node dies with the
    user's session, the user stays (an orphan) until ``orphan_until``
    unless it resumes somewhere."""

    __slots__ = ("nick", "node", "room", "away", "session", "orphan_until")

    def __init__(self, nick: str, node: str, room: str) -> None:
        self.nick, self.node, self.room = nick, node, room
        self.away: str | None = None
        self.session: str | None = None  # an orphan's session digest
        self.orphan_until = 0.0


# The one dispatch table from message class to handler, filled by @handles
# and checked against the protocol's registry below the class.
PACKET_HANDLERS: dict[type[proto.Message], Callable[..., None]] = {}
CLUSTER_HANDLERS: dict[type, Callable[..., None]] = {}


def handles(message_class: type, table: dict = PACKET_HANDLERS):
    def register(function: Callable) -> Callable:
        if message_class in table:
            raise TypeError(f"two handlers for {message_class.__name__}")
        table[message_class] = function
        return function
    return register


def applies(event_class: type):
    return handles(event_class, CLUSTER_HANDLERS)


class ChatCore:
    """Nicks, rooms and every rule of the chat, driven by events."""

    def __init__(self, outbox: Outbox, limits: Limits = Limits(),
                 link: cluster.ClusterLink | None = None,
                 sessions: SessionSettings = SessionSettings(),
                 wall_offset: float = 0.0, access: Access = Access(),
                 world_state: world.WorldState | None = None) -> None:
        self.outbox = outbox
        self.world = world_state  # world mode: rooms are its places
        self.limits = limits
        self.link = link
        self.settings = sessions
        self.access = access
        self.bans: dict[str, tuple[float, str]] = {}       # address key -> (until, reason)
        self.wrong_passwords: dict[str, deque[float]] = {}  # address key -> when
        self.wall_offset = wall_offset  # event time + this = Unix time, for "time"
        self.log: deque[LogEntry] = deque()
        self.log_bytes = 0
        self.log_trimmed = False  # the log no longer reaches back to the start
        self.next_number = 0
        self.node_id: str | None = link.node_id if link else None
        self.stream_cursor: StreamId = (0, 0)     # the last stream entry applied
        self.log_start: StreamId | None = None     # our log knows the stream from here
        self.applying: Any = None                  # the node event being applied
        self.origin_seq: int | None = None         # our event just published
        self.dead_cause: str | None = None         # the node whose death is applied
        self.unappended: dict[int, list[LogEntry]] = {}  # our seq -> entries, stream unknown
        self.own_log: deque[LogEntry] = deque()    # the log's entries of our events, in order
        self.first_of_death: dict[str, int] = {}   # dead node -> its first entry's number
        self.orphans: deque[tuple[float, RemoteUser]] = deque()  # grace ends, in order
        self.waiting_resumes: deque[tuple[float, Client, str, Position]] = deque()
        self.room_history: dict[str, deque[LogEntry]] = {}
        self.sessions: dict[str, Client] = {}    # token -> session client
        self.attached_sessions = 0               # those with a connection
        self.detached = DetachedSessions()
        self.expiring: deque[tuple[float, Client]] = deque()  # grace ends, in order
        self.clients: dict[Outlet, Client] = {}
        self.by_nick: dict[str, Client] = {}
        proto.name_problem(proto.LOBBY)  # load the name rules' data now, not at a hello
        self.lobby = Room(proto.LOBBY)
        self.rooms: dict[str, Room] = {self.lobby.key: self.lobby}
        self.remote: dict[str, RemoteUser] = {}   # name_key -> user elsewhere
        self.claims: dict[str, tuple[Client, str]] = {}  # name_key -> hello in progress
        self.logged: set[tuple[str, str]] = set()  # cluster complaints already logged
        self.per_address: dict[str, int] = {}
        self.greeting: deque[tuple[float, Client]] = deque()  # hello deadlines, in order
        self.throttled: list[tuple[float, int, Client]] = []  # heap: when to read again
        self._order = itertools.count()
        self.now = 0.0  # the time of the event being handled

    # ------------------------------------------------------------------
    # Entry points

    def connected(self, outlet: Outlet, address: tuple, now: float) -> None:
        """A connection from ``address`` (host, port, ...) was accepted."""
        self.now = now
        self.origin_seq = None
        peer = format_address(address)
        key = address_key(str(address[0]))
        client = Client(outlet, peer, key, now, self.limits.burst)
        self.clients[outlet] = client
        log.info("connect %s", peer)
        ban = self.bans.get(key)
        if ban is not None and ban[0] > now:
            client.address = None
            minutes = max(1, round((ban[0] - now) / 60))
            self.reject(client, f"you are banned from this server for {minutes} more "
                                f"minutes" + (f" ({ban[1]})" if ban[1] else ""), Code.BANNED)
            return
        count = self.per_address.get(key, 0)
        if self.limits.max_per_ip and count >= self.limits.max_per_ip:
            client.address = None
            self.reject(client, "too many connections from your address", Code.TOO_MANY)
            return
        self.per_address[key] = count + 1
        if self.limits.hello_timeout:
            self.greeting.append((now + self.limits.hello_timeout, client))

    def received(self, outlet: Outlet, payloads: list[bytes], now: float) -> None:
        """Whole payloads from one connection, in the order they came."""
        self.now = now
        client = self.clients.get(outlet)
        if client is None or client.state is State.CLOSING:
            return
        if not client.held and not self.limits.rate and client.state is State.JOINED:
            self.handle_all(client, payloads)  # the common case, kept cheap
            return
        if client.held is None:
            client.held = deque()  # made only when needed: most clients never need it
        client.held.extend(payloads)
        client.held_bytes += sum(map(len, payloads))
        if client.held_bytes + outlet.queued > self.limits.max_queue:
            self.held_off(client)
            self.reject(client, "too much sent at once", Code.TOO_LONG)
            return
        self.process(client, now)

    def connection_lost(self, outlet: Outlet, reason: str, now: float) -> None:
        """The connection is gone: announce the leave and forget it."""
        self.now = now
        self.origin_seq = None
        client = self.clients.pop(outlet, None)
        if client is None:
            return
        if client.state is State.JOINED and client.token is not None:
            self.detach(client, reason)
        else:
            if client.nick is not None:
                log.info("leave %s %s: %s", client.nick, client.peer, reason)
            else:
                log.info("disconnect %s: %s", client.peer, reason)
            self.leave_chat(client)
            client.become(State.GONE)
        self.release_address(client)

    def refuse(self, outlet: Outlet, reason: str, code: str, now: float) -> None:
        """The transport refuses a connection (plain text on a TLS port,
        or the reverse): an error, then the close."""
        self.now = now
        client = self.clients.get(outlet)
        if client is not None and client.state is State.GREETING:
            self.reject(client, reason, code)

    def release_address(self, client: Client) -> None:
        """The connection no longer counts against its address's limit."""
        if client.address is not None:
            remaining = self.per_address[client.address] - 1
            if remaining:
                self.per_address[client.address] = remaining
            else:
                del self.per_address[client.address]
            client.address = None

    def tick(self, now: float) -> float | None:
        """Time has passed: close connections that never said hello, read
        again from throttled ones.  Returns when the next tick is due
        (None: nothing waits on time)."""
        self.now = now
        self.origin_seq = None
        while self.greeting and self.greeting[0][0] <= now:
            _, client = self.greeting.popleft()
            if client.state is State.GREETING:
                self.reject(client, f"no hello within {self.limits.hello_timeout:g} seconds",
                            Code.NO_HELLO)
        while self.throttled and self.throttled[0][0] <= now:
            _, _, client = heapq.heappop(self.throttled)
            if client.state is not State.GONE:
                self.process(client, now)
        while self.expiring and self.expiring[0][0] <= now:
            _, client = self.expiring.popleft()
            if client.state is State.DETACHED and client.expires <= now:
                self.end_session(client, "did not come back in time")
        while self.orphans and self.orphans[0][0] <= now:
            _, user = self.orphans.popleft()
            self.end_orphan(user)
        self.resume_waiting()
        due = [queue[0][0] for queue in (self.greeting, self.throttled, self.expiring,
                                         self.orphans, self.waiting_resumes) if queue]
        return min(due) if due else None

    def cluster_event(self, event: Any, now: float) -> None:
        """Apply one thing the cluster said; a bad event costs only itself."""
        self.now = now
        handler = CLUSTER_HANDLERS.get(type(event))
        if handler is None:
            log.warning("cluster: ignoring an event of unknown type %s", type(event).__name__)
            return
        log.debug("cluster event %r", event)
        if isinstance(event, cluster.NodeEvent):
            self.applying = event  # what it leads to is logged as that node's
            if event.stream:
                self.stream_cursor = max(self.stream_cursor, cluster.stream_id(event.stream))
        elif isinstance(event, cluster.NodeDead):
            self.dead_cause = event.node
        try:
            handler(self, event)
        except Exception:
            log.exception("cluster: internal error applying %s; ignored",
                          type(event).__name__)
        finally:
            self.applying = self.dead_cause = self.origin_seq = None

    # ------------------------------------------------------------------
    # Packets

    def process(self, client: Client, now: float) -> None:
        """Handle what the client sent, as far as its state and its tokens
        allow; while anything is left, its socket is not read (so TCP
        pushes back on the sender and nothing is lost)."""
        held = client.held
        try:
            while held:
                state = client.state
                if state is State.CLAIMING:
                    break
                if state is not State.GREETING and state is not State.JOINED:
                    held.clear()
                    break
                if state is State.JOINED and not self.take_token(client, now):
                    wake = now + (1 - client.tokens) / self.limits.rate
                    heapq.heappush(self.throttled, (wake, next(self._order), client))
                    break
                payload = held.popleft()
                client.held_bytes -= len(payload)
                self.handle_payload(client, payload)
        except Exception:
            self.drop_after_bug(client)
        if not held:
            client.held, client.held_bytes = None, 0
        self.set_paused(client, bool(held) and client.state is not State.GONE)

    def handle_all(self, client: Client, payloads: list[bytes]) -> None:
        """No limits to apply: handle each payload while the client is in
        the chat (after an error closes it, the rest is dropped)."""
        try:
            for payload in payloads:
                if client.state is not State.JOINED:
                    return
                self.handle_payload(client, payload)
        except Exception:
            self.drop_after_bug(client)

    def take_token(self, client: Client, now: float) -> bool:
        """The token bucket: ``rate`` packets a second, ``burst`` at once."""
        rate = self.limits.rate
        if not rate:
            return True
        tokens = min(float(self.limits.burst), client.tokens + (now - client.refilled) * rate)
        client.refilled = now
        if tokens < 1:
            client.tokens = tokens
            return False
        client.tokens = tokens - 1
        return True

    def set_paused(self, client: Client, paused: bool) -> None:
        if client.paused != paused:
            client.paused = paused
            self.outbox.pause_input(client.outlet, paused)

    def drop_after_bug(self, client: Client) -> None:
        """A handler raised: log it once and drop that client only."""
        log.exception("internal error serving %r; dropping it", client)
        self.outbox.close(client.outlet)
        self.connection_lost(client.outlet, "internal error", self.now)

    def mistake(self, client: Client, reason: str, closing: bool = False) -> None:
        """Log a client's mistake: one line each, and only the first few."""
        client.mistakes += 1
        if client.mistakes <= MISTAKES_LOGGED:
            log.info("error %s %s: %s%s", client.nick or "?", client.peer, reason,
                     "; closing" if closing else "")
        elif client.mistakes == MISTAKES_LOGGED + 1:
            log.info("error %s %s: more mistakes; not logging them", client.nick or "?",
                     client.peer)

    def handle_payload(self, client: Client, payload: bytes) -> None:
        try:
            message = proto.parse_client_message(payload)
        except proto.MalformedPacket as exc:
            self.reject(client, str(exc), Code.BAD_PACKET)
            return
        except proto.InvalidMessage as exc:
            if client.state is State.GREETING:
                self.reject(client, str(exc), exc.code)
            else:
                self.mistake(client, str(exc))
                self.send(client, proto.Error(str(exc), exc.code))
            return
        if client.state is State.GREETING and not isinstance(message, proto.Hello):
            self.reject(client, "the first packet must be a hello", Code.BAD_PACKET)
            return
        self.origin_seq = None
        PACKET_HANDLERS[type(message)](self, client, message)

    def send(self, client: Client, message: proto.Message | bytes) -> None:
        if client.outlet is None:
            return  # detached: what it missed is replayed from the log
        packet = message if isinstance(message, bytes) else proto.encode(message)
        self.outbox.send(client.outlet, packet)

    # ---- chat events: numbered, logged for sessions, then delivered ----

    def record(self, message: proto.Message, target, mover: str | None = None,
               old: str | None = None, new: str | None = None,
               base: bytes | None = None) -> tuple[bytes, bytes | None]:
        """Number and log a chat event; return its packet for base clients
        (``base``, if the caller encoded it already) and, while session
        clients are attached, the one with id and time."""
        if base is None:
            base = proto.encode(message)
        self.next_number += 1
        entry = LogEntry(self.next_number, round(self.now + self.wall_offset, 3), message,
                         target, len(base), mover, old, new)
        if self.node_id is not None:
            self.stamp(entry)
        self.log.append(entry)
        self.log_bytes += entry.size
        while len(self.log) > LOG_ENTRIES or self.log_bytes > LOG_BYTES:
            self.forget_entry(self.log.popleft())
        if isinstance(message, (proto.ChatFrom, proto.EmoteFrom)) and isinstance(target, str):
            history = self.room_history.get(target)
            if history is None:
                history = self.room_history[target] = deque(maxlen=self.settings.history)
            history.append(entry)
        if self.detached:
            self.count_missed(entry)
        return base, entry.packet() if self.attached_sessions else None

    def stamp(self, entry: LogEntry) -> None:
        """Where a cluster entry came from, and what this node had seen."""
        entry.node, entry.cursor = self.node_id, self.stream_cursor
        entry.published, entry.cause = self.link.published_count, self.dead_cause
        event = self.applying
        if event is not None:
            entry.origin, entry.seq = event.node, event.seq
            entry.stream = cluster.stream_id(event.stream) if event.stream else None
        elif self.origin_seq is not None:
            entry.origin, entry.seq = self.node_id, self.origin_seq
            self.unappended.setdefault(self.origin_seq, []).append(entry)
            self.own_log.append(entry)
        if self.dead_cause is not None:
            self.first_of_death.setdefault(self.dead_cause, entry.number)

    def forget_entry(self, entry: LogEntry) -> None:
        self.log_bytes -= entry.size
        self.log_trimmed = True
        if entry.origin is not None and entry.origin == self.node_id:
            self.unappended.pop(entry.seq, None)
            if self.own_log and self.own_log[0] is entry:
                self.own_log.popleft()

    def published(self) -> None:
        """We just told the cluster of a chat event: the entries logged for
        it next are ours, under that event's number."""
        self.applying = None
        self.origin_seq = self.link.published_count

    def announce(self, message: proto.Message, room: str | None = None,
                 base: bytes | None = None, **move: str) -> None:
        """A chat event for a room (everyone when None)."""
        base, with_ids = self.record(message, room, base=base, **move)
        self.outbox.broadcast(base, room, with_ids)

    def send_event(self, recipients: list[Client], message: proto.Message) -> None:
        """A chat event for some users only (a DM), each sent once."""
        keys = frozenset(proto.name_key(c.nick) for c in recipients)
        base, with_ids = self.record(message, keys)
        for client in dict.fromkeys(recipients):
            self.send(client, with_ids if with_ids and client.token else base)

    def count_missed(self, entry: LogEntry) -> None:
        """What a detached session would have received counts against the
        output bound; past it the session ends."""
        for client, name, room in self.detached.reached_by(entry):
            if entry.reaches(name, room):
                client.missed += entry.size
                if client.missed > self.limits.max_queue:
                    self.end_session(client, "missed more than the output bound")

    def encode_for(self, client: Client, message: proto.Message) -> bytes | None:
        """Encode a rebroadcast, or tell the sender it would not fit."""
        try:
            return proto.encode(message)
        except proto.PacketTooLarge:
            self.send(client, proto.Error("message too long to send", Code.TOO_LONG))
            return None

    def reject(self, client: Client, reason: str, code: str) -> None:
        """Send an error, then close once it is written."""
        self.mistake(client, reason, closing=True)
        self.send(client, proto.Error(reason, code))
        self.leave_chat(client)
        self.outbox.close(client.outlet)
        client.become(State.CLOSING)
        self.set_paused(client, False)  # read (and discard) until the peer closes

    @handles(proto.Hello)
    def on_hello(self, client: Client, hello: proto.Hello) -> None:
        if client.state is not State.GREETING:
            self.send(client, proto.Error("already said hello", Code.BAD_PACKET))
            return
        if hello.resume is not None:
            self.resume(client, hello)
            return
        refusal = self.password_refusal(client, self.access.server_password, hello.password,
                                        "server")
        if refusal:
            self.reject(client, *refusal)
            return
        key = proto.name_key(hello.nick)
        holder = self.holder_of(key)
        held = self.held_message(key)
        if held is not None:
            self.reject(client, held, Code.NICK_HELD)
        elif holder is not None:
            self.reject(client, taken_message(hello.nick, holder), Code.NICK_TAKEN)
        elif self.link:
            client.become(State.CLAIMING)
            client.pending = hello
            self.claims[key] = (client, hello.nick)
            self.link.claim(client, hello.nick, key)
        else:
            self.complete_hello(client, hello.nick, hello.session)

    def held_message(self, key: str) -> str | None:
        """Why a nick is taken when it is only held for a session whose
        connection dropped (most often the very user now asking for it)."""
        local, remote = self.by_nick.get(key), self.remote.get(key)
        if local is not None and local.state is State.DETACHED:
            nick, until = local.nick, local.expires
        elif remote is not None and remote.orphan_until:
            nick, until = remote.nick, remote.orphan_until
        else:
            return None
        seconds = max(1, round(until - self.now))
        return (f"nick {nick} is held for a session whose connection dropped; it is free "
                f"in {seconds} seconds unless that session resumes")

    def holder_of(self, key: str) -> str | None:
        """The nick that holds a name key here or elsewhere, if any."""
        for table in (self.by_nick, self.remote):
            holder = table.get(key)
            if holder is not None:
                return holder.nick
        claim = self.claims.get(key)
        return claim[1] if claim else None

    def complete_hello(self, client: Client, nick: str, session: bool = False) -> None:
        client.become(State.JOINED)
        client.nick = nick
        self.by_nick[proto.name_key(nick)] = client
        room = self.arrival_room(nick)
        self.enter(client, room)
        if session:
            self.start_session(client)
        if self.link:
            self.link.joined(nick, room.name)
            self.published()
        self.announce(proto.Joined(nick))
        client.joined_id = self.next_number
        log.info("hello %s %s", nick, client.peer)
        if session:
            self.send(client, proto.SessionGranted(client.token, self.settings.resume_grace))
            for entry in self.room_history.get(room.key, ()):
                self.send(client, entry.packet(history=True))
        for line in self.access.motd:
            self.send(client, proto.Info(line))
        if self.world:
            self.send_view(client)

    # ---- sessions ----

    def start_session(self, client: Client) -> None:
        client.token = secrets.token_urlsafe(24)
        self.sessions[client.token] = client
        self.attached_sessions += 1
        client.outlet.ids = True
        if self.link:
            self.link.record_session(session_digest(client.token), client.nick)

    def detach(self, client: Client, reason: str) -> None:
        """A session client's connection is gone: it stays present, unseen."""
        log.info("detach %s %s: %s", client.nick, client.peer, reason)
        client.become(State.DETACHED)
        self.attached_sessions -= 1
        self.held_off(client)
        client.outlet = None
        client.missed = 0
        client.expires = self.now + self.settings.resume_grace
        self.detached.add(client)
        self.expiring.append((client.expires, client))
        self.release_address(client)

    def end_session(self, client: Client, reason: str) -> None:
        """A detached session is over: now the others see the leave."""
        log.info("leave %s %s: %s", client.nick, client.peer, reason)
        self.detached.discard(client)
        self.leave_chat(client)
        client.become(State.GONE)

    def resume(self, client: Client, hello: proto.Hello) -> None:
        """Take a session up again on this connection: ``resumed``, then
        exactly what it missed after ``after``, then live traffic."""
        client.resumes += 1
        if client.resumes > RESUMES_PER_CONNECTION:  # guessing tokens costs a close
            self.reject(client, "too many resumes on one connection", Code.THROTTLED)
            return
        session = self.sessions.get(hello.resume or "")
        if session is None and self.link is not None:
            self.resume_elsewhere(client, hello)
            return
        if session is not None and proto.name_key(session.nick) != proto.name_key(hello.nick):
            session = None
        missed = self.missed_since(session, hello.after) if session is not None else None
        if missed is None:
            if session is not None and session.state is State.DETACHED:
                self.end_session(session, "could not be resumed")
            self.send(client, SESSION_EXPIRED)
            return  # the connection stays open for a fresh hello
        if session.state is State.JOINED:  # the old connection is not known dead yet
            old = session.outlet
            self.clients.pop(old, None)
            self.detach(session, "resumed elsewhere")
            self.outbox.close(old)
        self.clients[client.outlet] = session
        client.become(State.GONE)  # the greeting connection becomes the session's
        session.outlet, session.peer = client.outlet, client.peer
        session.address, client.address = client.address, None
        session.ban_key = client.ban_key
        self.detached.discard(session)
        session.become(State.JOINED)
        self.attached_sessions += 1
        session.outlet.ids = True
        self.send(session, proto.Resumed(len(missed)))
        for entry in missed:
            self.send(session, entry.packet())
        self.outbox.move(session.outlet, session.room.key)
        log.info("resume %s %s: %d missed", session.nick, session.peer, len(missed))

    def missed_since(self, client: Client, after: str | None) -> list[LogEntry] | None:
        """What ``client`` would have received after the entry ``after``, or
        None when the log no longer reaches back that far."""
        position = parse_position(after) if after is not None else Position(client.joined_id)
        if position is None:
            return None
        if position.node is not None and position.node != self.node_id:
            return self.missed_elsewhere(client.nick, client.room.key, position)
        last_seen = position.number
        if self.log and self.log[0].number > last_seen + 1:
            return None
        start = last_seen + 1 - self.log[0].number if self.log else 0  # numbers are consecutive
        entries = list(itertools.islice(self.log, max(0, start), None))
        return self.reaching(entries, client.nick, client.room.key)

    def missed_elsewhere(self, nick: str, room: str,
                         position: Position) -> list[LogEntry] | None:
        """What a client of another node, who last saw ``position`` there,
        has missed, as this node logged it (None: the log does not reach
        back that far)."""
        seen_at = LogEntry.seen_at
        node, cursor, published = position.node, position.cursor, position.published
        log = self.log
        if self.log_start is None or cursor < self.log_start:
            return None  # it saw its last packet before we started reading
        if self.log_trimmed and (not log or cursor < log[0].cursor):
            return None  # what it missed may be among what the log let go
        first = next((i for i in range(self.unseen_from(position), len(log))
                      if not seen_at(log[i], node, cursor, published)), None)
        if first is None:
            return []
        if first == 0 and self.log_trimmed:
            return None
        entries = [e for e in itertools.islice(self.log, first, None)
                   if not seen_at(e, node, cursor, published) or e.mover is not None]
        missed = self.reaching(entries, nick, room)
        return [e for e in missed if not seen_at(e, node, cursor, published)]

    def unseen_from(self, position: Position) -> int:
        """Where in the log to start looking for what a client of another
        node has not seen, without reading the log from its start.

        Our cursor only grows along the log, and an entry logged before it
        reached the client's cursor is one the client has seen (its stream
        entry is no later than our cursor then), except our own events
        appended later and what a node's death led to: those are found in
        their own short indexes."""
        log = self.log
        if not log:
            return 0
        base = log[0].number
        start = bisect.bisect_left(log, position.cursor, key=lambda e: e.cursor)
        for entry in reversed(self.own_log):  # ours the client may not have seen
            if entry.stream is not None and entry.stream <= position.cursor:
                break
            start = min(start, entry.number - base)
        death = self.first_of_death.get(position.node)
        if death is not None:
            start = min(start, death - base)
        return max(0, start)

    def reaching(self, entries: list[LogEntry], nick: str, room: str) -> list[LogEntry]:
        """The entries that reached the user now called ``nick``, now in
        ``room``, following its moves and renames back through them."""
        keys = {proto.name_key(nick)}  # and the names it had meanwhile
        for entry in reversed(entries):
            if isinstance(entry.message, proto.NickChanged) and \
                    proto.name_key(entry.message.nick) in keys:
                keys.add(proto.name_key(entry.message.old))
        room = next((e.old for e in entries if e.mover in keys), room)
        missed = []
        for entry in entries:
            if entry.mover in keys:
                room = entry.new
            if any(entry.reaches(key, room) for key in keys):
                missed.append(entry)
        return missed

    def expired(self, client: Client) -> None:
        """A resume handed to the cluster failed: the connection may say a
        fresh hello, within a new hello deadline."""
        client.become(State.GREETING)
        self.send(client, SESSION_EXPIRED)
        if self.limits.hello_timeout:
            self.greeting.append((self.now + self.limits.hello_timeout, client))

    def resume_elsewhere(self, client: Client, hello: proto.Hello) -> None:
        """A session this node does not hold: ask Redis to hand it (and its
        nick) over from whichever node does."""
        key = proto.name_key(hello.nick)
        if key in self.by_nick or key in self.claims or not hello.after:
            self.send(client, SESSION_EXPIRED)
            return
        client.become(State.CLAIMING)
        client.pending = hello
        self.claims[key] = (client, hello.nick)
        self.link.take_over(client, session_digest(hello.resume), hello.nick)

    @applies(cluster.TakenOver)
    def on_taken_over(self, event: cluster.TakenOver) -> None:
        client, hello = event.token, event.token.pending
        key = proto.name_key(event.nick)
        if self.claims.get(key, (None,))[0] is client:
            del self.claims[key]
        if client.state is not State.CLAIMING:  # gone meanwhile
            if event.old is not None:
                self.give_back(hello)
            return
        position = parse_position(hello.after)
        if event.old is None or position is None:
            client.pending = None
            self.expired(client)
            return
        self.waiting_resumes.append((self.now + RESUME_WAIT, client, event.old, position))
        self.resume_waiting()

    def resume_waiting(self) -> None:
        """Take up the sessions handed over to us once our stream reader
        has read what their clients saw (or after a short wait)."""
        while self.waiting_resumes:
            deadline, client, old, position = self.waiting_resumes[0]
            if self.stream_cursor < position.cursor and deadline > self.now:
                return
            self.waiting_resumes.popleft()
            if client.state is not State.CLAIMING:  # gone while it waited
                self.give_back(client.pending)
                continue
            try:
                self.adopt(client, old, position)
            except Exception:
                self.drop_after_bug(client)

    def give_back(self, hello: proto.Hello) -> None:
        """A session taken over for a connection that is gone before it was
        taken up: its nick and record go, so that the nick is free once the
        others' grace for it ends."""
        self.link.forget(hello.nick)
        self.link.end_session(session_digest(hello.resume), hello.nick)

    def adopt(self, client: Client, old: str, position: Position) -> None:
        """The session (held by ``old``) is ours now: the user goes on here
        where it was, unseen, with what it missed as this node logged it."""
        hello, client.pending = client.pending, None
        key = proto.name_key(hello.nick)
        user = self.remote.pop(key, None)
        nick = user.nick if user else hello.nick
        room_name = user.room if user else proto.LOBBY
        room = self.room_named(room_name)
        missed = self.missed_elsewhere(nick, room.key, position)
        if missed is None:  # too long ago: a fresh hello will do (the nick is ours)
            self.expired(client)
            return
        client.become(State.JOINED)
        client.nick, client.token = nick, hello.resume
        client.away = user.away if user else None
        self.by_nick[key] = client
        self.sessions[client.token] = client
        self.attached_sessions += 1
        client.outlet.ids = True
        client.joined_id = self.next_number
        self.send(client, proto.Resumed(len(missed)))
        for entry in missed:
            self.send(client, entry.packet())
        self.enter(client, room)
        self.link.adopted(nick, room.name, old)
        self.link.record_session(session_digest(client.token), nick)
        log.info("resume %s %s from node %s: %d missed", nick, client.peer, old[:40],
                 len(missed))
        self.process(client, self.now)

    @applies(cluster.RemoteTakeover)
    def on_remote_takeover(self, event: cluster.RemoteTakeover) -> None:
        """A session resumed on the sending node: the user is there now.
        Nobody is told anything; if it was ours, we let it go silently."""
        key = proto.name_key(event.nick)
        local = self.by_nick.get(key)
        if local is not None and event.old == self.node_id:
            self.taken_elsewhere(local)
        user = self.remote.get(key)
        if user is not None:
            user.node, user.room = event.node, event.room
            user.session, user.orphan_until = None, 0.0
        elif key not in self.by_nick:
            self.remote[key] = RemoteUser(event.nick, event.node, event.room)
            if local is None:  # new to us: our users never saw it arrive
                self.announce(proto.Joined(event.nick))

    def taken_elsewhere(self, client: Client) -> None:
        """Our session client resumed on another node: forget it here
        without a leave (an old connection still open is closed)."""
        log.info("session %s %s resumed on another node", client.nick, client.peer)
        nick = client.nick
        del self.by_nick[proto.name_key(nick)]
        self.sessions.pop(client.token, None)
        client.token, client.nick = None, None
        self.enter(client, None)
        if client.state is State.DETACHED:
            self.detached.discard(client)
            client.become(State.GONE)
        else:
            self.attached_sessions -= 1
            self.send(client, proto.Error("your session was resumed on another connection",
                                          Code.REPLACED))
            self.outbox.close(client.outlet)
            client.become(State.CLOSING)
        self.link.forget(nick)

    def end_orphan(self, user: RemoteUser) -> None:
        """A dead node's session user did not resume anywhere in time."""
        key = proto.name_key(user.nick)
        if self.remote.get(key) is not user or not user.orphan_until:
            return  # resumed somewhere meanwhile
        log.info("leave %s (of node %s): did not come back in time", user.nick, user.node[:40])
        self.remote_leave(user.nick)
        self.link.end_session(user.session, user.nick, user.node)

    @handles(proto.Quit)
    def on_quit(self, client: Client, _: proto.Quit) -> None:
        """Leaving on purpose: the leave now, then the connection closes."""
        log.info("quit %s %s", client.nick, client.peer)
        self.leave_chat(client)
        self.outbox.close(client.outlet)
        client.become(State.CLOSING)

    @handles(proto.Chat)
    def on_chat(self, client: Client, chat: proto.Chat) -> None:
        self.say_in_room(client, proto.ChatFrom(client.nick, chat.message))

    @handles(proto.Emote)
    def on_emote(self, client: Client, emote: proto.Emote) -> None:
        self.say_in_room(client, proto.EmoteFrom(client.nick, emote.message))

    def say_in_room(self, client: Client, message: proto.ChatFrom | proto.EmoteFrom) -> None:
        packet = self.encode_for(client, message)
        if packet:
            room = client.room
            if self.link:
                self.link.publish(cluster.RemoteSpeech(message.TYPE, message.nick, room.name,
                                                       message.message))
                self.published()
            self.announce(message, room.key, base=packet)

    @handles(proto.SendDirect)
    def on_direct(self, client: Client, dm: proto.SendDirect) -> None:
        key = proto.name_key(dm.to)
        target = self.by_nick.get(key)
        remote = self.remote.get(key)
        if target is None and remote is None:
            self.send(client, proto.Error(f"no such user: {proto.quote(dm.to)}", Code.NO_USER))
            return
        to = target.nick if target else remote.nick
        message = proto.DirectFrom(client.nick, to, dm.message)
        if not self.encode_for(client, message):
            return
        if target is None:
            self.link.publish(cluster.RemoteDirect(client.nick, to, dm.message))
            self.published()
        self.send_event([c for c in (target, client) if c is not None], message)
        away = (target or remote).away
        if away and target is not client:
            self.send(client, proto.Info(f"{to} is away: {away}"))

    @handles(proto.ChangeNick)
    def on_change_nick(self, client: Client, change: proto.ChangeNick) -> None:
        """A new nick, by the same rules as at hello (a taken one is an
        error; the connection stays).  In a cluster the new nick is claimed
        and the old one freed in one step before anyone sees the change."""
        old, new = client.nick, change.nick
        if new == old:
            self.send(client, proto.Error(f"you are already {old}", Code.NICK_TAKEN))
            return
        key = proto.name_key(new)
        holder = self.holder_of(key)
        if holder is not None and key != proto.name_key(old):
            self.send(client, proto.Error(taken_message(new, holder), Code.NICK_TAKEN))
        elif self.link:
            self.claims[key] = (client, new)
            self.link.rename(client, old, new)
        else:
            self.rename(client, new)

    def rename(self, client: Client, new: str) -> None:
        old = client.nick
        del self.by_nick[proto.name_key(old)]
        self.by_nick[proto.name_key(new)] = client
        client.nick = new
        if self.link and client.token is not None:
            self.link.record_session(session_digest(client.token), new, old)
        self.rename_player(old, new, here=True)
        self.announce(proto.NickChanged(old, new))
        log.info("nick %s is now %s %s", old, new, client.peer)

    def rename_player(self, old: str, new: str, here: bool = False) -> None:
        """World mode: the place and things go with the name (and, for our
        own user in a cluster, in Redis too)."""
        if not self.world:
            return
        old_key, new_key = proto.name_key(old), proto.name_key(new)
        self.world.rename_player(old_key, new_key)
        if here and self.link:
            self.link.save_place(new_key, self.world.place_of(new_key))
            self.link.save_place(old_key, None)
            for item in self.world.carried_by(new_key):
                self.link.hold_item(item.id, new_key)

    @applies(cluster.Renamed)
    def on_renamed(self, event: cluster.Renamed) -> None:
        client = event.token
        key = proto.name_key(event.new)
        if self.claims.get(key, (None,))[0] is client:
            del self.claims[key]
        if client.state is not State.JOINED or client.nick != event.old:
            if event.granted:
                self.link.left(event.new, key)  # nobody will use it after all
        elif not event.granted:
            holder = self.holder_of(key) or event.new
            self.send(client, proto.Error(taken_message(event.new, holder), Code.NICK_TAKEN))
        else:
            self.rename(client, event.new)

    @applies(cluster.RemoteRename)
    def on_remote_rename(self, event: cluster.RemoteRename) -> None:
        user = self.owned_by(event.old, event.node)
        if user is None:
            return
        del self.remote[proto.name_key(event.old)]
        user.nick = event.new
        self.remote[proto.name_key(event.new)] = user
        self.rename_player(event.old, event.new)
        self.announce(proto.NickChanged(event.old, event.new))

    # ---- passwords and moderation ----

    def password_refusal(self, client: Client, expected: str | None, given: str | None,
                         what: str) -> tuple[str, str] | None:
        """Why a password is refused, and the code (None: accepted, or none
        is needed).  Compared in constant time; an address that keeps
        guessing wrong is refused for a while without being checked."""
        if expected is None:
            return None
        failures = self.wrong_passwords.setdefault(client.ban_key or client.peer, deque())
        while failures and failures[0] < self.now - WRONG_PASSWORD_WINDOW:
            failures.popleft()
        if len(failures) >= WRONG_PASSWORDS:
            return "too many wrong passwords; try again in a minute", Code.WRONG_PASSWORD
        if given is None:
            return f"this server needs a {what} password", Code.NEEDS_PASSWORD
        if hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
            return None
        failures.append(self.now)
        return f"wrong {what} password", Code.WRONG_PASSWORD

    @handles(proto.BecomeOperator)
    def on_become_operator(self, client: Client, op: proto.BecomeOperator) -> None:
        if self.access.op_password is None:
            self.send(client, proto.Error("this server has no operators", Code.NOT_OPERATOR))
            return
        refusal = self.password_refusal(client, self.access.op_password, op.password,
                                        "operator")
        if refusal:
            self.send(client, proto.Error(*refusal))
            return
        client.operator = True
        self.send(client, proto.Info("you are an operator now"))
        log.info("operator %s %s", client.nick, client.peer)

    def operators_target(self, client: Client, nick: str | None, what: str) -> Client | None:
        """The local user an operator's request is about, or None after
        telling the client why not."""
        if not client.operator:
            self.send(client, proto.Error(f"only operators can {what}", Code.NOT_OPERATOR))
            return None
        target = self.by_nick.get(proto.name_key(nick or ""))
        if target is None and proto.name_key(nick or "") not in self.remote:
            self.send(client, proto.Error(f"no such user: {proto.quote(nick or '')}",
                                          Code.NO_USER))
        return target

    def kick_elsewhere(self, client: Client, nick: str, reason: str, minutes: int) -> None:
        """The user is on another node: that node does it; we show it here."""
        user = self.remote[proto.name_key(nick)]
        self.link.publish(cluster.RemoteKick(user.nick, client.nick, reason, minutes))
        self.published()
        self.announce(proto.Kicked(user.nick, client.nick, kick_reason(reason, minutes)))

    @handles(proto.KickRequest)
    def on_kick(self, client: Client, kick: proto.KickRequest) -> None:
        target = self.operators_target(client, kick.nick, "kick")
        if target is not None:
            self.kick(target, client.nick, kick.reason)
        elif client.operator and proto.name_key(kick.nick) in self.remote:
            self.kick_elsewhere(client, kick.nick, kick.reason, 0)

    @handles(proto.BanRequest)
    def on_ban(self, client: Client, ban: proto.BanRequest) -> None:
        if ban.nick is None:
            self.list_bans(client)
            return
        if ban.minutes is None:
            self.send(client, proto.Error('"ban" needs field "minutes"', Code.BAD_PACKET))
            return
        target = self.operators_target(client, ban.nick, "ban")
        if target is not None:
            self.ban(target, client.nick, ban.minutes, ban.reason)
        elif client.operator and proto.name_key(ban.nick) in self.remote:
            self.kick_elsewhere(client, ban.nick, ban.reason, ban.minutes)

    def ban(self, target: Client, by: str, minutes: int, reason: str) -> None:
        """Hold the user's address out (on every node) and kick them."""
        key = target.ban_key or target.peer
        until = self.now + minutes * 60
        self.bans[key] = (until, reason)
        log.info("ban %s (%s) for %d minutes by %s: %s", key, target.nick, minutes, by,
                 proto.quote(reason, 200))
        if self.link:
            self.link.publish(cluster.RemoteBan(key, until + self.wall_offset, reason))
        self.kick(target, by, kick_reason(reason, minutes), banned=True)

    @applies(cluster.RemoteKick)
    def on_remote_kick(self, event: cluster.RemoteKick) -> None:
        if self.owned_by(event.by, event.node) is None:
            return
        target = self.by_nick.get(proto.name_key(event.nick))
        if target is None:
            self.announce(proto.Kicked(event.nick, event.by,
                                       kick_reason(event.reason, event.minutes)))
        elif event.minutes:
            self.ban(target, event.by, event.minutes, event.reason)
        else:
            self.kick(target, event.by, event.reason)

    @applies(cluster.RemoteBan)
    def on_remote_ban(self, event: cluster.RemoteBan) -> None:
        self.bans[event.address] = (event.until - self.wall_offset, event.reason)

    def list_bans(self, client: Client) -> None:
        if not client.operator:
            self.send(client, proto.Error("only operators can see the bans", Code.NOT_OPERATOR))
            return
        live = sorted((until, key, reason) for key, (until, reason) in self.bans.items()
                      if until > self.now)
        if not live:
            self.send(client, proto.Info("no bans"))
        for until, key, reason in live:
            minutes = max(1, round((until - self.now) / 60))
            self.send(client, proto.Info(f"ban: {key} for {minutes} more minutes"
                                         + (f" ({reason})" if reason else "")))

    def kick(self, target: Client, by: str, reason: str, banned: bool = False) -> None:
        """Everyone hears of it, then the user leaves (no grace: a kicked
        session is over) and the connection closes, after an error that
        tells its client (by its code) not to come back by itself."""
        log.info("kick %s by %s: %s", target.nick, by, proto.quote(reason, 200))
        reason = proto.quote(reason, 300)
        self.announce(proto.Kicked(target.nick, by, reason))
        outlet = target.outlet
        if target.state is State.DETACHED:
            self.end_session(target, f"kicked by {by}")
            return
        told = f"you were kicked by {by}" + (f" ({reason})" if reason else "")
        self.send(target, proto.Error(told, Code.BANNED if banned else Code.KICKED))
        self.leave_chat(target)
        self.outbox.close(outlet)
        target.become(State.CLOSING)

    @handles(proto.Away)
    def on_away(self, client: Client, away: proto.Away) -> None:
        """Away with a message; an empty one means back."""
        text = away.message.strip()
        if len(text) > MAX_AWAY:
            self.send(client, proto.Error(f"away message too long (at most {MAX_AWAY} "
                                          "characters)", Code.TOO_LONG))
            return
        client.away = text or None
        self.send(client, proto.Info(f"you are away: {text}" if text else "you are back"))
        if self.link:
            self.link.publish(cluster.RemoteAway(client.nick, text))

    @handles(proto.WhoRequest)
    def on_who(self, client: Client, _: proto.WhoRequest) -> None:
        room = client.room
        users = self.users_in(room)
        away = {user.nick: user.away for user in users if user.away}

        def who(part: tuple) -> proto.WhoList:
            marks = {nick: away[nick] for nick in part if nick in away}
            return proto.WhoList(self.label(room.name), part, marks or None)

        for packet in list_packets(who, [user.nick for user in users],
                                   lambda nick: len(json_text(nick)) + 2 + len(
                                       json_text(away[nick])) if nick in away else 0):
            self.send(client, packet)

    def users_in(self, room: Room) -> list[Client | RemoteUser]:
        """Who is in a room, here and on other nodes, in reading order."""
        users: list[Client | RemoteUser] = list(room.members)
        users += [u for u in self.remote.values() if proto.name_key(u.room) == room.key]
        users.sort(key=lambda user: display_order(user.nick))
        return users

    @handles(proto.RoomsRequest)
    def on_rooms(self, client: Client, _: proto.RoomsRequest) -> None:
        names = {key: self.label(room.name) for key, room in self.rooms.items()}
        counts = {key: len(room.members) for key, room in self.rooms.items()}
        for user in self.remote.values():
            key = proto.name_key(user.room)
            names.setdefault(key, self.label(user.room))
            counts[key] = counts.get(key, 0) + 1
        lobby = self.lobby.key
        always = [] if self.world else [lobby]  # a world has no lobby
        order = always + sorted((key for key in counts if key not in always and counts[key]),
                                key=lambda key: display_order(names[key]))
        rooms = [proto.RoomCount(names[key], counts[key]) for key in order]
        for packet in list_packets(proto.RoomList, rooms):
            self.send(client, packet)

    @handles(proto.EnterRoom)
    def on_enter(self, client: Client, enter: proto.EnterRoom) -> None:
        if self.world:
            self.send(client, proto.Error("there are no rooms to join in this world: walk "
                                          "with go (exits: " + self.exits_here(client) + ")",
                                          Code.WORLD))
            return
        key = proto.name_key(enter.room)
        old = client.room
        if old.key == key:
            self.send(client, proto.Error(f"already in room {old.name}", Code.BAD_PACKET))
            return
        self.move(client, self.room_named(enter.room))

    def room_named(self, name: str) -> Room:
        """The room of that name, or a new one (it exists once entered)."""
        return self.rooms.get(proto.name_key(name)) or Room(name)

    def move(self, client: Client, room: Room) -> None:
        """To another room: its old room sees it go, its new one arrive."""
        old = client.room
        self.enter(client, room)
        if self.link:
            self.link.moved(client.nick, old.name, room.name)
            self.published()
        move = {"mover": proto.name_key(client.nick), "old": old.key, "new": room.key}
        self.announce(proto.ExitedRoom(client.nick, self.label(old.name)), old.key, **move)
        self.announce(proto.EnteredRoom(client.nick, self.label(room.name)), room.key, **move)

    # ---- world mode: the world module decides, this routes ----

    def label(self, room: str) -> str:
        """What users see a room called: in world mode, its place's title."""
        if self.world:
            place = self.world.world.places.get(room)
            if place is not None:
                return place.title
        return room

    def arrival_room(self, nick: str) -> Room:
        """Where a user arriving now starts: the lobby, or in world mode the
        place it was in when it left (the world's start the first time)."""
        if not self.world:
            return self.lobby
        key = proto.name_key(nick)
        place = self.world.place_of(key)
        forgotten = self.world.put_player(key, place)
        if self.link:
            self.link.save_place(key, place)
            for player in forgotten:
                self.link.save_place(player, None)
        return self.room_named(place)

    def in_world(self, client: Client) -> bool:
        if self.world is None:
            self.send(client, proto.Error("this server has no world (it was started "
                                          "without --world)", Code.NO_WORLD))
        return self.world is not None

    def exits_here(self, client: Client) -> str:
        return ", ".join(world.view(self.world, proto.name_key(client.nick)).exits) or "none"

    def send_view(self, client: Client) -> None:
        """The place, naming at most PEOPLE_SHOWN people and ITEMS_SHOWN items
        (a crowd of thousands must not make a packet too large to send)."""
        seen = world.view(self.world, proto.name_key(client.nick))
        people = [user.nick for user in self.users_in(client.room)]
        items = [item.shown for item in seen.items]
        self.send(client, proto.PlaceView(
            seen.place.id, seen.place.title, seen.place.description, tuple(seen.exits),
            tuple(items[:ITEMS_SHOWN]), tuple(people[:PEOPLE_SHOWN]),
            max(0, len(items) - ITEMS_SHOWN), max(0, len(people) - PEOPLE_SHOWN)))

    def send_inventory(self, client: Client) -> None:
        carried = [i.shown for i in self.world.carried_by(proto.name_key(client.nick))]
        self.send(client, proto.Inventory(tuple(carried[:ITEMS_SHOWN]),
                                          max(0, len(carried) - ITEMS_SHOWN)))

    @handles(proto.Look)
    def on_look(self, client: Client, look: proto.Look) -> None:
        if not self.in_world(client):
            return
        if look.at is None or not look.at.strip():
            self.send_view(client)
            return
        said = world.look_at(self.world, proto.name_key(client.nick), look.at)
        self.send(client, proto.Error(said.text, Code.WORLD) if isinstance(said, world.Refusal)
                  else proto.Info(said))

    @handles(proto.Go)
    def on_go(self, client: Client, go: proto.Go) -> None:
        if not self.in_world(client):
            return
        moved = world.go(self.world, proto.name_key(client.nick), go.exit)
        if isinstance(moved, world.Refusal):
            self.send(client, proto.Error(moved.text, Code.WORLD))
            return
        if moved.key is not None:
            self.send(client, proto.Info(f"You open the way with {moved.key.the}."))
        place = moved.new.id
        if self.link:
            self.link.save_place(proto.name_key(client.nick), place)
        self.move(client, self.room_named(place))
        self.send_view(client)

    @handles(proto.Take)
    def on_take(self, client: Client, take: proto.Take) -> None:
        """Alone, the world decides; in a cluster Redis does (in one step),
        so that users on two nodes cannot both take the same item."""
        if not self.in_world(client):
            return
        player = proto.name_key(client.nick)
        if not self.link:
            self.handle_item(client, world.take(self.world, player, take.item), "picks up")
            return
        item = world.choose_here(self.world, player, take.item)
        if isinstance(item, world.Refusal):
            self.send(client, proto.Error(item.text, Code.WORLD))
        else:
            self.link.take_item(client, item.id, self.world.place_of(player), player)

    @applies(cluster.ItemTaken)
    def on_item_taken(self, event: cluster.ItemTaken) -> None:
        client, item = event.token, self.world.world.items[event.item]
        if not event.granted:
            if client.state is State.JOINED:
                self.send(client, proto.Error(
                    "Nothing can be picked up while the chat servers' shared store is "
                    "away; try again in a moment." if event.unreachable else
                    f"{item.the.capitalize()} is not here any more: someone was quicker.",
                    Code.WORLD))
            return
        player = proto.name_key(client.nick or "")
        self.world.place_item(item.id, player=player)
        if client.state is State.JOINED:
            self.handle_item(client, world.Handled(item), "picks up")

    @handles(proto.Drop)
    def on_drop(self, client: Client, drop: proto.Drop) -> None:
        if not self.in_world(client):
            return
        player = proto.name_key(client.nick)
        dropped = world.drop(self.world, player, drop.item)
        if self.link and isinstance(dropped, world.Handled):
            self.link.put_item(dropped.item.id, self.world.place_of(player))
        self.handle_item(client, dropped, "drops")

    @applies(cluster.RemoteItem)
    def on_remote_item(self, event: cluster.RemoteItem) -> None:
        known = self.world.world if self.world else None
        if known is None or event.item not in known.items or (
                event.place and event.place not in known.places):
            self.log_once("ignoring an event about an item or place this world lacks",
                          event.node)
            return
        self.world.place_item(event.item, event.place or None, event.holder or None)

    def handle_item(self, client: Client, result: world.Handled | world.Refusal,
                    verb: str) -> None:
        """The place sees it done (as an emote); the doer gets its inventory."""
        if isinstance(result, world.Refusal):
            self.send(client, proto.Error(result.text, Code.WORLD))
            return
        self.say_in_room(client, proto.EmoteFrom(client.nick, f"{verb} {result.item.the}"))
        self.send_inventory(client)

    @handles(proto.InventoryRequest)
    def on_inventory(self, client: Client, _: proto.InventoryRequest) -> None:
        if self.in_world(client):
            self.send_inventory(client)

    # ------------------------------------------------------------------
    # Rooms and leaving

    def enter(self, client: Client, room: Room | None) -> None:
        """Move a client to a room (None: out of every room)."""
        old = client.room
        if old is not None:
            old.members.discard(client)
            if not old.members and old is not self.lobby:
                del self.rooms[old.key]
        client.room = room
        if room is not None:
            room.members.add(client)
            self.rooms[room.key] = room
        if client.outlet is not None:
            self.outbox.move(client.outlet, room.key if room else None)

    def leave_chat(self, client: Client) -> None:
        self.held_off(client)
        if client.nick is None:
            return
        key = proto.name_key(client.nick)
        del self.by_nick[key]
        self.enter(client, None)
        if client.token is not None:
            del self.sessions[client.token]
            if self.link:
                self.link.end_session(session_digest(client.token), client.nick)
            client.token = None
            if client.state is not State.DETACHED:
                self.attached_sessions -= 1
        if self.link:
            self.link.left(client.nick, key)
            self.published()
        self.announce(proto.Left(client.nick))
        client.nick = None

    def held_off(self, client: Client) -> None:
        client.held, client.held_bytes = None, 0

    # ------------------------------------------------------------------
    # The cluster: what other nodes say, applied to this node's clients

    @applies(cluster.Claimed)
    def on_claimed(self, event: cluster.Claimed) -> None:
        client, nick = event.token, event.nick
        key = proto.name_key(nick)
        if self.claims.get(key, (None,))[0] is client:
            del self.claims[key]
        if client.state is not State.CLAIMING:
            if event.granted:
                self.link.left(nick, key)  # nobody will use it after all
            return
        hello, client.pending = client.pending, None
        if not event.granted:
            self.reject(client, f"nick {nick} is already taken", Code.NICK_TAKEN)
            return
        try:
            self.complete_hello(client, nick, hello.session)
        except Exception:
            self.drop_after_bug(client)
            return
        self.process(client, self.now)  # what came meanwhile, fenced like any packet

    @applies(cluster.RemoteJoin)
    def on_remote_join(self, event: cluster.RemoteJoin) -> None:
        self.remote_join(event.node, event.nick, event.room)
        self.follow_player(event.nick, event.room)

    def follow_player(self, nick: str, room: str) -> None:
        """World mode: where another node's user is now."""
        if self.world and room in self.world.world.places:
            self.world.put_player(proto.name_key(nick), room)

    @applies(cluster.RemoteLeave)
    def on_remote_leave(self, event: cluster.RemoteLeave) -> None:
        if self.owned_by(event.nick, event.node):
            self.remote_leave(event.nick)

    @applies(cluster.RemoteMove)
    def on_remote_move(self, event: cluster.RemoteMove) -> None:
        user = self.owned_by(event.nick, event.node)
        if user is None:
            return
        user.room = event.new
        self.follow_player(user.nick, event.new)
        move = {"mover": proto.name_key(user.nick), "old": proto.name_key(event.old),
                "new": proto.name_key(event.new)}
        for room_name, message in (
                (event.old, proto.ExitedRoom(user.nick, self.label(event.old))),
                (event.new, proto.EnteredRoom(user.nick, self.label(event.new)))):
            self.announce(message, proto.name_key(room_name), **move)  # logged even if
            # nobody is in that room here: a session may resume here

    @applies(cluster.RemoteSpeech)
    def on_remote_speech(self, event: cluster.RemoteSpeech) -> None:
        user = self.owned_by(event.nick, event.node)
        cls = proto.ChatFrom if event.said == proto.ChatFrom.TYPE else proto.EmoteFrom
        message = cls(event.nick, event.message)
        if user is not None and self.remote_packet(message, event.node):
            self.announce(message, proto.name_key(event.room))

    @applies(cluster.RemoteDirect)
    def on_remote_direct(self, event: cluster.RemoteDirect) -> None:
        target = self.by_nick.get(proto.name_key(event.to))
        if self.owned_by(event.sender, event.node) is None:
            return
        message = proto.DirectFrom(event.sender, target.nick if target else event.to,
                                   event.message)
        if not self.remote_packet(message, event.node):
            return
        if target is None:  # logged all the same: its user may resume here
            self.record(message, frozenset({proto.name_key(event.sender),
                                            proto.name_key(event.to)}))
        else:
            self.send_event([target], message)

    def owned_by(self, nick: str, node: str) -> RemoteUser | None:
        """The remote user ``nick`` if ``node`` is where we know it to be;
        an event about someone else's user is ignored (logged once)."""
        user = self.remote.get(proto.name_key(nick))
        if user is None or user.node != node:
            self.log_once("ignoring an event about a nick the node does not own", node)
            return None
        return user

    def remote_packet(self, message: proto.Message, node: str) -> bytes | None:
        try:
            return proto.encode(message)
        except proto.PacketTooLarge:
            self.log_once("ignoring an event too large to pass on", node)
            return None

    def log_once(self, what: str, node: str) -> None:
        if (what, node) not in self.logged and len(self.logged) < 1000:
            self.logged.add((what, node))
            log.warning("cluster: %s (from %s; logged once)", what, node[:40])

    @applies(cluster.RemoteAway)
    def on_remote_away(self, event: cluster.RemoteAway) -> None:
        user = self.owned_by(event.nick, event.node)
        if user is not None:
            user.away = event.message[:MAX_AWAY] or None

    @applies(cluster.RemotePresence)
    def on_remote_presence(self, event: cluster.RemotePresence) -> None:
        self.sync_node(event.node, event.users)

    @applies(cluster.Snapshot)
    def on_snapshot(self, event: cluster.Snapshot) -> None:
        """Everyone's presence as Redis has it.  A node missing from it may
        still be on its way back (after a Redis restart): its users stay
        until the link says the node is dead."""
        for node, users in event.nodes.items():
            self.sync_node(node, users)

    @applies(cluster.NodeDead)
    def on_node_dead(self, event: cluster.NodeDead) -> None:
        """A node stopped beating: its users leave, except those with a
        session, who stay for the resume grace (they may resume here or
        on any other node)."""
        log.warning("cluster: node %s stopped answering; its users have left, but for "
                    "%d with sessions", event.node, len(event.sessions))
        grace = self.settings.resume_grace
        for user in [u for u in self.remote.values() if u.node == event.node]:
            digest = event.sessions.get(user.nick)
            if digest and grace:
                user.session, user.orphan_until = digest, self.now + grace
                self.orphans.append((user.orphan_until, user))
            else:
                self.remote_leave(user.nick)

    @applies(cluster.Progress)
    def on_progress(self, event: cluster.Progress) -> None:
        """How far the stream was read, and where our own events landed."""
        if event.start and self.log_start is None:
            self.log_start = cluster.stream_id(event.cursor)
        self.stream_cursor = max(self.stream_cursor, cluster.stream_id(event.cursor))
        for seq, entry_id in event.own:
            for entry in self.unappended.pop(seq, ()):
                entry.stream = cluster.stream_id(entry_id)
        self.resume_waiting()

    @applies(cluster.LinkLost)
    def on_link_lost(self, event: cluster.LinkLost) -> None:
        self.tell_everyone("lost contact with the other chat servers; until it is back "
                           "you are chatting with the users of this server only")

    @applies(cluster.LinkRestored)
    def on_link_restored(self, event: cluster.LinkRestored) -> None:
        self.tell_everyone("back in contact with the other chat servers")

    @applies(cluster.Undelivered)
    def on_undelivered(self, event: cluster.Undelivered) -> None:
        self.tell_everyone(f"{event.count} messages said here while the other chat servers "
                           "were unreachable could not be passed on to them")

    @applies(cluster.DataLost)
    def on_data_lost(self, event: cluster.DataLost) -> None:
        self.tell_everyone("the chat servers' shared store restarted empty; messages sent "
                           "just before may have been lost")

    def tell_everyone(self, text: str) -> None:
        """An information line for every user of this node."""
        self.outbox.broadcast(proto.encode(proto.Info(text)))

    @applies(cluster.Conflict)
    def on_conflict(self, event: cluster.Conflict) -> None:
        client = self.by_nick.get(proto.name_key(event.nick))
        if client is not None:
            self.reject(client, f"nick {event.nick} was taken on another server while "
                                "this one was cut off", Code.NICK_TAKEN)

    def sync_node(self, node: str, users: dict[str, str]) -> None:
        """Make our view of a node's users match ``users`` (nick -> room)."""
        present = {proto.name_key(nick) for nick in users}
        for key, user in list(self.remote.items()):
            if user.node == node and key not in present:
                self.remote_leave(user.nick)
        for nick, room in users.items():
            self.remote_join(node, nick, room)

    def remote_join(self, node: str, nick: str, room: str) -> None:
        key = proto.name_key(nick)
        user = self.remote.get(key)
        if user is not None:
            user.node, user.room = node, room
            return
        if key in self.by_nick:
            return  # ours: a stale claim elsewhere, settled by the nick lease
        self.remote[key] = RemoteUser(nick, node, room)
        self.announce(proto.Joined(nick))

    def remote_leave(self, nick: str) -> None:
        user = self.remote.pop(proto.name_key(nick), None)
        if user is not None:
            self.announce(proto.Left(user.nick))


def _check_tables() -> None:
    """Every message a client may send and every event the cluster may hand
    over has exactly one handler; checked when the module loads."""
    for what, table, registry in (
            ("client message", PACKET_HANDLERS, proto.CLIENT_MESSAGES.values()),
            ("cluster event", CLUSTER_HANDLERS, cluster.EVENT_TYPES)):
        missing = sorted(cls.__name__ for cls in set(registry) - set(table))
        if missing:
            raise ImportError(f"the core has no handler for {what}(s): {', '.join(missing)}")


_check_tables()


def display_order(name: str) -> tuple[str, str]:
    """Lists are sorted as a reader expects: alphabetically, ignoring case."""
    return name.casefold(), name


def kick_reason(reason: str, minutes: int) -> str:
    """What a kick says: the reason, and the ban's length if there is one."""
    if not minutes:
        return reason
    return f"banned for {minutes} minutes" + (f": {reason}" if reason else "")


def taken_message(nick: str, holder: str) -> str:
    if nick.casefold() == holder.casefold():
        return f"nick {nick} is already taken"
    return f"nick {nick} is already taken: it looks like {holder}"


def format_address(address: tuple) -> str:
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_key(host: str) -> str:
    """What max_per_ip counts by: the IPv4 address, or the IPv6 /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def json_text(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def list_packets(make: Callable[[tuple], proto.Message], items: list,
                 extra: Callable[[Any], int] = lambda item: 0) -> list[bytes]:
    """A list reply (who, rooms) as whole packets: as many items in each as
    fit in 65,535 bytes of UTF-8, every item once, in order.  ``extra`` is
    what an item adds elsewhere in the packet (a who's away message)."""
    room = proto.MAX_PAYLOAD + proto.HEADER_SIZE - len(proto.encode(make(()))) - 16
    packets: list[bytes] = []
    part: list = []
    used = 0
    for item in items:
        size = len(json_text(proto.to_json(item))) + extra(item)
        if part and used + 1 + size > room:
            packets.append(proto.encode(make(tuple(part))))
            part, used = [], 0
        used += size + (1 if part else 0)
        part.append(item)
    packets.append(proto.encode(make(tuple(part))))
    return packets
