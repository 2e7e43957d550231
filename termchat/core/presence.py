"""Presence: who is in the chat and where, apart from their connections.

Owns the users (:class:`User`: this node's, attached to a connection or
detached and waiting for a resume, and other nodes' users), the rooms they
are in (:class:`Room`), and the nicks being claimed in the cluster.  Answers
``who`` and ``rooms``.  Nicks are unique by their name key (what a reader
cannot tell apart is one name).  This node's users are kept in the store
(a single server's database) as they change, so that a restart knows who
was there and which of them had a session.  No I/O of its own.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Iterable

from termchat.core.ports import NO_STORE, Store
from termchat.wire import protocol as proto

if TYPE_CHECKING:
    from termchat.core.gate import Connection
    from termchat.core.sessions import Session


class Room:
    """A named set of users; the lobby always exists, other rooms while
    someone (on any node) is in them."""

    __slots__ = ("name", "key", "members")

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = proto.name_key(name)
        self.members: set[User] = set()


class User:
    """Someone in the chat.  ``node`` is None for this node's users, who
    have a ``connection`` while attached and a ``session`` if they asked
    for one; another node's users carry that node's id.  ``uid`` names the
    user for as long as it is in the chat, whatever its nick: what was
    meant for one user is never replayed to another of the same name."""

    __slots__ = ("uid", "nick", "key", "room", "away", "operator", "connection", "session",
                 "node", "address", "since", "since_stream")

    def __init__(self, uid: int, nick: str, node: str | None = None) -> None:
        self.uid = uid
        self.nick = nick
        self.key = proto.name_key(nick)
        self.room: Room | None = None
        self.away: str | None = None
        self.operator = False
        self.connection: Connection | None = None
        self.session: Session | None = None
        self.node = node
        self.address: str | None = None  # its last connection's: what a ban holds out
        self.since = 0  # the log entry after which this node has known it: nothing before
        # is owed to it (a session it takes up here begins there)
        self.since_stream: tuple | None = None  # another node's user: the stream entry
        # we read it at (our own entries landing past it are owed to it: see EventLog)

    @property
    def local(self) -> bool:
        return self.node is None

    def __repr__(self) -> str:
        return f"<user {self.nick}{'' if self.node is None else ' of ' + self.node[:12]}>"


class Presence:
    """Users by name key, rooms by room key, and claims in progress."""

    def __init__(self, lobby: str = proto.LOBBY, store: Store = NO_STORE) -> None:
        proto.name_problem(lobby)  # load the name rules' data now, not at a hello
        self.store = store
        self.lobby = Room(lobby)
        self.rooms: dict[str, Room] = {self.lobby.key: self.lobby}
        self.users: dict[str, User] = {}
        self.claims: dict[str, tuple[Connection, str]] = {}  # name key -> hello in progress
        self._uids = itertools.count(1)

    # ---- finding ----

    def get(self, nick: str) -> User | None:
        return self.users.get(proto.name_key(nick))

    def local(self, nick: str) -> User | None:
        user = self.get(nick)
        return user if user is not None and user.local else None

    def holder_of(self, key: str) -> str | None:
        """The nick that holds a name key, here, elsewhere or being claimed."""
        user = self.users.get(key)
        if user is not None:
            return user.nick
        claim = self.claims.get(key)
        return claim[1] if claim else None

    def room_named(self, name: str) -> Room:
        """The room of that name, or a new one (it exists once entered)."""
        return self.rooms.get(proto.name_key(name)) or Room(name)

    def of_node(self, node: str) -> list[User]:
        return [user for user in self.users.values() if user.node == node]

    # ---- changing ----

    def new_user(self, nick: str, node: str | None = None) -> User:
        return User(next(self._uids), nick, node)

    def add(self, user: User, room: Room) -> None:
        self.users[user.key] = user
        self.put(user, room)

    def remove(self, user: User) -> None:
        if self.users.get(user.key) is user:
            del self.users[user.key]
            if user.local:
                self.store.user_gone(user.key)
        self.put(user, None)

    def put(self, user: User, room: Room | None) -> Room | None:
        """Move a user to a room (None: out of every room); returns the old one."""
        old = user.room
        if old is not None:
            old.members.discard(user)
            if not old.members and old is not self.lobby:
                self.rooms.pop(old.key, None)
        user.room = room
        if room is not None:
            room.members.add(user)
            self.rooms[room.key] = room
            if user.local:
                self.keep(user)
        return old

    def keep(self, user: User) -> None:
        """This node's user as it is now, in the store."""
        session = user.session
        self.store.user(user.key, user.nick, user.room.name,
                        session.digest if session else None, session.start if session else 0)

    def rename(self, user: User, new: str) -> None:
        if self.users.get(user.key) is user:
            del self.users[user.key]
            if user.local:
                self.store.user_gone(user.key)
        user.nick, user.key = new, proto.name_key(new)
        self.users[user.key] = user
        if user.local:
            self.keep(user)

    # ---- who and rooms ----

    @staticmethod
    def who(room: Room) -> list[User]:
        """Who is in a room, here and on other nodes, in reading order."""
        return sorted(room.members, key=lambda user: display_order(user.nick))

    def counts(self, always: Iterable[Room]) -> list[tuple[Room, int]]:
        """Each room with someone in it (and the ``always`` ones) and how
        many are there: those first, then the others by name."""
        first = list(always)
        others = sorted((room for room in self.rooms.values()
                         if room.members and room not in first),
                        key=lambda room: display_order(room.name))
        return [(room, len(room.members)) for room in first + others]


def display_order(name: str) -> tuple[str, str]:
    """Lists are sorted as a reader expects: alphabetically, ignoring case."""
    return name.casefold(), name
