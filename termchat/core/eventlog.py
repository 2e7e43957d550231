"""The event log: every chat event, numbered, for sessions and history.

Owns the entries and the lists they are found by.  An entry goes to one
list by its target: everyone's (joins, leaves, renames, kicks), its room's
(chat, emotes, enter and exit), or, for a DM, the lists of the names it was
for.  Beside them, per name: the moves of whoever had that name, and the
renames to it.  What a session missed after some entry is then the merge of
the few lists that reached it, each read from where it left off: everyone's,
its DMs under each name it had, and each room it was in for the stretch it
was there (its renames and moves, read backwards from where it is now, say
which).  A resume costs in proportion to what it replays, never to the
size of the log, and a flood in one room never pushes another room's
entries out.  Nothing is replayed from before the session's own start.

Bounds: each list keeps at most ``list_bytes`` of packets (what a detached
session may miss before it ends); all lists together at most
``total_bytes`` of memory and ``total_entries`` entries.  Past the total,
the lists nobody uses go first (rooms nobody is in, names nobody has), the
longest unused first (so a room's history goes when the room is empty and
its history is the oldest), then the oldest entries of the biggest lists.

In a cluster each entry also says where it came from (:class:`Origin`)
and what this node had seen when it logged it (``cursor``: the last
stream entry applied; ``published``: how many events this node had
published), which lets a session of another node be replayed here
(:meth:`EventLog.missed_elsewhere`); our own entries are logged when
said, before they are in the stream, and one that lands there after a
user we read (this node was paused, or cut off from Redis) is owed to
that user as the stream has it (:func:`landed_after`).  What one of our
users said after another node took its session over (in the stream's
order: this node was paused, say, and acted on what the client had sent
before it gave up on it) is refused by every other node; it is struck
here too once the stream says where it landed (:meth:`EventLog.disown`),
so that no replay here presents it as said.  No I/O.
"""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable, Iterable

from termchat.core.ports import NO_STORE, Store
from termchat.wire import protocol as proto

StreamId = tuple[int, int]
LIST_BYTES = 1 << 20      # packets kept per list (the default output bound)
TOTAL_BYTES = 64 << 20    # memory of all lists together (entries counted with overhead)
TOTAL_ENTRIES = 200_000
ENTRY_OVERHEAD = 400      # bytes of objects an entry costs beside its packet
OWN_KEPT = 20_000         # our own events remembered for replays on other nodes
RENAMES_FOLLOWED = 1000   # renames followed back in one replay
EVICTED_KEPT = 100_000    # lists let go whose last entry is remembered
DISOWNED_KEPT = 10_000    # users taken over elsewhere whose late events are struck
_number = attrgetter("number")
_cursor = attrgetter("cursor")
EVERYONE, ROOM, DMS, MOVES, RENAMES = "everyone", "room", "dms", "moves", "renames"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a cluster entry came from: the node that published it and its
    number there (``node`` None: worked out here, such as the leaves of a
    dead node's users, ``cause`` naming that node), and its stream entry."""
    node: str | None
    seq: int = 0
    stream: StreamId | None = None
    cause: str | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """What a session's ``after`` id says: a log number here, and in a
    cluster the node it came from and that node's stamp."""
    number: int
    node: str | None = None
    cursor: StreamId = (0, 0)
    published: int = 0


def parse_position(after: str) -> Position | None:
    """The position an ``after`` id names, or None if it is not one of ours."""
    if len(after) > 120:
        return None
    number, dot, rest = after.partition(".")
    if not number.isdigit() or len(number) > 20:
        return None
    if not dot:
        return Position(int(number))
    parts = rest.split(".")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    cursor = parse_stream_id(parts[1])
    if cursor is None:
        return None
    return Position(int(number), parts[0], cursor, int(parts[2]))


def stream_id(text: str) -> StreamId:
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def parse_stream_id(text: str) -> StreamId | None:
    milliseconds, _, sequence = text.partition("-")
    if not milliseconds.isdigit() or not (sequence or "0").isdigit():
        return None
    return int(milliseconds), int(sequence or 0)


class LogEntry:
    """One chat event as sessions see it: its number, time and message,
    who it was for (None: everyone; a room key; or the frozenset of the
    name keys of a DM's parties), for a move who moved from where to where
    (name and room keys), and in a cluster (a :class:`StampedEntry`) its
    origin and stamp.  Made for every chat: a single server's entry sets
    only what it has."""

    __slots__ = ("number", "time", "message", "target", "size", "mover", "old", "new",
                 "_packet")
    node: str | None = None  # this node's id, in a cluster
    origin: str | None = None
    seq = 0
    stream: StreamId | None = None
    cursor: StreamId = (0, 0)
    published = 0
    cause: str | None = None

    def __init__(self, number: int, time: float, message: proto.Message, target: Any,
                 size: int) -> None:
        self.number, self.time = number, time
        self.message, self.target, self.size = message, target, size
        self.mover: str | None = None
        self.old: str | None = None
        self.new: str | None = None
        self._packet: bytes | None = None

    @property
    def id(self) -> str:
        if self.node is None:
            return f"{self.number:016d}"
        return f"{self.number:016d}.{self.node}.{self.cursor[0]}-{self.cursor[1]}." \
               f"{self.published}"

    @property
    def packet(self) -> bytes:
        """The packet with its id and time, encoded once."""
        if self._packet is None:
            self._packet = proto.encode(self.message, id=self.id, time=self.time)
        return self._packet

    def history_packet(self) -> bytes:
        return proto.encode(self.message, id=self.id, time=self.time, history=True)

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


class StampedEntry(LogEntry):
    """A cluster node's entry: where it came from and what this node had
    seen when it logged it (set by :meth:`EventLog.stamp`)."""

    __slots__ = ("node", "origin", "seq", "stream", "cursor", "published", "cause")

    def __init__(self, number: int, time: float, message: proto.Message, target: Any,
                 size: int) -> None:
        super().__init__(number, time, message, target, size)
        self.node = self.origin = self.stream = self.cause = None
        self.seq = self.published = 0
        self.cursor = (0, 0)


class EntryList:
    """Entries in number order: appended at the end, dropped from the front,
    found by number in O(log n)."""

    __slots__ = ("items", "head", "bytes", "dropped_through")

    def __init__(self) -> None:
        self.items: list[LogEntry] = []
        self.head = 0
        self.bytes = 0
        self.dropped_through = 0  # the number of the last entry dropped

    def __len__(self) -> int:
        return len(self.items) - self.head

    def append(self, entry: LogEntry) -> None:
        self.items.append(entry)
        self.bytes += entry.size

    def popleft(self) -> LogEntry:
        entry = self.items[self.head]
        self.items[self.head] = None  # type: ignore[call-overload]
        self.head += 1
        self.bytes -= entry.size
        self.dropped_through = entry.number
        if self.head > 64 and self.head * 2 > len(self.items):
            del self.items[:self.head]
            self.head = 0
        return entry

    def index_after(self, number: int) -> int:
        return bisect.bisect_right(self.items, number, lo=self.head, key=_number)

    def between(self, low: int, high: int | None = None) -> list[LogEntry]:
        """The entries numbered above ``low`` and below ``high``."""
        start = self.index_after(low)
        if high is None:
            return self.items[start:]
        return self.items[start:bisect.bisect_left(self.items, high, lo=start, key=_number)]

    def first(self) -> LogEntry | None:
        return self.items[self.head] if len(self) else None

    def holds(self, entry: LogEntry) -> bool:
        index = bisect.bisect_left(self.items, entry.number, lo=self.head, key=_number)
        return index < len(self.items) and self.items[index] is entry

    def remove(self, entry: LogEntry) -> bool:
        index = bisect.bisect_left(self.items, entry.number, lo=self.head, key=_number)
        if index == len(self.items) or self.items[index] is not entry:
            return False
        del self.items[index]
        self.bytes -= entry.size
        return True

    def __iter__(self):
        return iter(self.items[self.head:])


# How a replay reads one list: (list, above this number, below that one) -> entries;
# and whether the list still holds all it needs above a number.
Reader = Callable[[EntryList, int, "int | None"], list]
Keeper = Callable[[EntryList, int], bool]


class EventLog:
    """Numbered chat events and the lists they are found by."""

    def __init__(self, history: int = 20, list_bytes: int = LIST_BYTES,
                 total_bytes: int = TOTAL_BYTES, total_entries: int = TOTAL_ENTRIES,
                 node_id: str | None = None, store: Store = NO_STORE) -> None:
        self.history = history
        self.store = store  # a single server's database keeps every entry
        self.list_bytes = list_bytes
        self.total_bytes = total_bytes
        self.total_entries = total_entries
        self.last_number = 0
        self.lists: dict[tuple[str, Any], EntryList] = {(EVERYONE, None): EntryList()}
        self.everyone = self.lists[(EVERYONE, None)]
        self.unused: OrderedDict[tuple[str, Any], None] = OrderedDict()  # oldest first
        self.big: list[tuple[int, int, tuple]] = []  # heap: (-bytes, tie, list key)
        self.evicted: OrderedDict[tuple[str, Any], int] = OrderedDict()  # -> last number
        self.forgotten_through = 0  # the last number of lists let go and not remembered
        self.memory = 0
        self.entries = 0
        # In a cluster: this node, how far its reader got, and our own events.
        self.node_id = node_id
        self.stream_cursor: StreamId = (0, 0)
        self.log_start: StreamId | None = None  # our log knows the stream from here
        self.marks: list[tuple[StreamId, int]] = []  # (cursor, first number logged at it)
        self.unappended: dict[int, list[LogEntry]] = {}  # our seq -> entries, stream unknown
        self.own: deque[LogEntry] = deque(maxlen=OWN_KEPT)
        self.first_of_death: dict[str, int] = {}  # dead node -> its first entry's number
        self.disowned: OrderedDict[str, tuple[StreamId, int | None]] = OrderedDict()  # name
        # key of a user of ours taken over elsewhere -> (the takeover's stream entry, the
        # last entry logged before the user was ours again, None: not yet)
        self.dropped: OrderedDict[str, tuple[StreamId, int]] = OrderedDict()  # name key of
        # a user of ours let go as we registered again -> (our cursor, our last entry then)

    # ---- recording ----

    def record(self, message: proto.Message, target: Any, packet: bytes, time: float,
               mover: tuple[str, str, str] | None = None, origin: Origin | None = None,
               published: int = 0) -> LogEntry:
        """Number and keep a chat event (``packet``: as base clients get it;
        ``mover``: for the exit of a move, (mover, old room, new room)
        keys; for its enter, None)."""
        self.last_number += 1
        if self.node_id is None:
            entry = LogEntry(self.last_number, time, message, target, len(packet))
        else:
            entry = StampedEntry(self.last_number, time, message, target, len(packet))
            self.stamp(entry, origin, published)
        self.file(entry, mover)
        self.store.entry(entry, packet)
        return entry

    def restore(self, number: int, time: float, message: proto.Message, target: Any,
                size: int, mover: tuple[str, str, str] | None) -> LogEntry:
        """An entry kept across a restart, back in its lists under its number."""
        entry = LogEntry(number, time, message, target, size)
        self.last_number = max(self.last_number, number)
        self.file(entry, mover)
        return entry

    def file(self, entry: LogEntry, mover: tuple[str, str, str] | None) -> None:
        """Put an entry in the lists of its target (and of its mover)."""
        message, target = entry.message, entry.target
        if target is None:
            self.keep((EVERYONE, None), entry)
            if isinstance(message, proto.NickChanged):
                self.keep((RENAMES, proto.name_key(message.nick)), entry)
        elif isinstance(target, str):
            self.keep((ROOM, target), entry)
        else:
            for name in target:
                self.keep((DMS, name), entry)
        if mover is not None:
            entry.mover, entry.old, entry.new = mover
            self.keep((MOVES, entry.mover), entry)

    def stamp(self, entry: StampedEntry, origin: Origin | None, published: int) -> None:
        entry.node, entry.cursor, entry.published = self.node_id, self.stream_cursor, published
        if not self.marks or self.marks[-1][0] != self.stream_cursor:
            self.marks.append((self.stream_cursor, entry.number))
            if len(self.marks) > 2 * self.total_entries:
                del self.marks[:self.total_entries]
        if origin is None:
            return
        entry.origin, entry.seq, entry.stream, entry.cause = \
            origin.node, origin.seq, origin.stream, origin.cause
        if origin.node == self.node_id and origin.stream is None:
            self.unappended.setdefault(origin.seq, []).append(entry)
            self.own.append(entry)
        if origin.cause is not None and origin.cause not in self.first_of_death:
            if len(self.first_of_death) >= 1000:
                del self.first_of_death[next(iter(self.first_of_death))]
            self.first_of_death[origin.cause] = entry.number

    def keep(self, key: tuple[str, Any], entry: LogEntry) -> None:
        lst = self.lists.get(key)
        if lst is None:
            lst = self.lists[key] = EntryList()
            lst.dropped_through = max(self.evicted.pop(key, 0), self.forgotten_through)
        lst.append(entry)
        self.memory += entry.size + ENTRY_OVERHEAD
        self.entries += 1
        while lst.bytes > self.list_bytes and len(lst) > 1:
            self.drop(lst)
        if (entry.number & 63) == 0 and lst.bytes >= 65536:  # now and then: a hint
            heapq.heappush(self.big, (-lst.bytes, id(lst), key))
        if self.memory > self.total_bytes or self.entries > self.total_entries:
            self.trim_total()

    def drop(self, lst: EntryList) -> None:
        entry = lst.popleft()
        self.memory -= entry.size + ENTRY_OVERHEAD
        self.entries -= 1
        if entry.origin is not None and entry.origin == self.node_id:
            self.unappended.pop(entry.seq, None)

    def trim_total(self) -> None:
        """Back under the total bounds: unused lists first, the longest
        unused first; then the oldest entries of the biggest lists."""
        while self.over_total() and self.unused:
            key, _ = self.unused.popitem(last=False)
            lst = self.lists.pop(key, None)
            if lst is None:
                continue
            last = lst.items[-1].number if len(lst) else lst.dropped_through
            while lst:
                self.drop(lst)
            self.evicted[key] = max(last, self.evicted.pop(key, 0))
            if len(self.evicted) > EVICTED_KEPT:
                _, number = self.evicted.popitem(last=False)
                self.forgotten_through = max(self.forgotten_through, number)
        while self.over_total():
            lst = self.biggest()
            if lst is None:
                return
            goal = lst.bytes // 2
            while lst and (lst.bytes > goal or self.over_total()):
                self.drop(lst)

    def over_total(self) -> bool:
        return self.memory > self.total_bytes or self.entries > self.total_entries

    def biggest(self) -> EntryList | None:
        while self.big:
            minus, _, key = heapq.heappop(self.big)
            lst = self.lists.get(key)
            if lst is not None and len(lst) and lst.bytes >= -minus // 2:
                return lst
        return max((lst for lst in self.lists.values() if len(lst)),
                   key=attrgetter("bytes"), default=None)

    # ---- what is in use ----

    def room_in_use(self, room: str, used: bool) -> None:
        """Someone is (or nobody is any more) in the room."""
        self.in_use((ROOM, room), used)

    def name_in_use(self, name: str, used: bool) -> None:
        """Someone has (or nobody has any more) the name (a name key)."""
        for kind in (DMS, MOVES, RENAMES):
            self.in_use((kind, name), used)

    def in_use(self, key: tuple[str, Any], used: bool) -> None:
        """(Un)used before its list exists counts too: the exit that empties
        a room may be what makes its list."""
        if used:
            self.unused.pop(key, None)
            return
        self.unused[key] = None
        self.unused.move_to_end(key)
        if len(self.unused) > 2 * len(self.lists) + 1000:
            for stale in [k for k in self.unused if k not in self.lists]:
                del self.unused[stale]

    # ---- reading ----

    def recent(self, room: str) -> list[LogEntry]:
        """The room's last ``history`` chats and emotes, oldest first."""
        lst = self.lists.get((ROOM, room))
        found: list[LogEntry] = []
        if lst is None or not self.history:
            return found
        for index in range(len(lst.items) - 1, lst.head - 1, -1):
            entry = lst.items[index]
            if isinstance(entry.message, (proto.ChatFrom, proto.EmoteFrom)):
                found.append(entry)
                if len(found) == self.history:
                    break
        found.reverse()
        return found

    def older(self, room: str, before: int, limit: int) -> tuple[list[LogEntry], bool]:
        """Up to ``limit`` of the room's chats and emotes numbered below
        ``before``, oldest first, and whether older ones are kept (here, or
        in the store, which keeps more)."""
        stored = self.store.older(room, before, limit)
        if stored is not None:
            return stored
        lst = self.lists.get((ROOM, room))
        found: list[LogEntry] = []
        if lst is None:
            return found, False
        index = bisect.bisect_left(lst.items, before, lo=lst.head, key=_number) - 1
        while index >= lst.head:
            entry = lst.items[index]
            if isinstance(entry.message, (proto.ChatFrom, proto.EmoteFrom)):
                if len(found) == limit:
                    return found[::-1], True
                found.append(entry)
            index -= 1
        return found[::-1], False

    def missed(self, nick: str, room: str, after: int, start: int) -> list[LogEntry] | None:
        """What the user now called ``nick``, now in ``room``, missed after
        entry ``after`` (taken as no earlier than ``start``, its session's
        own start), in order; None when that is no longer known (the log
        let some of it go, or ``after`` is not a number this log gave)."""
        if after > self.last_number:
            return None
        return self.gather(nick, room, max(after, start),
                           lambda lst, low, high: lst.between(low, high),
                           lambda lst, low: lst.dropped_through <= low)

    def missed_elsewhere(self, nick: str, room: str, position: Position,
                         start: int = 0, start_stream: StreamId | None = None
                         ) -> list[LogEntry] | None:
        """What a client of another node, who last saw ``position`` there,
        missed, as this node logged it, from entry ``start`` on (the user's
        own start here: nothing before it is owed) (None: the log does not
        reach back that far).  Lists are read from the first entry the
        client may not have seen, found by the stamps (never by reading from
        the start); and, to a user we read at stream entry ``start_stream``,
        our own entries before it that landed after it (:func:`landed_after`)."""
        missed = self.missed_from(nick, room, position, start)
        if missed is None or start_stream is None:
            return missed
        late = landed_after(self, nick, room, position, start, start_stream)
        if late is None:
            return None
        return list(heapq.merge(late, missed, key=_number)) if late else missed

    def missed_from(self, nick: str, room: str, position: Position,
                    start: int) -> list[LogEntry] | None:
        node, cursor, published = position.node, position.cursor, position.published
        if self.log_start is None or cursor < self.log_start:
            return None  # it saw its last packet before we started reading
        floor = min(self.own_unseen(cursor), self.first_of_death.get(node, self.last_number + 1),
                    self.first_logged_at(cursor))
        floor = max(floor, start + 1)

        def read(lst: EntryList, low: int, high: int | None) -> list[LogEntry]:
            return [e for e in lst.between(low, high) if not e.seen_at(node, cursor, published)]

        return self.gather(nick, room, floor - 1, read,
                           lambda lst, low: lst.dropped_through <= low)

    def first_logged_at(self, cursor: StreamId) -> int:
        """The number of the first entry logged once our cursor had reached
        ``cursor``: those before it came from stream entries the client's
        node had applied too (or are our own, or a death's: see
        own_unseen and first_of_death)."""
        index = bisect.bisect_left(self.marks, (cursor, 0))
        return self.marks[index][1] if index < len(self.marks) else self.last_number + 1

    def own_unseen(self, cursor: StreamId) -> int:
        """The number of our oldest own entry that a client whose stamp is
        ``cursor`` may not have seen (appended to the stream after it)."""
        first = self.last_number + 1
        for entry in reversed(self.own):
            if entry.stream is not None and entry.stream <= cursor:
                break
            first = entry.number
        return first

    def gather(self, nick: str, room: str, after: int, read: Reader,
               keeper: Keeper) -> list[LogEntry] | None:
        """The merge, above ``after``, of everyone's list, the DMs of each
        name the user had, and each room it was in for its stretch there."""
        periods = self.names_since(proto.name_key(nick), after)
        stretches = self.stretches(periods, room, after) if periods is not None else None
        if periods is None or stretches is None or not keeper(self.everyone, after):
            return None
        parts = [read(self.everyone, after, None)]
        for kind, ranges in ((DMS, periods), (ROOM, stretches)):
            for key, low, high in ranges:
                lst = self.lists.get((kind, key))
                if lst is None:
                    if self.let_go_after((kind, key), low):
                        return None
                    continue
                if not keeper(lst, low):
                    return None
                parts.append(read(lst, low, high))
        return list(heapq.merge(*parts, key=_number))

    def let_go_after(self, key: tuple[str, Any], low: int) -> bool:
        """Whether a list that is not here may have held entries above ``low``."""
        return max(self.evicted.get(key, 0), self.forgotten_through) > low

    def names_since(self, name: str, after: int) -> list[tuple[str, int, int | None]] | None:
        """The names the user had since entry ``after``: (name key, above
        this number, below that one), newest first, followed back through
        its renames (None: some of them were let go)."""
        periods: list[tuple[str, int, int | None]] = []
        high: int | None = None
        for _ in range(RENAMES_FOLLOWED):
            lst = self.lists.get((RENAMES, name))
            rename = None
            if lst is None and self.let_go_after((RENAMES, name), after):
                return None
            if lst is not None:
                if lst.dropped_through > after:
                    return None
                renames = lst.between(after, high)
                rename = renames[-1] if renames else None
            if rename is None:
                periods.append((name, after, high))
                return periods
            periods.append((name, rename.number, high))
            high, name = rename.number, proto.name_key(rename.message.old)
        return None

    def stretches(self, periods: list[tuple[str, int, int | None]], room: str,
                  after: int) -> list[tuple[str, int, int | None]] | None:
        """The rooms the user was in since ``after``, each with the stretch
        of entries it was there for (above, below), read back from ``room``
        through its moves under each name (None: a move was let go)."""
        moves = moves_over(self, periods)
        if moves is None:
            return None
        stretches: list[tuple[str, int, int | None]] = []
        high: int | None = None
        for move in reversed(moves):  # its exit: the old room's up to it, the new one's after
            stretches.append((move.new or room, move.number, high))
            high = move.number
        stretches.append((moves[0].old if moves else room, after, high))
        return stretches

    # ---- the stream (a cluster) ----

    def applied(self, stream: StreamId) -> None:
        """An event of another node at this stream entry is being applied."""
        if stream > self.stream_cursor:
            self.stream_cursor = stream

    def progress(self, cursor: StreamId, own: Iterable[tuple[int, str]], start: bool) -> None:
        """The reader has read the stream to ``cursor``; our events it read
        meanwhile got these stream entries."""
        if start and self.log_start is None:
            self.log_start = cursor
        self.applied(cursor)
        for seq, entry_id in own:
            for entry in self.unappended.pop(seq, ()):
                entry.stream = stream_id(entry_id)
                if self.refused(entry):
                    self.strike(entry)

    def disown(self, name: str, taken_at: StreamId) -> None:
        """Our user ``name`` was taken over by another node at stream entry
        ``taken_at``: what we logged of it before it is ours again and that
        lands in the stream past there is refused by the others."""
        self.disowned.pop(name, None)
        self.disowned[name] = (taken_at, None)
        if len(self.disowned) > DISOWNED_KEPT:
            self.disowned.popitem(last=False)

    def drop_user(self, name: str) -> None:
        """Our user ``name`` is let go without a leave the others accept (see
        landed_after): what it said before, landing after now, they refuse."""
        self.dropped.pop(name, None)
        self.dropped[name] = (self.stream_cursor, self.last_number)
        if len(self.dropped) > DISOWNED_KEPT:
            self.dropped.popitem(last=False)

    def own_again(self, name: str) -> None:
        """The user ``name`` is ours again: what it says from now on counts."""
        taken = self.disowned.get(name)
        if taken is not None and taken[1] is None:
            self.disowned[name] = (taken[0], self.last_number)

    def refused(self, entry: LogEntry) -> bool:
        """Whether the others refuse our entry (its stream entry is known)."""
        taken = self.disowned.get(speaker_key(entry.message))
        return taken is not None and entry.stream > taken[0] and \
            (taken[1] is None or entry.number <= taken[1])

    def strike(self, entry: LogEntry) -> None:
        """Take an entry out of every list it was filed in."""
        for key in filed_under(entry):
            lst = self.lists.get(key)
            if lst is not None and lst.remove(entry):
                self.memory -= entry.size + ENTRY_OVERHEAD
                self.entries -= 1


def moves_over(log: EventLog, periods: list[tuple[str, int, int | None]]) -> list[LogEntry] | None:
    """The user's room moves in those periods (name, above, below), in
    the log's order (None: the log let one of them go)."""
    moves: list[LogEntry] = []
    for name, low, high in periods:
        lst = log.lists.get((MOVES, name))
        if lst is None and log.let_go_after((MOVES, name), low):
            return None
        if lst is not None:
            if lst.dropped_through > low:
                return None
            moves += lst.between(low, high)
    moves.sort(key=_number)
    return moves


def landed_after(log: EventLog, nick: str, room: str, position: Position, start: int,
                 start_stream: StreamId) -> list[LogEntry] | None:
    """Our own entries numbered up to ``start`` (before we read the user
    at ``start_stream``: we echoed them before they were in the stream,
    as a node paused, or cut off from Redis, does) that landed in the
    stream after it: the user's node, and every other, read them after
    the user's start, and gave them to it if it was there for them (in
    the entry's room when it landed, by the user's moves as the stream
    has them; everyone's entries to all; DMs named someone else), unless
    they refused it: its user was let go here as we registered again (its
    session ended elsewhere meanwhile, or its nick taken), before it
    landed.  None: the log let some of that go."""
    window: list[LogEntry] = []
    own = log.own  # (ours land in the stream in the order they were logged)
    for index in range(bisect.bisect_right(own, start, key=_number) - 1, -1, -1):
        entry = own[index]
        if entry.stream is not None and entry.stream <= start_stream:
            break
        window.append(entry)
    if not window:
        return []
    periods = log.names_since(proto.name_key(nick), start)
    if periods is None:
        return None
    moves = moves_over(log, periods)
    if moves is None:
        return None
    first_room = moves[0].old if moves else room

    def room_at(stream: StreamId | None) -> str:
        if stream is None:  # not in the stream yet: it lands after all we read
            return room
        here = first_room
        for move in moves:
            if move.stream is not None and move.stream < stream:
                here = move.new or here
        return here

    node, cursor, published = position.node, position.cursor, position.published
    found: list[LogEntry] = []
    for entry in reversed(window):
        target = entry.target
        if not (target is None or (isinstance(target, str) and
                                   target == room_at(entry.stream))):
            continue
        if entry.seen_at(node, cursor, published):
            continue
        lst = log.lists.get(filed_under(entry)[0])
        if lst is None or lst.dropped_through >= entry.number:
            return None
        dropped = log.dropped.get(speaker_key(entry.message) or "")
        if dropped is not None and entry.number <= dropped[1] and (
                entry.stream is None or entry.stream > dropped[0]):
            continue  # the others refuse it: its user was let go here before it landed
        if lst.holds(entry):  # (not struck: the others refused it)
            found.append(entry)
    return found


def speaker_key(message: proto.Message) -> str | None:
    """The name key of who said or did what a message reports (None: nobody's)."""
    if isinstance(message, proto.DirectFrom):
        return proto.name_key(message.sender)
    if isinstance(message, (proto.ChatFrom, proto.EmoteFrom, proto.EnteredRoom,
                            proto.ExitedRoom)):
        return proto.name_key(message.nick)
    return None


def filed_under(entry: LogEntry) -> list[tuple[str, Any]]:
    """The keys of the lists EventLog.file put an entry in."""
    target = entry.target
    if target is None:
        keys: list[tuple[str, Any]] = [(EVERYONE, None)]
        if isinstance(entry.message, proto.NickChanged):
            keys.append((RENAMES, proto.name_key(entry.message.nick)))
    elif isinstance(target, str):
        keys = [(ROOM, target)]
    else:
        keys = [(DMS, name) for name in target]
    if entry.mover is not None:
        keys.append((MOVES, entry.mover))
    return keys
