"""The chaos run's network: small TCP proxies on 127.0.0.1 between the
clients and the nodes, which the run can cut.

Owns the proxy listeners and every proxied connection (a *pair*: the
client's side and the node's side).  One listener per node address; each
accepted connection gets its own upstream connection, and is known by the
client's local port, so the run cuts one client's connection by naming it:

- ``reset``: both sides closed with SO_LINGER (1, 0), so each gets an RST.
- ``drop``: silence.  Nothing more is forwarded either way and neither side
  is told; the sockets are reset only ``hold`` seconds later (a path that
  vanished and a peer that timed out).  The client notices by itself that
  nothing comes back (its echo timeout), as a real one would.

Everything runs in the run's selectors loop; nothing blocks.
"""

from __future__ import annotations

import errno
import functools
import selectors
import socket
import struct
from dataclasses import dataclass, field

CHUNK = 65536
HIGH_WATER = 1 << 20  # stop reading a side while this much waits for the other


def reset_and_close(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


@dataclass(eq=False)
class Side:
    sock: socket.socket
    out: bytearray = field(default_factory=bytearray)  # waiting to be written to sock
    connecting: bool = False


@dataclass(eq=False)
class Pair:
    client: Side
    node: Side
    key: int                      # the client's local port
    silent_until: float | None = None  # dropped: reset at this time
    closed: bool = False
    callback: object = None       # the selector's data for both sides

    def other(self, side: Side) -> Side:
        return self.node if side is self.client else self.client


class Proxies:
    """Listeners in front of node addresses; ``address(upstream)`` is where
    a client connects to reach that node address through a proxy."""

    def __init__(self, selector: selectors.BaseSelector, upstreams: list[tuple[str, int]]) -> None:
        self.selector = selector
        self.pairs: dict[int, Pair] = {}
        self.fronts: dict[tuple[str, int], tuple[str, int]] = {}
        self.listeners: list[socket.socket] = []
        for upstream in upstreams:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            listener.setblocking(False)
            selector.register(listener, selectors.EVENT_READ,
                              functools.partial(self._accept, upstream=upstream))
            self.listeners.append(listener)
            self.fronts[upstream] = listener.getsockname()
        self.resets = self.drops = 0

    def address(self, upstream: tuple[str, int]) -> tuple[str, int]:
        return self.fronts[upstream]

    # ---- the run's cuts ----

    def reset(self, key: int) -> bool:
        pair = self.pairs.get(key)
        if pair is None:
            return False
        self.resets += 1
        self._close(pair)
        return True

    def drop(self, key: int, until: float) -> bool:
        pair = self.pairs.get(key)
        if pair is None or pair.silent_until is not None:
            return False
        self.drops += 1
        pair.silent_until = until
        for side in (pair.client, pair.node):
            self._unregister(side)
        return True

    def tick(self, now: float) -> None:
        """Dropped pairs whose hold is over are reset."""
        for pair in [p for p in self.pairs.values()
                     if p.silent_until is not None and now >= p.silent_until]:
            self._close(pair)

    def close(self) -> None:
        for pair in list(self.pairs.values()):
            self._close(pair)
        for listener in self.listeners:
            self.selector.unregister(listener)
            listener.close()
        self.listeners = []

    # ---- forwarding ----

    def _accept(self, listener: socket.socket, mask: int, upstream: tuple[str, int]) -> None:
        while True:
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, for a moment
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    return
                raise
            sock.setblocking(False)
            node = socket.socket()
            node.setblocking(False)
            node.connect_ex(upstream)
            pair = Pair(Side(sock), Side(node, connecting=True), key=peer[1])
            old = self.pairs.pop(pair.key, None)
            if old is not None:
                self._close(old)
            self.pairs[pair.key] = pair
            pair.callback = functools.partial(self._ready, pair=pair)
            self.selector.register(sock, selectors.EVENT_READ, pair.callback)
            self.selector.register(node, selectors.EVENT_WRITE, pair.callback)

    def _ready(self, sock: socket.socket, mask: int, pair: Pair) -> None:
        if pair.closed:
            return
        side = pair.client if sock is pair.client.sock else pair.node
        if side.connecting:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._close(pair)  # the node is not there: the client sees a reset
                return
            side.connecting = False
        if mask & selectors.EVENT_WRITE and not self._flush(pair, side):
            return
        if mask & selectors.EVENT_READ and not self._read(pair, side):
            return
        self._update(pair)

    def _read(self, pair: Pair, side: Side) -> bool:
        other = pair.other(side)
        try:
            data = side.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._close(pair)
            return False
        if not data:  # a clean close: passed on as one
            self._finish(pair, other)
            return False
        other.out += data
        return self._flush(pair, other)

    def _flush(self, pair: Pair, side: Side) -> bool:
        if side.connecting or not side.out:
            return True
        try:
            sent = side.sock.send(side.out)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._close(pair)
            return False
        del side.out[:sent]
        return True

    def _finish(self, pair: Pair, receiver: Side) -> None:
        """One side closed cleanly: what it sent is passed on, then the other is closed."""
        try:
            receiver.sock.setblocking(True)
            receiver.sock.settimeout(0.2)
            if receiver.out and not receiver.connecting:
                receiver.sock.sendall(receiver.out)
        except OSError:
            pass
        self._close(pair, gently=True)

    def _update(self, pair: Pair) -> None:
        for side in (pair.client, pair.node):
            other = pair.other(side)
            events = 0
            if side.connecting or side.out:
                events |= selectors.EVENT_WRITE
            if not side.connecting and len(other.out) < HIGH_WATER:
                events |= selectors.EVENT_READ
            self._modify(side, events, pair)

    def _modify(self, side: Side, events: int, pair: Pair) -> None:
        key = self.selector.get_map().get(side.sock)
        if not events:
            if key is not None:
                self.selector.unregister(side.sock)
        elif key is None:
            self.selector.register(side.sock, events, pair.callback)
        elif key.events != events:
            self.selector.modify(side.sock, events, pair.callback)

    def _unregister(self, side: Side) -> None:
        if side.sock.fileno() >= 0 and side.sock in self.selector.get_map():
            self.selector.unregister(side.sock)

    def _close(self, pair: Pair, gently: bool = False) -> None:
        if pair.closed:
            return
        pair.closed = True
        if self.pairs.get(pair.key) is pair:
            del self.pairs[pair.key]
        for side in (pair.client, pair.node):
            self._unregister(side)
            if gently:
                side.sock.close()
            else:
                reset_and_close(side.sock)
