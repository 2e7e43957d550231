"""History on demand, the client's side (SPEC "Durable state"): PageUp at
the top of the scrollback asks for the room's messages before the oldest
shown; the answer goes above everything, and the start is marked."""

import json

from termchat.client.core import ClientCore
from termchat.client.effects import Send, Show, ShowOlder
from termchat.client.history import LIMIT
from termchat.wire import protocol as proto

HistoryRequest = proto.HistoryRequest


def payload(message, **extra):
    return proto.encode(message, **extra)[proto.HEADER_SIZE:]


def end(more):
    return json.dumps({"type": "history", "more": more}).encode()


def text(line):
    return "".join(part for part, _ in line)


def session_core():
    core = ClientCore("pat", "127.0.0.1:3490")
    core.receive(payload(proto.Joined("pat"), id="1", time=1.0))
    core.receive(payload(proto.SessionGranted("tok", 60)))
    core.receive(payload(proto.ChatFrom("chris", "from the join"), id="10", time=2.0,
                         history=True))
    core.receive(payload(proto.ChatFrom("chris", "live"), id="12", time=3.0))
    return core


def test_the_request_is_the_spec_packet():
    assert json.loads(payload(HistoryRequest("10", 50))) == {
        "type": "history", "before": "10", "limit": 50}


def test_page_up_at_the_top_asks_before_the_oldest_line_of_the_room():
    core = session_core()
    assert core.at_top(5.0) == [Send(HistoryRequest("10", LIMIT))]
    assert core.at_top(5.1) == []  # one request at a time


def test_the_answer_goes_above_and_the_next_request_starts_before_it():
    core = session_core()
    core.at_top(5.0)
    for number in (7, 8, 9):
        assert core.receive(payload(proto.ChatFrom("ann", f"old {number}"), id=str(number),
                                    time=1.0, history=True)) == []
    effects = core.receive(end(True))
    assert [[text(line) for line in e.lines] for e in effects] == [
        ["ann: old 7", "ann: old 8", "ann: old 9"]]
    assert all(style == "dim" for e in effects for line in e.lines for _, style in line)
    assert core.at_top(6.0) == [Send(HistoryRequest("7", LIMIT))]


def test_where_the_history_starts_is_said_and_nothing_more_is_asked():
    core = session_core()
    core.at_top(5.0)
    core.receive(payload(proto.EmoteFrom("ann", "waves"), id="3", history=True))
    assert core.receive(end(False)) == [ShowOlder((
        [("*** ", "info"), ("the history of lobby starts here", None)],
        [("[", "dim"), ("ann", "dim"), (" waves]", "dim")]))]
    assert core.at_top(6.0) == []


def test_another_room_starts_again_from_its_own_newest():
    core = session_core()
    core.at_top(5.0)
    core.receive(end(False))
    core.receive(payload(proto.EnteredRoom("pat", "games"), id="20"))
    assert core.prompt() == "pat [games]> "
    assert core.at_top(6.0) == [Send(HistoryRequest("20", LIMIT))]
    (older,) = core.receive(end(False))
    assert [text(line) for line in older.lines] == ["*** the history of games starts here"]
    assert core.receive(end(False)) == []  # a stray end marker: nothing


def test_a_server_that_does_not_know_the_request_is_not_asked_again():
    core = session_core()
    core.at_top(5.0)
    refusal = proto.Error('unknown message type "history"', proto.Code.BAD_PACKET)
    assert core.receive(payload(refusal)) == []  # our own request's refusal: not shown
    assert core.at_top(100.0) == []
    assert [type(e) for e in core.receive(payload(refusal))] == [Show]  # others are


def test_no_answer_in_time_lets_a_later_page_up_ask_again():
    core = session_core()
    core.at_top(5.0)
    assert core.at_top(14.9) == []
    assert core.at_top(15.0) == [Send(HistoryRequest("10", LIMIT))]


def test_without_a_session_there_are_no_ids_to_ask_before():
    core = ClientCore("pat", "127.0.0.1:3490")
    core.receive(payload(proto.Joined("pat")))
    core.receive(payload(proto.ChatFrom("chris", "hi")))
    assert core.at_top(1.0) == []


def test_history_at_the_join_is_still_shown_in_place():
    core = session_core()
    effects = core.receive(payload(proto.ChatFrom("chris", "join history"), id="11",
                                   history=True))
    assert [text(e.line) for e in effects] == ["chris: join history"]


def test_an_answer_is_bounded_whatever_the_server_sends():
    core = session_core()
    core.at_top(5.0)
    for number in range(LIMIT * 5):
        core.receive(payload(proto.ChatFrom("ann", "x"), id=f"a{number}", history=True))
    (older,) = core.receive(end(True))
    assert len(older.lines) == LIMIT * 2
