"""Every refusal carries a code (SPEC "Refusals carry a code"), so a client
decides by code, never by the text; in memory."""

from termchat.core.core import Access, Limits, SessionSettings
from termchat.world import builtin_text
from termchat.world import model as world
from tests.core_harness import UNLIMITED, Harness


def refusal(messages):
    """The one error among messages, as (code, message)."""
    errors = [m for m in messages if m["type"] == "error"]
    assert len(errors) == 1, messages
    return errors[0].get("code"), errors[0]["message"]


def first_refusal(chat, outlet, *packets):
    chat.send(outlet, *packets)
    return refusal(chat.received(outlet))


def test_malformed_input_and_a_missing_hello_are_bad_packets():
    chat = Harness()
    assert first_refusal(chat, chat.connect(), b"\xff")[0] == "bad-packet"
    assert first_refusal(chat, chat.connect(), {"type": "chat", "message": "hi"})[0] \
        == "bad-packet"
    (pat,) = chat.joined("pat")
    assert first_refusal(chat, pat, {"type": "hello", "nick": "pat"})[0] == "bad-packet"
    assert first_refusal(chat, pat, {"type": "dm", "to": "x"})[0] == "bad-packet"


def test_nicks_bad_taken_and_held():
    chat = Harness()
    assert first_refusal(chat, chat.connect(), {"type": "hello", "nick": "a b"})[0] \
        == "bad-nick"
    chat.joined("pat")
    assert first_refusal(chat, chat.connect(), {"type": "hello", "nick": "PAT"})[0] \
        == "nick-taken"
    held = chat.connect()
    chat.send(held, {"type": "hello", "nick": "sam", "session": True})
    chat.received(held)
    chat.lose(held)
    assert first_refusal(chat, chat.connect(), {"type": "hello", "nick": "sam"})[0] \
        == "nick-held"


def test_passwords_needed_and_wrong():
    chat = Harness(access=Access(server_password="sesame"))
    assert first_refusal(chat, chat.connect(), {"type": "hello", "nick": "pat"})[0] \
        == "needs-password"
    assert first_refusal(chat, chat.connect(), {"type": "hello", "nick": "pat",
                                                "password": "nope"})[0] == "wrong-password"


def test_limits_hello_timeout_and_too_many():
    chat = Harness(limits=Limits(hello_timeout=5, max_per_ip=1, rate=0))
    quiet = chat.connect()
    assert refusal(chat.received(chat.connect()))[0] == "too-many"
    chat.tick(6)
    assert refusal(chat.received(quiet))[0] == "no-hello"


def test_kicked_and_banned_are_told_by_code():
    chat = Harness(access=Access(op_password="ops"))
    op, lee, eve = chat.joined("op", "lee", "eve")
    assert first_refusal(chat, lee, {"type": "kick", "nick": "op"})[0] == "not-operator"
    chat.send(op, {"type": "op", "password": "ops"})
    chat.send(op, {"type": "kick", "nick": "lee", "reason": "spam"})
    assert refusal(chat.received(lee)) == ("kicked", "you were kicked by op (spam)")
    chat.send(op, {"type": "ban", "nick": "eve", "minutes": 2})
    assert refusal(chat.received(eve))[0] == "banned"
    again = chat.connect("eve", host="127.0.0.1")
    assert refusal(chat.received(again))[0] == "banned"


def test_sessions_users_and_lengths():
    chat = Harness(sessions=SessionSettings())
    (pat,) = chat.joined("pat")
    assert first_refusal(chat, pat, {"type": "dm", "to": "nobody", "message": "hi"})[0] \
        == "no-user"
    assert first_refusal(chat, pat, {"type": "away", "message": "x" * 400})[0] == "too-long"
    assert first_refusal(chat, chat.connect(), {"type": "hello", "nick": "amy", "session": True,
                                                "resume": "nope", "after": "1"})[0] \
        == "session-expired"


def test_world_refusals_are_narration_and_no_world_says_so():
    plain = Harness()
    (pat,) = plain.joined("pat")
    assert first_refusal(plain, pat, {"type": "look"})[0] == "no-world"
    state = world.WorldState.fresh(world.parse_world(builtin_text(), "builtin"))
    mud = Harness(limits=UNLIMITED, world_state=state)
    (chris,) = mud.joined("chris")
    assert first_refusal(mud, chris, {"type": "go", "exit": "up"})[0] == "world"
    assert first_refusal(mud, chris, {"type": "take", "item": "unicorn"})[0] == "world"


def test_a_message_too_long_to_rebroadcast():
    chat = Harness()
    (pat,) = chat.joined("pat")
    chat.send(pat, {"type": "chat", "message": "y" * 65500})
    assert refusal(chat.received(pat))[0] == "too-long"
