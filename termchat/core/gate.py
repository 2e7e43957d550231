"""The connection gate: what one connection or one address may cost.

Owns each connection's record (:class:`Connection`: its state, its held
input, its token bucket, its mistakes) and the per-address books: open
connections (``--max-per-ip``), new connections per second
(``--connect-rate``/``--connect-burst``, a token bucket per address), the
hello deadlines (``--hello-timeout``) and the connections whose input waits
for tokens (``--rate``/``--burst``).  Addresses are counted by
:func:`address_key` (an IPv4 address, or an IPv6 /64).  No I/O, no clock:
time comes in as ``now``.
"""

from __future__ import annotations

import enum
import functools
import heapq
import ipaddress
import itertools
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from termchat.core.delivery import Outlet
from termchat.wire.protocol import Code

if TYPE_CHECKING:
    from termchat.core.presence import User
    from termchat.wire.protocol import Hello

RESUMES_PER_CONNECTION = 3  # resumes a connection may try before it is closed
CONNECT_BUCKETS = 100_000   # addresses whose connection rate is remembered at once


@dataclass(frozen=True)
class Limits:
    """What one client or one address may cost; 0 turns a limit off."""

    max_queue: int = 1 << 20       # bytes of unsent output (and of held input)
    hello_timeout: float = 10.0    # seconds to complete hello
    max_per_ip: int = 32           # open connections from one address (IPv6: a /64)
    rate: float = 5.0              # packets per second that cost work...
    burst: int = 20                # ...with this many at once
    connect_rate: float = 1.0      # new connections per second from one address...
    connect_burst: int = 32        # ...with this many at once


class State(enum.Enum):
    """Where a connection is in its life; see TRANSITIONS."""

    GREETING = "greeting"  # connected, no hello yet
    CLAIMING = "claiming"  # said hello; the cluster is granting the nick (or a session)
    JOINED = "joined"      # in the chat: its user is attached to it
    CLOSING = "closing"    # an error was sent; closes once it is written
    GONE = "gone"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.GREETING: frozenset({State.CLAIMING, State.JOINED, State.CLOSING, State.GONE}),
    State.CLAIMING: frozenset({State.GREETING, State.JOINED, State.CLOSING, State.GONE}),
    State.JOINED: frozenset({State.CLOSING, State.GONE}),
    State.CLOSING: frozenset({State.GONE}),
    State.GONE: frozenset(),
}


class Connection:
    """One connection as the chat sees it: its outlet (its output), where it
    is in its life, and what it may still cost.  Its user, once joined,
    outlives it (a resume attaches a new connection to the same user)."""

    __slots__ = ("outlet", "peer", "address", "ban_key", "state", "held", "held_bytes",
                 "paused", "tokens", "refilled", "mistakes", "resumes", "pending", "user",
                 "hello_by")

    def __init__(self, outlet: Outlet, peer: str, address: str, now: float,
                 burst: int) -> None:
        self.outlet = outlet
        self.peer = peer
        self.address: str | None = None  # counted against max_per_ip while set
        self.ban_key = address           # what a ban of its user holds out
        self.state = State.GREETING
        self.held: deque[bytes] | None = None  # payloads not handled yet, in order
        self.held_bytes = 0
        self.paused = False              # the transport stopped reading for us
        self.tokens = float(burst)
        self.refilled = now
        self.mistakes = 0
        self.resumes = 0                 # resumes tried on this connection
        self.pending: Hello | None = None  # a hello waiting on the cluster
        self.user: User | None = None
        self.hello_by = 0.0              # its hello deadline (the last one given)

    def become(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"{self!r}: no transition from {self.state.name} to {state.name}")
        self.state = state

    def drop_held(self) -> None:
        self.held, self.held_bytes = None, 0

    def __repr__(self) -> str:
        nick = self.user.nick if self.user is not None else "?"
        return f"<{nick} {self.peer}>"


class Bucket:
    """A token bucket: ``rate`` a second, ``burst`` at once."""

    __slots__ = ("tokens", "refilled", "refusing")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens, self.refilled = float(burst), now
        self.refusing = False  # refused since the last token it gave

    def take(self, rate: float, burst: int, now: float) -> bool:
        self.tokens = min(float(burst), self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        self.refusing = False
        return True

    def empty(self, rate: float, burst: int, now: float) -> bool:
        """Whether take() would refuse now (and nothing taken)."""
        return min(float(burst), self.tokens + (now - self.refilled) * rate) < 1

    def wait(self, rate: float) -> float:
        """Seconds until one token is there."""
        return max(0.0, (1 - self.tokens) / rate)

    def full_at(self, rate: float, burst: int) -> float:
        return self.refilled + (burst - self.tokens) / rate


class ConnectionGate:
    """Connections by outlet, and the limits on each connection and address."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections: dict[Outlet, Connection] = {}
        self.per_address: dict[str, int] = {}
        self.connects: dict[str, Bucket] = {}     # address key -> its connection rate
        self.forget_connects: list[tuple[float, str]] = []  # heap: when a bucket is full
        self.greeting: deque[tuple[float, Connection]] = deque()  # hello deadlines, in order
        self.throttled: list[tuple[float, int, Connection]] = []  # heap: when to read again
        self._order = itertools.count()

    # ---- arriving and leaving ----

    def admit(self, outlet: Outlet, address: tuple, now: float
              ) -> tuple[Connection, tuple[str, str] | None]:
        """Record a new connection; the refusal (text, code) if its address
        is over a limit (it then counts against nothing)."""
        key = address_key(str(address[0]))
        conn = Connection(outlet, format_address(address), key, now, self.limits.burst)
        self.connections[outlet] = conn
        refusal = self.connect_refusal(key, now)
        if refusal is not None:
            return conn, refusal
        count = self.per_address.get(key, 0)
        if self.limits.max_per_ip and count >= self.limits.max_per_ip:
            return conn, ("too many connections from your address", Code.TOO_MANY)
        self.per_address[key] = count + 1
        conn.address = key
        self.restart_greeting(conn, now)
        return conn, None

    def connect_refusal(self, key: str, now: float) -> tuple[str, str] | None:
        """The connection rate of one address, checked before any hello."""
        rate, burst = self.limits.connect_rate, self.limits.connect_burst
        if not rate:
            return None
        bucket = self.connects.get(key)
        if bucket is None:
            if len(self.connects) >= CONNECT_BUCKETS:
                self.forget_full_buckets(now, force=True)
            bucket = self.connects[key] = Bucket(burst, now)
        if bucket.take(rate, burst, now):
            heapq.heappush(self.forget_connects, (bucket.full_at(rate, burst), key))
            return None
        seconds = max(1, round(bucket.wait(rate) + 0.5))
        return (f"too many new connections from your address; try again in {seconds} "
                f"seconds", Code.THROTTLED)

    def over_connect_rate(self, key: str, now: float) -> bool:
        """Whether a new connection from this address would be refused for
        its rate (asked before admit(), which takes the token)."""
        bucket = self.connects.get(key)
        return bucket is not None and bool(self.limits.connect_rate) and \
            bucket.empty(self.limits.connect_rate, self.limits.connect_burst, now)

    def first_refusal(self, key: str) -> bool:
        """Whether this is the first connection refused from the address
        since it was last let in (so that a flood is logged once)."""
        bucket = self.connects.get(key)
        if bucket is None or bucket.refusing:
            return False
        bucket.refusing = True
        return True

    def take_resume(self, conn: Connection, now: float) -> bool:
        """A resume attempt: the first on a connection is paid by its
        connection, the others by its address's connection rate; at most
        RESUMES_PER_CONNECTION in all."""
        conn.resumes += 1
        if conn.resumes > RESUMES_PER_CONNECTION:
            return False
        if conn.resumes == 1:
            return True
        return self.connect_refusal(conn.ban_key or conn.peer, now) is None

    def forget_full_buckets(self, now: float, force: bool = False) -> None:
        """Buckets that are full again cost nothing to forget: the next
        connection from that address starts a full one."""
        rate, burst = self.limits.connect_rate, self.limits.connect_burst
        heap = self.forget_connects
        while heap and (heap[0][0] <= now or force):
            _, key = heapq.heappop(heap)
            bucket = self.connects.get(key)
            if bucket is not None and (bucket.full_at(rate, burst) <= now or force):
                del self.connects[key]
            force = force and len(self.connects) >= CONNECT_BUCKETS

    def release(self, conn: Connection) -> None:
        """The connection no longer counts against its address's limit."""
        if conn.address is not None:
            remaining = self.per_address[conn.address] - 1
            if remaining:
                self.per_address[conn.address] = remaining
            else:
                del self.per_address[conn.address]
            conn.address = None

    def forget(self, outlet: Outlet) -> Connection | None:
        conn = self.connections.pop(outlet, None)
        if conn is not None:
            self.release(conn)
        return conn

    def attach(self, conn: Connection, old: Outlet | None = None) -> None:
        """The connection is known by its outlet (again, after a resume)."""
        if old is not None:
            self.connections.pop(old, None)
        self.connections[conn.outlet] = conn

    def restart_greeting(self, conn: Connection, now: float) -> None:
        """A hello deadline: at connect, and a new one (replacing it) after a
        resume that came back refused."""
        if self.limits.hello_timeout:
            conn.hello_by = now + self.limits.hello_timeout
            self.greeting.append((conn.hello_by, conn))

    # ---- input ----

    def hold(self, conn: Connection, payloads: list[bytes]) -> bool:
        """Keep payloads until they can be handled; False when the client
        has sent more than the server keeps for it."""
        if conn.held is None:
            conn.held = deque()  # made only when needed: most clients never need it
        conn.held.extend(payloads)
        conn.held_bytes += sum(map(len, payloads))
        return conn.held_bytes + conn.outlet.queued <= self.limits.max_queue

    def take_token(self, conn: Connection, now: float) -> bool:
        """The input token bucket (``rate`` packets a second, ``burst`` at
        once); without a token the connection waits in ``throttled``."""
        rate = self.limits.rate
        if not rate:
            return True
        burst = self.limits.burst
        tokens = min(float(burst), conn.tokens + (now - conn.refilled) * rate)
        conn.refilled = now
        if tokens >= 1:
            conn.tokens = tokens - 1
            return True
        conn.tokens = tokens
        heapq.heappush(self.throttled, (now + (1 - tokens) / rate, next(self._order), conn))
        return False

    # ---- time ----

    def silent(self, now: float) -> list[Connection]:
        """Connections whose hello deadline has passed without a hello."""
        late: dict[Connection, None] = {}  # (a connection may have two deadlines)
        while self.greeting and self.greeting[0][0] <= now:
            _, conn = self.greeting.popleft()
            if conn.state is State.GREETING and conn.hello_by <= now:  # not one replaced
                late[conn] = None
        return list(late)

    def refilled_now(self, now: float) -> list[Connection]:
        """Throttled connections whose tokens have come back."""
        ready = []
        while self.throttled and self.throttled[0][0] <= now:
            _, _, conn = heapq.heappop(self.throttled)
            if conn.state is not State.GONE:
                ready.append(conn)
        self.forget_full_buckets(now)
        return ready

    def next_due(self) -> float | None:
        due = [queue[0][0] for queue in (self.greeting, self.throttled) if queue]
        return min(due) if due else None


def format_address(address: tuple) -> str:
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=4096)  # parsed per connection: a churning address is one
def address_key(host: str) -> str:
    """What the address limits count by: the IPv4 address, or the IPv6 /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
