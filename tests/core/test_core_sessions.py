"""Sessions in the chat core, in memory: a dropped connection costs the user
nothing, and base clients see exactly the base protocol."""

from dataclasses import replace

import pytest

from termchat.core.core import SessionSettings
from tests.core_harness import UNLIMITED, Harness
from tests.support import SESSION_EXPIRED, chat_from, join, leave


@pytest.fixture
def chat():
    return Harness()


def hello(nick, **fields):
    return {"type": "hello", "nick": nick, **fields}


def start_session(chat, nick):
    """A session client past its join: (outlet, token, its packets so far)."""
    outlet = chat.connect()
    chat.send(outlet, hello(nick, session=True))
    got = chat.received(outlet)
    assert got[0]["type"] == "join" and got[1]["type"] == "session"
    return outlet, got[1]["token"], got


def bare(messages):
    """Packets without the session fields, for comparing what was said."""
    return [{k: v for k, v in m.items() if k not in ("id", "time", "history")}
            for m in messages]


def test_a_session_client_gets_its_token_and_ids_and_base_clients_get_none(chat):
    (base,) = chat.joined("base")
    outlet, token, got = start_session(chat, "pat")
    assert got[0]["nick"] == "pat" and set(got[0]) == {"type", "nick", "id", "time"}
    assert got[1] == {"type": "session", "token": token, "grace": 60.0} and len(token) >= 22
    chat.chat(base, "hello")
    said = chat.received(outlet)[0]
    assert bare([said]) == [chat_from("base", "hello")] and said["id"] > got[0]["id"]
    assert chat.received(base) == [join("pat"), chat_from("base", "hello")]


def test_newcomers_get_the_last_n_messages_of_their_room_marked_as_history():
    chat = Harness(sessions=SessionSettings(history=3))
    a, b = chat.joined("a", "b")
    chat.send(b, {"type": "enter", "room": "elsewhere"})
    for i in range(5):
        chat.chat(a, f"line {i}")
    chat.chat(b, "not in the lobby")
    _, _, got = start_session(chat, "pat")
    history = got[2:]
    assert bare(history) == [chat_from("a", f"line {i}") for i in (2, 3, 4)]
    assert all(m["history"] is True for m in history)
    ids = [m["id"] for m in history]
    assert ids == sorted(ids)


def test_a_lost_connection_is_unseen_and_a_resume_gets_exactly_what_was_missed(chat):
    chris, lee = chat.joined("chris", "lee")
    pat, token, got = start_session(chat, "pat")
    last = got[0]["id"]
    chat.received(chris), chat.received(lee)
    chat.lose(pat, "connection reset")
    chat.chat(chris, "while you were out")
    chat.send(lee, {"type": "dm", "to": "pat", "message": "psst"})
    chat.send(lee, {"type": "enter", "room": "games"})
    chat.send(lee, {"type": "emote", "message": "is in games"})   # pat does not get this
    chat.send(chris, {"type": "who"})
    assert chat.received(chris)[-1] == {"type": "who", "room": "lobby", "nicks": ["chris", "pat"]}
    again = chat.connect()
    chat.send(again, hello("pat", session=True, resume=token, after=last))
    got = chat.received(again)
    assert got[0] == {"type": "resumed", "missed": 3}
    assert bare(got[1:]) == [chat_from("chris", "while you were out"),
                             {"type": "dm", "from": "lee", "to": "pat", "message": "psst"},
                             {"type": "exit", "nick": "lee", "room": "lobby"}]
    chat.chat(chris, "live again")
    assert bare(chat.received(again)) == [chat_from("chris", "live again")]
    for other in (chris, lee):
        assert not any(m["type"] in ("join", "leave") for m in chat.received(other))


def test_a_resume_replays_the_movers_own_room_changes_in_order(chat):
    (chris,) = chat.joined("chris")
    pat, token, got = start_session(chat, "pat")
    chat.send(pat, {"type": "enter", "room": "games"})
    chat.chat(chris, "lobby talk")
    chat.send(pat, {"type": "chat", "message": "in games"})
    chat.lose(pat)                    # before pat read any of it
    again = chat.connect()
    chat.send(again, hello("pat", session=True, resume=token, after=got[0]["id"]))
    assert bare(chat.received(again)[1:]) == [
        {"type": "enter", "nick": "pat", "room": "games"}, chat_from("pat", "in games")]


def test_the_grace_ending_announces_the_leave_and_frees_the_nick():
    chat = Harness(sessions=SessionSettings(resume_grace=60))
    (chris,) = chat.joined("chris")
    pat, token, _ = start_session(chat, "pat")
    chat.received(chris)
    chat.lose(pat)
    chat.tick(59)
    assert chat.received(chris) == []
    chat.tick(2)
    assert chat.received(chris) == [leave("pat")]
    again = chat.connect()
    chat.send(again, hello("pat", session=True, resume=token, after="0"))
    assert chat.received(again) == [SESSION_EXPIRED]
    chat.send(again, hello("pat"))
    assert chat.received(again) == [join("pat")]


def test_a_second_loss_gets_a_full_grace_of_its_own():
    chat = Harness(sessions=SessionSettings(resume_grace=10))
    (chris,) = chat.joined("chris")
    pat, token, got = start_session(chat, "pat")
    chat.lose(pat)
    chat.tick(8)
    again = chat.connect()
    chat.send(again, hello("pat", session=True, resume=token, after=got[0]["id"]))
    chat.lose(again)
    chat.tick(4)                       # 12 s after the first loss, 4 after the second
    assert leave("pat") not in chat.received(chris)


def test_quit_leaves_at_once(chat):
    (chris,) = chat.joined("chris")
    pat, token, _ = start_session(chat, "pat")
    chat.received(chris)
    chat.send(pat, {"type": "quit"})
    assert chat.received(chris) == [leave("pat")]
    assert chat.closed(pat)


@pytest.mark.parametrize("token", ["not-a-token", ""])
def test_a_bad_token_gets_session_expired_and_a_fresh_hello_still_works(chat, token):
    outlet = chat.connect()
    chat.send(outlet, hello("pat", session=True, resume=token, after="1"))
    assert chat.received(outlet) == [SESSION_EXPIRED]
    assert not chat.closed(outlet)
    chat.send(outlet, hello("pat"))
    assert chat.received(outlet) == [join("pat")]


def test_a_detached_session_that_misses_too_much_ends():
    chat = Harness(replace(UNLIMITED, max_queue=5_000))
    (chris,) = chat.joined("chris")
    pat, token, _ = start_session(chat, "pat")
    chat.lose(pat)
    seen = []
    for i in range(10):
        chat.chat(chris, f"{i} " + "x" * 900)
        seen += chat.received(chris)
    assert leave("pat") in seen and chat.dropped == []


def test_a_resume_on_a_connection_not_yet_known_dead_takes_it_over(chat):
    (chris,) = chat.joined("chris")
    pat, token, got = start_session(chat, "pat")
    chat.received(chris)
    chat.chat(chris, "said before the blip")
    again = chat.connect()
    chat.send(again, hello("pat", session=True, resume=token, after=got[0]["id"]))
    assert bare(chat.received(again)) == [{"type": "resumed", "missed": 1},
                                          chat_from("chris", "said before the blip")]
    assert chat.closed(pat)
    chat.chat(chris, "after")
    assert bare(chat.received(again)) == [chat_from("chris", "after")]
    assert not any(m["type"] in ("join", "leave") for m in chat.received(chris))


def test_a_renamed_session_resumes_with_what_was_sent_to_both_names(chat):
    (chris,) = chat.joined("chris")
    pat, token, got = start_session(chat, "pat")
    chat.send(chris, {"type": "dm", "to": "pat", "message": "to pat"})
    chat.send(pat, {"type": "nick", "nick": "pam"})
    chat.send(chris, {"type": "dm", "to": "pam", "message": "to pam"})
    chat.lose(pat)
    again = chat.connect()
    chat.send(again, hello("pam", session=True, resume=token, after=got[0]["id"]))
    assert bare(chat.received(again)) == [
        {"type": "resumed", "missed": 3},
        {"type": "dm", "from": "chris", "to": "pat", "message": "to pat"},
        {"type": "nick", "old": "pat", "nick": "pam"},
        {"type": "dm", "from": "chris", "to": "pam", "message": "to pam"}]


def test_a_nick_held_for_a_dropped_session_says_so_and_for_how_long(chat):
    outlet, _, _ = start_session(chat, "pat")
    chat.lose(outlet)
    chat.tick(15)
    again = chat.connect("pat")
    assert chat.received(again) == [{"type": "error", "code": "nick-held", "message":
                                     "nick pat is held for a session whose connection "
                                     "dropped; it is free in 45 seconds unless that session "
                                     "resumes"}]


def test_only_what_would_reach_a_detached_session_counts_against_its_bound():
    chat = Harness(replace(UNLIMITED, max_queue=5_000))
    chris, lee = chat.joined("chris", "lee")
    pat, token, _ = start_session(chat, "pat")
    chat.send(lee, {"type": "enter", "room": "elsewhere"})
    chat.lose(pat)
    seen = []
    for i in range(10):  # said in another room: pat would not have got it
        chat.chat(lee, f"{i} " + "x" * 900)
        chat.received(lee)
        seen += chat.received(chris)
    assert leave("pat") not in seen
    for i in range(10):  # DMs to pat would have reached it
        chat.send(chris, {"type": "dm", "to": "pat", "message": f"{i} " + "x" * 900})
        seen += chat.received(chris)
    assert leave("pat") in seen and chat.dropped == []


def test_older_history_of_ones_room_comes_on_demand_never_dms():
    chat = Harness(sessions=SessionSettings(history=3))
    a, b = chat.joined("a", "b")
    for i in range(8):
        chat.chat(a, f"line {i}")
        chat.send(b, {"type": "dm", "to": "a", "message": f"private {i}"})
    chat.send(b, {"type": "enter", "room": "elsewhere"})
    chat.chat(b, "not in the lobby")
    pat, _, got = start_session(chat, "pat")
    assert [m["message"] for m in got[2:]] == ["line 5", "line 6", "line 7"]
    chat.send(pat, {"type": "history", "before": got[2]["id"], "limit": 3})
    older = chat.received(pat)
    assert bare(older) == [chat_from("a", f"line {i}") for i in (2, 3, 4)] + [
        {"type": "history", "more": True}]
    assert all(m["history"] is True and "time" in m for m in older[:-1])


def test_a_history_request_pages_back_with_more_until_the_start():
    chat = Harness(sessions=SessionSettings(history=2))
    (a,) = chat.joined("a")
    for i in range(7):
        chat.chat(a, f"line {i}")
    pat, _, got = start_session(chat, "pat")
    before, pages = got[2]["id"], []
    while True:
        chat.send(pat, {"type": "history", "before": before, "limit": 2})
        page = chat.received(pat)
        pages.append([m["message"] for m in page[:-1]])
        if not page[-1]["more"]:
            break
        before = page[0]["id"]
    assert pages == [["line 3", "line 4"], ["line 1", "line 2"], ["line 0"]]
    chat.send(pat, {"type": "history", "before": "not an id", "limit": 2})
    assert chat.received(pat) == [{"type": "history", "more": False}]
    chat.send(pat, {"type": "history", "before": before, "limit": 1000})
    assert chat.received(pat)[0]["code"] == "bad-packet"
