"""The client's session with no socket: phases, the reconnect policy, the
timers for a server that does not answer, and what each refusal code does
to reconnecting (SPEC "Sessions", "Refusals carry a code")."""

import pytest

from termchat.client.effects import Hangup, Send, Show, Wake
from termchat.client.formatting import info
from termchat.client.session import Backoff, ClientSession, Phase, Timeouts
from termchat.wire import protocol as proto

Code = proto.Code
SERVER = "chat.example:3490"


def lines(effects):
    return ["".join(text for text, _ in e.line) for e in effects if isinstance(e, Show)]


def joined(nick="pat", now=0.0, **options):
    """A session whose first hello was answered by our join."""
    session = ClientSession(SERVER, now=now, **options)
    assert session.received(proto.Joined(nick), {"id": "1"}, nick) == (True, [])
    return session


def with_token(now=0.0):
    session = joined(now=now)
    session.received(proto.SessionGranted("tok", 60), {}, "pat")
    session.received(proto.ChatFrom("chris", "hi"), {"id": "7", "time": 1.0}, "pat")
    return session


def test_backoff_doubles_from_half_a_second_to_fifteen():
    backoff = Backoff(0.5, 15.0)
    assert [backoff.next() for _ in range(8)] == [0.5, 1, 2, 4, 8, 15, 15, 15]
    backoff.reset()
    assert backoff.next() == 0.5
    backoff.reset(0.0)
    assert [backoff.next(), backoff.next()] == [0.0, 0.5]


def test_the_first_hello_asks_for_a_session_and_carries_the_password():
    session = ClientSession(SERVER, password="sesame")
    assert session.hello("pat") == proto.Hello("pat", session=True, password="sesame")
    assert session.phase is Phase.CONNECTING and session.connected


def test_without_a_session_the_client_rejoins_and_never_quits_or_resumes():
    session = joined()
    assert lines(session.lost(5.0)) == ["*** connection lost; reconnecting..."]
    assert session.phase is Phase.DOWN and not session.connected
    assert session.wait(5.0) == 0.5 and not session.due_to_connect(5.4)
    assert session.due_to_connect(5.5)
    assert session.opened("pat", 5.5) == proto.Hello("pat", session=True)  # no resume
    assert session.phase is Phase.REJOINING
    go_on, effects = session.received(proto.Joined("pat"), {}, "pat")
    assert go_on and lines(effects) == [
        "*** reconnected; messages sent while you were away are lost"]
    assert session.phase is Phase.LIVE
    assert session.quit() is None and session.ended  # base protocol: no quit


def test_a_session_resumes_after_the_last_id_and_quit_tells_the_server():
    session = with_token()
    session.lost(1.0)
    hello = session.opened("pat", 1.5)
    assert hello == proto.Hello("pat", session=True, resume="tok", after="7")
    assert session.phase is Phase.RESUMING
    assert session.received(proto.Resumed(2), {}, "pat") == (False, [Show(info("reconnected"))])
    assert session.phase is Phase.LIVE
    assert session.quit() == proto.Quit() and session.ended
    assert session.lost(2.0) == [] and session.ended  # the close that follows is no news


@pytest.mark.parametrize("refusal", [proto.Error("session expired", Code.SESSION_EXPIRED),
                                     proto.Error("session expired")])  # older servers: no code
def test_an_expired_session_is_answered_by_a_fresh_hello_at_once(refusal):
    session = with_token()
    session.lost(1.0)
    session.opened("pat", 1.5)
    go_on, effects = session.received(refusal, {}, "pat")
    assert not go_on and effects == [Send(proto.Hello("pat", session=True))]
    assert session.phase is Phase.REJOINING and session.token is None


def test_retries_back_off_and_a_live_connection_starts_again_at_half_a_second():
    session = joined()
    session.lost(0.0)
    now, tries = 0.0, []
    for _ in range(5):
        now += session.wait(now)
        tries.append(now)
        session.opened("pat", now)
        session.lost(now)  # refused or cut at once: try again later
    assert [round(b - a, 3) for a, b in zip([0.0] + tries, tries)] == [0.5, 1, 2, 4, 8]
    session.failed(now)  # could not even connect
    assert session.wait(now) == 15
    now += 15
    session.opened("pat", now)
    session.received(proto.Joined("pat"), {}, "pat")
    session.lost(now)
    assert session.wait(now) == 0.5


@pytest.mark.parametrize("code", [Code.NICK_HELD, Code.NICK_TAKEN, Code.TOO_MANY,
                                  Code.THROTTLED, "some-future-code"])
def test_a_hello_refused_after_a_reconnection_is_shown_and_retried(code):
    session = joined()
    session.lost(0.0)
    session.opened("pat", 0.5)
    go_on, effects = session.received(proto.Error("no", code), {}, "pat")
    assert go_on and effects == []  # the core shows it as an error
    session.lost(0.6)
    assert session.phase is Phase.DOWN and session.wait(0.6) == 1.0


@pytest.mark.parametrize("code", [Code.NICK_TAKEN, Code.BAD_NICK, Code.TOO_MANY,
                                  Code.THROTTLED, Code.NICK_HELD])
def test_a_refused_first_hello_ends_the_client_with_the_reason(code):
    session = ClientSession(SERVER)
    go_on, _ = session.received(proto.Error("nick pat is already taken", code), {}, "pat")
    assert go_on
    assert session.lost(0.1) == []
    assert session.ended and session.exit_reason == \
        "the server refused us: nick pat is already taken"


def test_a_kick_naming_us_stops_reconnecting_and_says_so_once():
    session = with_token()
    assert session.received(proto.Kicked("pat", "op", "rude"), {"id": "8"}, "pat") == (True, [])
    told = proto.Error("you were kicked by op (rude)", Code.KICKED)
    assert session.received(told, {}, "pat") == (False, [])  # the kick line said it
    assert lines(session.lost(1.0)) == [
        "*** kicked: the client will not reconnect by itself (/reconnect, or /q to quit)"]
    assert session.phase is Phase.HALTED and session.wait(1.0) is None
    assert not session.due_to_connect(1e9)
    assert session.lost(2.0) == []  # said once
    effects = session.reconnect()
    assert lines(effects) == [f"*** reconnecting to {SERVER}..."] and Wake() in effects
    assert session.due_to_connect(2.0)
    assert session.opened("pat", 2.0) == proto.Hello("pat", session=True)  # the kick ended it
    assert session.phase is Phase.REJOINING


def test_a_kick_of_someone_else_changes_nothing():
    session = joined()
    session.received(proto.Kicked("frank", "op", ""), {}, "pat")
    assert lines(session.lost(1.0)) == ["*** connection lost; reconnecting..."]


def test_a_ban_on_reconnecting_is_shown_once_and_not_retried():
    session = joined()
    session.lost(0.0)
    session.opened("pat", 0.5)
    refusal = proto.Error("you are banned from this server for 1 more minutes", Code.BANNED)
    go_on, effects = session.received(refusal, {}, "pat")
    assert not go_on
    assert lines(effects) == ["*** error: you are banned from this server for 1 more minutes"]
    assert lines(session.lost(0.6)) == [
        "*** banned: the client will not reconnect by itself (/reconnect, or /q to quit)"]
    assert session.phase is Phase.HALTED and session.wait(100.0) is None


def test_replaced_stops_but_keeps_the_token_to_take_the_session_back():
    session = with_token()
    session.received(proto.Error("resumed elsewhere", Code.REPLACED), {}, "pat")
    assert "went on elsewhere" in lines(session.lost(1.0))[0]
    session.reconnect()
    assert session.opened("pat", 1.0).resume == "tok"


@pytest.mark.parametrize("code", [Code.NEEDS_PASSWORD, Code.WRONG_PASSWORD])
def test_a_password_refusal_asks_the_user_then_connects_with_it(code):
    session = ClientSession(SERVER)
    go_on, effects = session.received(proto.Error("this server needs a server password",
                                                  code), {}, "pat")
    assert not go_on and lines(effects) == [
        "*** error: this server needs a server password: type it at the prompt below "
        "(shown as *)"]
    assert session.lost(0.1) == []
    assert session.phase is Phase.PASSWORD and session.wait(99.0) is None
    assert lines(session.reconnect()) == [
        "*** type the server's password at the prompt, or /q to quit"]
    assert session.password_typed("sesame") == [Wake()]
    assert session.due_to_connect(0.2)
    assert session.opened("pat", 0.2) == proto.Hello("pat", session=True, password="sesame")


def test_a_wrong_operator_password_while_live_is_only_an_error():
    session = joined()
    assert session.received(proto.Error("wrong operator password", Code.WRONG_PASSWORD), {},
                            "pat") == (True, [])
    assert session.phase is Phase.LIVE


def test_a_silent_server_gets_a_notice_then_the_client_gives_up():
    session = ClientSession(SERVER, now=100.0)
    assert session.wait(100.0) == 3.0
    assert session.tick(102.9) == []
    assert lines(session.tick(103.0)) == [f"*** waiting for {SERVER} to answer..."]
    assert session.wait(103.0) == 7.0
    assert session.tick(109.9) == []
    assert session.tick(110.0) == [Hangup()]
    assert session.ended and session.exit_reason == \
        f"no answer from {SERVER}: is it a chat server?"


def test_the_timeouts_can_be_shortened():
    timeouts = Timeouts.answering_within(1.0)
    assert (timeouts.notice, timeouts.give_up) == (0.3, 1.0)
    assert Timeouts.answering_within(60.0).notice == 3.0
    session = ClientSession(SERVER, timeouts=timeouts)
    assert lines(session.tick(0.3)) == [f"*** waiting for {SERVER} to answer..."]
    assert session.tick(1.0) == [Hangup()] and session.ended


def test_any_answer_stops_the_timers():
    session = ClientSession(SERVER)
    session.received(proto.Info("welcome"), {}, "pat")
    assert session.wait(0.0) is None and session.tick(60.0) == []


def test_a_server_closing_before_answering_is_said_once_then_treated_as_silent():
    session = ClientSession(SERVER)
    assert lines(session.lost(0.01)) == [
        f"*** {SERVER} closed the connection before answering: is it a chat server?"]
    assert session.phase is Phase.DOWN and session.wait(0.01) == 0.5
    session.opened("pat", 0.5)
    assert session.lost(0.51) == []  # said once
    assert lines(session.tick(3.0)) == [f"*** waiting for {SERVER} to answer..."]
    assert session.tick(10.0) == [] and session.ended  # not connected: nothing to hang up
    assert session.exit_reason == f"no answer from {SERVER}: is it a chat server?"


def test_a_reconnection_that_never_answers_is_hung_up_and_tried_again():
    session = joined()
    session.lost(0.0)
    session.opened("pat", 0.5)
    assert session.tick(10.4) == []
    assert session.tick(10.5) == [Hangup()] and not session.ended
    session.lost(10.5)
    assert session.phase is Phase.DOWN and session.wait(10.5) == 1.0


def test_reconnect_while_connected_or_waiting():
    session = joined()
    assert lines(session.reconnect()) == [f"*** connected to {SERVER} already"]
    session.lost(0.0)
    session.reconnect()
    assert session.due_to_connect(0.0)  # not after the backoff


def test_the_last_id_follows_every_packet_with_one():
    session = with_token()
    session.received(proto.Info("no id"), {}, "pat")
    session.received(proto.EmoteFrom("chris", "waves"), {"id": "9"}, "pat")
    assert session.last_id == "9"


def test_the_answer_timeouts_default_to_3_and_10_seconds():
    import chat_client
    assert chat_client.parse_args(["pat", "host", "1"]).answer_timeout == 10
    assert Timeouts.answering_within(10) == Timeouts() == Timeouts(3.0, 10.0, 0.5, 15.0)
