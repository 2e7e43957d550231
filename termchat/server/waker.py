"""The loop's wake-up: a socket pair whose reading end sits in the
selector, so that another thread (the Redis link) or a signal handler can
make the loop's select return.  It owns the two sockets."""

from __future__ import annotations

import selectors
import socket

WAKE = "wake"  # the selector key data of the wake-up socket


class Waker:
    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        for sock in (self._reader, self._writer):
            sock.setblocking(False)

    def register(self, selector: selectors.BaseSelector) -> None:
        selector.register(self._reader, selectors.EVENT_READ, WAKE)

    def wake(self) -> None:
        """Make the loop's select return; safe from any thread."""
        try:
            self._writer.send(b"\0")
        except OSError:  # the buffer is full: a wake-up is pending anyway
            pass

    def drain(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
