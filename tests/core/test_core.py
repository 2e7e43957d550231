"""The chat core's rules, in memory: feed events, assert the packets.

Every rule of SPEC.md that the core owns is here; the socket tests check
the wiring.  No sockets, no subprocesses, no sleeping.
"""

import json
import logging
import unicodedata
from dataclasses import replace

import msgspec
import pytest

from termchat.cluster import events as cluster
from termchat.core import core as chat_core
from termchat.core import tables
from termchat.wire import protocol as proto
from termchat.core.core import Access
from tests.core_harness import UNLIMITED, FakeLink, Harness
from tests.support import chat_from, join, leave


@pytest.fixture
def chat():
    return Harness()


def error_of(messages):
    errors = [m for m in messages if m["type"] == "error"]
    assert len(errors) == 1, messages
    return errors[0]["message"]


def enter(nick, room):
    return {"type": "enter", "nick": nick, "room": room}


def exit_(nick, room):
    return {"type": "exit", "nick": nick, "room": room}


# ---- hello and nicks ----

def test_hello_joins_and_everyone_including_the_newcomer_sees_it(chat):
    pat = chat.connect("pat")
    assert chat.received(pat) == [join("pat")]
    chris = chat.connect("chris")
    assert chat.received(chris) == [join("chris")]
    assert chat.received(pat) == [join("chris")]


def test_nothing_reaches_a_connection_before_its_hello(chat):
    (pat,) = chat.joined("pat")
    lurker = chat.connect()
    chat.chat(pat, "hi")
    assert chat.received(lurker) == []


@pytest.mark.parametrize("nick", ["pat", "PAT", "Pat"])
def test_a_taken_nick_ignoring_case_is_refused_and_closed(chat, nick):
    chat.joined("pat")
    twin = chat.connect(nick)
    assert "already taken" in error_of(chat.received(twin))
    assert chat.closed(twin)


@pytest.mark.parametrize("nick", ["", "two words", "/slash", "x" * 33, "esc\x1b[2J", 42])
def test_a_bad_nick_is_refused_and_closed(chat, nick):
    bad = chat.connect()
    chat.send(bad, {"type": "hello", "nick": nick})
    assert error_of(chat.received(bad))
    assert chat.closed(bad)


def test_a_freed_nick_can_be_taken_again(chat):
    pat, watcher = chat.joined("pat", "watcher")
    chat.lose(pat)
    assert chat.received(watcher) == [leave("pat")]
    again = chat.connect("pat")
    assert chat.received(again) == [join("pat")]


def test_any_packet_before_hello_is_refused_and_closed(chat):
    rude = chat.connect()
    chat.send(rude, {"type": "chat", "message": "who needs hello"},
              {"type": "hello", "nick": "rude"})
    assert "first packet must be a hello" in error_of(chat.received(rude))
    assert chat.closed(rude)
    assert "rude" not in chat.core.parts.presence.users


def test_a_second_hello_gets_an_error_and_the_connection_stays(chat):
    (pat,) = chat.joined("pat")
    chat.send(pat, {"type": "hello", "nick": "again"})
    assert "already said hello" in error_of(chat.received(pat))
    assert not chat.closed(pat)


# ---- bad input ----

KEEPS_OPEN = [b'[1, 2, 3]', b'"text"', b'{"no_type": 1}', b'{"type": 42}',
              b'{"type": "shout"}', b'{"type": "chat"}', b'{"type": "chat", "message": 7}',
              b'{"type": "dm", "to": "x"}', b'{"type": "enter", "room": "two words"}',
              b'{"type": "chat", "message": "\\udc00"}']
CLOSES = [b"\xff\xfe", b"{not json", b"", b"[" * 20000]


@pytest.mark.parametrize("payload", KEEPS_OPEN)
def test_an_invalid_message_after_hello_gets_an_error_and_nothing_else(chat, payload):
    pat, chris = chat.joined("pat", "chris")
    chat.send(chris, payload)
    assert error_of(chat.received(chris))
    assert not chat.closed(chris)
    assert chat.received(pat) == []


@pytest.mark.parametrize("payload", CLOSES)
def test_garbage_gets_an_error_a_close_and_a_leave(chat, payload):
    pat, chris = chat.joined("pat", "chris")
    chat.send(chris, payload)
    assert error_of(chat.received(chris))
    assert chat.closed(chris)
    assert chat.received(pat) == [leave("chris")]


@pytest.mark.parametrize("payload", KEEPS_OPEN + CLOSES)
def test_any_bad_first_packet_is_refused_and_closed(chat, payload):
    rude = chat.connect()
    chat.send(rude, payload)
    assert error_of(chat.received(rude))
    assert chat.closed(rude)


def test_a_rebroadcast_too_large_is_refused_and_nobody_sees_it(chat):
    pat, chris = chat.joined("pat", "chris")
    overhead = len(proto.encode(proto.Chat(""))) - 2
    chat.chat(chris, "x" * (proto.MAX_PAYLOAD - overhead))
    assert "too long" in error_of(chat.received(chris))
    assert chat.received(pat) == []


def test_the_largest_rebroadcast_that_fits_is_delivered(chat):
    (pat,) = chat.joined("pat")  # (room left for a session copy's id and time)
    text = "y" * (proto.MAX_PAYLOAD - (len(proto.encode(proto.ChatFrom("pat", ""))) - 2)
                  - proto.SESSION_EXTRA)
    chat.chat(pat, text)
    assert chat.received(pat) == [chat_from("pat", text)]


# ---- chat, emote, dm ----

def test_chat_goes_to_everyone_in_the_room_including_the_sender(chat):
    pat, chris = chat.joined("pat", "chris")
    chat.chat(pat, "hello?")
    chat.chat(chris, "hi!")
    for outlet in (pat, chris):
        assert chat.received(outlet) == [chat_from("pat", "hello?"), chat_from("chris", "hi!")]


def test_chat_and_emote_stay_in_the_room(chat):
    pat, chris, lee = chat.joined("pat", "chris", "lee")
    chat.send(lee, {"type": "enter", "room": "games"})
    chat.received(pat), chat.received(chris), chat.received(lee)
    chat.send(pat, {"type": "emote", "message": "waves"})
    chat.chat(lee, "games only")
    emote = {"type": "emote", "nick": "pat", "message": "waves"}
    assert chat.received(chris) == [emote]
    assert chat.received(lee) == [chat_from("lee", "games only")]


@pytest.mark.parametrize("packet", [{"type": "emote", "message": ""},
                                    {"type": "emote", "message": "   "},
                                    {"type": "dm", "to": "chris", "message": ""}])
def test_empty_emotes_and_dms_are_errors(chat, packet):
    pat, chris = chat.joined("pat", "chris")
    chat.send(pat, packet)
    assert error_of(chat.received(pat))
    assert chat.received(chris) == []


def dm(sender, to, text):
    return {"type": "dm", "from": sender, "to": to, "message": text}


def test_a_dm_reaches_the_recipient_and_the_sender_only(chat):
    pat, chris, lee = chat.joined("pat", "Chris", "lee")
    chat.send(pat, {"type": "dm", "to": "CHRIS", "message": "psst"})
    assert chat.received(chris) == [dm("pat", "Chris", "psst")]
    assert chat.received(pat) == [dm("pat", "Chris", "psst")]
    assert chat.received(lee) == []


def test_a_dm_to_oneself_arrives_once(chat):
    (pat,) = chat.joined("pat")
    chat.send(pat, {"type": "dm", "to": "pat", "message": "note"})
    assert chat.received(pat) == [dm("pat", "pat", "note")]


def test_a_dm_to_nobody_is_an_error(chat):
    (pat,) = chat.joined("pat")
    chat.send(pat, {"type": "dm", "to": "nobody", "message": "hello?"})
    assert "no such user: nobody" in error_of(chat.received(pat))


def test_a_dm_comes_after_the_broadcasts_queued_before_it(chat):
    pat, chris = chat.joined("pat", "chris")
    chat.chat(pat, "first")
    chat.send(pat, {"type": "dm", "to": "chris", "message": "second"})
    assert chat.received(chris) == [chat_from("pat", "first"), dm("pat", "chris", "second")]


# ---- who, rooms, enter ----

def test_who_lists_the_askers_room_sorted_ignoring_case(chat):
    pat, chris, amy, lee = chat.joined("pat", "chris", "Amy", "lee")
    chat.send(lee, {"type": "enter", "room": "games"})
    chat.send(pat, {"type": "who"})
    assert chat.received(pat)[-1] == {"type": "who", "room": "lobby",
                                      "nicks": ["Amy", "chris", "pat"]}


def test_rooms_lists_the_lobby_first_then_the_rest_by_name(chat):
    a, b, c, d = chat.joined("a", "b", "c", "d")
    chat.send(b, {"type": "enter", "room": "zoo"})
    chat.send(c, {"type": "enter", "room": "Games"})
    chat.send(d, {"type": "enter", "room": "games"})
    chat.send(a, {"type": "rooms"})
    assert chat.received(a)[-1] == {"type": "rooms", "rooms": [
        {"name": "lobby", "count": 1}, {"name": "Games", "count": 2},
        {"name": "zoo", "count": 1}]}


def test_a_room_exists_while_someone_is_in_it(chat):
    a, b = chat.joined("a", "b")
    chat.send(b, {"type": "enter", "room": "games"})
    chat.send(b, {"type": "enter", "room": "lobby"})
    chat.send(a, {"type": "rooms"})
    assert chat.received(a)[-1] == {"type": "rooms", "rooms": [{"name": "lobby", "count": 2}]}


def test_enter_tells_the_old_room_and_the_new_room(chat):
    pat, chris, lee = chat.joined("pat", "chris", "lee")
    chat.send(lee, {"type": "enter", "room": "games"})
    for outlet in (pat, chris, lee):
        chat.received(outlet)
    chat.send(pat, {"type": "enter", "room": "Games"})
    assert chat.received(chris) == [exit_("pat", "lobby")]
    assert chat.received(lee) == [enter("pat", "games")]
    assert chat.received(pat) == [enter("pat", "games")]


def test_enter_to_the_room_one_is_in_is_an_error(chat):
    (pat,) = chat.joined("pat")
    chat.send(pat, {"type": "enter", "room": "LOBBY"})
    assert "already in room lobby" in error_of(chat.received(pat))


def test_a_mover_sees_the_old_rooms_traffic_up_to_the_move_then_the_new_rooms(chat):
    pat, chris, lee = chat.joined("pat", "chris", "lee")
    chat.send(lee, {"type": "enter", "room": "games"})
    for outlet in (pat, chris, lee):
        chat.received(outlet)
    chat.chat(chris, "lobby before")           # same turn as the move
    chat.chat(lee, "games before")
    chat.send(pat, {"type": "enter", "room": "games"})
    chat.chat(chris, "lobby after")
    chat.chat(lee, "games after")
    assert chat.received(pat) == [chat_from("chris", "lobby before"), enter("pat", "games"),
                                  chat_from("lee", "games after")]
    assert chat.received(chris) == [chat_from("chris", "lobby before"), exit_("pat", "lobby"),
                                    chat_from("chris", "lobby after")]


# ---- leaving ----

def test_leave_goes_to_everyone_in_every_room(chat):
    pat, chris = chat.joined("pat", "chris")
    chat.send(chris, {"type": "enter", "room": "games"})
    chat.received(pat)
    chat.lose(chris, "connection reset")
    assert chat.received(pat) == [leave("chris")]


def test_no_leave_for_a_connection_that_never_said_hello(chat):
    (pat,) = chat.joined("pat")
    lurker = chat.connect()
    chat.lose(lurker)
    assert chat.received(pat) == []


def test_a_reader_whose_queue_passes_the_bound_is_dropped_with_a_leave():
    chat = Harness(replace(UNLIMITED, max_queue=10_000))
    pat, stuck = chat.joined("pat", "stuck")
    seen = []
    for i in range(20):
        chat.chat(pat, f"{i} " + "z" * 900)
        seen += chat.received(pat)  # pat reads; stuck does not
    assert chat.dropped == [stuck]
    assert leave("stuck") in seen
    assert [m["message"].split()[0] for m in seen if m["type"] == "chat"] == \
        [str(i) for i in range(20)]


# ---- the fence and the tables ----

def test_a_handler_that_raises_costs_that_client_only(chat, monkeypatch, caplog):
    pat, bad = chat.joined("pat", "bad")

    def boom(parts, conn, message, now):
        raise RuntimeError("injected")

    monkeypatch.setitem(tables.PACKET_HANDLERS, proto.WhoRequest, boom)
    chat.send(bad, {"type": "who"}, {"type": "chat", "message": "never"})
    assert chat.closed(bad)
    assert chat.received(pat) == [leave("bad")]
    chat.chat(pat, "still here")
    assert chat.received(pat) == [chat_from("pat", "still here")]
    assert caplog.text.count("Traceback") == 1 and "injected" in caplog.text


def test_every_client_message_has_a_handler():
    assert set(proto.CLIENT_MESSAGES.values()) == set(tables.PACKET_HANDLERS)
    assert set(cluster.EVENT_TYPES) == set(tables.CLUSTER_HANDLERS)


def test_a_missing_handler_fails_at_import(monkeypatch):
    monkeypatch.delitem(tables.PACKET_HANDLERS, proto.RoomsRequest)
    with pytest.raises(ImportError, match="RoomsRequest"):
        tables.check_tables(proto.CLIENT_MESSAGES.values(), cluster.EVENT_TYPES)


def test_a_connection_cannot_go_back_to_an_earlier_state(chat):
    (pat,) = chat.joined("pat")
    client = chat.core.connection(pat)
    with pytest.raises(RuntimeError):
        client.become(chat_core.State.GREETING)


# ---- the cluster view ----

@pytest.fixture
def node():
    return Harness(link=FakeLink())


def grant(node, outlet, nick, granted=True):
    client = node.core.connection(outlet)
    node.core.cluster_event(cluster.Claimed(client, nick, granted), node.now)


def test_packets_sent_while_the_nick_is_claimed_are_held_then_handled(node):
    pat = node.connect("pat")
    node.send(pat, {"type": "chat", "message": "early"})
    assert node.received(pat) == []
    grant(node, pat, "pat")
    assert node.received(pat) == [join("pat"), chat_from("pat", "early")]


def test_a_refused_claim_is_an_error_and_a_close(node):
    pat = node.connect("pat")
    grant(node, pat, "pat", granted=False)
    assert "already taken" in error_of(node.received(pat))
    assert node.closed(pat)


def test_what_is_held_during_a_claim_counts_against_the_bound():
    node = Harness(replace(UNLIMITED, max_queue=5_000), FakeLink())
    greedy = node.connect("greedy")
    node.send(greedy, *[{"type": "chat", "message": "x" * 1000}] * 10)
    assert node.closed(greedy)
    assert node.core.connection(greedy).held_bytes == 0


def test_a_held_packet_that_crashes_its_handler_costs_that_client_only(node, monkeypatch):
    pat = node.connect("pat")
    grant(node, pat, "pat")
    node.received(pat)

    def boom(parts, conn, message, now):
        raise RuntimeError("injected")

    monkeypatch.setitem(tables.PACKET_HANDLERS, proto.RoomsRequest, boom)
    bad = node.connect("bad")
    node.send(bad, {"type": "rooms"})
    grant(node, bad, "bad")                      # the replay raises inside the fence
    assert node.closed(bad)
    node.chat(pat, "still serving")
    assert node.received(pat)[-1] == chat_from("pat", "still serving")


def test_an_oversized_error_in_a_held_packet_does_not_escape(node):
    pat = node.connect("pat")
    grant(node, pat, "pat")
    bad = node.connect("bad")
    node.send(bad, {"type": "enter", "room": "\x85" * 30000})
    grant(node, bad, "bad")
    node.chat(pat, "still serving")
    assert node.received(pat)[-1] == chat_from("pat", "still serving")


def test_remote_users_join_speak_move_and_leave(node):
    pat = node.connect("pat")
    grant(node, pat, "pat")
    node.received(pat)
    for event in (cluster.RemoteJoin("bob", "lobby", node="b1"),
                  cluster.RemoteSpeech("chat", "bob", "lobby", "hi", node="b1"),
                  cluster.RemoteDirect("bob", "PAT", "psst", node="b1"),
                  cluster.RemoteMove("bob", "lobby", "games", node="b1"),
                  cluster.RemoteSpeech("emote", "bob", "games", "unseen", node="b1"),
                  cluster.NodeDead("b1")):
        node.core.cluster_event(event, node.now)
    assert node.received(pat) == [join("bob"), chat_from("bob", "hi"), dm("bob", "pat", "psst"),
                                  exit_("bob", "lobby"), leave("bob")]


def test_a_cluster_event_whose_handler_raises_is_dropped_alone(node, monkeypatch, caplog):
    pat = node.connect("pat")
    grant(node, pat, "pat")
    node.received(pat)

    def boom(parts, event, now):
        raise KeyError("injected")

    monkeypatch.setitem(tables.CLUSTER_HANDLERS, cluster.RemoteMove, boom)
    node.core.cluster_event(cluster.RemoteMove("x", "a", "b", node="b1"), node.now)
    node.core.cluster_event(cluster.RemoteJoin("bob", "lobby", node="b1"), node.now)
    assert node.received(pat) == [join("bob")]
    assert "injected" in caplog.text


@pytest.mark.parametrize("data", [b"{", b"[]", b'{"node": "n"}', b'{"node": "n", "kind": "zap"}',
                                  b'{"node": "n", "kind": "join", "nick": 5, "room": "lobby"}',
                                  b'{"node": "n", "kind": "say", "said": "shout", "nick": "a",'
                                  b' "room": "lobby", "message": "x"}'])
def test_malformed_node_events_are_refused_at_the_door(data):
    with pytest.raises(proto.InvalidMessage):
        cluster.parse_node_event(data)


def test_node_events_round_trip_through_the_wire():
    for event in (cluster.RemoteJoin("bob", "lobby"), cluster.RemoteLeave("bob"),
                  cluster.RemoteMove("bob", "lobby", "games"),
                  cluster.RemoteSpeech("emote", "bob", "games", "waves"),
                  cluster.RemoteDirect("bob", "pat", "psst"),
                  cluster.RemotePresence({"bob": "games"})):
        wire = event.to_wire("n1")
        assert json.loads(wire)["node"] == "n1"
        parsed = cluster.parse_node_event(wire)
        assert parsed == msgspec.structs.replace(event, node="n1")


# ---- a public server: limits on what one client or address may cost ----

def test_a_connection_that_never_says_hello_is_closed_at_the_timeout():
    chat = Harness(replace(UNLIMITED, hello_timeout=10))
    (pat,) = chat.joined("pat")
    silent = chat.connect()
    chat.tick(9.9)
    assert not chat.closed(silent)
    chat.tick(0.2)
    assert "no hello within 10 seconds" in error_of(chat.received(silent))
    assert chat.closed(silent)
    chat.tick(60)
    assert not chat.closed(pat) and chat.received(pat) == []


def test_the_connection_past_the_per_address_limit_is_refused():
    chat = Harness(replace(UNLIMITED, max_per_ip=2))
    first, second = chat.joined("first", "second")
    third = chat.connect("third")
    assert error_of(chat.received(third)) == "too many connections from your address"
    assert chat.closed(third)
    other = chat.connect("other", host="10.0.0.7")
    assert chat.received(other) == [join("other")]
    chat.chat(first, "still here")
    assert chat.received(second)[-1] == chat_from("first", "still here")
    chat.lose(second)
    again = chat.connect("again")
    assert chat.received(again) == [join("again")]


@pytest.mark.parametrize("hosts, refused", [
    (["2001:db8::1", "2001:db8::ffff:2"], True),        # one /64
    (["2001:db8::1", "2001:db8:0:1::1"], False),        # two /64s
    (["::ffff:10.0.0.1", "10.0.0.1"], True),            # one IPv4 address
])
def test_ipv6_addresses_count_by_their_64(hosts, refused):
    chat = Harness(replace(UNLIMITED, max_per_ip=1))
    chat.connect("a", host=hosts[0])
    b = chat.connect("b", host=hosts[1])
    assert chat.closed(b) == refused


def test_a_flooder_is_slowed_not_dropped_and_loses_nothing():
    chat = Harness(replace(UNLIMITED, rate=5, burst=20))
    flooder, reader, bystander = chat.joined("flooder", "reader", "bystander")
    chat.send(flooder, *[{"type": "chat", "message": f"flood {i}"} for i in range(100)])
    assert flooder.paused                     # the transport stops reading it
    seen = [m["message"] for m in chat.received(reader)]
    assert len(seen) == 20
    chat.chat(bystander, "meanwhile")
    assert chat.received(reader) == [chat_from("bystander", "meanwhile")]
    for _ in range(16):
        chat.tick(1.0)
        seen += [m["message"] for m in chat.received(reader)]
    assert seen == [f"flood {i}" for i in range(100)]
    assert not flooder.paused and not chat.closed(flooder)
    assert chat.dropped == []


def test_the_rate_refills_at_the_configured_pace():
    chat = Harness(replace(UNLIMITED, rate=5, burst=20))
    (flooder,) = chat.joined("flooder")
    chat.send(flooder, *[{"type": "who"}] * 60)
    assert len(chat.received(flooder)) == 20
    chat.tick(2.0)
    assert len(chat.received(flooder)) == 10


def test_hello_is_free_and_a_rate_of_zero_means_no_limit():
    chat = Harness(replace(UNLIMITED, rate=1, burst=1))
    pat = chat.connect("pat")
    chat.send(pat, {"type": "who"})
    assert [m["type"] for m in chat.received(pat)] == ["join", "who"]
    free = Harness()
    (pat,) = free.joined("pat")
    free.send(pat, *[{"type": "who"}] * 500)
    assert len(free.received(pat)) == 500


@pytest.mark.parametrize("packet", [
    {"type": "enter", "room": "r" * 9000},
    {"type": "enter", "room": "\x85" * 9000},
    {"type": "x" * 60000},
    {"type": "dm", "to": "y" * 60000, "message": "hi"},
    {"type": "hello", "nick": "\x01" * 9000},
])
def test_no_error_is_larger_because_the_input_was(chat, packet):
    (pat,) = chat.joined("pat")
    chat.send(pat, packet)
    assert len(error_of(chat.received(pat))) < 64 * 4 + 100


def test_a_flood_of_bad_packets_logs_a_bounded_number_of_lines(chat, caplog):
    caplog.set_level(logging.INFO)
    (pat,) = chat.joined("pat")
    chat.send(pat, *[{"type": "enter", "room": "x" * 9000}] * 1000)
    lines = [r for r in caplog.records if "pat" in r.getMessage()]
    assert len(lines) <= 10
    assert all(len(r.getMessage()) < 400 and not r.exc_info for r in lines)


def test_who_with_thousands_of_wide_names_comes_in_packets_that_fit():
    chat = Harness()
    names = [f"{i:04d}" + "\U0001F600" * 28 for i in range(600)]  # 32 characters, 116 bytes
    outlets = chat.crowd(*names)
    chat.send(outlets[0], {"type": "who"})
    payloads = chat.packets(outlets[0])
    assert len(payloads) > 1 and all(len(p) <= proto.MAX_PAYLOAD for p in payloads)
    listed = [nick for p in payloads for nick in json.loads(p)["nicks"]]
    assert sorted(listed) == sorted(names)


def test_rooms_with_thousands_of_wide_names_come_in_packets_that_fit():
    chat = Harness()
    names = [f"{i:04d}" + "\U0001F600" * 28 for i in range(1200)]
    outlets = chat.crowd(*[f"u{i}" for i in range(1200)])
    for outlet, room in zip(outlets, names):
        chat.send(outlet, {"type": "enter", "room": room})
    chat.discard_output(outlets)
    chat.send(outlets[0], {"type": "rooms"})
    payloads = chat.packets(outlets[0])
    assert len(payloads) > 1 and all(len(p) <= proto.MAX_PAYLOAD for p in payloads)
    listed = [r["name"] for p in payloads for r in json.loads(p)["rooms"]]
    assert sorted(listed) == sorted(names + ["lobby"])


LOOK_ALIKES = [
    ("Pat", "already taken"),
    ("p\u0430t", "mixes Cyrillic and Latin"),
    ("\u03c1at", "mixes Greek and Latin"),
    ("\uff50\uff41\uff54", "already taken: it looks like pat"),
    ("pat\ufe01", "invisible character (U+FE01)"),
    ("pat\u034f", "invisible character (U+034F)"),
    ("pat\u3164", "invisible character (U+3164)"),
    ("pat\u2800", "invisible character (U+2800)"),
    ("pat\u200b", "invisible character (U+200B)"),
    ("\u0301pat", "start with a combining mark"),
    ("pat\ue000", "private-use"),
    ("pat\U000e0001", "invisible character"),
]


@pytest.mark.parametrize("nick, rule", LOOK_ALIKES)
def test_every_look_alike_of_a_present_nick_is_refused_with_its_rule(chat, nick, rule):
    chat.joined("pat")
    impostor = chat.connect(nick)
    message = error_of(chat.received(impostor))
    assert rule in message
    assert chat.closed(impostor)


def test_a_name_wholly_in_another_script_that_looks_the_same_is_taken(chat):
    chat.joined("pop")
    impostor = chat.connect("\u0440\u043e\u0440")  # Cyrillic er, o, er
    assert "taken: it looks like pop" in error_of(chat.received(impostor))


def test_a_name_spelled_nfc_and_nfd_is_one_name(chat):
    (first,) = chat.joined(unicodedata.normalize("NFC", "rené"))
    second = chat.connect(unicodedata.normalize("NFD", "rené"))
    assert "taken" in error_of(chat.received(second))


def test_a_nick_is_kept_and_announced_in_nfc(chat):
    rene = chat.connect(unicodedata.normalize("NFD", "René"))
    assert chat.received(rene) == [join(unicodedata.normalize("NFC", "René"))]


@pytest.mark.parametrize("nick", ["日本語テキスト", "中文名字", "한국어", "Latin漢字かな", "Ελληνικά",
                                  "Русский", "naïve", "o'brien", "c++", "🙂🙃", "x" * 32])
def test_names_in_one_script_or_an_allowed_mix_are_accepted(chat, nick):
    outlet = chat.connect(nick)
    assert chat.received(outlet) == [join(nick)]


def test_a_dm_to_a_look_alike_reaches_the_one_user_with_that_name(chat):
    pat, chris = chat.joined("pat", "chris")
    chat.send(chris, {"type": "dm", "to": "p\u0430t", "message": "which pat?"})
    assert chat.received(pat) == [dm("chris", "pat", "which pat?")]


def test_room_names_follow_the_same_rules(chat):
    pat, chris = chat.joined("pat", "chris")
    chat.send(pat, {"type": "enter", "room": "games"})
    chat.send(chris, {"type": "enter", "room": "g\u0430mes"})
    assert "mixes Cyrillic and Latin" in error_of(chat.received(chris))
    chat.send(chris, {"type": "enter", "room": "\uff47\uff41\uff4d\uff45\uff53"})
    assert chat.received(chris)[-1] == enter("chris", "games")


# ---- away ----

def test_away_shows_in_who_and_tells_a_dms_sender(chat):
    pat, chris = chat.joined("pat", "chris")
    chat.send(chris, {"type": "away", "message": "lunch"})
    assert chat.received(chris) == [{"type": "info", "message": "you are away: lunch"}]
    chat.send(pat, {"type": "who"})
    assert chat.received(pat) == [{"type": "who", "room": "lobby", "nicks": ["chris", "pat"],
                                   "away": {"chris": "lunch"}}]
    chat.send(pat, {"type": "dm", "to": "chris", "message": "there?"})
    assert chat.received(pat) == [dm("pat", "chris", "there?"),
                                  {"type": "info", "message": "chris is away: lunch"}]
    chat.send(chris, {"type": "away", "message": ""})
    assert chat.received(chris)[-1] == {"type": "info", "message": "you are back"}
    chat.send(pat, {"type": "who"})
    assert "away" not in chat.received(pat)[-1]


def test_an_overlong_away_message_is_refused(chat):
    (pat,) = chat.joined("pat")
    chat.send(pat, {"type": "away", "message": "z" * 301})
    assert "too long" in error_of(chat.received(pat))


def test_away_travels_to_other_nodes_and_comes_back_from_them(node):
    pat = node.connect("pat")
    grant(node, pat, "pat")
    node.received(pat)
    node.send(pat, {"type": "away", "message": "brb"})
    assert ("publish", cluster.RemoteAway("pat", "brb")) in node.core.link.calls
    for event in (cluster.RemoteJoin("bob", "lobby", node="b1"),
                  cluster.RemoteAway("bob", "out", node="b1"),
                  cluster.RemoteAway("pat", "forged", node="b1")):
        node.core.cluster_event(event, node.now)
    node.send(pat, {"type": "who"})
    assert node.received(pat)[-1]["away"] == {"bob": "out", "pat": "brb"}


# ---- nick changes ----

def nick(old, new):
    return {"type": "nick", "old": old, "nick": new}


def test_a_rename_is_announced_to_everyone_and_frees_the_old_nick(chat):
    pat, chris = chat.joined("pat", "chris")
    chat.send(chris, {"type": "enter", "room": "games"})
    chat.received(pat), chat.received(chris)
    chat.send(pat, {"type": "nick", "nick": "pam"})
    assert chat.received(pat) == [nick("pat", "pam")]
    assert chat.received(chris) == [nick("pat", "pam")]
    chat.chat(pat, "as pam")
    assert chat.received(pat) == [chat_from("pam", "as pam")]
    newcomer = chat.connect("pat")
    assert chat.received(newcomer) == [join("pat")]


@pytest.mark.parametrize("new, rule", [("chris", "already taken"), ("CHRIS", "already taken"),
                                       ("\u0441hris", "mixes Cyrillic and Latin"),
                                       ("two words", "spaces"), ("pat", "already pat")])
def test_a_rename_to_a_taken_or_bad_nick_is_an_error_and_nothing_else(chat, new, rule):
    pat, chris = chat.joined("pat", "chris")
    chat.send(pat, {"type": "nick", "nick": new})
    assert rule in error_of(chat.received(pat))
    assert not chat.closed(pat) and chat.received(chris) == []


def test_changing_only_the_case_of_ones_own_nick_is_allowed(chat):
    (pat,) = chat.joined("pat")
    chat.send(pat, {"type": "nick", "nick": "Pat"})
    assert chat.received(pat) == [nick("pat", "Pat")]


def test_in_a_cluster_the_rename_waits_for_the_claim(node):
    pat = node.connect("pat")
    grant(node, pat, "pat")
    node.received(pat)
    node.send(pat, {"type": "nick", "nick": "pam"})
    client = node.core.connection(pat)
    assert ("rename", client, "pat", "pam") in node.core.link.calls
    assert node.received(pat) == []
    node.core.cluster_event(cluster.Renamed(client, "pat", "pam", False), node.now)
    assert "taken" in error_of(node.received(pat))
    node.core.cluster_event(cluster.Renamed(client, "pat", "pam", True), node.now)
    assert node.received(pat) == [nick("pat", "pam")]
    for event in (cluster.RemoteJoin("bob", "lobby", node="b1"),
                  cluster.RemoteRename("bob", "rob", node="b1"),
                  cluster.RemoteRename("pam", "stolen", node="b1")):
        node.core.cluster_event(event, node.now)
    assert node.received(pat) == [join("bob"), nick("bob", "rob")]


# ---- passwords, message of the day, operators ----

def guarded(**access):
    return Harness(access=Access(**access))


def test_a_server_password_is_needed_and_checked():
    chat = guarded(server_password="sesame")
    missing = chat.connect("pat")
    assert "needs a server password" in error_of(chat.received(missing))
    assert chat.closed(missing)
    wrong = chat.connect()
    chat.send(wrong, {"type": "hello", "nick": "pat", "password": "open"})
    assert error_of(chat.received(wrong)) == "wrong server password"
    right = chat.connect()
    chat.send(right, {"type": "hello", "nick": "pat", "password": "sesame"})
    assert chat.received(right) == [join("pat")]


def test_wrong_passwords_from_one_address_are_limited():
    chat = guarded(server_password="sesame")
    for _ in range(5):
        guess = chat.connect()
        chat.send(guess, {"type": "hello", "nick": "x", "password": "guess"})
    late = chat.connect()
    chat.send(late, {"type": "hello", "nick": "x", "password": "sesame"})
    assert "too many wrong passwords" in error_of(chat.received(late))
    chat.tick(61)
    again = chat.connect()
    chat.send(again, {"type": "hello", "nick": "x", "password": "sesame"})
    assert chat.received(again) == [join("x")]


def test_the_message_of_the_day_follows_the_join():
    chat = guarded(motd=("Welcome!", "Be kind."))
    pat = chat.connect("pat")
    assert chat.received(pat) == [join("pat"), {"type": "info", "message": "Welcome!"},
                                  {"type": "info", "message": "Be kind."}]


def test_operators_kick_and_everyone_sees_it():
    chat = guarded(op_password="opsecret")
    op, chris, lee = chat.joined("op", "chris", "lee")
    chat.send(chris, {"type": "kick", "nick": "lee", "reason": "no"})
    assert "only operators" in error_of(chat.received(chris))
    chat.send(op, {"type": "op", "password": "wrong"})
    assert error_of(chat.received(op)) == "wrong operator password"
    chat.send(op, {"type": "op", "password": "opsecret"})
    assert chat.received(op) == [{"type": "info", "message": "you are an operator now"}]
    chat.send(op, {"type": "kick", "nick": "LEE", "reason": "spam"})
    kicked = {"type": "kick", "nick": "lee", "by": "op", "reason": "spam"}
    assert chat.received(chris) == [kicked, leave("lee")]
    assert chat.received(lee) == [kicked, {"type": "error", "code": "kicked",
                                           "message": "you were kicked by op (spam)"}]
    assert chat.closed(lee)


def test_a_ban_holds_the_address_out_for_its_minutes_and_is_listed():
    chat = guarded(op_password="opsecret")
    op = chat.connect("op", host="10.0.0.1")
    lee = chat.connect("lee", host="10.0.0.2")
    chat.send(op, {"type": "op", "password": "opsecret"})
    chat.received(op), chat.received(lee)
    chat.send(op, {"type": "ban", "nick": "lee", "minutes": 10, "reason": "flood"})
    assert chat.received(lee)[0]["reason"] == "banned for 10 minutes: flood"
    back = chat.connect("lee2", host="10.0.0.2")
    assert "banned from this server for 10 more minutes (flood)" in error_of(
        chat.received(back))
    chat.send(op, {"type": "ban"})
    assert chat.received(op)[-1] == {"type": "info",
                                     "message": "ban: 10.0.0.2 for 10 more minutes (flood)"}
    chat.tick(601)
    later = chat.connect("lee", host="10.0.0.2")
    assert chat.received(later) == [join("lee")]


def test_a_kicked_session_gets_no_grace():
    chat = guarded(op_password="opsecret")
    op = chat.connect("op")
    lee = chat.connect()
    chat.send(lee, {"type": "hello", "nick": "lee", "session": True})
    chat.send(op, {"type": "op", "password": "opsecret"})
    chat.received(op)
    chat.send(op, {"type": "kick", "nick": "lee"})
    assert chat.received(op)[-1] == leave("lee")


def test_operators_kick_and_ban_users_of_other_nodes():
    node = Harness(link=FakeLink(), access=Access(op_password="opsecret"))
    op = node.connect("op")
    grant(node, op, "op")
    node.core.cluster_event(cluster.RemoteJoin("bob", "lobby", node="b1"), node.now)
    node.send(op, {"type": "op", "password": "opsecret"})
    node.received(op)
    node.send(op, {"type": "ban", "nick": "bob", "minutes": 5, "reason": "flood"})
    assert ("publish", cluster.RemoteKick("bob", "op", "flood", 5)) in node.core.link.calls
    assert node.received(op) == [{"type": "kick", "nick": "bob", "by": "op",
                                  "reason": "banned for 5 minutes: flood"}]
    node.core.cluster_event(cluster.RemoteBan("10.9.8.7", 600.0, "flood", node="b1"), node.now)
    banned = node.connect("eve", host="10.9.8.7")
    assert "banned" in error_of(node.received(banned))
    here = node.connect("pat")
    grant(node, here, "pat")
    node.received(here)
    node.core.cluster_event(cluster.RemoteJoin("mod", "lobby", node="b1"), node.now)
    node.core.cluster_event(cluster.RemoteKick("pat", "mod", "bye", 0, node="b1"), node.now)
    assert node.received(here)[-2:] == [
        {"type": "kick", "nick": "pat", "by": "mod", "reason": "bye"},
        {"type": "error", "code": "kicked", "message": "you were kicked by mod (bye)"}]
    assert node.closed(here)
