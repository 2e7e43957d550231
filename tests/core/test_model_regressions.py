"""What the model (tests/core/test_model.py) found on its own, each kept as a
plain test: the shrunk sequence, written out, with what it must do now."""

from termchat.core.core import Access
from tests.cluster_bus import Bus, resume_on, said, session_on, user_on
from tests.core_harness import UNLIMITED, FakeLink, Harness
from tests.support import SESSION_EXPIRED, join, leave


def hello(nick, **fields):
    return {"type": "hello", "nick": nick, **fields}


def operator_and_victim(chat):
    """An operator, and a session user on one address with a spare connection."""
    boss = chat.connect(host="10.0.0.9")
    chat.send(boss, hello("boss"), {"type": "op", "password": "op"})
    victim = chat.connect(host="10.0.0.1")
    chat.send(victim, hello("ann", session=True))
    token = chat.received(victim)[1]["token"]
    spare = chat.connect(host="10.0.0.1")  # opened before the ban, silent so far
    return boss, victim, spare, token


def test_a_connection_opened_before_a_ban_cannot_say_hello_after_it():
    chat = Harness(access=Access(op_password="op"))
    boss, victim, spare, _ = operator_and_victim(chat)
    chat.send(boss, {"type": "ban", "nick": "ann", "minutes": 5})
    chat.send(spare, hello("ann"))
    got = chat.received(spare)
    assert [p.get("code") for p in got] == ["banned"], got
    assert join("ann") not in got and chat.closed(spare)


def test_a_connection_opened_before_a_ban_cannot_resume_after_it():
    chat = Harness(access=Access(op_password="op"))
    boss, victim, spare, token = operator_and_victim(chat)
    other = chat.connect(host="10.0.0.1")
    chat.send(other, hello("bob", session=True))
    bob_token = chat.received(other)[1]["token"]
    chat.lose(other)
    chat.send(boss, {"type": "ban", "nick": "ann", "minutes": 5})
    chat.send(spare, hello("bob", session=True, resume=bob_token, after="0"))
    got = chat.received(spare)
    assert [p.get("code") for p in got] == ["banned"], got
    assert chat.closed(spare)


# ---- in a cluster (tests/cluster_bus.py) ----

def node(name):
    return Harness(UNLIMITED, link=FakeLink(name), access=Access(op_password="op"))


def lobby(bus, name):
    presence = bus.core(name).parts.presence
    return [user.nick for user in presence.who(presence.lobby)]


def test_a_node_catching_up_sees_a_rename_to_the_nick_of_a_node_it_has_not_seen_die():
    bus = Bus("A", "B", make=node)
    user_on(bus, "A", "ann")
    bus.kill("A")                     # B buries ann; the nick is free
    bob = user_on(bus, "B", "bob")
    bus.nodes["B"].send(bob, {"type": "nick", "nick": "ann"})
    bus.pump()
    bus.start("C", history=True)      # reads A's ann, then the rename, then finds A dead
    assert lobby(bus, "C") == ["ann"] == lobby(bus, "B")
    assert bus.core("C").parts.presence.get("ann").node == "B"


def test_a_ban_read_from_the_streams_past_at_start_is_not_made_longer():
    bus = Bus("A", "B", make=node)
    boss = user_on(bus, "A", "boss")
    bus.nodes["A"].send(boss, {"type": "op", "password": "op"})
    bus.nodes["B"].connect("bob", host="10.0.0.7")
    bus.pump()
    bus.nodes["A"].send(boss, {"type": "ban", "nick": "bob", "minutes": 1})
    bus.pump()
    bus.tick(50)
    bus.start("C", history=True)      # the snapshot says 10 seconds are left
    bus.tick(11)
    late = bus.nodes["C"].connect(host="10.0.0.7")
    assert bus.nodes["C"].received(late) == []  # not banned any more, here as elsewhere
    early = bus.nodes["A"].connect(host="10.0.0.7")
    assert bus.nodes["A"].received(early) == []


def test_a_dropped_sessions_nick_stays_held_on_a_node_started_meanwhile():
    bus = Bus("A", "B", make=node)
    dan, _, _ = session_on(bus, "A", "dan")
    bus.nodes["A"].lose(dan)
    bus.pump()
    bus.start("C", history=True)      # its snapshot says A has dan: A's word stands
    impostor = bus.nodes["C"].connect("dan")
    bus.pump()
    assert [p.get("code") for p in bus.nodes["C"].received(impostor)] == ["nick-held"]


def test_a_dropped_session_whose_node_then_dies_has_only_the_rest_of_its_grace():
    bus = Bus("A", "B", make=node)
    pat, _, _ = session_on(bus, "A", "pat")
    bob = user_on(bus, "B", "bob")
    bus.nodes["A"].lose(pat)
    bus.pump()
    bus.tick(50)
    bus.kill("A")
    bus.nodes["B"].received(bob)
    bus.tick(11)                      # 61 seconds after the drop, 11 after the death
    assert bus.nodes["B"].received(bob) == [leave("pat")]


def test_a_node_that_read_a_users_join_at_start_replays_nothing_from_before_it():
    bus = Bus("A", "B", make=node)
    bob, _, got = session_on(bus, "B", "bob")
    before = got[0]["id"]             # bob's own join: before ann's session began
    said(bus, "B", bob, "before ann came")
    _, token, _ = session_on(bus, "A", "ann")
    bus.kill("A")
    bus.start("N", history=True)      # a new process reads ann's join in the stream's past
    _, got = resume_on(bus, "N", "ann", token, before)
    assert got[0]["type"] == "resumed", got
    assert "before ann came" not in [p.get("message") for p in got], got


def test_a_dropped_session_whose_grace_ran_out_while_its_node_was_stopped_is_over():
    bus = Bus("A", "B", make=node)
    pat, token, got = session_on(bus, "A", "pat")
    last = got[0]["id"]
    bob = user_on(bus, "B", "bob")
    bus.nodes["A"].lose(pat)
    bus.pump()
    bus.pause("A")                    # SIGSTOP: A never ends pat's session itself
    bus.tick(61)
    bus.take_for_dead("A")            # its heartbeat lapsed: the others bury it
    assert leave("pat") in bus.nodes["B"].received(bob)
    _, got = resume_on(bus, "B", "pat", token, last)
    assert got == [SESSION_EXPIRED]


def test_a_new_hello_deadline_after_a_failed_resume_elsewhere_replaces_the_first():
    from dataclasses import replace as replaced
    bus = Bus("A", "B", make=lambda name: Harness(replaced(UNLIMITED, hello_timeout=10),
                                                  FakeLink(name)))
    _, token, got = session_on(bus, "A", "ann")
    node = bus.nodes["B"]
    outlet = node.connect()
    bus.tick(1)
    node.send(outlet, {"type": "hello", "nick": "bob", "session": True, "resume": token,
                       "after": got[0]["id"]})  # not bob's: Redis says so, at once
    bus.pump()
    assert node.received(outlet) == [SESSION_EXPIRED]
    bus.tick(9)                       # the first deadline: replaced, not cutting it
    assert node.received(outlet) == [] and not node.closed(outlet)
    bus.tick(2)
    assert [p.get("code") for p in node.received(outlet)] == ["no-hello"]
