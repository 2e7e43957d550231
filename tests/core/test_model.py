"""The guarantees of SPEC "Where features meet", checked by a model.

Hypothesis drives the sans-IO chat core (tests/core_harness.py; several
cores joined by tests/cluster_bus.py for a cluster) through random
sequences of what users do and what befalls them, and after every step
compares what each connection received, and what the core holds, with a
reference model in plain Python (tests/model_world.py).  A failure
shrinks to a short sequence; the ones found are kept as plain tests in
tests/core/test_model_regressions.py.

The invariants, each written once in code (``check_*`` below):

1. Privacy (``check_privacy``, per packet): a chat, emote or DM reaches a
   connection only if its person was one of those it was for when it was
   said (the room's members then, a DM's two parties), live or replayed;
   a history item is a chat or emote of the room the person is in, never
   a DM.  Clients that did not ask for a session see no ids (the base
   protocol).
2. Exactly once, in order (``check_exactly_once``): what each person was
   shown (across its connections: drops and resumes) never holds a
   message twice, holds only what it was owed, in the server's order (in
   a cluster: each sender's order), and, while it is connected and
   everything has been delivered, is exactly what it is owed.  A resume
   with an earlier ``after`` than its last id (stale, zero, before the
   session's start, none) is the client asking again: the model cuts
   what the person was shown back to that point, and the replay must
   bring it back to what it is owed.
3. Presence is true (``check_presence``): each node's users and each
   room's ``who`` equal the model's people who are connected or inside
   their grace; DMs to them are accepted, to anyone else refused (a rule
   expects it).
4. Kicked and banned stay out (rules expect it): a kicked or banned
   user's token resumes nothing; a connection from a banned address is
   refused, and so is a hello or resume from it.
5. Bounded and live (``check_bounded``): the core's log lists and totals
   within their bounds, every output queue within the bound, the core's
   connections, sessions, claims and waiting resumes exactly the model's;
   and after every step (``check_no_internal_error``) no exception has
   escaped an entry point, nor been caught and logged by the core's fences.

In a cluster (``Cluster``: two or three nodes on the in-memory bus, which
plays Redis and the link threads as termchat/cluster/link.py does: claims,
session records, takeovers and hand-backs, a snapshot at registration,
NodeDead with the stream's end, a node started later finding the dead
itself) nodes are also killed, restarted as new processes and added; the
model's rules there: a killed node's users leave but those with a
session, held for the grace from when their connection was lost; a
resume elsewhere needs an ``after`` some node gave.  What the model found
and is left open, each an explicit rule here (marked OPEN in the code),
not an excluded case:

- a node's operators are its own: operator rights do not follow a session
  taken up on another node;
- wrong passwords are counted per address by each node;
- a ban of a dead node's user in its grace ends its session everywhere,
  but its address is known to its node alone, so it is not held out;
- a node started while a session user's connection is dropped (its
  ``held`` event read from the stream's past) or its node is dead holds it
  for a grace of its own from its start (it cannot tell when the others
  found the node dead, or the connection dropped): nodes are added, and
  restarted, only while no session user is in its grace.

The model can fail.  Each of these one-line changes to the core was made
on purpose (locally, never committed) and the model caught it, in the
check named (ci profile; OneNode, Cluster):

- privacy: actions.say_in_room announces to None, not the room (hello's
  history check, both); eventlog.missed gathers from ``after`` instead of
  ``max(after, start)`` (check_privacy, Cluster); clusterview.on_remote_speech
  announces to None (Cluster);
- exactly once: actions.resume replays ``missed[1:]`` (check_exactly_once,
  both); eventlog.gather returns its merge reversed (both);
  LogEntry.seen_at takes ``seq < published`` for ``<=`` (Cluster);
- presence: core.tick ends no grace (``ended_grace(now)[:0]``: the session
  count in check_bounded, both); actions.leave_remote does not forget the
  user (check_presence, Cluster);
- kicked and banned: actions.ban_refusal returns None (the connect rule,
  both); actions.leave does not end the session (check_bounded's session
  count, both);
- bounded: core.connection_lost gets the connection instead of forgetting
  it (check_bounded, both); Sessions.end gets the digest instead of popping
  it (both);
- no internal error: commands.on_away reads ``text.away`` (an
  AttributeError the fence catches: check_no_internal_error, both).

Not caught in the ci profile: clusterview.appear taking a user first read
at start as there before (since 0) even when its join was read; the plain
test in tests/core/test_model_regressions.py catches it.

Profiles: ``ci`` (the default: derandomized, a fixed number of examples,
the whole model well under a minute) and ``long`` (``HYPOTHESIS_PROFILE=long``:
thousands of examples, random seeds).
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import replace

from hypothesis import HealthCheck, Phase, event, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, \
    rule

from termchat.core.core import Access, SessionSettings
from termchat.core.presence import display_order
from termchat.wire.names import name_key
from tests.cluster_bus import Bus
from tests.core_harness import UNLIMITED, FakeLink, Harness
from tests.model_world import GRACE, HELLO_TIMEOUT, HISTORY, Client, Person, World, \
    in_senders_order, owed

settings.register_profile("ci", max_examples=400, stateful_step_count=50, derandomize=True,
                          database=None, deadline=None, print_blob=True,
                          phases=[Phase.explicit, Phase.generate, Phase.shrink],
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, stateful_step_count=80, deadline=None,
                          phases=[Phase.explicit, Phase.generate, Phase.shrink],
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    PROFILE = "ci"

NICKS = ("ann", "bob", "cat", "Ann", "dan")
ROOMS = ("lobby", "attic", "den")
HOSTS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
SERVER_PASSWORD, OP_PASSWORD = "sesame", "opsecret"
LIMITS = replace(UNLIMITED, hello_timeout=HELLO_TIMEOUT)
SESSIONS = SessionSettings(history=HISTORY, resume_grace=GRACE)
ACCESS = Access(server_password=SERVER_PASSWORD, op_password=OP_PASSWORD)
AFTERS = ("last", "last", "stale", "zero", "before-start", "none", "garbage", "huge")
PASSWORDS = {"right": SERVER_PASSWORD, "wrong": "nope", "none": None}
PASSWORD_CHOICES = st.sampled_from(("right",) * 6 + ("wrong", "none"))

index = st.integers(min_value=0, max_value=7)


def pick(items: list, i: int):
    return items[i % len(items)]


def codes(packets: list[dict]) -> list[str]:
    return [p.get("code") for p in packets if p["type"] == "error"]


class CoreErrors(logging.Handler):
    """What the core's fences caught and logged (an internal error)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ChatChecks(RuleBasedStateMachine):
    """What every machine shares: driving clients, reading what they got,
    and the invariants.  Subclasses make ``self.nodes`` (name -> Harness)."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.errors = CoreErrors()
        for name in ("chat_core", "chat_cluster"):
            logging.getLogger(name).addHandler(self.errors)

    def teardown(self) -> None:
        for name in ("chat_core", "chat_cluster"):
            logging.getLogger(name).removeHandler(self.errors)

    # ---- driving ----

    def harness(self, client: Client) -> Harness:
        return self.nodes[client.node]

    def send(self, client: Client, message: dict) -> None:
        self.harness(client).send(client.outlet, message)

    def open(self, host: str, node: str) -> Client | None:
        """A new connection; None if its address is banned (it is refused at once)."""
        harness = self.nodes[node]
        outlet = harness.connect(host=host)
        client = self.world.connect(outlet, host, node)
        if self.world.is_banned(host):
            got = self.settle()[client]
            assert codes(got) == ["banned"], got
            self.world.close(client)
            return None
        return client

    def settle(self) -> dict[Client, list[dict]]:
        """Let the cluster run (subclasses), end the turn, and read every
        connection: what each got is observed and checked as it comes; a
        connection the core closed is then closed, as the transport does."""
        self.run_cluster()
        got: dict[Client, list[dict]] = {}
        for client in self.world.clients:
            outlet = client.outlet
            if outlet.gone or not self.readable(client):
                continue
            harness = self.harness(client)
            packets = harness.received(outlet)
            got[client] = packets
            for packet in packets:
                self.observe(client, packet)
            if outlet.closing:
                harness.lose(outlet, "closed after an error")
        self.check_no_internal_error()
        return got

    def run_cluster(self) -> None:
        pass

    def readable(self, client: Client) -> bool:
        """Whether the connection's node still runs (a dead one's output is gone)."""
        return True

    def observe(self, client: Client, packet: dict) -> None:
        person = client.person
        self.check_privacy(client, packet)
        if person is None:
            return
        if "id" in packet:
            self.world.seen_ids.setdefault(packet["id"], len(self.world.seen_ids))
        if "id" in packet and not packet.get("history"):
            person.ids.append(packet["id"])
            if person.first_id is None and packet["type"] == "join":
                person.first_id = packet["id"]
        if packet["type"] in ("chat", "emote", "dm") and not packet.get("history"):
            person.view.append((self.world.said[packet["message"]], packet.get("id")))

    # ---- the invariants ----

    def check_privacy(self, client: Client, packet: dict) -> None:
        person = client.person
        if person is not None and person.session is None:
            assert "id" not in packet and "time" not in packet, (person.nick, packet)
        if packet["type"] not in ("chat", "emote", "dm"):
            return
        said = self.world.said.get(packet["message"])
        assert said is not None, packet
        assert person is not None, ("a connection with no user got", packet)
        if packet.get("history"):
            assert said.kind != "dm" and said.room == person.room, (person.nick, packet)
        else:
            assert person.pid in said.audience, (
                f"{person.nick} (#{person.pid}) got {said.text} meant for {set(said.audience)}")

    def check_no_internal_error(self) -> None:
        assert not self.errors.records, [r.getMessage() for r in self.errors.records]

    @invariant()
    def check_exactly_once(self) -> None:
        for person in self.world.people:
            shown = [said for said, _ in person.view]
            texts = [said.text for said in shown]
            assert len(set(texts)) == len(texts), (person.nick, texts)
            due = owed(person)
            assert set(texts) <= {s.text for s in person.entitled}, (person.nick, texts)
            assert in_senders_order(shown, due), (person.nick, texts)
            if self.exact_order:
                assert texts == [s.text for s in due][:len(texts)], (person.nick, texts, due)
            if person.client is not None and self.delivered(person):
                assert sorted(texts) == sorted(s.text for s in due), (
                    person.nick, texts, [s.text for s in due])

    exact_order = True
    cluster = False

    def delivered(self, person: Person) -> bool:
        """Whether everything said has had the time to reach the person."""
        return True

    @invariant()
    def check_presence(self) -> None:
        for name, harness in self.nodes.items():
            if not self.settled(name):
                continue
            presence = harness.core.parts.presence
            present = {p.key: p for p in self.world.present()}
            assert set(presence.users) == set(present), (name, set(presence.users),
                                                         set(present))
            for room in ROOMS:
                expected = sorted((p.nick for p in self.world.in_room(room)), key=display_order)
                core_room = presence.rooms.get(room)
                nicks = [u.nick for u in presence.who(core_room)] if core_room else []
                assert nicks == expected, (name, room, nicks, expected)

    def ban(self, target: Person, minutes: int) -> None:
        """The kicked user's node bans its address."""
        if self.running(target.node):
            self.world.banned[target.host] = self.world.now + minutes * 60

    def usable(self, which: str) -> list[Client]:
        """The connections a rule may use (joined, greeting or open): those
        of nodes that run (a paused node's clients wait)."""
        clients = {"joined": self.world.joined, "greeting": self.world.greeting,
                   "open": self.world.open_clients}[which]()
        return [client for client in clients if self.running(client.node)]

    def running(self, node: str) -> bool:
        return node in self.nodes

    def settled(self, name: str) -> bool:
        """Whether the node has heard all there is (a cluster's may lag)."""
        return True

    @invariant()
    def check_bounded(self) -> None:
        for name, harness in self.nodes.items():
            parts = harness.core.parts
            log = parts.log
            assert log.memory <= log.total_bytes and log.entries <= log.total_entries
            for key, lst in log.lists.items():
                assert lst.bytes <= log.list_bytes or len(lst) <= 1, key
            for conn in parts.gate.connections.values():
                assert conn.outlet.queued <= LIMITS.max_queue
                assert not conn.held, conn
            model = {c.outlet for c in self.world.open_clients(name)}
            assert set(parts.gate.connections) == model, (name, len(parts.gate.connections),
                                                           len(model))
            sessions = {p.session for p in self.world.present()
                        if p.session and p.node == name}
            assert len(parts.sessions.by_digest) == len(sessions), (
                name, len(parts.sessions.by_digest), len(sessions))
            if self.settled(name):
                assert not parts.presence.claims and not parts.sessions.waiting, name

class OneNode(ChatChecks):
    """One server: every rule on one core."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes = {"solo": Harness(LIMITS, sessions=SESSIONS, access=ACCESS)}

    def node_for(self, i: int) -> str:
        return "solo"

    # ---- arriving ----

    @rule(host=st.sampled_from(HOSTS), i=index)
    def connect(self, host, i):
        self.open(host, self.node_for(i))

    @initialize(nicks=st.lists(st.sampled_from(NICKS), min_size=1, max_size=3),
                hosts=st.lists(st.sampled_from(HOSTS), min_size=3, max_size=3),
                sessions=st.lists(st.booleans(), min_size=3, max_size=3),
                operator=st.booleans())
    def some_people(self, nicks, hosts, sessions, operator):
        """A few people in the chat to begin with (one perhaps an operator)."""
        for n, nick in enumerate(nicks):
            self.arrive(n, nick, sessions[n], "right", hosts[n])
        joined = self.usable('joined')
        if operator and joined:
            self.op(0, True)

    @rule(i=index, nick=st.sampled_from(NICKS), session=st.booleans(),
          password=PASSWORD_CHOICES, host=st.sampled_from(HOSTS))
    def arrive(self, i, nick, session, password, host):
        """Connect and say hello at once."""
        client = self.open(host, self.node_for(i))
        if client is not None:
            self.say_hello(client, nick, session, password)

    @precondition(lambda self: self.usable('greeting'))
    @rule(i=index, nick=st.sampled_from(NICKS), session=st.booleans(),
          password=PASSWORD_CHOICES)
    def hello(self, i, nick, session, password):
        self.say_hello(pick(self.usable('greeting'), i), nick, session, password)

    def say_hello(self, client, nick, session, password):
        world = self.world
        given = PASSWORDS[password]
        message = {"type": "hello", "nick": nick, "session": session}
        if given is not None:
            message["password"] = given
        refusal = self.hello_refusal(client, nick, given)
        person = None if refusal else world.join(client, nick, "pending" if session else None)
        self.send(client, message)
        got = self.settle()[client]
        event(f"hello: {refusal or 'joined'}")
        if refusal:
            assert codes(got) == [refusal], (refusal, got)
            world.close(client)
            return
        assert got[0]["type"] == "join" and got[0]["nick"] == nick, got
        if session:
            assert got[1]["type"] == "session", got
            person.session = got[1]["token"]
            history = [p["message"] for p in got[2:] if p.get("history")]
            assert history == [s.text for s in world.room_history("lobby")], history
        else:
            assert not any(p.get("history") for p in got), got

    def hello_refusal(self, client: Client, nick: str, given: str | None) -> str | None:
        world = self.world
        if world.is_banned(client.host):
            return "banned"
        refusal = world.password_refusal("server", client, given, SERVER_PASSWORD)
        if refusal:
            return refusal
        holder = world.holder(nick)
        if holder is not None:
            return "nick-held" if holder.detached else "nick-taken"
        return None

    # ---- talking ----

    @precondition(lambda self: self.usable('joined'))
    @rule(i=index, kind=st.sampled_from(("chat", "emote")))
    def speak(self, i, kind):
        client = pick(self.usable('joined'), i)
        said = self.world.say(client.person, kind, self.world.text())
        self.send(client, {"type": kind, "message": said.text})
        self.settle()

    @precondition(lambda self: self.usable('joined'))
    @rule(i=index, to=st.sampled_from(NICKS))
    def direct(self, i, to):
        world = self.world
        client = pick(self.usable('joined'), i)
        target = world.holder(to)
        text = world.text()
        if target is not None:
            world.direct(client.person, target, text)
        self.send(client, {"type": "dm", "to": to, "message": text})
        got = self.settle()[client]
        if target is None:
            assert codes(got) == ["no-user"], got

    @precondition(lambda self: self.usable('joined'))
    @rule(i=index, room=st.sampled_from(ROOMS))
    def enter(self, i, room):
        client = pick(self.usable('joined'), i)
        person = client.person
        same = person.room == room
        if not same:
            person.room = room
        self.send(client, {"type": "enter", "room": room})
        got = self.settle()[client]
        assert codes(got) == (["bad-packet"] if same else []), got

    @precondition(lambda self: self.usable('joined'))
    @rule(i=index, nick=st.sampled_from(NICKS))
    def rename(self, i, nick):
        client = pick(self.usable('joined'), i)
        person = client.person
        holder = self.world.holder(nick)
        refused = nick == person.nick or (holder is not None and holder is not person)
        if not refused:
            person.nick = nick
        self.send(client, {"type": "nick", "nick": nick})
        got = self.settle()[client]
        assert codes(got) == (["nick-taken"] if refused else []), got

    @precondition(lambda self: self.usable('joined'))
    @rule(i=index, text=st.sampled_from(("", "lunch")))
    def away(self, i, text):
        client = pick(self.usable('joined'), i)
        client.person.away = text or None
        self.send(client, {"type": "away", "message": text})
        self.settle()

    @precondition(lambda self: self.usable('joined'))
    @rule(i=index)
    def who(self, i):
        client = pick(self.usable('joined'), i)
        person = client.person
        self.send(client, {"type": "who"})
        got = self.settle()[client]
        here = self.world.in_room(person.room)
        expected = {"type": "who", "room": person.room,
                    "nicks": sorted((p.nick for p in here), key=display_order)}
        away = {p.nick: p.away for p in here if p.away}
        if away:
            expected["away"] = away
        if self.settled(client.node):
            assert got == [expected], (got, expected)

    # ---- moderation ----

    @precondition(lambda self: self.usable('joined'))
    @rule(i=index, right=st.booleans())
    def op(self, i, right):
        client = pick(self.usable('joined'), i)
        given = OP_PASSWORD if right else "guess"
        refusal = self.world.password_refusal("operator", client, given, OP_PASSWORD)
        if refusal is None:
            client.person.operator = True
        self.send(client, {"type": "op", "password": given})
        got = self.settle()[client]
        assert codes(got) == ([refusal] if refusal else []), got

    @precondition(lambda self: self.usable('joined'))
    @rule(i=index, nick=st.sampled_from(NICKS), minutes=st.sampled_from((0, 0, 1, 5)))
    def kick(self, i, nick, minutes):
        world = self.world
        client = pick(self.usable('joined'), i)
        target = world.holder(nick)
        refusal = None if client.person.operator else "not-operator"
        refusal = refusal or (None if target is not None else "no-user")
        if refusal is None:
            if minutes:
                self.ban(target, minutes)
            world.leave(target)
        message = {"type": "ban", "nick": nick, "minutes": minutes} if minutes else \
            {"type": "kick", "nick": nick}
        self.send(client, message)
        got = self.settle()
        event(f"{message['type']}: {refusal or 'done'}")
        if refusal:
            assert codes(got[client]) == [refusal], got[client]
        elif target.client is not None or target.gone:
            kicked = [c for c in got if c.person is target and c.state == "closed"]
            for victim in kicked:
                if got[victim] and victim.outlet.gone:
                    assert codes(got[victim])[-1:] in (["banned"], ["kicked"], []), got[victim]

    # ---- leaving and coming back ----

    @precondition(lambda self: self.usable('open'))
    @rule(i=index)
    def drop(self, i):
        world = self.world
        client = pick(self.usable('open'), i)
        person = client.person if client.state == "joined" else None
        if person is None:
            world.close(client)
        elif person.session:
            world.detach(person)
        else:
            world.leave(person)
        self.harness(client).lose(client.outlet, "connection reset")
        self.settle()

    @precondition(lambda self: self.usable('joined'))
    @rule(i=index)
    def quit(self, i):
        client = pick(self.usable('joined'), i)
        self.world.leave(client.person)
        self.send(client, {"type": "quit"})
        self.settle()

    @precondition(lambda self: any(p.session for p in self.world.people))
    @rule(i=index, j=index, own_nick=st.booleans(), after=st.sampled_from(AFTERS),
          fresh=st.booleans(), host=st.sampled_from(HOSTS))
    def resume(self, i, j, own_nick, after, fresh, host):
        world = self.world
        holder = pick([p for p in world.people if p.session], i)
        nick = holder.nick if own_nick else pick(list(NICKS), j)
        greeting = world.greeting(self.node_for(j))
        client = pick(greeting, j) if greeting and not fresh else \
            self.open(host, self.node_for(j))
        if client is None:
            return
        after_id, cut = self.after(holder, after, j)
        message = {"type": "hello", "nick": nick, "session": True, "resume": holder.session}
        if after_id is not None:
            message["after"] = after_id
        expected = self.expect_resume(client, holder, nick, after_id, cut)
        self.send(client, message)
        got = self.settle()[client]
        event(f"resume ({after}): {expected}")
        self.check_resume(client, got, expected)

    def after(self, holder: Person, after: str, j: int) -> tuple[str | None, int | None]:
        """The ``after`` a resume gives, and where it puts the client's
        view back to (None: an id the server never gave)."""
        if after == "last":
            return holder.last_id, len(holder.view)
        if after == "stale":
            choices = [(holder.first_id, 0)] + [(i, n + 1) for n, (_, i) in enumerate(holder.view)]
            return pick(choices, j)
        if after == "before-start":  # ids shown to anyone before this session began
            seen = self.world.seen_ids
            start = seen.get(holder.first_id, len(seen))
            earlier = [i for i, n in seen.items() if n < start]
            return (pick(earlier, j) if earlier else "0"), 0
        if after == "none":
            return None, 0
        if after == "zero":
            return "0", 0
        return ("x-y" if after == "garbage" else "9" * 16), None

    def expect_resume(self, client: Client, holder: Person, nick: str, after: str | None,
                      cut: int | None) -> str:
        """What a resume gets (resumed, or the refusal's code), with the
        model changed to match: a session this node holds is taken up here
        (or, with an after this server never gave, refused and, if it was
        detached, ended); in a cluster one held elsewhere is asked of Redis
        (only with an after some node gave, and no user of that nick here),
        handed over and taken up here, or refused with a new hello deadline."""
        world = self.world
        if world.is_banned(client.host):
            world.close(client)
            return "banned"
        client.resumes += 1
        if client.resumes > 3:
            world.close(client)
            return "throttled"
        target = world.session_of(holder.session)
        if target is not None and target.key != name_key(nick):
            target = None
        if target is not None and target.node == client.node:
            if cut is None:
                if target.detached:
                    world.leave(target)
                return "session-expired"
            return self.take_up(client, target, cut)
        here = any(p.key == name_key(nick) and p.node == client.node for p in world.present())
        if not self.cluster or here or after is None or after.count(".") != 3:
            return "session-expired"  # not asked of Redis
        client.deadline = world.now + HELLO_TIMEOUT
        if target is None:
            return "session-expired"
        return self.take_up(client, target, cut)

    def take_up(self, client: Client, person: Person, cut: int) -> str:
        if person.node != client.node:
            person.operator = False  # OPEN: a node's operators are its own (see the docstring)
        if person.client is not None:
            self.world.close(person.client)
        person.view = person.view[:cut]
        self.world.attach(client, person)
        return "resumed"

    def check_resume(self, client: Client, got: list[dict], expected: str) -> None:
        if expected == "resumed":
            assert got and got[0]["type"] == "resumed", got
        else:
            assert codes(got) == [expected], (expected, got)

    # ---- time ----

    def pass_time(self, seconds: float) -> None:
        for harness in self.nodes.values():
            harness.tick(seconds)

    @rule(seconds=st.sampled_from((1.0, 5.0, 9.0, 30.0, 61.0)))
    def wait(self, seconds):
        world = self.world
        world.now += seconds
        for person in world.graces_over():
            world.leave(person)
        late = [c for c in world.greeting() if c.deadline <= world.now]
        for client in late:
            world.close(client)
        self.pass_time(seconds)
        got = self.settle()
        for client in late:
            assert codes(got.get(client, [])) == ["no-hello"], got.get(client)


class Cluster(OneNode):
    """Two or three nodes joined by the bus that plays Redis and the link
    threads (tests/cluster_bus.py): users on any node, nodes killed,
    restarted as new processes and added."""

    exact_order = False  # each sender's order (checked by in_senders_order)
    cluster = True

    def __init__(self) -> None:
        ChatChecks.__init__(self)
        self.bus = Bus("A", "B", make=self.make_node)
        self.names = (f"N{n}" for n in itertools.count(1))

    @staticmethod
    def make_node(name: str) -> Harness:
        return Harness(LIMITS, link=FakeLink(name), sessions=SESSIONS, access=ACCESS)

    @property
    def nodes(self) -> dict[str, Harness]:
        return {name: self.bus.nodes[name] for name in self.bus.live}

    def node_for(self, i: int) -> str:
        return pick(self.bus.live, i)

    def run_cluster(self) -> None:
        self.bus.pump()

    def readable(self, client: Client) -> bool:
        return client.node in self.bus.live

    def running(self, node: str) -> bool:
        return node in self.bus.live

    # ---- what befalls nodes ----

    def orphans(self) -> list[Person]:
        """Session users in a grace whose start a node started now could not
        know (OPEN, see the docstring): a dead node's, and any whose
        connection dropped."""
        return [p for p in self.world.present()
                if p.session and (not self.running(p.node) or p.detached)]

    @precondition(lambda self: len(self.bus.live) < 3 and not self.orphans())
    @rule()
    def add_node(self):
        self.bus.start(next(self.names), history=True)
        self.settle()

    @precondition(lambda self: len(self.bus.live) >= 2)
    @rule(i=index)
    def kill(self, i):
        self.crash(self.node_for(i))
        event(f"kill: {len(self.orphans())} users held")
        self.settle()

    @rule(i=index)
    def restart(self, i):
        """Killed, and started again: a new process is a new node, which
        reads the stream's recent past before it lets anyone in."""
        name = self.node_for(i)
        if self.orphans():
            return  # OPEN: see the docstring (a node started in a dead node's grace)
        event(f"restart: {len(self.orphans())} users held")
        self.crash(name)
        self.bus.start(next(self.names), history=True)
        self.settle()

    def crash(self, name: str) -> None:
        """SIGKILL: its connections are gone with it; its users leave, but
        those with a session, who are held for the grace from when their
        connection was lost (now, for those still connected)."""
        world = self.world
        for person in [p for p in world.present() if p.node == name]:
            if person.session is None:
                world.leave(person)
            elif person.client is not None:
                world.detach(person)
        for client in world.open_clients(name):
            world.close(client)
        self.bus.kill(name)


    def pass_time(self, seconds: float) -> None:
        self.bus.tick(seconds)


TestOneNode = OneNode.TestCase
TestOneNode.settings = settings.get_profile(PROFILE)
TestCluster = Cluster.TestCase
TestCluster.settings = settings.get_profile(PROFILE)
