"""Sessions across cluster nodes, in memory: several chat cores joined by a
bus that plays Redis and the link threads (tests/cluster_bus.py)."""

from termchat.cluster import events as cluster
from termchat.core.clusterview import DEAD_NODE_WAIT
from termchat.core.sessions import RESUME_WAIT
from tests.cluster_bus import Bus, bare, resume_on, said, session_on, user_on
from tests.core_harness import FakeLink, Harness
from tests.support import SESSION_EXPIRED, chat_from, join, leave


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
    assert bus.core("A").parts.presence.local("pat") is None  # B's user now
    said(bus, "A", amy, "welcome back")
    assert bare(bus.nodes["B"].received(outlet)) == [chat_from("amy", "welcome back")]
    bus.nodes["A"].received(amy)
    bus.nodes["B"].send(outlet, {"type": "quit"})
    bus.pump()
    assert bus.nodes["A"].received(amy) == [leave("pat")]


def test_a_session_passed_on_by_a_node_that_died_before_saying_so_lets_its_first_node_go():
    """Chaos seed 1: pat's session went from B to A (the takeover script ran
    in Redis), A was killed before its takeover event was written, and pat
    resumed on C from A.  B, still holding pat's detached session, must take
    C's takeover as the session gone; else it ignores everything C says for
    pat (pat's chat lost for all of B's users) and at the grace's end tells
    them pat left."""
    bus = Bus("A", "B", "C")
    pat, token, _ = session_on(bus, "B", "pat")
    amy = user_on(bus, "B", "amy")
    said(bus, "B", amy, "hi pat")
    last = bus.nodes["B"].received(pat)[-1]["id"]
    bus.nodes["B"].lose(pat)
    bus.pump()
    on_a = bus.nodes["A"].connect()
    bus.nodes["A"].send(on_a, {"type": "hello", "nick": "pat", "session": True,
                               "resume": token, "after": last})
    bus.answer_calls("A", bus.nodes["A"])  # the script moved the session to A...
    bus.kill("A")                          # ...which died before its event was written
    outlet, got = resume_on(bus, "C", "pat", token, last)
    assert got[0] == {"type": "resumed", "missed": 0}, got
    bus.nodes["B"].received(amy)
    said(bus, "C", outlet, "back, on C")
    assert bare(bus.nodes["B"].received(amy)) == [chat_from("pat", "back, on C")]
    assert bus.core("B").parts.presence.local("pat") is None  # C's user now
    bus.tick(120)  # past the grace: B has no session of pat's to end
    assert leave("pat") not in bus.nodes["B"].received(amy)


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


def test_a_resume_whose_connection_drops_while_it_waits_hands_the_session_back():
    bus = Bus("A", "B")
    pat, token, _ = session_on(bus, "A", "pat")
    said(bus, "B", user_on(bus, "B", "bob"), "hi pat")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    bus.kill("A")
    node = bus.nodes["B"]
    node.core.parts.log.stream_cursor = (0, 0)  # as if B's reader lagged behind what pat saw
    outlet = node.connect()
    node.send(outlet, {"type": "hello", "nick": "pat", "session": True, "resume": token,
                       "after": last})
    bus.pump()
    assert node.received(outlet) == []  # waiting for the reader
    node.lose(outlet)
    node.tick(RESUME_WAIT + 1)
    bus.pump()
    calls = node.core.link.calls
    back = [c for c in calls if c[0] == "hand_back"]
    assert back and back[0][2:] == ("pat", "A")  # the session went back where it was
    assert bus.sessions[back[0][1]][0] == "A"
    node.core.parts.log.stream_cursor = (1 << 62, 0)  # the reader catches up
    outlet, got = resume_on(bus, "B", "pat", token, last)  # so the client's next try works
    assert got[0]["type"] == "resumed", got


def test_what_a_paused_node_did_for_a_session_taken_over_meanwhile_is_never_replayed():
    """Found by the chaos run: a node paused while its client gave up on it
    and resumed elsewhere reads, once it runs again, the line the client
    had sent it; the others refuse it (the user is theirs now), and so must
    its own replays."""
    bus = Bus("A", "B")
    pat, token, _ = session_on(bus, "A", "pat")
    bob = user_on(bus, "B", "bob")
    said(bus, "A", pat, "before the pause")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    bus.pause("A")                      # SIGSTOP, with pat's next line in its socket
    moved, got = resume_on(bus, "B", "pat", token, last)  # pat gave up on A
    assert got[0]["type"] == "resumed", got
    bus.nodes["A"].chat(pat, "stale")   # A runs again: it reads what was in the socket,
    bus.nodes["A"].lose(pat)            # then the end
    bus.carry_on("A")
    assert "stale" not in [m.get("message") for m in bus.nodes["B"].received(bob)]
    bus.nodes["B"].lose(moved)          # before B sent pat anything
    bus.pump()
    home, got = resume_on(bus, "A", "pat", token, last)  # home again
    assert got[0]["type"] == "resumed", got
    assert "stale" not in [m.get("message") for m in got], got
    said(bus, "A", home, "home")         # ours again: what it says now counts everywhere
    assert chat_from("pat", "home") in bare(bus.nodes["B"].received(bob))
    bus.nodes["A"].lose(home)
    bus.pump()
    _, got = resume_on(bus, "A", "pat", token, last)  # as if it missed its own echo
    assert [m.get("message") for m in got[1:]] == ["home"], got


def test_a_resume_waits_for_what_a_node_taken_for_dead_echoed_but_had_not_written():
    """Found by the chaos run: a node paused right after echoing a line (not
    yet in the stream) was taken for dead, and its client resumed on another
    node at once; the line, written when the node ran again, was refused
    there (the user was the other node's by then): lost, though echoed."""
    bus = Bus("A", "B")
    bus.tick(DEAD_NODE_WAIT)           # B has run a while: it sees A die, and when
    pat, token, _ = session_on(bus, "A", "pat")
    bob = user_on(bus, "B", "bob")
    bus.pause("A")
    bus.nodes["A"].chat(pat, "echoed, not yet written")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    bus.take_for_dead("A")
    node = bus.nodes["B"]
    outlet, got = resume_on(bus, "B", "pat", token, last)
    assert got == []                   # B waits for A's line...
    bus.tick(RESUME_WAIT + 0.1)        # ...and then says: try again
    assert [p.get("code") for p in node.received(outlet)] == ["throttled"]
    bus.carry_on("A")                  # A runs again, and passes its line on
    assert chat_from("pat", "echoed, not yet written") in bare(node.received(bob))
    bus.nodes["A"].lose(pat)
    bus.pump()
    _, got = resume_on(bus, "B", "pat", token, last)
    assert got == [{"type": "resumed", "missed": 0}], got


def test_a_resume_waits_for_a_dead_nodes_unwritten_lines_only_so_long():
    bus = Bus("A", "B")
    bus.tick(DEAD_NODE_WAIT)
    pat, token, _ = session_on(bus, "A", "pat")
    bus.pause("A")
    bus.nodes["A"].chat(pat, "echoed, never written")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    bus.kill("A")                      # SIGKILL: that line never comes
    early, got = resume_on(bus, "B", "pat", token, last)
    bus.tick(RESUME_WAIT + 0.1)
    assert [p.get("code") for p in got + bus.nodes["B"].received(early)] == ["throttled"]
    bus.tick(DEAD_NODE_WAIT - RESUME_WAIT)
    later, got = resume_on(bus, "B", "pat", token, last)
    assert got == [{"type": "resumed", "missed": 0}], got
    bus.nodes["B"].lose(later)


def test_a_node_started_after_a_node_died_does_not_wait_for_its_unwritten_lines():
    bus = Bus("A", "B")
    pat, token, _ = session_on(bus, "A", "pat")
    bus.pause("A")
    bus.nodes["A"].chat(pat, "echoed, never written")
    last = bus.nodes["A"].received(pat)[-1]["id"]
    bus.kill("A")
    bus.start("N", history=True)       # it cannot tell how long ago A died
    _, got = resume_on(bus, "N", "pat", token, last)
    assert got[0]["type"] == "resumed", got


def test_a_session_back_from_another_node_keeps_its_own_grace_not_its_last_stay_here():
    """Found by the chaos run: a session that dropped here, resumed on
    another node and then came back here had the grace of its first drop
    still running: when it dropped again, that old grace ended it (its
    user left everywhere) a moment later."""
    bus = Bus("A", "B")
    pat, token, got = session_on(bus, "A", "pat")
    last = got[0]["id"]
    bob = user_on(bus, "B", "bob")
    bus.nodes["A"].lose(pat)            # the grace starts here...
    bus.pump()
    moved, _ = resume_on(bus, "B", "pat", token, last)
    bus.tick(40)
    bus.nodes["B"].lose(moved)
    bus.pump()
    home, got = resume_on(bus, "A", "pat", token, last)  # back here: a new stay
    assert got[0]["type"] == "resumed", got
    bus.tick(19)
    bus.nodes["A"].lose(home)           # ...and again here, 59 s later (the grace: 60 s)
    bus.pump()
    bus.tick(2)                          # past the first drop's grace, not this one's
    assert leave("pat") not in bus.nodes["B"].received(bob)
    _, got = resume_on(bus, "A", "pat", token, last)
    assert got[0]["type"] == "resumed", got


def test_a_resume_another_node_cannot_replay_goes_back_to_its_live_node_not_expired():
    """Found by the chaos run: a node that could not tell what a client of
    a live node had missed (its reader started after the client's last
    packet) said the session had expired, and handed it back; the client
    then asked for a fresh join, refused while the session held its nick
    (for the whole grace).  It is told to try again instead; its own node
    can resume it."""
    bus = Bus("A", "B")
    pat, token, got = session_on(bus, "A", "pat")
    last = got[0]["id"]
    bus.nodes["A"].lose(pat)
    bus.pump()
    bus.start("N")                      # reads the stream from now on
    outlet, got = resume_on(bus, "N", "pat", token, last)
    assert [p.get("code") for p in got] == ["throttled"], got
    assert bus.nodes["N"].closed(outlet)
    _, got = resume_on(bus, "A", "pat", token, last)
    assert got[0]["type"] == "resumed", got


def test_a_resume_while_another_connection_resumes_the_same_session_is_told_to_try_again():
    """Found by the chaos run (seed 7, 600 s): a node started while Redis
    was away held every hello until it could read the stream; among them
    two resumes of one session, the first from a connection its client had
    already given up on.  Once Redis was back the first went to Redis to
    take the session over, and the second, finding the nick being claimed,
    was told its session had expired: the client asked for a fresh join,
    refused while the session held its nick, and lost every line until
    the grace ran out.  The session is not known to have expired: the
    client is told to try again, and its next resume takes it up."""
    bus = Bus("A", "B")
    bob = user_on(bus, "A", "bob")
    pat, token, got = session_on(bus, "A", "pat")
    last = got[0]["id"]
    bus.nodes["A"].lose(pat)
    bus.pump()
    node = bus.nodes["B"]
    resume = {"type": "hello", "nick": "pat", "session": True, "resume": token, "after": last}
    given_up = node.connect()
    node.send(given_up, resume)         # its takeover not answered yet
    second = node.connect()
    node.send(second, resume)
    got = node.received(second)
    assert [p.get("code") for p in got] == ["throttled"], got
    assert node.closed(second)
    node.lose(given_up)
    bus.pump()
    said(bus, "A", bob, "while pat was away")
    outlet, got = resume_on(bus, "B", "pat", token, last)
    assert got[0] == {"type": "resumed", "missed": 1}, got
    assert bare(got[1:]) == [chat_from("bob", "while pat was away")]
    assert leave("pat") not in bus.nodes["A"].received(bob)
