"""The order a loop turn writes connections in (termchat/server/writes.py)."""

from termchat.server import writes
from termchat.server.writes import CARRIED_FIRST, URGENT_BYTES, WRITES_PER_TURN, WriteOrder


class Conn:
    def __init__(self, name, queued=100):
        self.name, self.queued, self.gone = name, queued, False

    def __repr__(self):
        return self.name


def crowd(count, prefix="c"):
    return [Conn(f"{prefix}{i}") for i in range(count)]


def test_a_turn_with_few_to_write_writes_them_all_and_leaves_none_waiting():
    order = WriteOrder()
    few = crowd(10)
    assert list(order.this_turn(few)) == few
    assert not order


def test_a_broadcast_to_many_is_written_a_share_a_turn_and_a_new_chat_goes_first():
    order = WriteOrder()
    everyone = crowd(WRITES_PER_TURN * 3)  # a join: a send to each
    first = list(order.this_turn(everyone))
    assert first == everyone[:WRITES_PER_TURN] and order
    room = crowd(5, "r")  # a chat said meanwhile, to a room of five
    second = list(order.this_turn(room))
    carried = everyone[WRITES_PER_TURN:]
    assert second[:CARRIED_FIRST] == carried[:CARRIED_FIRST]  # what waited always moves
    assert second[CARRIED_FIRST:CARRIED_FIRST + 5] == room    # then the new output
    assert len(second) == WRITES_PER_TURN
    written = first + second
    while order:
        written += list(order.this_turn([]))
    assert sorted(written, key=id) == sorted(everyone + room, key=id)  # each once


def test_a_connection_with_new_output_that_was_waiting_is_written_once():
    order = WriteOrder()
    everyone = crowd(WRITES_PER_TURN + 50)
    list(order.this_turn(everyone))
    again = everyone[-1]
    turn = list(order.this_turn([again]))
    assert turn.count(again) == 1 and len(turn) == 50 and not order


def test_a_queue_past_the_urgent_size_is_written_whatever_the_count():
    order = WriteOrder()
    everyone = crowd(WRITES_PER_TURN + 2)
    everyone[-1].queued = URGENT_BYTES
    turn = list(order.this_turn(everyone))
    assert everyone[-1] in turn and everyone[-2] not in turn
    assert order.waiting == [everyone[-2]]


def test_a_connection_gone_while_waiting_is_forgotten():
    order = WriteOrder()
    everyone = crowd(WRITES_PER_TURN + 1)
    list(order.this_turn(everyone))
    everyone[-1].gone = True
    list(order.this_turn(crowd(WRITES_PER_TURN, "n")))
    assert everyone[-1] not in order.waiting


def test_the_limits_leave_a_reader_far_from_its_queue_bound():
    assert writes.URGENT_BYTES * 2 <= 1 << 20  # --max-queue's default
