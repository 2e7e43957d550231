"""Several chat cores in memory, joined by a bus that plays Redis and each
node's link threads: one stream in one order, nick claims, session
records, takeovers, a node's death, a node paused (SIGSTOP) and continued,
and Redis restarting (empty, or having lost its last entries) with every
link registering again as termchat/cluster/link.py does.  No sockets, no
threads, no clock."""

import bisect

from msgspec.structs import replace

from termchat.cluster import events as cluster
from termchat.wire import protocol as proto
from tests.core_harness import FakeLink, Harness


class Bus:
    """What Redis and each node's link threads would do, run by pump()."""

    def __init__(self, *names: str, make=lambda name: Harness(link=FakeLink(name))) -> None:
        self.make = make  # name -> a Harness whose core has a FakeLink of that name
        self.nodes = {name: make(name) for name in names}
        self.dead_marks: dict[str, str] = {}  # nodes found dead -> the stream's end then
        self.bans: dict[str, tuple[float, str]] = {}  # address -> (until, reason)
        self.paused: dict[str, float] = {}    # SIGSTOPped nodes -> the clock then
        self.clock = 0.0                      # Redis's, for the bans' expiry
        self.stream: list[tuple[str, object]] = []
        self.numbers: list[int] = []          # each stream entry's number (its ID's first part)
        self.last_number = 0                  # the last ID given: IDs grow across restarts
        self.epoch = 0                        # changes when Redis restarts empty
        self.epochs = dict.fromkeys(names, 0)  # the epoch each node last registered in
        self.restarts = 0                     # Redis restarts so far
        self.connected = dict.fromkeys(names, 0)  # the restarts each node has reconnected after
        self.appended = dict.fromkeys(names, 0)  # of each node's events
        self.read = dict.fromkeys(names, 0)      # the number of the last entry each node read
        self.answered = dict.fromkeys(names, 0)  # link calls answered
        self.sessions: dict[str, tuple[str, str]] = {}  # digest -> (node, name key)
        self.owners: dict[str, str] = {}  # name key -> the node that claimed it
        self.dead: set[str] = set()
        self.deaths_told = {name: set() for name in names}  # node -> deaths it knows of
        for name, node in self.nodes.items():
            node.core.cluster_event(cluster.Progress("0-0", start=True), node.now)

    def core(self, name):
        return self.nodes[name].core

    def pump(self) -> None:
        """Until quiet: answer link calls, append events, deliver the stream."""
        busy = True
        while busy:
            busy = False
            for name, node in self.nodes.items():
                if name in self.dead or name in self.paused:
                    continue  # a paused node reads, answers and appends nothing
                busy |= self.answer_calls(name, node)
                busy |= self.append(name, node)
                busy |= self.deliver(name, node)

    def answer_calls(self, name, node) -> bool:
        calls = node.core.link.calls[self.answered[name]:]
        self.answered[name] += len(calls)
        for call in calls:
            kind, *args = call
            if kind == "claim":
                token, nick = args
                node.core.cluster_event(self.claim(name, nick, token), node.now)
            elif kind in ("left", "release", "forget"):  # (forget: the link's ClearPresence
                key = proto.name_key(args[0])  # releases the nick if it is still ours)
                if self.owners.get(key) == name:
                    del self.owners[key]
            elif kind == "rename":
                token, old, new = args
                self.owners.pop(proto.name_key(old), None)
                self.owners[proto.name_key(new)] = name
                seq = next(e.seq for e in reversed(node.core.link.events)
                           if isinstance(e, cluster.RemoteRename) and e.new == new)
                node.core.cluster_event(cluster.Renamed(token, old, new, True, seq), node.now)
            elif kind == "ban":
                address, minutes, reason = args
                self.bans[address] = (self.clock + minutes * 60, reason)
            elif kind == "record_session":
                self.sessions[args[0]] = (name, proto.name_key(args[1]))
            elif kind == "end_session" and args[0] in self.sessions:
                if self.sessions[args[0]][0] == (args[2] or name):
                    del self.sessions[args[0]]
            elif kind == "take_over":
                token, digest, nick = args
                held = self.sessions.get(digest)
                old = held[0] if held and held[1] == proto.name_key(nick) else None
                if old is not None:
                    self.sessions[digest] = (name, held[1])
                    self.owners[held[1]] = name
                node.core.cluster_event(cluster.TakenOver(token, nick, old), node.now)
            elif kind == "hand_back":
                digest, nick, old = args
                held = self.sessions.get(digest)
                if held and held[0] == name:
                    self.sessions[digest] = (old, held[1])
                    if self.owners.get(held[1]) == name:
                        self.owners[held[1]] = old
        return bool(calls)

    def claim(self, name, nick, token):
        """The claim script: a nick free, ours, or a dead node's is granted."""
        key = proto.name_key(nick)
        owner = self.owners.get(key)
        if owner not in (None, name) and owner not in self.dead:
            return cluster.Claimed(token, nick, False)
        self.owners[key] = name
        return cluster.Claimed(token, nick, True, owner if owner in self.dead else "")

    def append(self, name, node) -> bool:
        events = node.core.link.events[self.appended[name]:]
        self.appended[name] += len(events)
        for event in events:
            self.add(event)
        return bool(events)

    def add(self, event) -> None:
        """XADD: the next ID (by Redis's clock: always past every ID given)."""
        self.last_number += 1
        self.stream.append((f"{self.last_number}-0", event))
        self.numbers.append(self.last_number)

    @property
    def end(self) -> str:
        return self.stream[-1][0] if self.stream else "0-0"

    def deliver(self, name, node) -> bool:
        entries = self.stream[bisect.bisect_right(self.numbers, self.read[name]):]
        if entries:
            self.read[name] = self.numbers[-1]
        own = []
        for entry_id, event in entries:
            if event.node == name:
                own.append((event.seq, entry_id))
            else:
                node.core.cluster_event(replace(event, stream=entry_id), node.now)
        if entries:
            node.core.cluster_event(cluster.Progress(entries[-1][0], tuple(own)), node.now)
        return bool(entries)

    def start(self, name, history=False) -> None:
        """A node that joins now: it reads the stream from its end, or with
        ``history`` from its start (the recent past a real node reads)."""
        self.nodes[name] = node = self.make(name)
        for table in (self.appended, self.answered):
            table[name] = 0
        self.epochs[name], self.connected[name] = self.epoch, self.restarts
        self.read[name] = 0 if history or not self.stream else self.numbers[-1]
        last = self.end
        start = "0-0" if history else last
        catching_up = history and bool(self.stream)
        node.core.cluster_event(cluster.Progress(start, start=True, catching_up=catching_up,
                                                 caught_up=not catching_up), node.now)
        node.core.cluster_event(self.snapshot(name), node.now)  # it registers
        if catching_up:
            self.deliver(name, node)
            node.core.cluster_event(cluster.Progress(last, caught_up=True), node.now)
        self.deaths_told[name] = set()
        for dead in self.dead & {event.node for _, event in self.stream}:
            # its watch checks the nodes it read of, and finds these dead itself
            node.core.cluster_event(cluster.NodeDead(dead, self.sessions_of(dead),
                                                     self.dead_marks[dead]), node.now)
            self.deaths_told[name].add(dead)

    def kill(self, name) -> None:
        """SIGKILL: the node stops; every survivor notices it on its own."""
        self.dead.add(name)
        self.dead_marks[name] = self.end
        for survivor in self.live:
            self.tell_death(survivor, name)
        self.pump()

    def tell_death(self, name, dead) -> None:
        """Node ``name``'s watch finds ``dead`` dead (with its sessions Redis
        still has: not those ended meanwhile)."""
        self.deaths_told[name].add(dead)
        self.core(name).cluster_event(
            cluster.NodeDead(dead, self.sessions_of(dead), self.dead_marks[dead]),
            self.nodes[name].now)

    def snapshot(self, name) -> cluster.Snapshot:
        """What a node registering reads: the others' presence, the bans in
        force with their time left, and the stream's end then."""
        presence = {other: self.users_of(other) for other in self.nodes
                    if other != name and other not in self.dead}
        bans = {address: (until - self.clock, reason)
                for address, (until, reason) in self.bans.items() if until > self.clock}
        return cluster.Snapshot(presence, bans, self.end)

    def users_of(self, name) -> dict:
        """A node's own users as Redis keeps them: nick -> room."""
        users = self.core(name).parts.presence.users.values()
        return {user.nick: user.room.name for user in users if user.local}

    def sessions_of(self, name) -> dict:
        """A node's sessions as Redis keeps them: nick -> digest."""
        users = self.core(name).parts.presence.users
        return {users[key].nick: digest for digest, (node, key) in self.sessions.items()
                if node == name and key in users}

    @property
    def live(self):
        """The nodes that run (not dead, nor taken for dead, nor paused)."""
        return [name for name in self.nodes if name not in self.dead and name not in self.paused]

    def pause(self, name) -> None:
        """SIGSTOP: the node does nothing; its heartbeat lapses (take_for_dead)."""
        self.paused[name] = self.clock

    def take_for_dead(self, name) -> None:
        """The others find a paused node's heartbeat lapsed, as if it had died."""
        self.kill(name)

    def carry_on(self, name) -> None:
        """SIGCONT: its clock jumps; what it had published and not yet
        written goes to the stream (after its presence, if it registers
        again).  It registers again, as the real link does, if it was taken
        for dead or Redis restarted meanwhile."""
        node = self.nodes[name]
        node.tick(self.clock - self.paused.pop(name))
        for dead in self.dead - {name} - self.deaths_told[name]:  # its watch finds them
            self.tell_death(name, dead)
        if self.connected[name] != self.restarts:
            self.reconnect(name)
        elif name in self.dead:
            self.revive(name)
            self.register(name)
        self.pump()

    def revive(self, name) -> None:
        """A node taken for dead speaks again: a later death is news."""
        self.dead.discard(name)
        for told in self.deaths_told.values():
            told.discard(name)

    def restart_redis(self, lose_last: int | None = None) -> None:
        """Redis restarts: empty (no persistence: a new epoch, and nicks,
        sessions, bans and the stream are gone), or from a file that lacks
        its last ``lose_last`` stream entries.  Every running link notices
        (its connection broke) and reconnects; a paused one when it runs."""
        self.restarts += 1
        if lose_last is None:
            self.epoch += 1
            self.stream, self.numbers = [], []
            self.owners, self.sessions, self.bans = {}, {}, {}
        elif lose_last:
            del self.stream[-lose_last:], self.numbers[-lose_last:]
        for name in self.live:
            self.reconnect(name)
        self.pump()

    def reconnect(self, name) -> None:
        """The link back after Redis broke: it registers again, and its
        reader goes on where it was, or from the stream's start if that is
        past the stream's end (or Redis lost its data)."""
        self.connected[name] = self.restarts
        self.revive(name)
        node = self.nodes[name]
        lost = self.epochs[name] != self.epoch
        if lost:
            node.core.cluster_event(cluster.DataLost(), node.now)
        self.register(name, lost)
        if lost or self.read[name] > (self.numbers[-1] if self.numbers else 0):
            self.read[name] = 0
        cursor = f"{self.read[name]}-0"
        node.core.cluster_event(cluster.Progress(cursor, start=True, caught_up=True), node.now)

    def register(self, name, lost: bool = False) -> None:
        """What the link does on registering again: sessions of ours taken
        up or ended elsewhere meanwhile are dropped (after Redis lost its
        data, none is), the rest written again as ours, our users' nicks
        claimed again (one taken meanwhile is a conflict), our presence
        appended to the stream, and everyone's presence and the bans read."""
        node = self.nodes[name]
        self.epochs[name] = self.epoch
        for session in list(node.core.parts.sessions.by_digest.values()):
            holder = self.sessions.get(session.digest, (None,))[0]
            if holder != name and not (holder is None and lost):
                node.core.cluster_event(cluster.SessionGone(session.user.nick), node.now)
        for session in node.core.parts.sessions.by_digest.values():
            self.sessions[session.digest] = (name, session.user.key)
        for nick in list(self.users_of(name)):
            if not self.claim(name, nick, None).granted:
                node.core.cluster_event(cluster.Conflict(nick), node.now)
        self.add(replace(cluster.RemotePresence(self.users_of(name)), node=name))
        node.core.cluster_event(self.snapshot(name), node.now)

    def tick(self, seconds) -> None:
        self.clock += seconds
        for name in self.live:
            self.nodes[name].tick(seconds)
        self.pump()


def session_on(bus, name, nick):
    node = bus.nodes[name]
    outlet = node.connect()
    node.send(outlet, {"type": "hello", "nick": nick, "session": True})
    bus.pump()
    got = node.received(outlet)
    assert got[0]["type"] == "join" and got[1]["type"] == "session", got
    return outlet, got[1]["token"], got


def user_on(bus, name, nick):
    node = bus.nodes[name]
    outlet = node.connect(nick)
    bus.pump()
    return outlet


def said(bus, name, outlet, text):
    bus.nodes[name].chat(outlet, text)
    bus.pump()


def bare(messages):
    return [{k: v for k, v in m.items() if k not in ("id", "time", "history")}
            for m in messages]


def resume_on(bus, name, nick, token, after):
    node = bus.nodes[name]
    outlet = node.connect()
    node.send(outlet, {"type": "hello", "nick": nick, "session": True, "resume": token,
                       "after": after})
    bus.pump()
    return outlet, node.received(outlet)
