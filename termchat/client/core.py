"""The terminal client's logic, with no socket, thread or terminal in it.

:class:`ClientCore` is fed what happens (a line typed, a payload from the
server, a connection opened or lost, time passing) and returns effects
(termchat.client.effects) for the program to carry out: packets to send,
lines to show, the bell.  It composes the parts that own the state: the
session (termchat.client.session: phase, token, reconnecting), the view
(termchat.client.view: nick, room, nicks, ignore list, the place), the
command table (termchat.client.commands) and the wording of each packet
(termchat.client.formatting).  chat_client.py owns the socket, the threads
and the terminal, and calls it under one lock.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from termchat.client import commands
from termchat.client.effects import Effect, Ring, Send, Show, ShowOlder
from termchat.client.formatting import (Line, arrival, departure, dimmed, format_message,
                                        highlighted, info, place_lines)
from termchat.client.history import OlderHistory
from termchat.client.session import ClientSession, Phase, Timeouts
from termchat.client.view import View
from termchat.ui.screen import SecretPrompt
from termchat.wire import protocol as proto

IDS_KEPT = 2_000  # ids of the lines shown lately: a history replay skips them


class RecentIds:
    """The last ``limit`` packet ids shown."""

    def __init__(self, limit: int = IDS_KEPT) -> None:
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self.limit = limit

    def add(self, packet_id: str) -> None:
        if packet_id in self._ids:
            return
        self._order.append(packet_id)
        self._ids.add(packet_id)
        if len(self._order) > self.limit:
            self._ids.discard(self._order.popleft())

    def __contains__(self, packet_id: str) -> bool:
        return packet_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def parse(payload: bytes) -> tuple[proto.Message, dict[str, Any]] | None:
    """A packet from the server and its session fields; None for a type
    this client does not know, or a malformed packet."""
    try:
        return proto.parse_server_packet(payload)
    except proto.ProtocolError:
        return None


class ClientCore:
    """One user's client: what to send and show for what happens."""

    def __init__(self, nick: str, server: str, password: str | None = None,
                 timeouts: Timeouts = Timeouts(), bell: bool = False, now: float = 0.0) -> None:
        self.view = View(nick)
        self.session = ClientSession(server, password, timeouts, now)
        self.server = server            # HOST:PORT, for messages
        self.ring_bell = bell
        self.shown_ids = RecentIds()
        self.older = OlderHistory()     # history on demand, for the room we are in
        self.asked_room = False         # after a resume: asked who, for the room we are in

    # ---- asked by the main thread ----

    def prompt(self) -> str:
        if self.session.wants_password:
            return SecretPrompt(f"password for {self.server}: ")
        return self.view.prompt()

    def complete(self, word: str, at_line_start: bool, before: str = "") -> list[str]:
        """Commands at the start of the line; after a world command, what it
        can name (exits, items here, items carried); nicks otherwise."""
        if at_line_start and word.startswith("/"):
            return commands.names_starting(word, self.view.in_world)
        return self.view.complete(word, before)

    def line(self, text: str) -> list[Effect]:
        """A line the user entered."""
        if self.session.wants_password:
            return self.take_password(text)
        if not text.strip():
            return []
        if text.startswith("//"):
            return self.chat(text[1:])
        if text.startswith("/"):
            name, _, argument = text.partition(" ")
            command = commands.find(name)
            if command is None:
                return self.say(f"unknown command: {name} (try /help)")
            return command.run(self, argument.strip())
        return self.chat(text)

    def leave(self) -> list[Effect]:
        """The user quits (/q, Ctrl-C, Ctrl-D)."""
        quit = self.session.quit()
        return [Send(quit)] if quit is not None else []

    def not_sent(self) -> list[Effect]:
        return [Show([("*** not connected: that was not sent (Up brings it back)", "error")])]

    # ---- what commands use ----

    def say(self, text: str) -> list[Effect]:
        return [Show(info(text))]

    def usage(self, name: str) -> list[Effect]:
        return self.say(f"usage: {commands.usage_of(name)}")

    def send(self, message: proto.Message) -> list[Effect]:
        """A packet the user asked for; while the connection is down, say it
        was not sent (it stays in the history)."""
        return [Send(message)] if self.session.connected else self.not_sent()

    def send_checked(self, message: proto.Message, echo: proto.Message) -> list[Effect]:
        """Send unless the server's rebroadcast of it could not fit a packet."""
        if not proto.fits_in_packet(echo):
            size = len(getattr(message, "message", "").encode("utf-8", "replace"))
            return [Show([(f"*** message too long to send ({size} bytes); nothing was sent",
                           "error")])]
        return self.send(message)

    def chat(self, text: str) -> list[Effect]:
        return self.send_checked(proto.Chat(text), proto.ChatFrom(self.view.nick, text))

    def reconnect(self) -> list[Effect]:
        return self.session.reconnect()

    def take_password(self, text: str) -> list[Effect]:
        """The password typed at the prompt: connect again with it."""
        if not text:
            return self.say("type the password, or Ctrl-C to quit")
        return self.session.password_typed(text)

    # ---- asked by the receiver thread ----

    def first_hello(self) -> proto.Hello:
        return self.session.hello(self.view.nick)

    def opened(self, now: float) -> proto.Hello:
        return self.session.opened(self.view.nick, now)

    def receive(self, payload: bytes) -> list[Effect]:
        parsed = parse(payload)
        if parsed is None:
            return []  # a type this client does not know, or a malformed packet
        message, meta = parsed
        if isinstance(message, proto.HistoryEnd):
            lines = self.older.end(message.more, self.view.room)
            return [ShowOlder(tuple(lines))] if lines else []
        if isinstance(message, proto.Error) and self.older.collecting \
                and message.code == proto.Code.BAD_PACKET:
            self.older.refused()  # a server that does not know the request
            return []
        rejoining = self.session.phase in (Phase.REJOINING, Phase.RESUMING)
        go_on, effects = self.session.received(message, meta, self.view.nick)
        if isinstance(message, proto.Resumed) and not self.view.in_world:
            self.asked_room = True  # a move the server never kept (its node died before
            effects.append(Send(proto.WhoRequest()))  # passing it on) is not where we are
        if isinstance(message, proto.WhoList) and self.asked_room:
            return self.room_checked(message.room)
        if not go_on:
            return effects
        own_join = isinstance(message, proto.Joined) and self.view.is_me(message.nick)
        room = self.view.joined_afresh() if own_join and rejoining else None
        if (own_join and rejoining) or self.moves_us(message):
            self.older.reset()
        self.view.track(message)
        shown = self.shown(message, meta) + effects
        if room is not None:  # the server forgot our room: go back to it
            shown += [Send(proto.EnterRoom(room))]
        return shown

    def room_checked(self, room: str) -> list[Effect]:
        """The answer to the ``who`` asked after a resume (not shown): the
        room the server has us in, if not the one the prompt names."""
        self.asked_room = False
        if proto.name_key(room) == proto.name_key(self.view.room):
            return []
        self.view.room = room
        self.older.reset()
        return self.say(f"you are in {room}")

    def shown(self, message: proto.Message, meta: dict[str, Any]) -> list[Effect]:
        """What the user sees of a packet."""
        if self.view.hides(message):
            return []
        if isinstance(message, proto.PlaceView):
            return [Show(line) for line in place_lines(message)]
        line = self.world_move(message)
        if line is None:
            line = format_message(message)
        if not line:
            return []
        packet_id = meta.get("id")
        effects: list[Effect] = []
        if meta.get("history"):
            if packet_id is not None and packet_id in self.shown_ids:
                return []  # on the screen already (a rejoin replays the room's history)
            line = dimmed(line)
            if self.older.collecting:  # asked for: it goes above, with the rest of the answer
                self.older.add(line, packet_id)
                return []
        elif self.view.mentions_me(message):
            line = highlighted(line)
            effects = [Ring()] if self.ring_bell else []
        if packet_id is not None:
            self.shown_ids.add(packet_id)
            if isinstance(message, (proto.ChatFrom, proto.EmoteFrom)):
                self.older.saw(packet_id)
        return [Show(line, meta.get("time"))] + effects

    def moves_us(self, message: proto.Message) -> bool:
        """Whether the packet puts us in another room (or place)."""
        if isinstance(message, proto.EnteredRoom):
            return self.view.is_me(message.nick)
        return isinstance(message, proto.PlaceView) and message.title != self.view.room

    def at_top(self, now: float) -> list[Effect]:
        """PageUp reached the top of the scrollback: ask for older history
        (a server with sessions gives ids to ask before)."""
        if self.session.phase is not Phase.LIVE or self.session.token is None:
            return []
        request = self.older.request(self.session.last_id, now)
        return [Send(request)] if request is not None else []

    def world_move(self, message: proto.Message) -> Line | None:
        """World mode's exit and enter: which way someone went ([] for our
        own: the place itself comes next; None: not a move with a way)."""
        if not isinstance(message, (proto.EnteredRoom, proto.ExitedRoom)):
            return None
        if self.view.in_world and self.view.is_me(message.nick):
            return []
        way = (message.way or "").strip()
        if not way:
            return None
        move = arrival if isinstance(message, proto.EnteredRoom) else departure
        return move(message.nick, way)
