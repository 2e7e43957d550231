"""Sessions: users who may lose their connection and come back.

Owns the tokens (:class:`Session`), the sessions whose connection was lost
(detached: present, unseen, until their grace ends or they miss more than
the output bound), the resumes handed over by the cluster that wait for
this node's stream reader, and the *orphans*: other nodes' users whose
node died with their session, kept present for the grace in case they
resume somewhere.  What a session missed is the event log's to say; this
module decides who may still resume, and until when.  No I/O.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from termchat.core.eventlog import LogEntry, Position
    from termchat.core.gate import Connection
    from termchat.core.presence import User

RESUME_WAIT = 5.0  # seconds a resume from another node waits for our stream reader


def session_digest(token: str) -> str:
    """What Redis (or the database) keeps of a session token: never the token."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:32]


class Session:
    """A user's session, known by its token's digest (the token itself is
    given to the client once and kept nowhere), and while detached when its
    grace ends and how many bytes it would have received meanwhile."""

    __slots__ = ("digest", "user", "start", "start_stream", "expires", "missed", "room")

    def __init__(self, digest: str, user: User, start: int,
                 start_stream: tuple | None = None) -> None:
        self.digest, self.user = digest, user
        self.start = start   # the log entry it began with: nothing before is replayed
        self.start_stream = start_stream  # taken up from another node: the stream entry
        # its user was read at here (our own entries past it are replayed too)
        self.expires = 0.0   # while detached: when it ends
        self.missed = 0      # while detached: bytes it would have received
        self.room = ""       # while detached: its room's key

    @property
    def detached(self) -> bool:
        return self.user.connection is None


class Sessions:
    """Tokens, detached sessions, orphans and resumes in waiting."""

    def __init__(self, grace: float, max_missed: int) -> None:
        self.grace = grace
        self.max_missed = max_missed
        self.by_digest: dict[str, Session] = {}
        self.attached = 0                              # sessions with a connection
        self.by_room: dict[str, set[Session]] = {}     # detached ones, by room key
        self.by_name: dict[str, Session] = {}          # detached ones, by name key
        self.expiring: deque[tuple[float, Session]] = deque()  # grace ends, in order
        self.orphans: dict[int, tuple[float, str]] = {}  # uid -> (grace end, digest)
        self.held_elsewhere: dict[int, float] = {}  # uid -> grace end of another node's
        # detached session user
        self.orphan_order: deque[tuple[float, User]] = deque()
        self.waiting: deque[tuple[float, Connection, str, str, Position]] = deque()

    # ---- this node's sessions ----

    def start(self, user: User, start: int, token: str | None = None,
              start_stream: tuple | None = None) -> str:
        """A session for the user (attached), beginning with log entry
        ``start``; returns its token (``token``: one taken over elsewhere,
        whose user we read at stream entry ``start_stream``)."""
        token = token or secrets.token_urlsafe(24)
        session = Session(session_digest(token), user, start, start_stream)
        self.by_digest[session.digest] = session
        user.session = session
        self.attached += 1
        return token

    def restore(self, user: User, digest: str, start: int) -> Session:
        """A session kept across a restart (detach it once its user is in
        its room: it gets a fresh grace)."""
        session = Session(digest, user, start)
        self.by_digest[digest] = session
        user.session = session
        self.attached += 1
        return session

    def find(self, token: str | None, nick_key: str) -> Session | None:
        """The session a resume names: its token, for the same nick."""
        session = self.by_digest.get(session_digest(token or ""))
        if session is None or session.user.key != nick_key:
            return None
        return session

    def detach(self, session: Session, now: float) -> None:
        """The session's connection is gone: it stays present, unseen."""
        self.attached -= 1
        session.missed = 0
        session.expires = now + self.grace
        session.room = session.user.room.key
        self.by_room.setdefault(session.room, set()).add(session)
        self.by_name[session.user.key] = session  # a detached user cannot rename
        self.expiring.append((session.expires, session))

    def attach(self, session: Session) -> None:
        """A resume took the session up again on a new connection."""
        self.undetach(session)
        self.attached += 1

    def undetach(self, session: Session) -> None:
        room_set = self.by_room.get(session.room)
        if room_set is not None:
            room_set.discard(session)
            if not room_set:
                del self.by_room[session.room]
        if self.by_name.get(session.user.key) is session:
            del self.by_name[session.user.key]

    def current(self, session: Session) -> bool:
        """Whether the session is still the one its token names (a token
        taken over elsewhere and back names a new one)."""
        return self.by_digest.get(session.digest) is session

    def end(self, session: Session) -> None:
        """The session is over (its user left, or its grace ended)."""
        if not self.current(session):
            return
        del self.by_digest[session.digest]
        if session.detached:
            self.undetach(session)
        else:
            self.attached -= 1
        session.user.session = None

    def ended_grace(self, now: float) -> list[Session]:
        """Detached sessions whose grace has ended."""
        over = []
        while self.expiring and self.expiring[0][0] <= now:
            _, session = self.expiring.popleft()
            if self.current(session) and session.detached and session.expires <= now:
                over.append(session)
        return over

    def reached(self, entry: LogEntry) -> list[Session]:
        """Count an entry against the detached sessions it reaches; return
        those that have now missed more than the output bound."""
        target = entry.target
        if target is None:
            reached: Iterable[Session] = list(self.by_name.values())
        elif isinstance(target, str):
            reached = list(self.by_room.get(target, ()))
        else:
            reached = [self.by_name[name] for name in target if name in self.by_name]
        over = []
        for session in reached:
            session.missed += entry.size
            if session.missed > self.max_missed:
                over.append(session)
        return over

    @property
    def any_detached(self) -> bool:
        return bool(self.by_name)

    # ---- other nodes' users whose node died ----

    def orphan(self, user: User, digest: str, now: float) -> bool:
        """A dead node's session user, kept for the grace; one whose
        connection had dropped already (its node said so) only for what is
        left of the grace it had then (False: nothing is left)."""
        until = min(now + self.grace, self.held_elsewhere.get(user.uid, now + self.grace))
        if until <= now:
            return False
        self.orphans[user.uid] = (until, digest)
        self.orphan_order.append((until, user))
        return True

    def digest_of_orphan(self, user: User) -> str | None:
        held = self.orphans.get(user.uid)
        return held[1] if held else None

    def unorphan(self, user: User, held: bool = False) -> None:
        """The user is alive somewhere (it resumed, or left); ``held``: only
        its node is (it came back, or said its users again): a dropped
        session's nick stays held as that node said."""
        self.orphans.pop(user.uid, None)
        if not held:
            self.held_elsewhere.pop(user.uid, None)

    def held(self, user: User, until: float | None) -> None:
        """Another node's session user dropped (held until then) or is back."""
        if until is None:
            self.held_elsewhere.pop(user.uid, None)
        else:
            self.held_elsewhere[user.uid] = until

    def held_until(self, user: User) -> float | None:
        """Until when a nick is held for a session whose connection dropped."""
        if user.local:
            session = user.session
            return session.expires if session is not None and session.detached else None
        held = self.orphans.get(user.uid)
        return held[0] if held else self.held_elsewhere.get(user.uid)

    def orphans_due(self, now: float) -> list[tuple[User, str]]:
        """Orphans whose grace has ended without a resume, with their digest."""
        due = []
        while self.orphan_order and self.orphan_order[0][0] <= now:
            _, user = self.orphan_order.popleft()
            held = self.orphans.get(user.uid)
            if held is not None and held[0] <= now:
                del self.orphans[user.uid]
                due.append((user, held[1]))
        return due

    # ---- resumes handed over by the cluster ----

    def wait_for_reader(self, conn: Connection, old: str, room: str, position: Position,
                        now: float) -> None:
        """A session handed over from ``old`` (its user last in ``room``)."""
        self.waiting.append((now + RESUME_WAIT, conn, old, room, position))

    def ready_resumes(self, now: float, caught_up) -> list[tuple[Connection, str, str, Position]]:
        """Resumes whose client's last point our reader has reached
        (``caught_up(position)``), or that have waited long enough."""
        ready, waiting = [], deque()
        for item in self.waiting:
            deadline, conn, old, room, position = item
            if deadline <= now or caught_up(position):
                ready.append((conn, old, room, position))
            else:
                waiting.append(item)
        self.waiting = waiting
        return ready

    def next_due(self) -> float | None:
        due = [queue[0][0] for queue in (self.expiring, self.orphan_order, self.waiting)
               if queue]
        return min(due) if due else None
