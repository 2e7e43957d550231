"""What the core asks of the world outside it: an outbox for output
(termchat.core.delivery.Delivery), in a cluster a link to the other nodes
(termchat.cluster.link.ClusterLink; in tests, a fake one), and on a single
server with ``--db`` a store (termchat.store.sqlite.SqliteStore; without
it, NoStore).  The implementations are checked against these protocols by
the tests.

Every link method only queues work and returns at once; those that
publish an event return the number it was published under, which the core
stamps its own log entry with.  Answers (a nick granted, a session handed
over, an item taken) come back later as events (termchat.cluster.events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from termchat.cluster.events import NodeEvent
from termchat.core.delivery import Outlet

if TYPE_CHECKING:
    from termchat.core.eventlog import LogEntry


class Outbox(Protocol):
    def send(self, outlet: Outlet, packet: bytes) -> None: ...
    def broadcast(self, packet: bytes, room: str | None = None,
                  with_ids: bytes | None = None) -> None: ...
    def move(self, outlet: Outlet, room: str | None, ids: bool | None = None) -> None: ...
    def close(self, outlet: Outlet) -> None: ...
    def pause_input(self, outlet: Outlet, paused: bool) -> None: ...


class Link(Protocol):
    node_id: str

    @property
    def published_count(self) -> int:
        """How many events this node has published (the last one's number)."""

    # nicks and presence
    def claim(self, token: Any, nick: str, key: str) -> None: ...
    def release(self, nick: str, key: str) -> None: ...
    def rename(self, token: Any, old: str, new: str) -> int: ...
    def joined(self, nick: str, room: str, replaces: str = "") -> int: ...
    def left(self, nick: str, key: str) -> int: ...
    def moved(self, nick: str, old: str, new: str, way: str = "") -> int: ...
    def publish(self, event: NodeEvent) -> int: ...
    def ban(self, address: str, minutes: int, reason: str) -> int: ...

    # sessions
    def record_session(self, digest: str, nick: str, old: str | None = None,
                       room: str | None = None) -> None: ...
    def end_session(self, digest: str, nick: str, node: str | None = None) -> None: ...
    def take_over(self, token: Any, digest: str, nick: str) -> None: ...
    def adopted(self, nick: str, room: str, old: str) -> int: ...
    def hand_back(self, digest: str, nick: str, old: str) -> None: ...
    def forget(self, nick: str) -> None: ...

    # world mode
    def take_item(self, token: Any, item: str, place: str, player: str) -> int: ...
    def put_item(self, item: str, place: str) -> int: ...
    def hold_item(self, item: str, player: str) -> None: ...
    def save_place(self, player: str, place: str | None) -> None: ...


LINK_CALLS = frozenset(name for name in vars(Link) if not name.startswith("_")
                       and name not in ("node_id", "published_count"))


class Store(Protocol):
    """Where a single server keeps what it must not forget (``--db``): the
    log's entries, its users (and their sessions), its bans.  Each call only
    queues a write; the transport commits them once a loop turn, before that
    turn's output is sent.  ``older`` reads room history kept there."""

    def entry(self, entry: LogEntry, packet: bytes) -> None: ...
    def user(self, key: str, nick: str, room: str, digest: str | None, start: int) -> None: ...
    def user_gone(self, key: str) -> None: ...
    def ban(self, address: str, seconds: float, reason: str) -> None: ...
    def unban(self, address: str) -> None: ...
    def older(self, room: str, before: int,
              limit: int) -> tuple[list[LogEntry], bool] | None: ...


class NoStore:
    """No database: the state is in memory only (and gone with the process)."""

    def entry(self, entry: LogEntry, packet: bytes) -> None:
        pass

    def user(self, key: str, nick: str, room: str, digest: str | None, start: int) -> None:
        pass

    def user_gone(self, key: str) -> None:
        pass

    def ban(self, address: str, seconds: float, reason: str) -> None:
        pass

    def unban(self, address: str) -> None:
        pass

    def older(self, room: str, before: int,
              limit: int) -> tuple[list[LogEntry], bool] | None:
        return None


NO_STORE = NoStore()


@dataclass
class Saved:
    """What a store kept when the server stopped: the log's newest entries
    (number, time, message, target, size, mover), the users of the server
    then (name key, nick, room name, session digest or None, session start),
    the bans in force (address, seconds left, reason) and the last number."""
    entries: list[tuple] = field(default_factory=list)
    users: list[tuple] = field(default_factory=list)
    bans: list[tuple] = field(default_factory=list)
    last_number: int = 0
