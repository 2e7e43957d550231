"""The commands typed at the prompt: one table (name, usage, what it
does, its group in /help, whether it needs world mode) and the layout
of /help, which fits an 80x24 terminal: the commands grouped a line per
group, the keys under ``/help keys``, one command's details under
``/help COMMAND``, world commands only when the server runs a world.

Each command's action takes the client's core (termchat.client.core:
``send``, ``say``, ``view``, ...) and the text after the command, and
returns the effects to carry out.  Sans-IO like the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from termchat.client.effects import Effect, Leave
from termchat.wire import protocol as proto

if TYPE_CHECKING:
    from termchat.client.core import ClientCore

Action = Callable[["ClientCore", str], "list[Effect]"]


@dataclass(frozen=True)
class Command:
    usage: str                # "/msg NICK TEXT"
    summary: str              # for /help COMMAND ("" for an alias: its command's)
    group: str                # its line in /help
    run: Action
    world: bool = False       # only in world mode
    alias_of: str | None = None

    @property
    def name(self) -> str:
        return self.usage.split()[0]


# ---- the actions ----

def direct(core: "ClientCore", argument: str, name: str) -> list[Effect]:
    to, _, text = argument.partition(" ")
    if not to or not text.strip():
        return core.usage(name)
    return core.send_checked(proto.SendDirect(to, text),
                             proto.DirectFrom(core.view.nick, to, text))


def emote(core: "ClientCore", text: str) -> list[Effect]:
    if not text.strip():
        return core.usage("/me")
    return core.send_checked(proto.Emote(text), proto.EmoteFrom(core.view.nick, text))


def enter_room(core: "ClientCore", room: str) -> list[Effect]:
    problem = proto.name_problem(room) if room else "is missing"
    if problem:
        return core.say(f"room name {problem}; usage: /join ROOM")
    return core.send(proto.EnterRoom(room))


def change_nick(core: "ClientCore", nick: str) -> list[Effect]:
    nick = proto.normalize(nick)
    problem = proto.name_problem(nick) if nick else "is missing"
    if problem:
        return core.say(f"nick {problem}; usage: /nick NEW")
    return core.send(proto.ChangeNick(nick))


def become_operator(core: "ClientCore", password: str) -> list[Effect]:
    return core.send(proto.BecomeOperator(password)) if password else core.usage("/op")


def kick(core: "ClientCore", argument: str) -> list[Effect]:
    nick, _, reason = argument.partition(" ")
    if not nick:
        return core.usage("/kick")
    return core.send(proto.KickRequest(nick, reason.strip()))


def ban(core: "ClientCore", argument: str) -> list[Effect]:
    if not argument:
        return core.send(proto.BanRequest())
    nick, _, rest = argument.partition(" ")
    minutes, _, reason = rest.strip().partition(" ")
    if not minutes.isdigit() or not 1 <= int(minutes) <= 525_600:
        return core.usage("/ban")
    return core.send(proto.BanRequest(nick, int(minutes), reason.strip()))


def ignore(core: "ClientCore", nick: str) -> list[Effect]:
    """Hide a nick's chat, emotes and DMs here (the server knows nothing)."""
    ignored = core.view.ignored
    if not nick:
        names = ignored.names()
        return core.say(f"ignoring: {', '.join(names)}" if names else "ignoring nobody")
    ignored.add(nick)
    return core.say(f"ignoring {nick}")


def unignore(core: "ClientCore", nick: str) -> list[Effect]:
    if not nick:
        return core.usage("/unignore")
    if core.view.ignored.discard(nick) is None:
        return core.say(f"not ignoring {nick}")
    return core.say(f"no longer ignoring {nick}")


def named(make: type, command: str) -> Action:
    """A world command that names something (a direction, an item)."""
    def run(core: "ClientCore", name: str) -> list[Effect]:
        if not name.strip():
            return core.usage(command)
        return core.send(make(name.strip()))
    return run


def show_help(core: "ClientCore", topic: str) -> list[Effect]:
    if not topic:
        lines = help_lines(core.view.in_world)
    elif topic.lower() == "keys":
        lines = keys_lines()
    else:
        lines = command_help(topic)
    return [effect for line in lines for effect in core.say(line)]


def look(core: "ClientCore", at: str) -> list[Effect]:
    return core.send(proto.Look(at or None))


def inventory(core: "ClientCore", _: str) -> list[Effect]:
    return core.send(proto.InventoryRequest())


def _table() -> dict[str, Command]:
    shortcuts = (("n", "north"), ("s", "south"), ("e", "east"), ("w", "west"),
                 ("u", "up"), ("d", "down"))
    commands = [
        Command("/me TEXT", "act something out, shown as [pat TEXT]", "talk", emote),
        Command("/message NICK TEXT", "a direct message, seen by NICK and you only, "
                "shown as pat -> chris: TEXT", "talk",
                lambda c, a: direct(c, a, "/message")),
        Command("/msg NICK TEXT", "", "talk",
                lambda c, a: direct(c, a, "/msg"), alias_of="/message"),
        Command("/who", "who is in your room (away users marked)", "rooms",
                lambda c, a: c.send(proto.WhoRequest())),
        Command("/join ROOM", "move to a room, made if new; the prompt names it", "rooms",
                enter_room),
        Command("/leave", "back to the lobby", "rooms",
                lambda c, a: enter_room(c, proto.LOBBY)),
        Command("/rooms", "the rooms and how many are in each", "rooms",
                lambda c, a: c.send(proto.RoomsRequest())),
        Command("/nick NEW", "change your nick; everyone sees it", "you", change_nick),
        Command("/away [TEXT]", "say you are away: /who marks you, and whoever sends you "
                "a DM is told TEXT; without TEXT, back", "you",
                lambda c, a: c.send(proto.Away(a))),
        Command("/ignore [NICK]", "hide NICK's chat, emotes and DMs, here only; alone: "
                "list who you ignore", "you", ignore),
        Command("/unignore NICK", "show NICK's messages again", "you", unignore),
        Command("/op PASSWORD", "become an operator (the server's operator password)",
                "ops", become_operator),
        Command("/kick NICK [REASON]", "operators: remove a user; everyone sees why",
                "ops", kick),
        Command("/ban [NICK MINUTES [REASON]]", "operators: keep the user's address out "
                "for MINUTES and kick them; alone: list the bans", "ops", ban),
        Command("/look [NAME]", "look around, or at something here or carried", "world",
                look, world=True),
        Command("/l [NAME]", "", "world", look, world=True, alias_of="/look"),
        Command("/go DIRECTION", "walk that way (north, up, in, ...)", "world",
                named(proto.Go, "/go"), world=True),
        *(Command(f"/{short}", f"same as /go {direction}", "world",
                  lambda c, a, d=direction: c.send(proto.Go(d)), world=True, alias_of="/go")
          for short, direction in shortcuts),
        Command("/take NAME", "pick something up", "world", named(proto.Take, "/take"),
                world=True),
        Command("/drop NAME", "put something down", "world", named(proto.Drop, "/drop"),
                world=True),
        Command("/inventory", "what you carry", "world", inventory, world=True),
        Command("/i", "", "world", inventory, world=True,
                alias_of="/inventory"),
        Command("/reconnect", "connect again now (after a kick, a ban, or while the "
                "client waits to retry)", "client", lambda c, a: c.reconnect()),
        Command("/help [COMMAND | keys]", "the commands; one command in more detail; "
                "the keys", "client", show_help),
        Command("/q", "quit (a server with sessions is told, so others see you leave "
                "at once)", "client", lambda c, a: [Leave()]),
    ]
    return {command.name: command for command in commands}


COMMANDS = _table()
GROUPS = ("talk", "rooms", "you", "ops", "world", "client")
SEND_SLASH = "//TEXT (a line starting with /)"

KEYS = (
    ("Left/Right, Ctrl-Left/Right", "move by character / word"),
    ("Home/Ctrl-A, Ctrl-E", "start / end of the line"),
    ("Backspace/Delete", "delete before / under the cursor"),
    ("Ctrl-U / Ctrl-K", "delete to the start / to the end"),
    ("Ctrl-W", "delete the word before the cursor"),
    ("Up/Down", "history"),
    ("Tab", "complete a nick or a command; again: the next"),
    ("PageUp/PageDown", "scroll (PageUp at the top: older history)"),
    ("End", "end of the line; scrolled up: the newest"),
    ("Ctrl-L", "redraw"),
    ("Ctrl-Z", "suspend (fg to come back)"),
    ("Ctrl-C, Ctrl-D (empty line)", "quit"),
)


def available(in_world: bool) -> list[Command]:
    return [command for command in COMMANDS.values() if in_world or not command.world]


def names_starting(prefix: str, in_world: bool) -> list[str]:
    """Tab at the start of the line: the commands this server offers."""
    folded = prefix.casefold()
    return [c.name for c in available(in_world) if c.name.startswith(folded)]


def find(name: str) -> Command | None:
    return COMMANDS.get(name.lower())


def listing(command: Command) -> str:
    """A command as /help lists it, its aliases after it."""
    aliases = [c.name for c in COMMANDS.values() if c.alias_of == command.name]
    return command.usage + (f" ({' '.join(aliases)})" if aliases else "")


def help_lines(in_world: bool, width: int = 80) -> list[str]:
    """/help: a line per group of commands, wrapped to ``width`` columns
    after the "*** " of an information line."""
    room = width - len("*** ")
    lines = ["commands (/help COMMAND for one of them, /help keys for the keys):"]
    for group in GROUPS:
        entries = [listing(c) for c in available(in_world)
                   if c.group == group and c.alias_of is None]
        if group == "talk":
            entries.insert(0, SEND_SLASH)
        if not entries:
            continue
        lines += packed(entries, f"  {group + ':':8}", room)
    return lines


def packed(entries: list[str], label: str, width: int, gap: str = "   ") -> list[str]:
    """Entries in as few lines of ``width`` as fit, never split inside one;
    the first line after ``label``, the others indented as far."""
    lines, current, empty = [], label, True
    for entry in entries:
        if not empty and len(current) + len(gap) + len(entry) > width:
            lines.append(current)
            current, empty = " " * len(label), True
        current += ("" if empty else gap) + entry
        empty = False
    return lines + [current]


def keys_lines() -> list[str]:
    width = max(len(name) for name, _ in KEYS)
    return ["keys:"] + [f"  {name.ljust(width)}  {summary}" for name, summary in KEYS]


def command_help(topic: str) -> list[str]:
    name = topic if topic.startswith("/") else "/" + topic
    command = find(name.split()[0])
    if command is None:
        return [f"no command {name} (try /help)"]
    world = " (world mode)" if command.world else ""
    if command.summary:
        also = [c.name for c in COMMANDS.values() if c.alias_of == command.name]
        usage = command.usage + (f" (also {', '.join(also)})" if also else "")
        return [f"{usage}: {command.summary}{world}"]
    return command_help(command.alias_of or "")


def usage_of(name: str) -> str:
    return COMMANDS[name].usage
