"""The attack surface where features meet, in memory (issue 19): what a
replay may contain, what a resume may cost, what a flood may push out,
what forged input does.  The same findings over real sockets are in
tests/server/ (test_public_server.py, test_sessions.py, test_tls.py) and
tests/cluster/test_cluster.py."""

import json
import logging
from dataclasses import replace

from termchat.cluster import events as cluster
from termchat.core import eventlog
from termchat.core.core import Access
from termchat.wire import protocol as proto
from termchat.wire.names import name_key
from tests.cluster_bus import Bus, bare, resume_on, said, session_on, user_on
from tests.core_harness import UNLIMITED, FakeLink, Harness
from tests.support import SESSION_EXPIRED, chat_from, join, leave


def hello(nick, **fields):
    return {"type": "hello", "nick": nick, **fields}


def session(chat, nick, host="127.0.0.1"):
    outlet = chat.connect(host=host)
    chat.send(outlet, hello(nick, session=True))
    got = chat.received(outlet)
    assert got[1]["type"] == "session", got
    return outlet, got[1]["token"], got


def resume(chat, nick, token, after, host="127.0.0.1"):
    outlet = chat.connect(host=host)
    chat.send(outlet, hello(nick, session=True, resume=token, after=after))
    return outlet, chat.received(outlet)


# ---- 2: a replay holds only what that session was entitled to ----

def test_a_resume_never_replays_what_came_before_the_session_began():
    chat = Harness()
    alice, _, _ = session(chat, "alice")
    (bob,) = chat.joined("bob")
    chat.send(bob, {"type": "dm", "to": "alice", "message": "secret for the old alice"})
    chat.send(alice, {"type": "enter", "room": "private"})
    chat.chat(alice, "private words")
    chat.send(alice, {"type": "quit"})
    chat.received(bob)
    mallory, token, _ = session(chat, "alice")  # the same nick, someone else
    chat.send(bob, {"type": "dm", "to": "alice", "message": "for the new one"})
    chat.lose(mallory)
    _, got = resume(chat, "alice", token, "0")
    assert got[0]["type"] == "resumed"
    texts = [m.get("message") for m in got]
    assert "secret for the old alice" not in texts and "private words" not in texts
    assert texts.count("for the new one") == 1


def test_a_rename_of_a_previous_holder_is_not_followed_into_a_new_session():
    chat = Harness()
    (bob,) = chat.joined("bob")
    old, _, _ = session(chat, "sam")
    chat.send(bob, {"type": "dm", "to": "sam", "message": "to the first sam"})
    chat.send(old, {"type": "nick", "nick": "samuel"})
    new, token, _ = session(chat, "sam")
    chat.send(new, {"type": "nick", "nick": "sammy"})
    chat.lose(new)
    _, got = resume(chat, "sammy", token, "0")
    assert "to the first sam" not in [m.get("message") for m in got]


# ---- 3: a resume costs in proportion to what it replays ----

def test_a_resume_reads_only_the_lists_that_reached_the_session(monkeypatch):
    chat = Harness()
    pat, token, got = session(chat, "pat")
    last = got[0]["id"]
    loud, = chat.joined("loud")
    chat.send(loud, {"type": "enter", "room": "elsewhere"})
    for i in range(5000):
        chat.chat(loud, f"elsewhere {i}")
    chat.discard_output([loud, pat])
    chat.lose(pat)
    (amy,) = chat.joined("amy")
    chat.chat(amy, "for pat")
    read = []
    between = eventlog.EntryList.between

    def counted(self, low, high=None):
        entries = between(self, low, high)
        read.append(len(entries))
        return entries

    monkeypatch.setattr(eventlog.EntryList, "between", counted)
    _, replay = resume(chat, "pat", token, last)
    assert bare(replay) == [{"type": "resumed", "missed": 4}, join("loud"),
                            {"type": "exit", "nick": "loud", "room": "lobby"}, join("amy"),
                            chat_from("amy", "for pat")]
    assert sum(read) <= 10, read  # not the 5,000 said elsewhere


def test_resume_attempts_count_against_the_address():
    chat = Harness(limits=replace(UNLIMITED, connect_rate=1, connect_burst=2))
    outlet = chat.connect()
    for guess in range(2):  # the first is paid by the connection, the rest by the address
        chat.send(outlet, hello("pat", session=True, resume=f"guess-{guess}", after="1"))
        assert chat.received(outlet) == [SESSION_EXPIRED]
    chat.send(outlet, hello("pat", session=True, resume="guess-2", after="1"))
    got = chat.received(outlet)
    assert got[0]["code"] == "throttled" and chat.closed(outlet)


# ---- 4: rooms nobody is in let their history go ----

def test_abandoned_rooms_cannot_grow_the_log_without_bound():
    chat = Harness()
    log = chat.core.parts.log
    log.total_bytes = 4 << 20
    (pat,) = chat.joined("pat")
    text = "x" * 60_000
    for room in range(60):
        chat.send(pat, {"type": "enter", "room": f"room-{room}"})
        for _ in range(15):
            chat.chat(pat, text)
            chat.discard_output([pat])
    assert log.memory <= log.total_bytes
    assert ("room", name_key("room-0")) not in log.lists  # the oldest empty room's went
    assert len(log.recent(name_key("room-59"))) == 15  # the room pat is in keeps its own


# ---- 5: the connection rate of one address, refused before any hello ----

def test_an_address_connecting_too_fast_is_refused_before_its_hello():
    chat = Harness(limits=replace(UNLIMITED, connect_rate=1, connect_burst=5))
    (watcher,) = chat.joined("watcher")  # one token spent
    outlets = [chat.connect(host="10.1.1.1") for _ in range(7)]
    refused = [o for o in outlets if chat.closed(o)]
    assert len(refused) == 2
    assert chat.received(refused[0])[0]["code"] == "throttled"
    chat.tick(1.0)
    assert not chat.closed(chat.connect(host="10.1.1.1"))  # a token came back
    assert chat.received(watcher) == []  # no join, no leave: nothing to see


def test_churn_is_turned_away_at_the_door_and_asking_spends_nothing(caplog):
    """The transport asks before it sets a connection up: past the rate it
    gets the error to send (and no connection record is made); asking for
    one that may come in takes no token, admitting it does."""
    chat = Harness(limits=replace(UNLIMITED, connect_rate=1, connect_burst=3))
    address = ("10.3.3.3", 5000)
    with caplog.at_level(logging.INFO, logger="chat_core"):
        for _ in range(3):
            assert chat.core.turned_away(address, chat.now) is None
            chat.connect(host=address[0])
        refusals = [chat.core.turned_away(address, chat.now) for _ in range(20)]
    first = json.loads(refusals[0][proto.HEADER_SIZE:])
    assert first["code"] == "throttled" and "try again in" in first["message"]
    assert all(refusals) and len(chat.core.parts.gate.connections) == 3
    assert caplog.text.count("throttling") == 1
    chat.tick(1.0)
    assert chat.core.turned_away(address, chat.now) is None  # a token came back


def test_a_throttled_flood_is_logged_once(caplog):
    chat = Harness(limits=replace(UNLIMITED, connect_rate=1, connect_burst=2))
    with caplog.at_level(logging.INFO, logger="chat_core"):
        for _ in range(50):
            chat.connect(host="10.2.2.2")
    assert caplog.text.count("throttling") == 1
    assert "too many new connections" not in caplog.text


# ---- 6: a flood elsewhere cannot spend a detached session's replay ----

def test_flooders_in_another_room_do_not_evict_a_detached_session():
    chat = Harness()
    chat.core.parts.log.total_bytes = 8 << 20
    victim, token, got = session(chat, "victim")
    last = got[0]["id"]
    floods = chat.joined("f1", "f2")
    (friend,) = chat.joined("friend")
    for flooder in floods:
        chat.send(flooder, {"type": "enter", "room": "theirs"})
    chat.discard_output([victim, friend, *floods])
    chat.lose(victim)
    chat.chat(friend, "while you were out")
    for i in range(400):  # 25 MB into their own room
        chat.chat(floods[i % 2], f"{i} " + "x" * 64_000)
        chat.discard_output(floods)
    _, replay = resume(chat, "victim", token, last)
    assert replay[0]["type"] == "resumed", replay[:1]
    assert chat_from("friend", "while you were out") in bare(replay[1:])


# ---- 10: an after the server cannot use ----

def test_a_forged_after_is_session_expired_without_a_traceback(caplog):
    for forged in ("9" * 30, "0000000000000001.x.y.z", "-5", "1" * 200, "1.a.99-99999999999.1",
                   "0000000000000001.a.1-x.2"):
        chat = Harness()
        _, token, _ = session(chat, "pat")
        _, got = resume(chat, "pat", token, forged)
        assert got == [SESSION_EXPIRED], forged
    assert "Traceback" not in caplog.text


# ---- 16: smaller ones ----

def test_resuming_while_the_old_connection_is_open_tells_the_old_one():
    chat = Harness()
    pat, token, got = session(chat, "pat")
    _, replay = resume(chat, "pat", token, got[0]["id"])
    assert replay[0] == {"type": "resumed", "missed": 0}
    assert chat.received(pat) == [{"type": "error", "code": "replaced",
                                   "message": "your session was resumed on another connection"}]
    assert chat.closed(pat)


def test_wrong_operator_guesses_do_not_lock_the_address_out_of_logging_in():
    chat = Harness(access=Access(server_password="sesame", op_password="ops"))
    pat = chat.connect()
    chat.send(pat, hello("pat", password="sesame"))
    chat.received(pat)
    for _ in range(6):
        chat.send(pat, {"type": "op", "password": "wrong"})
    assert "too many wrong" in chat.received(pat)[-1]["message"]
    again = chat.connect()
    chat.send(again, hello("amy", password="sesame"))
    assert chat.received(again)[0] == join("amy")


def test_a_ban_from_another_node_lasts_its_duration_on_this_nodes_clock():
    node = Harness(link=FakeLink("a"))
    node.now = 5000.0
    node.core.cluster_event(cluster.RemoteBan("10.9.9.9", 120.0, "spam", node="b"), node.now)
    banned = node.connect("eve", host="10.9.9.9")
    assert node.received(banned)[0]["code"] == "banned"
    node.tick(121)
    ok = node.connect(host="10.9.9.9")
    assert not node.closed(ok)


# ---- 11: forged stream entries ----

def test_a_forged_event_number_does_not_silence_a_node(caplog):
    bus = Bus("A", "B")
    amy = user_on(bus, "A", "amy")
    bob = user_on(bus, "B", "bob")
    bus.nodes["A"].received(amy)
    core = bus.core("A")
    core.cluster_event(cluster.RemoteAway("nobody", "x", node="B", seq=10**15), 0)
    core.cluster_event(cluster.RemoteAway("bob", "x", node="B", seq=10**15), 0)
    said(bus, "B", bob, "still heard")
    assert chat_from("bob", "still heard") in bus.nodes["A"].received(amy)
    assert "numbered far past" in caplog.text and "Traceback" not in caplog.text


# ---- 7, 8, 17: nodes that stall, restart, or whose join and leave come together ----

def test_a_node_taken_for_dead_that_answers_again_keeps_its_users():
    bus = Bus("A", "B")
    alice, _, _ = session_on(bus, "A", "alice")
    watcher = user_on(bus, "B", "watcher")
    bus.nodes["B"].received(watcher)
    b = bus.core("B")
    b.cluster_event(cluster.NodeDead("A", {"alice": "digest"}), 0)  # A was stopped
    said(bus, "A", alice, "back from the pause")  # A runs again
    bus.tick(61)  # past the grace B gave A's session user
    got = bus.nodes["B"].received(watcher)
    assert leave("alice") not in got
    assert chat_from("alice", "back from the pause") in bare(got)
    bus.nodes["B"].send(watcher, {"type": "dm", "to": "alice", "message": "there?"})
    bus.pump()
    assert bare(bus.nodes["A"].received(alice))[-1]["message"] == "there?"


def test_a_fresh_join_of_a_dead_nodes_user_on_its_new_node_is_not_a_ghost():
    bus = Bus("A", "B")
    session_on(bus, "A", "chris")
    watcher = user_on(bus, "B", "watcher")
    bus.kill("A")
    bus.start("A2")  # A again: a new process, a new node, which knows nothing of chris
    a2 = bus.nodes["A2"]
    a2.send(a2.connect(), hello("chris", session=True))  # its resume failed: a fresh hello
    bus.pump()
    bus.tick(61)
    got = bus.nodes["B"].received(watcher)
    assert leave("chris") not in got and join("chris") not in got
    bus.nodes["B"].send(watcher, {"type": "who"})
    bus.pump()
    assert "chris" in bus.nodes["B"].received(watcher)[-1]["nicks"]


def test_a_join_and_a_leave_applied_together_are_both_seen():
    node = Harness(link=FakeLink("a"))
    pat = node.connect("pat")
    node.core.cluster_event(cluster.Claimed(node.core.connection(pat), "pat", True), 0)
    node.received(pat)
    node.core.cluster_event(cluster.RemoteJoin("new", "lobby", node="b", seq=1), 0)
    node.core.cluster_event(cluster.RemoteLeave("new", node="b", seq=2), 0)
    got = node.received(pat)
    assert join("new") in got and leave("new") in got


def test_a_session_resumes_on_a_node_that_replaced_its_own():
    bus = Bus("A", "B")
    pat, token, _ = session_on(bus, "A", "pat")
    bob = user_on(bus, "B", "bob")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    bus.kill("A")
    said(bus, "B", bob, "while A restarts")
    bus.start("A2", history=True)  # reads the stream's recent past first
    outlet, got = resume_on(bus, "A2", "pat", token, last)
    assert got[0]["type"] == "resumed", got
    assert chat_from("bob", "while A restarts") in bare(got[1:])


# ---- found by the chaos run (issue 25) ----

def test_a_resume_while_redis_is_away_is_to_be_tried_again_not_expired():
    """Chaos finding 9: the session lives on; session-expired would lock the
    client out of its own nick for the whole grace."""
    bus = Bus("A", "B")
    pat, token, got = session_on(bus, "A", "pat")
    last = got[0]["id"]
    bus.kill("A")
    node = bus.nodes["B"]
    outlet = node.connect()
    node.send(outlet, hello("pat", session=True, resume=token, after=last))
    conn = node.core.connection(outlet)
    node.core.cluster_event(cluster.TakenOver(conn, "pat", None, unreachable=True), node.now)
    got = node.received(outlet)
    assert got[0]["code"] == "throttled" and "try again" in got[0]["message"], got
    assert node.core.parts.presence.get("pat") is not None  # still held for its session


def test_a_resume_is_not_taken_up_before_the_reader_reaches_what_the_client_saw():
    """Chaos finding 7: taken up early, the reader later delivered live what
    the client had already seen on its old node."""
    bus = Bus("A", "B")
    pat, token, _ = session_on(bus, "A", "pat")
    said(bus, "B", user_on(bus, "B", "bob"), "hi")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    bus.kill("A")
    node = bus.nodes["B"]
    node.core.parts.log.stream_cursor = (0, 0)  # as if B's reader were stuck (Redis paused)
    outlet = node.connect()
    node.send(outlet, hello("pat", session=True, resume=token, after=last))
    bus.pump()
    assert node.received(outlet) == []  # waiting for the reader
    node.tick(10)
    got = node.received(outlet)
    assert got[0]["code"] == "throttled", got
    assert node.core.parts.presence.local("pat") is None


# ---- found by the abuse benchmark (issue 19) ----

def test_the_largest_chat_taken_fits_every_copy_a_session_gets():
    """A chat as large as the server takes reaches a session client live
    with its id and time, and one joining after it in its history; it
    used to fit only its plain form, and each session copy raised (a
    session joining the room after one flooded chat was dropped)."""
    chat = Harness()
    alice, _, _ = session(chat, "alice")
    (bob,) = chat.joined("bob")
    chat.received(alice)
    overhead = len(proto.encode(proto.ChatFrom("bob", ""))) - proto.HEADER_SIZE
    largest = proto.MAX_PAYLOAD - overhead - proto.SESSION_EXTRA
    chat.chat(bob, "y" * (largest + 1))
    assert "too long" in chat.received(bob)[0]["message"]
    assert chat.received(alice) == []
    chat.chat(bob, "x" * largest)
    live = chat.received(alice)
    assert [m["message"] for m in live] == ["x" * largest] and "id" in live[0]
    late, _, got = session(chat, "carol")
    history = [m for m in got if m.get("history")]
    assert [m["message"] for m in history] == ["x" * largest]
    assert not chat.closed(late) and not chat.closed(alice) and not chat.closed(bob)
