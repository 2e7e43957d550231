"""The terminal chat client.

The main thread reads lines with ``read_command`` and sends them; a receiver
thread reads packets, formats them and hands them to ``print_message``.  The
terminal UI is chosen at run time through ``ui_backend`` (curses by default,
``--ui ansi`` for plain escapes).

Usage: ``python chat_client.py NICK HOST PORT [--ui curses|ansi] [--tls]``.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TextIO

from termchat.wire import protocol as proto
from termchat.args import add_version, first_line_of, int_in_range, program_name
from termchat.world.model import ARTICLES
from termchat.ui.screen import SecretPrompt, escape_controls
import ui_backend

Segment = tuple[str, "str | None"]


# --------------------------------------------------------------------------
# What the user sees of each packet


def info(text: str) -> list[Segment]:
    return [("*** ", "info"), (text, None)]


def nick_segment(nick: str) -> Segment:
    return (nick, "nick:" + nick)


def format_message(message: proto.Message) -> list[Segment] | None:
    """The output line for a packet from the server (None: show nothing)."""
    if isinstance(message, proto.ChatFrom):
        return [nick_segment(message.nick), (": " + message.message, None)]
    if isinstance(message, proto.Joined):
        return info(f"{message.nick} has joined the chat")
    if isinstance(message, proto.Left):
        return info(f"{message.nick} has left the chat")
    if isinstance(message, proto.Error):
        return [("*** error: " + message.message, "error")]
    if isinstance(message, proto.Info):
        return info(message.message)
    if isinstance(message, proto.DirectFrom):
        return [nick_segment(message.sender), (" -> ", None), nick_segment(message.to),
                (": " + message.message, None)]
    if isinstance(message, proto.EmoteFrom):
        return [("[", None), nick_segment(message.nick), (f" {message.message}]", None)]
    if isinstance(message, proto.WhoList):
        away = message.away or {}
        names = [f"{nick} (away)" if nick in away else nick for nick in message.nicks]
        return info(f"in {message.room}: {', '.join(names)}")
    if isinstance(message, proto.EnteredRoom):
        return info(f"{message.nick} entered room {message.room}")
    if isinstance(message, proto.ExitedRoom):
        return info(f"{message.nick} left room {message.room}")
    if isinstance(message, proto.Kicked):
        reason = f" ({message.reason})" if message.reason else ""
        return info(f"{message.nick} was kicked by {message.by}{reason}")
    if isinstance(message, proto.NickChanged):
        return info(f"{message.old} is now known as {message.nick}")
    if isinstance(message, proto.RoomList):
        rooms = ", ".join(f"{room.name} ({room.count})" for room in message.rooms)
        return info(f"rooms: {rooms}")
    if isinstance(message, proto.Inventory):
        return info("You carry: " + listed(message.items, message.more) if message.items
                    else "You carry nothing.")
    return None


def place_lines(view: proto.PlaceView) -> list[list[Segment]]:
    """A place as a reader wants it: after a blank line, the title in bold,
    the description (the terminal wraps it), then exits, items and people
    each on a line."""
    lines = [[("", None)], [(view.title, "bold")]]
    lines += [[(paragraph, None)] for paragraph in view.description.split("\n")]
    lines.append([("Exits: ", "info"), (", ".join(view.exits) or "none", None)])
    if view.items:
        lines.append([("You see: ", "info"), (listed(view.items, view.more_items), None)])
    if view.people:
        lines.append([("Here: ", "info"), (listed(view.people, view.more_people), None)])
    return lines


def listed(names: tuple[str, ...], more: int = 0) -> str:
    """"a, b, c" (and how many the server left out of a long list)."""
    return ", ".join(names) + (f" and {more:,} more" if more else "")


def item_name(shown: str) -> str:
    """"a brass key" -> "brass key", for completion."""
    first, _, rest = shown.partition(" ")
    return rest if first.lower() in ARTICLES and rest else shown


def mentions(text: str, nick: str) -> bool:
    """Whether text names nick as a word of its own, ignoring case."""
    return re.search(rf"(?<![\w]){re.escape(nick)}(?![\w])", text, re.IGNORECASE) is not None


# --------------------------------------------------------------------------
# Commands typed at the prompt


@dataclass(frozen=True)
class Command:
    usage: str
    summary: str
    run: Callable[["ChatClient", str], None]


def _command_table() -> dict[str, Command]:
    look = lambda c, a: c.send(proto.Look(a or None))  # noqa: E731
    inventory = lambda c, a: c.send(proto.InventoryRequest())  # noqa: E731
    return {
        "/q": Command("/q", "quit", lambda c, _: c.quit()),
        "/message": Command("/message NICK TEXT", "send a direct message",
                            lambda c, a: c.send_direct(a, "/message")),
        "/msg": Command("/msg NICK TEXT", "same as /message",
                        lambda c, a: c.send_direct(a, "/msg")),
        "/me": Command("/me TEXT", "act something out: [pat waves]",
                       lambda c, a: c.send_emote(a)),
        "/who": Command("/who", "list who is in your room",
                        lambda c, a: c.send(proto.WhoRequest())),
        "/join": Command("/join ROOM", "move to a room (made if new)",
                         lambda c, a: c.enter_room(a)),
        "/leave": Command("/leave", "go back to the lobby",
                          lambda c, a: c.enter_room(proto.LOBBY)),
        "/rooms": Command("/rooms", "list rooms and how many are in each",
                          lambda c, a: c.send(proto.RoomsRequest())),
        "/nick": Command("/nick NEW", "change your nick", lambda c, a: c.change_nick(a)),
        "/op": Command("/op PASSWORD", "become an operator",
                       lambda c, a: c.send(proto.BecomeOperator(a)) if a else c.usage("/op")),
        "/kick": Command("/kick NICK [REASON]", "operators: remove a user",
                         lambda c, a: c.kick(a)),
        "/ban": Command("/ban [NICK MINUTES [REASON]]", "operators: ban a user's address "
                        "and kick them; alone: list the bans", lambda c, a: c.ban(a)),
        "/away": Command("/away [TEXT]", "say you are away (no TEXT: back)",
                         lambda c, a: c.send(proto.Away(a))),
        "/ignore": Command("/ignore [NICK]", "hide NICK's messages (no NICK: list)",
                           lambda c, a: c.ignore(a)),
        "/unignore": Command("/unignore NICK", "show NICK's messages again",
                             lambda c, a: c.unignore(a)),
        "/look": Command("/look [NAME]", "world mode: look around, or at something", look),
        "/l": Command("/l [NAME]", "same as /look", look),
        "/go": Command("/go DIRECTION", "world mode: walk that way (north, up, ...)",
                       lambda c, a: c.send_named(proto.Go, a, "/go")),
        **{f"/{short}": Command(f"/{short}", f"same as /go {direction}",
                                lambda c, a, d=direction: c.send(proto.Go(d)))
           for short, direction in (("n", "north"), ("s", "south"), ("e", "east"),
                                    ("w", "west"), ("u", "up"), ("d", "down"))},
        "/take": Command("/take NAME", "world mode: pick something up",
                         lambda c, a: c.send_named(proto.Take, a, "/take")),
        "/drop": Command("/drop NAME", "world mode: put something down",
                         lambda c, a: c.send_named(proto.Drop, a, "/drop")),
        "/inventory": Command("/inventory", "world mode: what you carry", inventory),
        "/i": Command("/i", "same as /inventory", inventory),
        "/help": Command("/help", "show this list", lambda c, a: c.show_help()),
    }


# What Tab completes after each world command: attributes of the client
COMPLETES = {"/go": "exits", "/take": "items_here", "/drop": "carried",
             "/look": "everything_here", "/l": "everything_here"}


COMMANDS = _command_table()

KEYS = (
    ("Left/Right, Ctrl-Left/Right", "move by character / word"),
    ("Home/End, Ctrl-A/Ctrl-E", "start / end of the line"),
    ("Backspace/Delete", "delete before / under the cursor"),
    ("Ctrl-U/Ctrl-K/Ctrl-W", "delete to the start / to the end / the word before"),
    ("Up/Down", "history"),
    ("Tab", "complete a nick or a command; again to cycle"),
    ("PageUp/PageDown", "scroll the output"),
    ("Ctrl-L", "redraw"),
    ("Ctrl-Z", "suspend (fg to come back)"),
    ("Ctrl-C, Ctrl-D on an empty line", "quit"),
)
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 15.0  # seconds between tries: doubling
ANSWER_NOTICE_SECONDS = 3.0   # no answer to hello by then: say we are waiting
ANSWER_GIVE_UP_SECONDS = 10.0  # ...and by then: give up
PASSWORD_REFUSALS = ("this server needs a server password", "wrong server password")


class Quit(Exception):
    """The user asked to leave."""


class ChatClient:
    """The connection to the server (opened again when it is lost) and the
    state the UI needs.

    The client always asks for a session.  When the connection drops it
    keeps the screen and the half-typed line, says so, and reconnects with
    backoff until the user quits: with the session's token and the last id
    it showed when it has one (the server replays what was missed), with a
    fresh hello otherwise.  A server that never grants a session gets only
    base packets: no quit, no resume.
    """

    def __init__(self, sock: socket.socket, nick: str, ui, timestamps: bool = False,
                 server: str = "the server", bell: bool = False,
                 log: TextIO | None = None,
                 reconnect: Callable[[], socket.socket] | None = None,
                 password: str | None = None) -> None:
        self.sock = sock
        self.open_connection = reconnect   # a new connection to the same server
        self.token: str | None = None      # the session's, once the server grants one
        self.last_id: str | None = None    # of the last packet shown
        self.phase = "joining"             # joining, live, resuming, fresh
        self.connected = True
        self.stopping = threading.Event()  # the user quit: stop reconnecting
        self.retry_delay = RECONNECT_FIRST  # grows until a reconnection goes live
        self.ignored: dict[str, str] = {}   # name_key -> nick, hidden here
        self.password = password            # the server password, if it has one
        self.asking_password = False        # the prompt asks for it, not a chat line
        self.password_typed = threading.Event()
        self.nick = nick
        self.ui = ui
        self.timestamps = timestamps
        self.server = server               # HOST:PORT, for messages
        self.ring_bell = bell
        self.log = log                     # --log: every line shown, appended
        self.no_answer: str | None = None  # the server never answered the hello
        self.quitting = False              # the user ended: closing is not news
        self._show_lock = threading.Lock()
        self.room = proto.LOBBY
        self.nicks: dict[str, str] = {}   # name_key -> nick, for completion
        self.in_world = False             # the server sent a place: it runs a world
        self.exits: list[str] = []        # world mode, from the last look: for completion
        self.items_here: list[str] = []
        self.carried: list[str] = []
        self.accepted = False             # the server announced our join
        self.disconnected = False
        self.rejected: str | None = None  # error before our join: nick refused
        self.failure: BaseException | None = None
        self._send_lock = threading.Lock()

    # ---- main thread ----

    def prompt(self) -> str:
        if self.asking_password:
            return SecretPrompt(f"password for {self.server}: ")
        if proto.name_key(self.room) == proto.name_key(proto.LOBBY):
            return f"{self.nick}> "
        return f"{self.nick} [{self.room}]> "

    def run(self) -> bool:
        """Read and act on lines until the user quits (True) or the server
        goes away (False)."""
        receiver = threading.Thread(target=self.receive_loop, name="receiver", daemon=True)
        receiver.start()
        try:
            while True:
                line = self.ui.read_command(self.prompt, self.complete)
                for part in line.split("\n"):
                    self.handle_line(part)
        except (Quit, KeyboardInterrupt):
            self.leave()
            return True
        except EOFError:
            if self.disconnected:  # the receiver ended (refused, no answer, a crash)
                return False
            self.leave()
            return True

    def leave(self) -> None:
        """The user quits: say so to a session server (the others see the
        leave at once) and stop reconnecting."""
        self.quitting = True
        self.stopping.set()
        if self.token is not None and self.connected:
            try:
                self.send_now(proto.Quit())
            except OSError:
                pass

    def handle_line(self, line: str) -> None:
        if self.asking_password:
            self.take_password(line)
            return
        if not line.strip():
            return
        if line.startswith("//"):
            self.send_chat(line[1:])
        elif line.startswith("/"):
            name, _, argument = line.partition(" ")
            command = COMMANDS.get(name.lower())
            if command is None:
                self.show(info(f"unknown command: {name} (try /help)"))
            else:
                command.run(self, argument.strip())
        else:
            self.send_chat(line)

    def quit(self) -> None:
        raise Quit

    def take_password(self, line: str) -> None:
        """The password typed at the prompt: the receiver connects again with it."""
        if not line:
            self.show(info("type the password, or Ctrl-C to quit"))
            return
        self.password = line
        self.asking_password = False
        self.password_typed.set()

    def send_chat(self, text: str) -> None:
        self.send_checked(proto.Chat(text), proto.ChatFrom(self.nick, text))

    def send_emote(self, text: str) -> None:
        if not text.strip():
            self.usage("/me")
            return
        self.send_checked(proto.Emote(text), proto.EmoteFrom(self.nick, text))

    def send_direct(self, argument: str, name: str) -> None:
        to, _, text = argument.partition(" ")
        if not to or not text.strip():
            self.usage(name)
            return
        self.send_checked(proto.SendDirect(to, text), proto.DirectFrom(self.nick, to, text))

    def enter_room(self, room: str) -> None:
        problem = proto.name_problem(room) if room else "is missing"
        if problem:
            self.show(info(f"room name {problem}; usage: /join ROOM"))
            return
        self.send(proto.EnterRoom(room))

    def kick(self, argument: str) -> None:
        nick, _, reason = argument.partition(" ")
        if not nick:
            self.usage("/kick")
            return
        self.send(proto.KickRequest(nick, reason.strip()))

    def ban(self, argument: str) -> None:
        if not argument:
            self.send(proto.BanRequest())
            return
        nick, _, rest = argument.partition(" ")
        minutes, _, reason = rest.strip().partition(" ")
        if not minutes.isdigit() or not 1 <= int(minutes) <= 525_600:
            self.usage("/ban")
            return
        self.send(proto.BanRequest(nick, int(minutes), reason.strip()))

    def send_named(self, make: type, name: str, command: str) -> None:
        """A world command that names something (a direction, an item)."""
        if not name.strip():
            self.usage(command)
            return
        self.send(make(name.strip()))

    @property
    def everything_here(self) -> list[str]:
        return self.items_here + self.carried + self.exits

    def change_nick(self, nick: str) -> None:
        nick = proto.normalize(nick)
        problem = proto.name_problem(nick) if nick else "is missing"
        if problem:
            self.show(info(f"nick {problem}; usage: /nick NEW"))
            return
        self.send(proto.ChangeNick(nick))

    def ignore(self, nick: str) -> None:
        """Hide a nick's chat, emotes and DMs here (the server knows nothing)."""
        if not nick:
            names = sorted(self.ignored.values(), key=str.casefold)
            self.show(info(f"ignoring: {', '.join(names)}" if names else "ignoring nobody"))
            return
        self.ignored[proto.name_key(nick)] = nick
        self.show(info(f"ignoring {nick}"))

    def unignore(self, nick: str) -> None:
        if not nick:
            self.usage("/unignore")
        elif self.ignored.pop(proto.name_key(nick), None) is None:
            self.show(info(f"not ignoring {nick}"))
        else:
            self.show(info(f"no longer ignoring {nick}"))

    def hides(self, message: proto.Message) -> bool:
        """Whether an ignored nick said this (chat, emote or DM)."""
        if isinstance(message, (proto.ChatFrom, proto.EmoteFrom)):
            return proto.name_key(message.nick) in self.ignored
        if isinstance(message, proto.DirectFrom):
            return proto.name_key(message.sender) in self.ignored
        return False

    def show_help(self) -> None:
        rows = [(c.usage, c.summary) for c in COMMANDS.values()]
        rows.append(("//TEXT", "send TEXT starting with /"))
        width = max(len(name) for name, _ in rows + list(KEYS))
        self.show(info("commands:"))
        for name, summary in rows:
            self.show(info(f"  {name.ljust(width)}  {summary}"))
        self.show(info("keys:"))
        for name, summary in KEYS:
            self.show(info(f"  {name.ljust(width)}  {summary}"))

    def usage(self, name: str) -> None:
        self.show(info(f"usage: {COMMANDS[name].usage}"))

    def send_checked(self, message: proto.Message, echo: proto.Message) -> None:
        """Send unless the server's rebroadcast of it could not fit a packet."""
        if not proto.fits_in_packet(echo):
            size = len(getattr(message, "message", "").encode("utf-8", "replace"))
            self.show([(f"*** message too long to send ({size} bytes); nothing was sent",
                        "error")])
            return
        self.send(message)

    def send(self, message: proto.Message) -> None:
        """Send a packet the user asked for; while the connection is down,
        say it was not sent (it stays in the history)."""
        if self.connected:
            try:
                self.send_now(message)
                return
            except OSError:
                self.connected = False  # the receiver notices and reconnects
        self.show([("*** not connected: that was not sent (Up brings it back)", "error")])

    def send_now(self, message: proto.Message) -> None:
        with self._send_lock:
            self.sock.sendall(proto.encode(message))

    def complete(self, word: str, at_line_start: bool, before: str = "") -> list[str]:
        """Commands at the start of the line; after a world command, what it
        can name (exits, items here, items carried); nicks otherwise."""
        folded = word.casefold()
        if at_line_start and word.startswith("/"):
            return [name for name in COMMANDS if name.startswith(folded)]
        command, _, typed = before.partition(" ")
        if command.lower() in COMPLETES:
            return self.complete_name(getattr(self, COMPLETES[command.lower()]),
                                      typed, word)
        nicks = sorted(self.nicks.values(), key=str.casefold)
        return [nick for nick in nicks if nick.casefold().startswith(folded)]

    @staticmethod
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

    def show(self, segments: list[Segment], when: float | None = None) -> None:
        if self.timestamps:
            stamp = time.localtime(when) if when is not None else None
            segments = [(time.strftime("%H:%M ", stamp), "dim")] + segments
        self.ui.print_message(segments)
        if self.log is not None:
            line = escape_controls("".join(text for text, _ in segments))
            with self._show_lock:
                self.log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
                self.log.flush()

    def mentions_me(self, message: proto.Message) -> bool:
        """A chat or emote naming us, or a DM to us, from someone else."""
        if isinstance(message, proto.DirectFrom):
            return message.sender != self.nick and message.to == self.nick
        if isinstance(message, (proto.ChatFrom, proto.EmoteFrom)) and message.nick != self.nick:
            return mentions(message.message, self.nick)
        return False

    # ---- receiver thread ----

    def receive_loop(self) -> None:
        try:
            if not self.await_answer():
                return
            while True:
                self.read_until_closed()
                if self.quitting or self.rejected is not None:
                    return
                if self.asking_password and not self.wait_for_password():
                    return
                if not self.reconnect():
                    return
        except BaseException as exc:  # shown after the terminal is restored
            self.failure = exc
        finally:
            self.disconnected = True
            self.ui.stop_input()

    def read_until_closed(self) -> None:
        decoder = proto.PacketDecoder()
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self.connected = False
                return
            for payload in decoder.feed(data):
                self.receive(payload)

    def reconnect(self) -> bool:
        """Open the connection again, with backoff, until it works or the
        user quits (False); say hello with the session to resume, if any.
        A hello refused after a reconnection (the nick still held, say by a
        dead cluster node not yet noticed) is retried the same way."""
        if self.phase == "live":
            self.show(info("connection lost; reconnecting..."))
            self.retry_delay = RECONNECT_FIRST
        while not self.stopping.wait(self.retry_delay):
            self.retry_delay = min(RECONNECT_MAX, max(RECONNECT_FIRST, self.retry_delay * 2))
            try:
                sock = self.open_connection()
            except OSError:
                continue
            with self._send_lock:
                self.sock = sock
            if self.token:
                self.phase = "resuming"
            elif self.accepted:
                self.phase = "fresh"     # (never joined yet: still "joining")
            try:
                self.send_now(proto.Hello(self.nick, session=True, resume=self.token,
                                          after=self.last_id, password=self.password))
            except OSError:
                continue
            self.connected = True
            return True
        return False

    def wait_for_password(self) -> bool:
        """Until the user has typed the password (False: they quit)."""
        while not self.password_typed.wait(0.2):
            if self.stopping.is_set():
                return False
        self.password_typed.clear()
        self.retry_delay = 0.0  # the user is waiting: connect again at once
        return True

    def await_answer(self) -> bool:
        """Wait for the server's first bytes: after a few seconds say we
        are waiting; give up (False) if nothing comes at all."""
        started = time.monotonic()
        noticed = False
        while True:
            deadline = started + (ANSWER_GIVE_UP_SECONDS if noticed else ANSWER_NOTICE_SECONDS)
            try:
                ready, _, _ = select.select([self.sock], [], [],
                                            max(0.0, deadline - time.monotonic()))
            except InterruptedError:
                continue
            if ready:
                return True
            if noticed:
                self.no_answer = f"no answer from {self.server}: is it a chat server?"
                return False
            self.show(info(f"waiting for {self.server} to answer..."))
            noticed = True

    def receive(self, payload: bytes) -> None:
        try:
            message, meta = proto.parse_server_packet(payload)
        except proto.ProtocolError:
            return  # a type this client does not know, or a malformed packet
        if "id" in meta:
            self.last_id = meta["id"]
        if self.follow_session(message):
            return
        self.track(message)
        if self.hides(message):
            return
        if isinstance(message, proto.PlaceView):
            for line in place_lines(message):
                self.show(line)
            return
        if self.own_move_in_world(message):
            return  # the place itself comes next: the line would only repeat it
        segments = format_message(message)
        if segments is None:
            return
        if meta.get("history"):
            segments = [(text, "dim") for text, _ in segments]
        elif self.mentions_me(message):
            segments = [(text, "mention" if style is None else style)
                        for text, style in segments]
            if self.ring_bell:
                self.ui.bell()
        self.show(segments, meta.get("time"))
        if isinstance(message, proto.Joined) and message.nick == self.nick \
                and self.phase == "fresh":
            self.phase = "live"
            self.show(info("reconnected; messages sent while you were away are lost"))

    def own_move_in_world(self, message: proto.Message) -> bool:
        return self.in_world and isinstance(message, (proto.EnteredRoom, proto.ExitedRoom)) \
            and message.nick == self.nick

    def follow_session(self, message: proto.Message) -> bool:
        """The session's own packets; True when nothing more is to be shown."""
        if isinstance(message, proto.SessionGranted):
            self.token = message.token
            return True
        if isinstance(message, proto.Resumed):
            self.phase = "live"
            self.show(info("reconnected"))
            return True
        if isinstance(message, proto.Error) and self.phase == "resuming":
            self.token, self.last_id, self.phase = None, None, "fresh"  # start anew
            try:
                self.send_now(proto.Hello(self.nick, session=True, password=self.password))
            except OSError:
                pass
            return True
        return False

    def track(self, message: proto.Message) -> None:
        """Keep the nicks (for Tab) and our room (for the prompt) current."""
        if isinstance(message, (proto.Joined, proto.ChatFrom, proto.EmoteFrom,
                                proto.EnteredRoom)):
            self.nicks[proto.name_key(message.nick)] = message.nick
        if isinstance(message, proto.Joined) and message.nick == self.nick:
            self.accepted = True
            if self.phase == "joining":
                self.phase = "live"
        elif isinstance(message, proto.Left):
            self.nicks.pop(proto.name_key(message.nick), None)
        elif isinstance(message, proto.NickChanged):
            self.nicks.pop(proto.name_key(message.old), None)
            self.nicks[proto.name_key(message.nick)] = message.nick
            if message.old == self.nick:
                self.nick = message.nick  # the prompt and any reconnection use it
        elif isinstance(message, proto.WhoList):
            for nick in message.nicks:
                self.nicks[proto.name_key(nick)] = nick
        elif isinstance(message, proto.EnteredRoom) and message.nick == self.nick:
            self.room = message.room
        elif isinstance(message, proto.PlaceView):
            self.in_world = True
            self.room = message.title  # the prompt names the place
            self.exits = list(message.exits)
            self.items_here = [item_name(item) for item in message.items]
        elif isinstance(message, proto.Inventory):
            self.carried = [item_name(item) for item in message.items]
        elif isinstance(message, proto.Error) and self.phase == "joining":
            if message.message in PASSWORD_REFUSALS and self.open_connection is not None:
                self.asking_password = True  # the prompt asks; then we connect again
                self.show(info("type the server's password at the prompt (it is not shown)"))
            else:
                self.rejected = message.message  # after a reconnection: retried instead


# --------------------------------------------------------------------------
# Start-up


def nick_argument(text: str) -> str:
    nick = proto.normalize(text)  # as the server will announce it
    problem = proto.name_problem(nick)
    if problem:
        raise argparse.ArgumentTypeError(f"invalid nick {proto.quote(nick)!r}: {problem}")
    return nick


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    keys = "\n".join(f"  {name:34} {summary}" for name, summary in KEYS)
    parser = argparse.ArgumentParser(
        prog=program_name(), description="Terminal chat client.",
        epilog=f"keys:\n{keys}\n\nType /help in the client for its commands.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(parser)
    parser.add_argument("nick", type=nick_argument, metavar="NICK", help="your nickname")
    parser.add_argument("host", metavar="HOST", help="server host name or address")
    parser.add_argument("port", type=int_in_range("port", 1, 65535), metavar="PORT",
                        help="server port")
    parser.add_argument("--ui", choices=sorted(ui_backend.BACKENDS), default=ui_backend.DEFAULT,
                        help=f"terminal backend (default {ui_backend.DEFAULT})")
    parser.add_argument("--no-color", action="store_true",
                        help="no colours (also when NO_COLOR is set)")
    parser.add_argument("--timestamps", action="store_true", help="show the time of each line")
    parser.add_argument("--bell", action="store_true",
                        help="ring the terminal bell when someone names you or sends you a DM")
    parser.add_argument("--log", metavar="FILE",
                        help="append every line shown, with its date and time, to FILE")
    parser.add_argument("--password-file", metavar="FILE",
                        help="the server's password, from the file's first line (without "
                             "it, the client asks when the server wants one)")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS, checking the server's certificate and name")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="trust this CA certificate (PEM) instead of the system's; "
                             "implies --tls")
    return parser.parse_args(argv)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificates checked against the system's CAs (or only ``ca_file``),
    host names checked, TLS 1.2 or later."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class TlsStream:
    """A TLS connection the two threads share: the receiver reads while the
    main thread sends.  OpenSSL must not be entered from both at once, so
    each TLS call holds one lock and never blocks; waiting for the socket
    happens outside the lock.  Offers what ChatClient uses of a socket."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        return self.retried(lambda: self.sock.recv(size))

    def sendall(self, data: bytes) -> None:
        view, sent = memoryview(data), 0
        while sent < len(view):
            sent += self.retried(lambda: self.sock.send(view[sent:]))

    def retried(self, call: Callable[[], Any]) -> Any:
        """One TLS call, under the lock, again after each wait it needs."""
        while True:
            with self.lock:
                try:
                    return call()
                except ssl.SSLWantReadError:
                    wanted = "read"
                except ssl.SSLWantWriteError:
                    wanted = "write"
            self.wait(wanted)

    def wait(self, wanted: str) -> None:
        sockets = [self.sock]
        try:
            select.select(sockets if wanted == "read" else [],
                          sockets if wanted == "write" else [], [], 1.0)
        except ValueError as exc:  # closed by the other thread
            raise OSError("connection closed") from exc

    def shutdown(self, how: int) -> None:
        with self.lock:
            self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


def connect(host: str, port: int, tls: ssl.SSLContext | None = None):
    """A connection to the server (a TlsStream with ``tls``): OSError if it
    cannot be made, ssl.SSLError if TLS cannot be set up with it."""
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # typed lines go at once
    if tls is None:
        sock.settimeout(None)
        return sock
    try:
        return TlsStream(tls.wrap_socket(sock, server_hostname=host))  # handshakes (10 s)
    except BaseException:
        sock.close()
        raise


def connection_problem(exc: BaseException) -> str:
    """Why a connection could not be made, in words for the user."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return (f"TLS handshake failed ({exc.reason or exc}): does the server speak TLS? "
                "(the server's --tls-cert)")
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)):
        return "the connection was reset while setting up"
    return getattr(exc, "strerror", None) or str(exc)


def fail(message: str) -> int:
    print(f"{program_name()}: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ui = ui_backend.load(args.ui)
        ui_backend.check(ui)  # before anyone sees us join
    except ui_backend.BackendUnavailable as exc:
        return fail(str(exc))
    try:
        log = open(args.log, "a", encoding="utf-8") if args.log else None
    except OSError as exc:
        return fail(f"cannot open the log file {args.log}: {exc.strerror}")
    try:
        password = first_line_of(args.password_file, "password") if args.password_file else None
    except ValueError as exc:
        return fail(str(exc))
    try:
        tls = tls_context(args.tls_ca) if args.tls or args.tls_ca else None
    except (OSError, ssl.SSLError) as exc:
        return fail(f"cannot use the CA file {args.tls_ca}: "
                    f"{getattr(exc, 'strerror', None) or exc}")
    try:
        sock = connect(args.host, args.port, tls)
        sock.sendall(proto.encode(proto.Hello(args.nick, session=True, password=password)))
    except (OSError, UnicodeError) as exc:
        return fail(f"cannot connect to {args.host}:{args.port}: {connection_problem(exc)}")
    color = not args.no_color and not os.environ.get("NO_COLOR")
    client = ChatClient(sock, args.nick, ui, timestamps=args.timestamps,
                        server=f"{args.host}:{args.port}", bell=args.bell, log=log,
                        reconnect=lambda: connect(args.host, args.port, tls), password=password)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ui_backend.start(ui, color=color)
    except ui_backend.BackendUnavailable as exc:
        sock.close()
        return fail(str(exc))
    try:
        user_ended = client.run()
    except Exception:
        ui.end_windows()
        traceback.print_exc()
        return 1
    finally:
        ui.end_windows()
        close_quietly(sock)
    return report_exit(client, user_ended)


def close_quietly(sock: socket.socket | TlsStream) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def report_exit(client: ChatClient, user_ended: bool) -> int:
    """After the terminal is restored: say why the client ended."""
    if client.failure is not None:
        traceback.print_exception(client.failure)
        return 1
    if client.rejected is not None:
        return fail(f"the server refused us: {client.rejected}")
    if client.no_answer is not None:
        return fail(client.no_answer)
    if not user_ended:
        return fail("disconnected from server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
