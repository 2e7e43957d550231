"""Which connections a loop turn writes, and in what order.

A broadcast to everyone (a join, a leave) is a send to each connection:
with a thousand users that is a turn of 15-20 ms on a 2-core machine, and
a chat arriving meanwhile waited for all of it before it was even read,
which is what ordinary users' p99 was made of under the abuse benchmark's
churner.  So a turn writes at most WRITES_PER_TURN connections: the ones
with new output first (a chat just said reaches its room before an older
join reaches the rest), after the first CARRIED_FIRST of those an earlier
turn left (so they always move); the rest wait for the next turn, which
comes at once.  A connection whose queue has grown past URGENT_BYTES is
written all the same: waiting never brings a reader near its queue bound.
Owns the list of those waiting.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

WRITES_PER_TURN = 256   # connections written in one turn, at most (but see URGENT_BYTES)
CARRIED_FIRST = 32      # of those left by earlier turns, written before the new ones
URGENT_BYTES = 1 << 18  # queued past this, a connection is written whatever the count


class WriteOrder:
    """The connections to write, turn by turn."""

    def __init__(self) -> None:
        self.waiting: list[Any] = []  # left by the last turn, in their order

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def this_turn(self, fresh: Iterable[Any]) -> Iterator[Any]:
        """The connections to write now, in order (``fresh``: those with
        new output); those past the turn's share wait for the next."""
        waiting = self.waiting
        order = dict.fromkeys(waiting[:CARRIED_FIRST])
        order.update(dict.fromkeys(fresh))
        order.update(dict.fromkeys(waiting[CARRIED_FIRST:]))
        conns = list(order)
        if len(conns) <= WRITES_PER_TURN:
            self.waiting = []
            return iter(conns)
        now, later = conns[:WRITES_PER_TURN], conns[WRITES_PER_TURN:]
        now += [conn for conn in later if conn.queued >= URGENT_BYTES]
        self.waiting = [conn for conn in later if conn.queued < URGENT_BYTES and not conn.gone]
        return iter(now)
