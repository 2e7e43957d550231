"""The client's side of a connection and of a session, with no socket in
it (h11-style: told what happened, it answers with effects).

Owns: the phase (:class:`Phase`), the session's token and the last id
shown, the reconnect policy (backoff 0.5 s doubling to 15 s), the timers
for a server that does not answer, the server password, and what each
refusal code does (SPEC "Refusals carry a code"):

- ``kicked``, ``banned`` and ``replaced`` (or a ``kick`` naming us): say
  so once and stop reconnecting; ``/reconnect`` or ``/q`` from there.
- ``needs-password`` / ``wrong-password`` on a hello: ask the user for it,
  then connect again.
- ``session-expired`` in answer to a resume: a fresh hello at once.
- anything else refusing the first hello ends the client with it; after
  a reconnection the hello is retried with backoff.

The program tells it: ``opened`` (a connection is up: here is the hello
to send), ``received`` (each packet), ``lost`` (the connection closed),
``failed`` (a connection could not be made) and ``tick`` (time passed);
it asks ``wait`` how long until the next try.  A server that never
grants a session gets only the base protocol: no quit, no resume.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from termchat.client.effects import Effect, Hangup, Send, Show, Wake
from termchat.client.formatting import error, info
from termchat.wire import protocol as proto

Code = proto.Code
HALTING = (Code.KICKED, Code.BANNED, Code.REPLACED)
ASKING = (Code.NEEDS_PASSWORD, Code.WRONG_PASSWORD)


class Phase(enum.Enum):
    CONNECTING = "connecting"  # the first hello is out; not joined yet
    LIVE = "live"              # joined or resumed: chatting
    RESUMING = "resuming"      # reconnected with the token; waiting for "resumed"
    REJOINING = "rejoining"    # reconnected with a fresh hello; waiting for our join
    DOWN = "down"              # no connection: the next try is due after the backoff
    PASSWORD = "password"      # no connection: waiting for the user's password
    HALTED = "halted"          # no connection: kicked, banned or replaced
    ENDED = "ended"            # the user quit, or the first hello failed for good


CONNECTED = (Phase.CONNECTING, Phase.LIVE, Phase.RESUMING, Phase.REJOINING)
AT_ONCE = float("-inf")  # a try due before any time


@dataclass(frozen=True)
class Timeouts:
    """How long the client waits.  ``notice``: the first hello unanswered
    this long, say we are waiting; ``give_up``: by then, stop (on a later
    connection: hang up and try again).  Retries wait ``first_retry``
    seconds, doubling up to ``longest_retry``."""

    notice: float = 3.0
    give_up: float = 10.0
    first_retry: float = 0.5
    longest_retry: float = 15.0

    @classmethod
    def answering_within(cls, seconds: float) -> "Timeouts":
        """Give up after ``seconds``; the notice at 3 s, or sooner for a
        shorter wait."""
        return cls(notice=min(cls.notice, seconds * 0.3), give_up=seconds)


class Backoff:
    """Delays between tries: ``first``, doubling up to ``longest``."""

    def __init__(self, first: float, longest: float) -> None:
        self.first, self.longest = first, longest
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.longest, max(self.first, self.delay * 2))
        return delay

    def reset(self, delay: float | None = None) -> None:
        self.delay = self.first if delay is None else delay


class ClientSession:
    """One client's connection state across every connection it makes."""

    def __init__(self, server: str, password: str | None = None,
                 timeouts: Timeouts = Timeouts(), now: float = 0.0) -> None:
        self.server = server              # HOST:PORT, for messages
        self.password = password
        self.timeouts = timeouts
        self.phase = Phase.CONNECTING
        self.token: str | None = None     # the session's, once the server grants one
        self.last_id: str | None = None   # of the last packet received
        self.joined = False               # our join was ever seen
        self.halt: str | None = None      # the code that stops reconnecting
        self.kick_seen = False            # a kick naming us: its error needs no line
        self.refusal: str | None = None   # why the first hello was refused
        self.asking = False               # the server wants the password
        self.heard = False                # this connection has said something
        self.exit_reason: str | None = None  # the client ends, not by the user: why
        self.backoff = Backoff(timeouts.first_retry, timeouts.longest_retry)
        self.retry_at: float | None = None
        self.notice_at: float | None = now + timeouts.notice
        self.give_up_at: float | None = now + timeouts.give_up
        self.closed_unanswered = False    # said once: the server closed without a word

    # ---- what the program asks ----

    @property
    def connected(self) -> bool:
        return self.phase in CONNECTED

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    @property
    def wants_password(self) -> bool:
        """The server refused us for the password: the next line typed is
        it (from the refusal on, not only once the server has closed)."""
        return self.asking or self.phase is Phase.PASSWORD

    def hello(self, nick: str) -> proto.Hello:
        """A hello that starts afresh (the first one, or after the session ended)."""
        return proto.Hello(nick, session=True, password=self.password)

    def wait(self, now: float) -> float | None:
        """Seconds until something is due (a try, a notice, giving up);
        0: connect now; None: nothing until the user acts."""
        due = [t for t in (self.notice_at, self.give_up_at) if t is not None]
        if self.phase is Phase.DOWN and self.retry_at is not None:
            due.append(self.retry_at)
        return max(0.0, min(due) - now) if due else None

    def due_to_connect(self, now: float) -> bool:
        return self.phase is Phase.DOWN and self.retry_at is not None and now >= self.retry_at

    # ---- what happened ----

    def opened(self, nick: str, now: float) -> proto.Hello:
        """A new connection is up: the hello for it."""
        self.heard, self.refusal, self.asking = False, None, False
        self.retry_at = None
        if self.give_up_at is None:
            self.give_up_at = now + self.timeouts.give_up
        if self.token is not None:
            self.phase = Phase.RESUMING
            return proto.Hello(nick, session=True, resume=self.token,
                               after=self.last_id, password=self.password)
        self.phase = Phase.REJOINING if self.joined else Phase.CONNECTING
        return self.hello(nick)

    def failed(self, now: float) -> None:
        """A connection could not be made: try again later."""
        self.phase = Phase.DOWN
        self.retry_at = now + self.backoff.next()

    def received(self, message: proto.Message, meta: dict[str, Any],
                 nick: str) -> tuple[bool, list[Effect]]:
        """A packet (``nick``: ours now): (whether the core should go on to
        show it, effects)."""
        self.heard = True
        self.notice_at = self.give_up_at = None
        if "id" in meta:
            self.last_id = meta["id"]
        if isinstance(message, proto.SessionGranted):
            self.token = message.token
            return False, []
        if isinstance(message, proto.Resumed):
            self.phase = Phase.LIVE
            return False, [Show(info("reconnected"))]
        if isinstance(message, proto.Joined) and message.nick == nick:
            return True, self._joined()
        if isinstance(message, proto.Kicked) and message.nick == nick:
            self.halt, self.kick_seen = Code.KICKED, True
        if isinstance(message, proto.Error):
            return self._refused(message, nick)
        return True, []

    def lost(self, now: float) -> list[Effect]:
        """The connection closed: what to say, and what comes next."""
        was = self.phase
        if not self.connected:
            return []  # the user quit, or it was already lost
        if self.halt is not None:
            self.phase = Phase.HALTED
            if self.halt != Code.REPLACED:
                self.token = None  # a kick or a ban ends the session
            return [Show(info(HALT_LINES[self.halt]))]
        if self.asking:
            self.phase = Phase.PASSWORD
            self.notice_at = self.give_up_at = None
            return []
        if was is Phase.CONNECTING and self.refusal is not None:
            return self._end(f"the server refused us: {self.refusal}")
        self.phase = Phase.DOWN
        effects: list[Effect] = []
        if self.joined:
            self.give_up_at = None  # set again by the next connection
        else:  # still trying to get in at all: as for a server that never answers
            if not self.heard and not self.closed_unanswered:
                self.closed_unanswered = True
                effects.append(Show(info(f"{self.server} closed the connection before "
                                         "answering: is it a chat server?")))
            if self.give_up_at is None:
                self.give_up_at = now + self.timeouts.give_up
        if was is Phase.LIVE:
            effects.append(Show(info("connection lost; reconnecting...")))
            self.backoff.reset()
        self.retry_at = now + self.backoff.next()
        return effects

    def tick(self, now: float) -> list[Effect]:
        """Time passed: the notice, giving up."""
        effects: list[Effect] = []
        if self.notice_at is not None and now >= self.notice_at:
            self.notice_at = None
            effects.append(Show(info(f"waiting for {self.server} to answer...")))
        if self.give_up_at is not None and now >= self.give_up_at:
            self.give_up_at = None
            if self.joined:  # a later connection: hang up, try again
                return effects + ([Hangup()] if self.connected else [])
            was_connected = self.connected
            effects += self._end(f"no answer from {self.server}: is it a chat server?")
            if was_connected:
                effects.append(Hangup())
        return effects

    # ---- what the user did ----

    def quit(self) -> proto.Quit | None:
        """The user quits: a session server is told (others see the leave at
        once); nothing more is tried."""
        connected = self.connected
        self.phase = Phase.ENDED
        return proto.Quit() if self.token is not None and connected else None

    def password_typed(self, password: str) -> list[Effect]:
        self.password = password
        self.asking = False
        self.phase = Phase.DOWN
        self.backoff.reset()
        self.retry_at = AT_ONCE  # the user is waiting
        return [Wake()]

    def reconnect(self) -> list[Effect]:
        """/reconnect: after a halt, or now instead of after the backoff."""
        if self.connected:
            return [Show(info(f"connected to {self.server} already"))]
        if self.wants_password:
            return [Show(info("type the server's password at the prompt, or /q to quit"))]
        self.halt, self.kick_seen = None, False
        self.phase = Phase.DOWN
        self.backoff.reset()
        self.retry_at = AT_ONCE
        return [Show(info(f"reconnecting to {self.server}...")), Wake()]

    # ---- inside ----

    def _joined(self) -> list[Effect]:
        """Our own join: we are in."""
        was, self.phase = self.phase, Phase.LIVE
        self.joined = True
        self.refusal = None
        if was in (Phase.REJOINING, Phase.RESUMING):
            return [Show(info("reconnected; messages sent while you were away are lost"))]
        return []

    def _refused(self, refusal: proto.Error, nick: str) -> tuple[bool, list[Effect]]:
        code = refusal.code
        if code in HALTING:
            self.halt = code
            return False, [] if self.kick_seen else [Show(error(refusal.message))]
        if self.phase is Phase.RESUMING and code in (Code.SESSION_EXPIRED, ""):
            # (an error without a code: a server from before the codes)
            self.token, self.last_id, self.phase = None, None, Phase.REJOINING
            return False, [Send(self.hello(nick))]
        if code in ASKING and self.phase is not Phase.LIVE:
            self.asking = True
            return False, [Show(error(f"{refusal.message}: type it at the prompt below "
                                      "(shown as *)"))]
        if self.phase is Phase.CONNECTING:
            self.refusal = refusal.message
        return True, []

    def _end(self, reason: str) -> list[Effect]:
        self.phase = Phase.ENDED
        self.exit_reason = reason
        return []


HALT_LINES = {  # each fits an 80-column row
    Code.KICKED: "kicked: the client will not reconnect by itself (/reconnect, or /q to quit)",
    Code.BANNED: "banned: the client will not reconnect by itself (/reconnect, or /q to quit)",
    Code.REPLACED: "your session went on elsewhere: this client will not reconnect by "
                   "itself (/reconnect takes it back)",
}
