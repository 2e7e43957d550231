"""Several chat cores in memory, joined by a bus that plays Redis and each
node's link threads: one stream in one order, nick claims, session
records, takeovers, a node's death.  No sockets, no threads, no clock."""

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
        self.appended = dict.fromkeys(names, 0)  # of each node's events
        self.read = dict.fromkeys(names, 0)      # stream entries each node has read
        self.answered = dict.fromkeys(names, 0)  # link calls answered
        self.sessions: dict[str, tuple[str, str]] = {}  # digest -> (node, name key)
        self.owners: dict[str, str] = {}  # name key -> the node that claimed it
        self.dead: set[str] = set()
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
            elif kind in ("left", "release"):
                if self.owners.get(proto.name_key(args[0])) == name:
                    del self.owners[proto.name_key(args[0])]
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
            self.stream.append((f"{len(self.stream) + 1}-0", event))
        return bool(events)

    def deliver(self, name, node) -> bool:
        entries = self.stream[self.read[name]:]
        self.read[name] += len(entries)
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
        self.read[name] = 0 if history else len(self.stream)
        last = self.stream[-1][0] if self.stream else "0-0"
        start = "0-0" if history else last
        catching_up = history and bool(self.stream)
        node.core.cluster_event(cluster.Progress(start, start=True, catching_up=catching_up,
                                                 caught_up=not catching_up), node.now)
        node.core.cluster_event(self.snapshot(name), node.now)  # it registers
        if catching_up:
            self.deliver(name, node)
            node.core.cluster_event(cluster.Progress(last, caught_up=True), node.now)
        for dead in self.dead & {event.node for _, event in self.stream}:
            # its watch checks the nodes it read of, and finds these dead itself
            node.core.cluster_event(cluster.NodeDead(dead, self.sessions_of(dead),
                                                     self.dead_marks[dead]), node.now)

    def kill(self, name) -> None:
        """SIGKILL: the node stops; every survivor notices it on its own."""
        self.dead.add(name)
        self.dead_marks[name] = self.stream[-1][0] if self.stream else "0-0"
        sessions = self.sessions_of(name)
        for survivor in self.live:
            self.core(survivor).cluster_event(
                cluster.NodeDead(name, sessions, self.dead_marks[name]),
                self.nodes[survivor].now)
        self.pump()

    def snapshot(self, name) -> cluster.Snapshot:
        """What a node registering reads: the others' presence, the bans in
        force with their time left, and the stream's end then."""
        presence = {other: self.users_of(other) for other in self.live if other != name}
        bans = {address: (until - self.clock, reason)
                for address, (until, reason) in self.bans.items() if until > self.clock}
        return cluster.Snapshot(presence, bans, self.stream[-1][0] if self.stream else "0-0")

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
        """SIGCONT: its clock jumps, and if it was taken for dead it registers
        again as the real link does: its sessions taken up or ended
        elsewhere meanwhile are dropped, its users' nicks are claimed again
        (one taken meanwhile is a conflict), its presence is appended to
        the stream, and it reads everyone's presence and the bans."""
        node = self.nodes[name]
        node.tick(self.clock - self.paused.pop(name))
        if name in self.dead:
            self.dead.discard(name)
            for session in list(node.core.parts.sessions.by_digest.values()):
                if self.sessions.get(session.digest, (None,))[0] != name:
                    node.core.cluster_event(cluster.SessionGone(session.user.nick), node.now)
            for nick in list(self.users_of(name)):
                if not self.claim(name, nick, None).granted:
                    node.core.cluster_event(cluster.Conflict(nick), node.now)
            presence = cluster.RemotePresence(self.users_of(name))
            self.stream.append((f"{len(self.stream) + 1}-0", replace(presence, node=name)))
            node.core.cluster_event(self.snapshot(name), node.now)
        self.pump()

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
