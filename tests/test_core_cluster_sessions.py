"""Sessions across cluster nodes, in memory: several chat cores joined by a
bus that plays Redis and the link threads (one stream in one order, nick
claims, session records, takeovers, a node's death)."""

from dataclasses import replace

from termchat.cluster import events as cluster
from termchat.wire import protocol as proto
from tests.core_harness import FakeLink, Harness
from tests.support import SESSION_EXPIRED, chat_from, join, leave


class Bus:
    """What Redis and each node's link threads would do, run by pump()."""

    def __init__(self, *names: str) -> None:
        self.nodes = {name: Harness(link=FakeLink(name)) for name in names}
        self.stream: list[tuple[str, object]] = []
        self.appended = dict.fromkeys(names, 0)  # of each node's events
        self.read = dict.fromkeys(names, 0)      # stream entries each node has read
        self.answered = dict.fromkeys(names, 0)  # link calls answered
        self.sessions: dict[str, tuple[str, str]] = {}  # digest -> (node, name key)
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
                if name in self.dead:
                    continue
                busy |= self.answer_calls(name, node)
                busy |= self.append(name, node)
                busy |= self.deliver(name, node)

    def answer_calls(self, name, node) -> bool:
        calls = node.core.link.calls[self.answered[name]:]
        self.answered[name] += len(calls)
        for call in calls:
            kind, *args = call
            if kind == "claim":
                node.core.cluster_event(cluster.Claimed(args[0], args[1], True), node.now)
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
                node.core.cluster_event(cluster.TakenOver(token, nick, old), node.now)
        return bool(calls)

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

    def start(self, name) -> None:
        """A node that joins now: it reads the stream from its end."""
        self.nodes[name] = node = Harness(link=FakeLink(name))
        for table in (self.appended, self.answered):
            table[name] = 0
        self.read[name] = len(self.stream)
        last = self.stream[-1][0] if self.stream else "0-0"
        node.core.cluster_event(cluster.Progress(last, start=True), node.now)

    def kill(self, name) -> None:
        """SIGKILL: the node stops; every survivor notices it on its own."""
        self.dead.add(name)
        sessions = {}
        for digest, (node, key) in self.sessions.items():
            if node == name:
                user = next(u for u in self.core(next(iter(self.live))).remote.values()
                            if proto.name_key(u.nick) == key)
                sessions[user.nick] = digest
        for survivor in self.live:
            self.core(survivor).cluster_event(cluster.NodeDead(name, sessions),
                                              self.nodes[survivor].now)
        self.pump()

    @property
    def live(self):
        return [name for name in self.nodes if name not in self.dead]

    def tick(self, seconds) -> None:
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


def test_a_session_resumes_on_another_node_after_its_node_dies():
    bus = Bus("A", "B", "C")
    pat, token, _ = session_on(bus, "A", "pat")
    amy = user_on(bus, "A", "amy")
    bob = user_on(bus, "B", "bob")
    cat = user_on(bus, "C", "cat")
    said(bus, "B", bob, "before")
    said(bus, "A", pat, "mine")
    seen = bus.nodes["A"].received(pat)
    assert bare(seen)[-2:] == [chat_from("bob", "before"), chat_from("pat", "mine")]
    last = seen[-1]["id"]
    said(bus, "A", amy, "amy after pat's last line")  # on A, reaches B before A dies
    bus.kill("A")
    for name, outlet in (("B", bob), ("C", cat)):
        bus.nodes[name].received(outlet)
    said(bus, "B", bob, "during 1")
    said(bus, "C", cat, "during 2")
    bus.nodes["C"].send(cat, {"type": "dm", "to": "pat", "message": "psst"})
    bus.pump()
    bus.nodes["C"].send(cat, {"type": "enter", "room": "attic"})
    bus.pump()
    said(bus, "C", cat, "in the attic")
    outlet, got = resume_on(bus, "B", "pat", token, last)
    assert got[0] == {"type": "resumed", "missed": 6}, got
    assert bare(got[1:]) == [
        chat_from("amy", "amy after pat's last line"), leave("amy"),
        chat_from("bob", "during 1"), chat_from("cat", "during 2"),
        {"type": "dm", "from": "cat", "to": "pat", "message": "psst"},
        {"type": "exit", "nick": "cat", "room": "lobby"}]  # not what was said in the attic
    ids = [m["id"] for m in got[1:]]
    assert len(set(ids)) == len(ids)
    for name, watcher in (("B", bob), ("C", cat)):
        shown = bus.nodes[name].received(watcher)
        assert join("pat") not in shown and leave("pat") not in shown, shown
    said(bus, "C", cat, "unheard in the attic")
    bus.nodes["C"].send(cat, {"type": "enter", "room": "lobby"})
    bus.pump()
    said(bus, "C", cat, "live again")
    live = bare(bus.nodes["B"].received(outlet))
    assert chat_from("cat", "live again") in live
    assert chat_from("cat", "unheard in the attic") not in live
    bus.nodes["C"].send(cat, {"type": "who"})
    bus.pump()
    assert "pat" in bus.nodes["C"].received(cat)[-1]["nicks"]


def test_a_dead_nodes_session_users_leave_when_the_grace_ends():
    bus = Bus("A", "B")
    session_on(bus, "A", "pat")
    user_on(bus, "A", "amy")
    bob = user_on(bus, "B", "bob")
    bus.nodes["B"].received(bob)
    bus.kill("A")
    assert bus.nodes["B"].received(bob) == [leave("amy")]  # no session: gone at once
    bus.tick(59)
    assert bus.nodes["B"].received(bob) == []
    bus.tick(2)
    assert bus.nodes["B"].received(bob) == [leave("pat")]
    assert not bus.sessions
    bus.nodes["B"].send(bob, {"type": "dm", "to": "pat", "message": "still there?"})
    assert bus.nodes["B"].received(bob)[-1]["message"] == "no such user: pat"


def test_a_nick_held_by_a_dead_nodes_session_is_not_given_away():
    bus = Bus("A", "B")
    session_on(bus, "A", "pat")
    bus.kill("A")
    node = bus.nodes["B"]
    impostor = node.connect("pat")
    bus.pump()
    assert node.received(impostor)[0]["message"].startswith(
        "nick pat is held for a session whose connection dropped; it is free in 60 seconds")


def test_a_session_taken_over_from_a_live_node_goes_quietly_there():
    bus = Bus("A", "B")
    pat, token, _ = session_on(bus, "A", "pat")
    amy = user_on(bus, "A", "amy")
    said(bus, "A", amy, "hi pat")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    bus.nodes["A"].lose(pat)               # the connection dropped; A keeps the session
    bus.pump()
    said(bus, "A", amy, "are you there?")
    bus.nodes["A"].received(amy)
    outlet, got = resume_on(bus, "B", "pat", token, last)  # the shared port sent it to B
    assert bare(got) == [{"type": "resumed", "missed": 1}, chat_from("amy", "are you there?")]
    assert bus.nodes["A"].received(amy) == []  # no leave, no join
    assert "pat" not in {c.nick for c in bus.core("A").clients.values()}
    said(bus, "A", amy, "welcome back")
    assert bare(bus.nodes["B"].received(outlet)) == [chat_from("amy", "welcome back")]
    bus.nodes["A"].received(amy)
    bus.nodes["B"].send(outlet, {"type": "quit"})
    bus.pump()
    assert bus.nodes["A"].received(amy) == [leave("pat")]


def test_an_unknown_session_elsewhere_is_expired_and_a_fresh_hello_works():
    bus = Bus("A", "B")
    node = bus.nodes["B"]
    outlet = node.connect()
    node.send(outlet, {"type": "hello", "nick": "pat", "session": True,
                       "resume": "no-such-token", "after": "0000000000000001.A.0-0.0"})
    bus.pump()
    assert node.received(outlet) == [SESSION_EXPIRED]
    node.send(outlet, {"type": "hello", "nick": "pat"})
    bus.pump()
    assert node.received(outlet) == [join("pat")]


def test_a_node_started_after_the_clients_last_packet_cannot_resume_it():
    bus = Bus("A", "B")
    pat, token, _ = session_on(bus, "A", "pat")
    bob = user_on(bus, "B", "bob")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    said(bus, "B", bob, "said before D started")
    bus.start("D")
    bus.kill("A")
    _, got = resume_on(bus, "D", "pat", token, last)
    assert got == [SESSION_EXPIRED]


def test_a_session_still_connected_to_its_old_node_is_closed_there():
    bus = Bus("A", "B")
    pat, token, _ = session_on(bus, "A", "pat")
    amy = user_on(bus, "A", "amy")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    outlet, got = resume_on(bus, "B", "pat", token, last)  # A never saw the old one drop
    assert got[0] == {"type": "resumed", "missed": 0}
    assert bus.nodes["A"].received(pat) == [
        {"type": "error", "message": "your session was resumed on another connection",
         "code": "replaced"}]
    assert bus.nodes["A"].closed(pat)
    bus.nodes["A"].lose(pat)
    bus.pump()
    said(bus, "A", amy, "still here, pat?")
    assert bare(bus.nodes["B"].received(outlet)) == [chat_from("amy", "still here, pat?")]
    assert leave("pat") not in bus.nodes["A"].received(amy)


def test_guessing_session_tokens_costs_the_connection():
    bus = Bus("A", "B")
    node = bus.nodes["B"]
    outlet = node.connect()
    for guess in range(3):
        node.send(outlet, {"type": "hello", "nick": "pat", "session": True,
                           "resume": f"guess-{guess}", "after": "0000000000000001.A.0-0.0"})
        bus.pump()
        assert node.received(outlet) == [SESSION_EXPIRED]
    node.send(outlet, {"type": "hello", "nick": "pat", "session": True, "resume": "guess-4",
                       "after": "0000000000000001.A.0-0.0"})
    bus.pump()
    assert node.received(outlet) == [{"type": "error", "code": "throttled",
                                      "message": "too many resumes on one connection"}]
    assert node.closed(outlet)
    takeovers = [c for c in bus.core("B").link.calls if c[0] == "take_over"]
    assert len(takeovers) == 3  # the fourth never reached Redis


def test_a_failed_resume_elsewhere_gets_a_new_hello_deadline():
    from dataclasses import replace as replaced
    from tests.core_harness import UNLIMITED
    bus = Bus("A", "B")
    node = bus.nodes["B"] = Harness(replaced(UNLIMITED, hello_timeout=10), FakeLink("B"))
    node.core.cluster_event(cluster.Progress("0-0", start=True), node.now)
    outlet = node.connect()
    node.tick(9)
    node.send(outlet, {"type": "hello", "nick": "pat", "session": True, "resume": "nope",
                       "after": "0000000000000001.A.0-0.0"})
    node.tick(2)  # the first deadline passes while Redis is asked: not cut meanwhile
    assert not node.closed(outlet)
    bus.pump()
    assert node.received(outlet) == [SESSION_EXPIRED]
    bus.tick(9)
    assert not node.closed(outlet)
    bus.tick(2)
    assert node.received(outlet) == [{"type": "error", "code": "no-hello",
                                      "message": "no hello within 10 seconds"}]


def test_a_resume_whose_connection_drops_while_it_waits_gives_the_session_back():
    bus = Bus("A", "B")
    pat, token, _ = session_on(bus, "A", "pat")
    said(bus, "B", user_on(bus, "B", "bob"), "hi pat")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    bus.kill("A")
    node = bus.nodes["B"]
    node.core.stream_cursor = (0, 0)  # as if B's reader lagged behind what pat saw
    outlet = node.connect()
    node.send(outlet, {"type": "hello", "nick": "pat", "session": True, "resume": token,
                       "after": last})
    bus.pump()
    assert node.received(outlet) == []  # waiting for the reader
    node.lose(outlet)
    node.tick(3)
    bus.pump()
    calls = node.core.link.calls
    assert ("forget", "pat") in calls
    assert any(c[0] == "end_session" and c[2] == "pat" for c in calls)
