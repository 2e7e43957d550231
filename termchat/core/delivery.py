"""Delivery: who gets which bytes, in which order.  No sockets.

The chat core says what to send (to one connection, to a room, to everyone)
and who moves between rooms; this layer turns that into one output queue
per connection, which the transport writes out.

A broadcast is encoded once and appended to the turn's broadcast log; at
the end of the turn (:meth:`Delivery.end_turn`) each recipient gets the
bytes of every broadcast meant for it joined into one chunk, computed once
per room and shared.  Ordering rules live here:

- a packet sent to one connection comes after every broadcast of the turn
  that was meant for it before (``catch_up``);
- a connection that moves sees its old room's traffic up to the move and
  the new room's from then on.

A queue that passes ``max_queue`` bytes is reported by ``end_turn`` so the
transport can drop that client; the check is made as output is queued.
"""

from __future__ import annotations

from typing import Iterable

Target = "str | None"  # a room key, or None for every joined connection


class Outlet:
    """One connection's output: its queue (None while empty: an idle
    connection holds no list) and its place in the turn's log.

    ``want_write`` belongs to the transport: it is true while the socket
    is registered for writability, so new output needs no extra nudge.
    ``paused`` is the core's: while true the transport does not read.
    """

    __slots__ = ("out", "queued", "room", "log_turn", "log_pos", "want_write",
                 "paused", "closing", "gone", "ids")

    def __init__(self) -> None:
        self.out: list[bytes | memoryview] | None = None
        self.queued = 0
        self.room: str | None = None  # receives broadcasts only while in a room
        self.log_turn = -1            # the turn whose log log_pos refers to
        self.log_pos = 0              # broadcasts of that turn already queued
        self.want_write = False
        self.paused = False
        self.closing = False          # an error was queued; no more output
        self.gone = False
        self.ids = False              # a session client: broadcasts carry id and time

    def take_output(self) -> list[bytes | memoryview]:
        """Everything queued, oldest first; the queue is left empty."""
        out, self.out, self.queued = self.out, None, 0
        return out or []


class Delivery:
    """Output queues, the per-turn broadcast log and room membership."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.turn = 0
        self.log: list[tuple[str | None, bytes, bytes]] = []  # target, base, with ids
        self.rooms: dict[str, set[Outlet]] = {}
        self.joined: set[Outlet] = set()
        self.dirty: set[Outlet] = set()       # have output and no write interest
        self.overflowed: list[Outlet] = []
        self.closed: list[Outlet] = []        # closed since the transport last looked
        self.input_changed: set[Outlet] = set()  # paused or resumed since then

    # ---- what the core asks for ----

    def send(self, outlet: Outlet, packet: bytes) -> None:
        """Queue one packet for one connection, after its pending broadcasts."""
        self.catch_up(outlet)
        self.enqueue(outlet, packet)

    def broadcast(self, packet: bytes, room: str | None = None,
                  with_ids: bytes | None = None) -> None:
        """Send to every connection in ``room`` (everyone joined when None);
        session clients get ``with_ids`` (the packet with its id and time)."""
        self.log.append((room, packet, with_ids or packet))

    def move(self, outlet: Outlet, room: str | None, ids: bool | None = None) -> None:
        """Put the connection in ``room`` (None: in no room, gets no
        broadcasts).  It first gets what was meant for it where it was;
        ``ids`` (if not None) says whether its broadcasts carry ids."""
        self.catch_up(outlet)
        if ids is not None:
            outlet.ids = ids
        old = outlet.room
        if old is not None:
            members = self.rooms[old]
            members.discard(outlet)
            if not members:
                del self.rooms[old]
            self.joined.discard(outlet)
        outlet.room = room
        if room is not None:
            self.rooms.setdefault(room, set()).add(outlet)
            self.joined.add(outlet)

    def close(self, outlet: Outlet) -> None:
        """No more output after what is queued (the transport then closes)."""
        self.move(outlet, None)
        outlet.closing = True
        self.closed.append(outlet)

    def pause_input(self, outlet: Outlet, paused: bool) -> None:
        """Stop (or start again) reading what the connection sends."""
        outlet.paused = paused
        self.input_changed.add(outlet)

    def forget(self, outlet: Outlet) -> None:
        """The connection is gone: drop its queue and memberships."""
        self.move(outlet, None)
        outlet.gone = True
        outlet.out = None
        outlet.queued = 0
        self.dirty.discard(outlet)
        self.input_changed.discard(outlet)

    # ---- queueing ----

    def enqueue(self, outlet: Outlet, data: bytes) -> None:
        if outlet.gone:
            return
        if outlet.out is None:
            outlet.out = [data]
        else:
            outlet.out.append(data)
        outlet.queued += len(data)
        if outlet.queued > self.max_queue and not outlet.closing:
            self.overflowed.append(outlet)
        elif not outlet.want_write:
            self.dirty.add(outlet)

    def pending_broadcasts(self, outlet: Outlet, start: int) -> bytes:
        room = outlet.room
        variant = 2 if outlet.ids else 1
        return b"".join(entry[variant] for entry in self.log[start:]
                        if entry[0] is None or entry[0] == room)

    def catch_up(self, outlet: Outlet) -> None:
        """Move the broadcasts of this turn meant for outlet into its queue,
        so that what is queued for it next comes after them."""
        if outlet.room is None:
            outlet.log_turn = self.turn
            outlet.log_pos = len(self.log)
            return
        start = outlet.log_pos if outlet.log_turn == self.turn else 0
        if start < len(self.log):
            chunk = self.pending_broadcasts(outlet, start)
            if chunk:
                self.enqueue(outlet, chunk)
        outlet.log_turn = self.turn
        outlet.log_pos = len(self.log)

    # ---- the end of a turn ----

    @property
    def busy(self) -> bool:
        """Output is waiting to be distributed or written."""
        return bool(self.log or self.dirty or self.overflowed or self.closed
                    or self.input_changed)

    def end_turn(self) -> list[Outlet]:
        """Distribute the broadcast log; return (and forget) the outlets
        whose queue passed the bound since the last call."""
        if self.log:
            self._distribute()
        overflowed, self.overflowed = self.overflowed, []
        return [outlet for outlet in overflowed if not outlet.gone]

    def take_dirty(self) -> Iterable[Outlet]:
        """The outlets with new output and no write interest yet."""
        dirty, self.dirty = self.dirty, set()
        return dirty

    def take_closed(self) -> list[Outlet]:
        """The outlets closed since the last call."""
        closed, self.closed = self.closed, []
        return closed

    def take_input_changes(self) -> set[Outlet]:
        """The outlets whose input was paused or resumed since the last call."""
        changed, self.input_changed = self.input_changed, set()
        return changed

    def _distribute(self) -> None:
        targets = {entry[0] for entry in self.log}
        if None in targets:
            recipients: Iterable[Outlet] = list(self.joined)
        else:
            recipients = [outlet for room in targets
                          for outlet in self.rooms.get(room, ())]  # type: ignore[arg-type]
        whole_turn: dict[tuple[str | None, bool], bytes] = {}
        turn = self.turn
        for outlet in recipients:
            if outlet.log_turn == turn:
                chunk = self.pending_broadcasts(outlet, outlet.log_pos)
            else:
                kind = (outlet.room, outlet.ids)
                chunk = whole_turn.get(kind)
                if chunk is None:
                    chunk = whole_turn[kind] = self.pending_broadcasts(outlet, 0)
            if chunk:
                self.enqueue(outlet, chunk)
        self.log = []
        self.turn += 1
