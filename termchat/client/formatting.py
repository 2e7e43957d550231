"""What the user sees of each packet: styled output lines, with no terminal
and no socket in it.

A line is a list of segments ``(text, style)`` as the UI core takes them
(``termchat.ui.screen``): style None (plain), "info", "error", "dim", "bold",
"mention" or "nick:NAME".  Owns the wording of every line the client
shows about the chat (the packets' display forms of SPEC, world mode's
movement and places, the time stamp and the log line); the client's own
notices are worded where they are decided (termchat.client.session and
termchat.client.core).
"""

from __future__ import annotations

import re
import time

from termchat.wire import protocol as proto
from termchat.world.model import ARTICLES
from termchat.ui.screen import escape_controls

Segment = tuple[str, "str | None"]
Line = list[Segment]


def info(text: str) -> Line:
    return [("*** ", "info"), (text, None)]


def error(text: str) -> Line:
    return [("*** error: " + text, "error")]


def nick_segment(nick: str) -> Segment:
    return (nick, "nick:" + nick)


def format_message(message: proto.Message) -> Line | None:
    """The output line for a packet from the server (None: show nothing)."""
    if isinstance(message, proto.ChatFrom):
        return [nick_segment(message.nick), (": " + message.message, None)]
    if isinstance(message, proto.Joined):
        return info(f"{message.nick} has joined the chat")
    if isinstance(message, proto.Left):
        return info(f"{message.nick} has left the chat")
    if isinstance(message, proto.Error):
        if message.code == proto.Code.WORLD:
            return info(message.message)  # the world's narration, not a fault
        return error(message.message)
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


# World mode: which way someone went, as the two places see it.  The way
# is the direction of travel: pat went down, so the cellar sees pat come
# down from above.
ARRIVALS = {
    "up": "comes up from below", "down": "comes down from above",
    "in": "comes in from outside", "out": "comes out from inside",
    **{direction: f"arrives from the {opposite}" for direction, opposite in (
        ("north", "south"), ("south", "north"), ("east", "west"), ("west", "east"),
        ("northeast", "southwest"), ("southwest", "northeast"),
        ("northwest", "southeast"), ("southeast", "northwest"))},
}


def departure(nick: str, way: str) -> Line:
    """What the place left behind sees: ``*** pat goes down``."""
    return info(f"{nick} goes {way}")


def arrival(nick: str, way: str) -> Line:
    """What the new place sees: ``*** pat comes down from above``."""
    return info(f"{nick} {ARRIVALS.get(way.lower(), f'arrives, having gone {way}')}")


def place_lines(view: proto.PlaceView) -> list[Line]:
    """A place as a reader wants it: after a blank line, the title in bold,
    the description (the terminal wraps it), then exits, items and people
    each on a line."""
    lines: list[Line] = [[("", None)], [(view.title, "bold")]]
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


def dimmed(line: Line) -> Line:
    """A history line: older than the conversation, drawn dim."""
    return [(text, "dim") for text, _ in line]


def highlighted(line: Line) -> Line:
    """A line that names the user: bold and reversed where it is plain."""
    return [(text, "mention" if style is None else style) for text, style in line]


def stamped(line: Line, when: float) -> Line:
    """``--timestamps``: the line after its local time (HH:MM)."""
    return [(time.strftime("%H:%M ", time.localtime(when)), "dim")] + line


def log_line(line: Line, when: float) -> str:
    """``--log``: the line with its date and time (the server's, for a
    packet that carries one), control characters escaped."""
    text = escape_controls("".join(text for text, _ in line))
    return time.strftime("%Y-%m-%d %H:%M:%S ", time.localtime(when)) + text + "\n"
