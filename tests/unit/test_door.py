"""The door's rules (termchat/server/door.py), with a fake selector and
fake sockets: what is refused is answered and closed in time; a listener
that refused its share of a turn rests out of the selector, then is back."""

import selectors

from termchat.server.door import DOOR_REST, MAX_TURNED_AWAY, TURNED_AWAY_LINGER, Door


class FakeSelector:
    def __init__(self):
        self.registered = {}

    def register(self, sock, events, data=None):
        assert sock not in self.registered
        self.registered[sock] = (events, data)

    def unregister(self, sock):
        del self.registered[sock]


class FakeSocket:
    def __init__(self, fail=False):
        self.sent, self.shut, self.closed, self.fail = b"", False, False, fail

    def send(self, data):
        if self.fail:
            raise ConnectionResetError
        self.sent += data
        return len(data)

    def shutdown(self, how):
        self.shut = True

    def close(self):
        self.closed = True


def test_a_refused_connection_is_answered_ended_and_closed_after_its_linger():
    door = Door(FakeSelector())
    sock = FakeSocket()
    door.turn_away(sock, b"refused\n", now=10.0)
    assert (sock.sent, sock.shut, sock.closed) == (b"refused\n", True, False)
    assert door.next_due() == 10.0 + TURNED_AWAY_LINGER
    door.expire(10.0 + TURNED_AWAY_LINGER)
    assert sock.closed and door.next_due() is None


def test_a_connection_gone_before_its_answer_is_closed_at_once():
    door = Door(FakeSelector())
    sock = FakeSocket(fail=True)
    door.turn_away(sock, b"refused\n", now=0.0)
    assert sock.closed and not door.waiting


def test_refused_connections_waiting_are_bounded_oldest_closed_first():
    door = Door(FakeSelector())
    socks = [FakeSocket() for _ in range(MAX_TURNED_AWAY + 3)]
    for sock in socks:
        door.turn_away(sock, b"x", now=0.0)
    assert [sock.closed for sock in socks[:4]] == [True, True, True, False]
    assert len(door.waiting) == MAX_TURNED_AWAY


def test_a_resting_listener_is_out_of_the_selector_until_its_rest_ends():
    selector = FakeSelector()
    listener = object()
    selector.register(listener, selectors.EVENT_READ, None)
    door = Door(selector)
    door.rest(listener, now=5.0)
    assert listener not in selector.registered
    assert door.next_due() == 5.0 + DOOR_REST
    door.expire(5.0 + DOOR_REST / 2)
    assert listener not in selector.registered
    door.expire(5.0 + DOOR_REST)
    assert selector.registered[listener] == (selectors.EVENT_READ, None)
    assert door.next_due() is None


def test_closing_the_door_closes_what_waits_and_forgets_the_resting():
    selector = FakeSelector()
    listener, sock = object(), FakeSocket()
    selector.register(listener, selectors.EVENT_READ)
    door = Door(selector)
    door.turn_away(sock, b"x", now=0.0)
    door.rest(listener, now=0.0)
    door.close_all()
    assert sock.closed and door.next_due() is None
