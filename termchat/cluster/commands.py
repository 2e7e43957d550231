"""What the event loop asks of the Redis link, as small command objects.

Each command queues its Redis calls on the writer's pipeline, reads its own
results, and knows what to do while Redis is down (keep what must be redone
on reconnection).  They run on the link's writer thread (link.py), which is
the only thread that touches them; ``link`` is the ClusterLink.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from termchat.cluster.events import (PACK_LIMIT, Claimed, Conflict, ItemTaken, Renamed,
                                     TakenOver, pack)
from termchat.wire import protocol as proto

if TYPE_CHECKING:
    from termchat.cluster.link import ClusterLink

log = logging.getLogger("chat_cluster")

STOP_WAIT = 10.0  # seconds a stopping node waits for Redis to take what it kept



class Command:
    def queue(self, link: "ClusterLink", pipe) -> int:
        """Add this command's Redis calls to the pipeline; return how many."""
        return 0

    def answer(self, link: "ClusterLink", results: list) -> None:
        """Act on this command's results (as many as queue() returned)."""

    def while_down(self, link: "ClusterLink") -> None:
        """Redis is unreachable: keep what must be redone on reconnection."""


@dataclass
class ClaimNick(Command):
    token: Any
    nick: str
    key: str

    def queue(self, link, pipe) -> int:
        link.client.claim_nick(keys=[link.key("nick:" + self.key)],
                               args=[link.node_id, link.key("alive:")], client=pipe)
        return 1

    def answer(self, link, results) -> None:
        taken_from = results[0]  # None: refused; b'': free or ours; else a dead node's
        link.hand_over(Claimed(self.token, self.nick, taken_from is not None,
                               taken_from.decode() if taken_from else ""))

    def while_down(self, link) -> None:
        link.hand_over(Claimed(self.token, self.nick, True))  # claimed again on reconnection


@dataclass
class RenameNick(Command):
    """Claim the new nick and free the old one in one step (a Lua script),
    move the user in our presence, and tell the other nodes."""
    token: Any
    old: str
    new: str
    wire: bytes  # the RemoteRename event, numbered like any publish...
    seq: int   # ...under this number

    def queue(self, link, pipe) -> int:
        link.client.rename_nick(keys=[link.key("nick:" + proto.name_key(self.old)),
                                     link.key("nick:" + proto.name_key(self.new))],
                                args=[link.node_id, link.key("alive:")], client=pipe)
        return 1

    def answer(self, link, results) -> None:
        granted = bool(results[0])
        if granted:
            room = link.users.pop(self.old, None) or "lobby"
            link.users[self.new] = room
            pipe = link.client.pipeline(transaction=False)
            pipe.hdel(link.key("users:" + link.node_id), self.old)
            pipe.hset(link.key("users:" + link.node_id), self.new, room)
            link.append(pipe, self.wire)
            pipe.execute()
        link.hand_over(Renamed(self.token, self.old, self.new, granted, self.seq))

    def while_down(self, link) -> None:  # as a claim: made good on reconnection
        link.users[self.new] = link.users.pop(self.old, None) or "lobby"
        link.buffer.keep(self.wire)  # Redis is away: for later
        link.hand_over(Renamed(self.token, self.old, self.new, True, self.seq))


@dataclass
class SetPresence(Command):
    nick: str
    room: str

    def queue(self, link, pipe) -> int:
        link.users[self.nick] = self.room
        pipe.hset(link.key("users:" + link.node_id), self.nick, self.room)
        return 1

    def while_down(self, link) -> None:
        link.users[self.nick] = self.room


@dataclass
class ClearPresence(Command):
    nick: str
    key: str

    def queue(self, link, pipe) -> int:
        link.users.pop(self.nick, None)
        pipe.hdel(link.key("users:" + link.node_id), self.nick)
        link.client.release_nick(keys=[link.key("nick:" + self.key)], args=[link.node_id],
                                 client=pipe)
        return 2

    def while_down(self, link) -> None:
        link.users.pop(self.nick, None)


@dataclass
class RecordSession(Command):
    """A session of ours, under its (current) nick, in its room; ``old`` is
    a nick it had before (a rename), whose entry goes."""
    digest: str
    nick: str
    old: str | None = None
    room: str | None = None

    def queue(self, link, pipe) -> int:
        self.while_down(link)
        pipe.hset(link.key("session:" + self.digest),
                  mapping=session_record(self.nick, link.node_id, self.room))
        if self.old:
            pipe.hdel(link.key("sessions:" + link.node_id), self.old)
        pipe.hset(link.key("sessions:" + link.node_id), self.nick, self.digest)
        return 3 if self.old else 2

    def while_down(self, link) -> None:  # written again on reconnection
        link.sessions.pop(self.old, None)
        link.sessions[self.nick] = self.digest


@dataclass
class EndSession(Command):
    """A session is over (its node: ours, or a dead one's for an orphan);
    without a digest, only the node's entry for the nick goes (the session
    lives on elsewhere)."""
    digest: str | None
    nick: str
    node: str

    def queue(self, link, pipe) -> int:
        self.while_down(link)
        pipe.hdel(link.key("sessions:" + self.node), self.nick)
        if self.digest is None:
            return 1
        link.client.end_session(keys=[link.key("session:" + self.digest)], args=[self.node],
                                client=pipe)
        return 2

    def while_down(self, link) -> None:
        if self.node == link.node_id:
            link.sessions.pop(self.nick, None)


@dataclass
class TakeOver(Command):
    """Take a session (and its nick) over from whichever node holds it."""
    token: Any
    digest: str
    nick: str

    def queue(self, link, pipe) -> int:
        key = proto.name_key(self.nick)
        link.client.take_over(keys=[link.key("session:" + self.digest),
                                    link.key("nick:" + key)],
                              args=[link.node_id, key], client=pipe)
        return 1

    def answer(self, link, results) -> None:
        held = results[0]  # None: no such session; else [old node, room]
        if not held:
            link.hand_over(TakenOver(self.token, self.nick, None))
            return
        old, room = (value.decode() if isinstance(value, bytes) else "" for value in held)
        link.hand_over(TakenOver(self.token, self.nick, old or None, room))

    def while_down(self, link) -> None:  # nobody can tell who holds it: not now
        link.hand_over(TakenOver(self.token, self.nick, None, unreachable=True))


@dataclass
class HandBack(Command):
    """A session taken over but not taken up goes back to the node that held it."""
    digest: str
    nick: str
    old: str

    def queue(self, link, pipe) -> int:
        link.client.hand_back(keys=[link.key("session:" + self.digest),
                                    link.key("nick:" + proto.name_key(self.nick))],
                              args=[link.node_id, self.old], client=pipe)
        return 1

    def while_down(self, link) -> None:  # given back first thing on reconnection
        link.hand_backs.append(self)


@dataclass
class ClaimOwn(Command):
    """Claim the nick of a user this node took up without Redis knowing the
    session (Redis restarted empty); someone else's by now: a conflict."""
    nick: str

    def queue(self, link, pipe) -> int:
        link.client.claim_nick(keys=[link.key("nick:" + proto.name_key(self.nick))],
                               args=[link.node_id, link.key("alive:")], client=pipe)
        return 1

    def answer(self, link, results) -> None:
        if results[0] is None:
            link.hand_over(Conflict(self.nick))


@dataclass
class TakeItem(Command):
    """Give an item lying in a place to a player, if it still lies there."""
    token: Any
    item: str
    place: str
    player: str
    wire: bytes  # the RemoteItem event, published only if granted

    def queue(self, link, pipe) -> int:
        link.client.take_item(keys=[link.key("world:items")],
                              args=[self.item, lying_in(self.place), held_by(self.player)],
                              client=pipe)
        return 1

    def answer(self, link, results) -> None:
        granted = bool(results[0])
        if granted:
            pipe = link.client.pipeline(transaction=False)
            link.append(pipe, self.wire)
            pipe.execute()
        link.hand_over(ItemTaken(self.token, self.item, granted))

    def while_down(self, link) -> None:  # nobody can tell who has it: not now
        link.hand_over(ItemTaken(self.token, self.item, False, unreachable=True))


@dataclass
class SaveWorld(Command):
    """Where an item lies (or who holds it), or where a player is (None:
    forgotten)."""
    field: str
    value: str | None
    table: str  # "items" or "players"

    def queue(self, link, pipe) -> int:
        if self.value is None:
            pipe.hdel(link.key("world:" + self.table), self.field)
        else:
            pipe.hset(link.key("world:" + self.table), self.field, self.value)
        return 1


@dataclass
class SaveBan(Command):
    """A ban in Redis: a key that expires with it (Redis's own clock)."""
    address: str
    seconds: float
    reason: str

    def queue(self, link, pipe) -> int:
        pipe.set(link.key("ban:" + self.address), self.reason, px=max(1, int(self.seconds * 1000)))
        return 1


@dataclass
class Publish(Command):
    """Events for the stream, in one entry: what the loop published in a
    row (see packed)."""
    wires: list[bytes]  # each event as JSON, numbered: a retry is recognised as one

    def queue(self, link, pipe) -> int:
        link.append(pipe, pack(self.wires))
        return 1

    def while_down(self, link) -> None:
        for wire in self.wires:
            link.buffer.keep(wire)  # Redis is away: for later


def packed(commands: list[Command]) -> list[Command]:
    """The commands in the same order, each run of publishes in a row made
    one (a stream entry of at most PACK_LIMIT events): one append, and one
    entry for every node to read, instead of one per event."""
    result: list[Command] = []
    run: Publish | None = None
    for command in commands:
        if isinstance(command, Publish):
            if run is None or len(run.wires) + len(command.wires) > PACK_LIMIT:
                run = Publish(list(command.wires))
                result.append(run)
            else:
                run.wires += command.wires
            continue
        run = None
        result.append(command)
    return result


@dataclass
class Stop(Command):
    """Deregister, then end the writer; ``since``: when it was first asked
    (while Redis is away it waits, up to a bound, to pass kept events on)."""
    since: float = field(default_factory=time.monotonic)
    waiting: bool = False  # said so in the log

    def answer(self, link, results) -> None:
        link.deregister()
        raise StopLink

    def while_down(self, link) -> None:
        link.stop_later(self)  # Redis went under the batch: still to be done

    def may_end(self, link) -> bool:
        """Whether the writer may end while Redis is away: nothing kept, or
        it waited long enough (saying so in the log)."""
        kept = len(link.buffer)
        if not kept or time.monotonic() - self.since >= STOP_WAIT:
            if kept:
                log.error("cluster: stopping with %d events Redis never took", kept)
            return True
        if not self.waiting:
            self.waiting = True
            log.warning("cluster: stopping; waiting up to %g s for Redis to take %d events "
                        "said here", STOP_WAIT, kept)
        return False


class StopLink(Exception):
    """Raised by the Stop command to end the writer."""


def session_record(nick: str, node: str, room: str | None = None) -> dict[str, str]:
    """What ``P session:HASH`` holds: the nick, its name key (what a resume
    must match), the node holding the session and the room its user is in
    (for a node that resumes it without knowing the user)."""
    record = {"nick": nick, "key": proto.name_key(nick), "node": node}
    if room is not None:
        record["room"] = room
    return record


PLACE, HELD = "place", "held"  # where an item is, in ``P world:items``


def lying_in(place: str) -> str:
    return f"{PLACE}:{place}"


def held_by(player: str) -> str:
    return f"{HELD}:{player}"
