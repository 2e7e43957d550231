"""Stream entries that hold several events, and the positions each event
gets: ordered as (entry, index), written like stream IDs."""

from hypothesis import given, strategies as st

from termchat.cluster import events as ev
from termchat.cluster.commands import Publish, SetPresence, packed
from termchat.core.eventlog import parse_stream_id

entry_ids = st.tuples(st.integers(0, 2 ** 48), st.integers(0, 2 ** 40))
indexes = st.integers(0, ev.PACK_LIMIT - 1)


def entry(parts: tuple[int, int]) -> str:
    return f"{parts[0]}-{parts[1]}"


@given(entry_ids, indexes, entry_ids, indexes)
def test_positions_are_ordered_as_entry_then_index(a, i, b, j):
    first, second = (parse_stream_id(ev.event_position(entry(e), k)) for e, k in ((a, i), (b, j)))
    assert (first < second) == ((a, i) < (b, j))
    assert (first == second) == ((a, i) == (b, j))


@given(entry_ids, indexes)
def test_an_entry_ends_after_its_events_and_before_the_next_entry(a, i):
    end = parse_stream_id(ev.entry_end(entry(a)))
    assert parse_stream_id(ev.event_position(entry(a), i)) < end
    assert end < parse_stream_id(ev.event_position(entry((a[0], a[1] + 1)), 0))
    assert list(zip(range(3), ev.event_positions(entry(a)))) == [
        (k, ev.event_position(entry(a), k)) for k in range(3)]


def test_a_pack_holds_its_events_in_order_and_one_event_is_itself():
    wires = [ev.RemoteLeave(nick=f"n{i}").to_wire("node1", i + 1) for i in range(3)]
    assert ev.pack(wires[:1]) == wires[0] and ev.unpack(wires[0]) == [wires[0]]
    unpacked = ev.unpack(ev.pack(wires))
    assert unpacked == wires
    assert [ev.parse_node_event(w).seq for w in unpacked] == [1, 2, 3]
    assert [ev.stamp_of(w) for w in unpacked] == [ev.Stamp("node1", i) for i in (1, 2, 3)]


def test_a_malformed_pack_is_one_malformed_event_and_a_long_one_is_cut():
    assert ev.unpack(b"[{not json]") == [b"[{not json]"]
    assert ev.stamp_of(b"[1, 2]") is None
    assert len(ev.unpack(b"[" + b",".join([b"{}"] * (ev.PACK_LIMIT + 5)) + b"]")) == ev.PACK_LIMIT


def test_publishes_in_a_row_become_one_and_nothing_moves_past_other_commands():
    presence = SetPresence("ann", "lobby")
    commands = [Publish([b"1"]), Publish([b"2"]), presence, Publish([b"3"])]
    assert packed(commands) == [Publish([b"1", b"2"]), presence, Publish([b"3"])]
    many = packed([Publish([b"x"])] * (ev.PACK_LIMIT + 1))
    assert [len(command.wires) for command in many] == [ev.PACK_LIMIT, 1]
