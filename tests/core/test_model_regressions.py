"""What the model (tests/core/test_model.py) found on its own, each kept as a
plain test: the shrunk sequence, written out, with what it must do now."""

from termchat.core.core import Access, SessionSettings
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


def test_a_join_over_a_dead_nodes_user_read_at_start_replays_nothing_from_before_it():
    bus = Bus("A", make=node)
    user_on(bus, "A", "ann")          # no session: gone with A
    cat, _, got = session_on(bus, "A", "cat")
    before = got[0]["id"]
    said(bus, "A", cat, "before the new ann came")
    bus.kill("A")
    bus.start("N1", history=True)
    _, token, _ = session_on(bus, "N1", "ann")  # takes the dead node's nick
    bus.kill("N1")
    bus.start("N2", history=True)     # reads A's ann, then N1's join over her
    _, got = resume_on(bus, "N2", "ann", token, before)
    assert got[0]["type"] == "resumed", got
    assert "before the new ann came" not in [p.get("message") for p in got], got


def test_a_node_paused_through_a_death_reads_the_dead_nodes_last_words_first():
    bus = Bus("A", "B", "C", make=node)
    bob = user_on(bus, "B", "bob")
    bus.nodes["B"].received(bob)
    bus.pause("B")
    ann = user_on(bus, "C", "ann")
    said(bus, "C", ann, "hello before I go")
    bus.kill("C")                     # B finds C dead when it runs, before reading C's events
    bus.carry_on("B")
    got = bus.nodes["B"].received(bob)
    assert [p.get("message") for p in got if p["type"] == "chat"] == ["hello before I go"], got
    assert got[-1] == leave("ann") and lobby(bus, "B") == ["bob"], got


def test_a_rename_lost_with_redis_is_taken_from_the_nodes_presence():
    bus = Bus("A", "B", make=node)
    ann = user_on(bus, "A", "ann")
    bus.pause("B")
    bus.nodes["A"].send(ann, {"type": "nick", "nick": "Ann"})
    bus.pump()
    bus.restart_redis()               # empty: B never reads the rename
    bus.carry_on("B")                 # A's presence says Ann
    assert lobby(bus, "B") == ["Ann"] == lobby(bus, "A")


def test_a_session_resumed_again_on_its_first_node_gets_a_grace_of_its_own():
    bus = Bus("A", "B", make=lambda name: Harness(UNLIMITED, link=FakeLink(name),
                                                  sessions=SessionSettings(resume_grace=60)))
    outlet, token, got = session_on(bus, "B", "ann")
    bus.nodes["B"].lose(outlet)       # B holds ann for 60 s from now
    bus.pump()
    _, again = resume_on(bus, "A", "ann", token, got[0]["id"])  # taken over by A
    assert again[0]["type"] == "resumed", again
    bus.kill("A")                     # B holds her for A now
    bus.tick(30)
    outlet, again = resume_on(bus, "B", "ann", token, got[0]["id"])
    assert again[0]["type"] == "resumed", again
    bus.nodes["B"].lose(outlet)       # a new grace: 60 s from now, not from the first drop
    bus.pump()
    bus.tick(31)
    assert lobby(bus, "B") == ["ann"], "ended when the first grace would have"
    bus.tick(30)
    assert lobby(bus, "B") == []


def test_a_session_whose_nodes_last_events_redis_lost_can_be_resumed_elsewhere():
    bus = Bus("A", "B", make=node)
    ann, token, _ = session_on(bus, "A", "ann")
    bus.pause("B")
    said(bus, "A", ann, "lost with Redis for B")
    last = bus.nodes["A"].received(ann)[-1]["id"]
    bus.restart_redis()               # empty: B will never read that line
    bus.carry_on("B")
    _, got = resume_on(bus, "B", "ann", token, last)  # not waiting for what cannot come
    assert got[0]["type"] == "resumed", got


def test_a_node_taken_for_dead_and_back_says_its_users_away_messages_again():
    bus = Bus("A", "B", make=node)
    ann = user_on(bus, "B", "ann")
    bus.nodes["B"].send(ann, {"type": "away", "message": "lunch"})
    bus.pump()
    bus.pause("B")
    bus.take_for_dead("B")            # A forgets ann
    bus.carry_on("B")                 # and reads her again from B's presence
    bob = user_on(bus, "A", "bob")
    bus.nodes["A"].received(bob)
    bus.nodes["A"].send(bob, {"type": "who"})
    assert bus.nodes["A"].received(bob)[-1].get("away") == {"ann": "lunch"}


def test_a_user_back_on_its_node_under_another_name_is_heard_when_it_takes_its_old_one():
    bus = Bus("A", "B", make=node)
    cat = user_on(bus, "A", "cat")
    outlet, token, got = session_on(bus, "B", "ann")
    bus.nodes["B"].received(outlet)
    _, again = resume_on(bus, "A", "ann", token, got[0]["id"])  # taken over by A
    assert again[0]["type"] == "resumed", again
    on_a = bus.nodes["A"].core.parts.gate.connections
    ann_a = next(o for o in on_a if o is not cat)
    bus.nodes["A"].send(ann_a, {"type": "nick", "nick": "dan"})
    bus.pump()
    last = bus.nodes["A"].received(ann_a)[-1]["id"]
    outlet, again = resume_on(bus, "B", "dan", token, last)  # back on B, as dan
    assert again[0]["type"] == "resumed", again
    bus.nodes["B"].send(outlet, {"type": "nick", "nick": "ann"})
    bus.pump()
    said(bus, "B", outlet, "heard, and kept")
    assert "heard, and kept" in [p.get("message") for p in bus.nodes["A"].received(cat)]
    since = bus.nodes["B"].received(outlet)[0]["id"]
    _, again = resume_on(bus, "B", "ann", token, since)
    assert "heard, and kept" in [p.get("message") for p in again], again


def test_a_node_catching_up_does_not_bring_back_a_user_a_node_forgot_before_its_last_words():
    bus = Bus("A", "B", make=node)
    outlet, _, _ = session_on(bus, "A", "ann")
    bus.nodes["A"].chat(outlet, "said as A stopped")  # echoed, not yet in the stream
    bus.pause("A")
    bus.take_for_dead("A")            # B holds ann for her grace...
    bus.tick(61)                      # ...which ends: her session is over
    bus.carry_on("A")                 # A drops her, then writes her line after its presence
    bus.kill("A")
    user_on(bus, "B", "ann")          # another ann, on B
    bus.start("C", history=True)      # reads A's line after A's presence without her
    assert lobby(bus, "C") == ["ann"] == lobby(bus, "B")
    assert bus.core("C").parts.presence.get("ann").node == "B"


def test_a_session_taken_up_on_a_node_that_echoed_a_line_before_it_was_written_gets_it():
    bus = Bus("A", "B", make=node)
    ann = user_on(bus, "A", "ann")
    bus.nodes["A"].chat(ann, "said as A stopped")  # echoed, not yet in the stream
    bus.pause("A")
    cat, token, got = session_on(bus, "B", "cat")
    last = got[0]["id"]               # her own join
    bus.nodes["B"].lose(cat)
    bus.pump()
    bus.carry_on("A")                 # the line lands after cat's join: B keeps it for cat
    _, got = resume_on(bus, "A", "cat", token, last)
    assert got[0]["type"] == "resumed", got
    assert "said as A stopped" in [p.get("message") for p in got], got


def test_a_line_the_others_refused_is_not_given_to_a_session_taken_up_where_it_was_said():
    bus = Bus("A", "B", make=node)
    outlet, _, _ = session_on(bus, "B", "ann")
    bus.nodes["B"].chat(outlet, "said as B stopped")  # echoed, not yet in the stream
    bus.pause("B")
    bus.take_for_dead("B")
    bus.tick(61)                      # A ends ann's session: the nick is free
    _, token, got = session_on(bus, "A", "ann")  # another ann
    last = got[0]["id"]
    bus.carry_on("B")                 # B lets its ann go, then writes her line: refused
    _, got = resume_on(bus, "B", "ann", token, last)
    assert got[0]["type"] == "resumed", got
    assert "said as B stopped" not in [p.get("message") for p in got], got
