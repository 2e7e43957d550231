"""What the client knows of the chat around it, as the packets told it:
its own nick and room (for the prompt), the nicks it has seen (for Tab),
the nicks the user ignores, and in world mode the exits and items of the
place (for completing world commands).

Sans-IO: fed validated messages, asked for a prompt, completions and
whether to hide a message.  Everything it keeps from the server is
bounded, whatever a hostile server sends: the nicks it remembers are the
most recently seen ``NICKS_KEPT``, and the world lists are each at most
``NAMES_KEPT`` long.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from termchat.client.formatting import item_name, mentions
from termchat.wire import protocol as proto

NICKS_KEPT = 5_000     # nicks remembered for Tab: the most recently seen
NAMES_KEPT = 1_000     # exits, items here, items carried: of one packet each
IGNORED_KEPT = 1_000   # nicks the user can ignore at once


class RecentNames:
    """Names by their key (``name_key``), the most recently seen last; past
    ``limit`` the one seen longest ago is forgotten."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._names: OrderedDict[str, str] = OrderedDict()

    def add(self, name: str) -> None:
        key = proto.name_key(name)
        self._names[key] = name
        self._names.move_to_end(key)
        if len(self._names) > self.limit:
            self._names.popitem(last=False)

    def add_all(self, names: Iterable[str]) -> None:
        for name in names:
            self.add(name)

    def discard(self, name: str) -> str | None:
        return self._names.pop(proto.name_key(name), None)

    def clear(self) -> None:
        self._names.clear()

    def __contains__(self, name: str) -> bool:
        return proto.name_key(name) in self._names

    def __len__(self) -> int:
        return len(self._names)

    def names(self) -> list[str]:
        return sorted(self._names.values(), key=str.casefold)


class View:
    """The chat as this client sees it (one owner: the client's core)."""

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.room = proto.LOBBY            # a room, or in world mode the place's title
        self.nicks = RecentNames(NICKS_KEPT)
        self.ignored = RecentNames(IGNORED_KEPT)
        self.in_world = False              # the server sent a place: it runs a world
        self.exits: list[str] = []         # world mode, from the last look
        self.items_here: list[str] = []
        self.carried: list[str] = []

    def prompt(self) -> str:
        if proto.name_key(self.room) == proto.name_key(proto.LOBBY):
            return f"{self.nick}> "
        return f"{self.nick} [{self.room}]> "

    def is_me(self, nick: str) -> bool:
        return nick == self.nick

    def track(self, message: proto.Message) -> None:
        """Keep the nicks, our nick and room, and the place current."""
        if isinstance(message, (proto.Joined, proto.ChatFrom, proto.EmoteFrom,
                                proto.EnteredRoom)):
            self.nicks.add(message.nick)
        if isinstance(message, proto.Left):
            self.nicks.discard(message.nick)
        elif isinstance(message, proto.NickChanged):
            self.nicks.discard(message.old)
            self.nicks.add(message.nick)
            if message.old == self.nick:
                self.nick = message.nick  # the prompt and any reconnection use it
        elif isinstance(message, proto.WhoList):
            self.nicks.add_all(message.nicks)
        elif isinstance(message, proto.EnteredRoom) and self.is_me(message.nick):
            self.room = message.room
        elif isinstance(message, proto.PlaceView):
            self.in_world = True
            self.room = message.title  # the prompt names the place
            self.exits = list(message.exits[:NAMES_KEPT])
            self.items_here = [item_name(item) for item in message.items[:NAMES_KEPT]]
        elif isinstance(message, proto.Inventory):
            self.carried = [item_name(item) for item in message.items[:NAMES_KEPT]]

    def joined_afresh(self) -> str | None:
        """Our own join on a server that forgot us (restarted, or the
        session ended): the server has us in the lobby and knows none of
        what we knew.  Returns the room to go back to (None: the lobby, or
        world mode, where the server keeps our place)."""
        room, in_world = self.room, self.in_world
        self.room = proto.LOBBY
        self.in_world = False
        self.exits, self.items_here, self.carried = [], [], []
        self.nicks.clear()
        self.nicks.add(self.nick)
        if in_world or proto.name_key(room) == proto.name_key(proto.LOBBY):
            return None
        return room

    def hides(self, message: proto.Message) -> bool:
        """Whether an ignored nick said this (chat, emote or DM)."""
        if isinstance(message, (proto.ChatFrom, proto.EmoteFrom)):
            return message.nick in self.ignored
        if isinstance(message, proto.DirectFrom):
            return message.sender in self.ignored
        return False

    def mentions_me(self, message: proto.Message) -> bool:
        """A chat or emote naming us, or a DM to us, from someone else."""
        if isinstance(message, proto.DirectFrom):
            return message.sender != self.nick and message.to == self.nick
        if isinstance(message, (proto.ChatFrom, proto.EmoteFrom)) and message.nick != self.nick:
            return mentions(message.message, self.nick)
        return False

    # ---- completion ----

    def world_names(self, command: str) -> list[str] | None:
        """What a world command can name (None: not a world command)."""
        if command == "/go":
            return self.exits
        if command == "/take":
            return self.items_here
        if command == "/drop":
            return self.carried
        if command in ("/look", "/l"):
            return self.items_here + self.carried + self.exits
        return None

    def complete(self, word: str, before: str) -> list[str]:
        """After a world command, what it can name; nicks otherwise."""
        command, _, typed = before.partition(" ")
        names = self.world_names(command.lower()) if self.in_world else None
        if names is not None:
            return complete_name(names, typed, word)
        folded = word.casefold()
        return [nick for nick in self.nicks.names() if nick.casefold().startswith(folded)]


def complete_name(names: list[str], typed: str, word: str) -> list[str]:
    """What replaces ``word`` to complete one of ``names`` (an item's may
    have spaces: ``typed`` is what came before the word): one word so far
    may be the start of any word of the name ("sto" for "smooth stone")."""
    names = list(dict.fromkeys(names))
    so_far = (typed + word).casefold()
    if not so_far.strip():
        return names
    if not typed.strip():
        return [name for name in names
                if any(part.startswith(so_far) for part in name.casefold().split())]
    return [name[len(so_far) - len(word):] for name in names
            if name.casefold().startswith(so_far)]
