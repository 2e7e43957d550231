"""The door: what the server does with a connection it will not serve.

A connection past its address's connection rate is refused at the door:
it is sent its error and its end and nothing else (no record, no
selector), so churn costs little, and closed once its client has had the
time to read why.  A listener that refused ``TURNED_AWAY_PER_TURN`` in one
loop turn rests for ``DOOR_REST`` seconds, out of the selector: the churn
then waits in the listen backlog (and a churner waiting for its answers
slows with it) instead of keeping the listener readable and the loop
spinning at a few refusals a turn, which is what ordinary users' latency
paid for.  Out of descriptors, the door accepts and closes one
connection with a descriptor it holds in reserve, so that the listener
does not stay readable.  The door owns the refused sockets, the resting
listeners and that reserve.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
from collections import deque

TURNED_AWAY_LINGER = 0.5  # seconds a connection refused at the door has to read why
MAX_TURNED_AWAY = 256     # ...and how many may wait so (the oldest is closed first)
TURNED_AWAY_PER_TURN = 8  # refused at the door in one loop turn, at most...
DOOR_REST = 0.02          # ...then the listener rests this long (at most 400 a second)

log = logging.getLogger("chat_server")


class Door:
    """Refused connections waiting to be closed, and resting listeners."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.waiting: deque[tuple[float, socket.socket]] = deque()  # (close at, socket)
        self.resting: deque[tuple[float, socket.socket]] = deque()  # (open at, listener)
        self._reserve_fd: int | None = os.open(os.devnull, os.O_RDONLY)

    def turn_away(self, sock: socket.socket, refusal: bytes, now: float) -> None:
        try:
            sock.send(refusal)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self.waiting.append((now + TURNED_AWAY_LINGER, sock))
        while len(self.waiting) > MAX_TURNED_AWAY:
            self.waiting.popleft()[1].close()

    def rest(self, listener: socket.socket, now: float) -> None:
        """The listener refused its share of this turn: no accepting for a while."""
        self.selector.unregister(listener)
        self.resting.append((now + DOOR_REST, listener))

    def expire(self, now: float) -> None:
        """Close who had the time to read why; open the rested listeners."""
        while self.waiting and self.waiting[0][0] <= now:
            self.waiting.popleft()[1].close()
        while self.resting and self.resting[0][0] <= now:
            self.selector.register(self.resting.popleft()[1], selectors.EVENT_READ, None)

    def next_due(self) -> float | None:
        due = [queue[0][0] for queue in (self.waiting, self.resting) if queue]
        return min(due) if due else None

    def refuse_one(self, listener: socket.socket) -> None:
        """Out of descriptors: accept and close one connection so the
        listener does not stay readable and spin the loop."""
        log.warning("out of file descriptors; refusing a connection")
        if self._reserve_fd is None:
            return
        os.close(self._reserve_fd)
        try:
            sock, _ = listener.accept()
            sock.close()
        except OSError:
            pass
        self._reserve_fd = os.open(os.devnull, os.O_RDONLY)

    def close_all(self) -> None:
        """The refused sockets and the reserve (the listeners are the server's)."""
        while self.waiting:
            self.waiting.popleft()[1].close()
        self.resting.clear()
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
