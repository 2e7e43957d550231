"""What the model (tests/core/test_model.py) found on its own, each kept as a
plain test: the shrunk sequence, written out, with what it must do now."""

from termchat.core.core import Access
from tests.core_harness import Harness
from tests.support import join


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
