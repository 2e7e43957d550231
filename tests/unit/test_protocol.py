"""The protocol module alone: framing, encoding and validation."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from termchat.wire import protocol as proto

TEXTS = ["hello", "café crème", "你好，世界", "party 🎉🎉", "mixed ü 中 🙂 end"]


def packet(obj) -> bytes:
    return proto.encode_object(obj)


def test_header_is_two_byte_big_endian_length():
    data = proto.encode(proto.Hello("pat"))
    payload = data[2:]
    assert int.from_bytes(data[:2], "big") == len(payload)
    assert json.loads(payload.decode("utf-8")) == {"type": "hello", "nick": "pat"}


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_non_ascii(text):
    data = proto.encode(proto.ChatFrom("pat", text))
    [payload] = proto.PacketDecoder().feed(data)
    assert proto.parse_server_message(payload) == proto.ChatFrom("pat", text)
    assert text.encode("utf-8") in payload  # raw UTF-8, not \u escapes


def test_every_message_type_round_trips():
    client = [proto.Hello("pat"), proto.Chat("hi"), proto.SendDirect("chris", "yo"),
              proto.Emote("waves"), proto.WhoRequest(), proto.EnterRoom("games"),
              proto.RoomsRequest()]
    server = [proto.ChatFrom("pat", "hi"), proto.Joined("pat"), proto.Left("pat"),
              proto.Error("nope"), proto.DirectFrom("pat", "chris", "yo"),
              proto.EmoteFrom("pat", "waves"), proto.WhoList("lobby", ("chris", "pat")),
              proto.EnteredRoom("pat", "games"), proto.ExitedRoom("pat", "lobby"),
              proto.RoomList((proto.RoomCount("lobby", 3), proto.RoomCount("games", 1)))]
    for message in client:
        assert proto.parse_client_message(proto.encode(message)[2:]) == message
    for message in server:
        assert proto.parse_server_message(proto.encode(message)[2:]) == message


def test_dm_uses_from_on_the_wire():
    data = proto.encode(proto.DirectFrom("pat", "chris", "hi"))
    assert json.loads(data[2:]) == {"type": "dm", "from": "pat", "to": "chris",
                                    "message": "hi"}


def test_stream_one_byte_at_a_time():
    messages = [proto.ChatFrom("pat", text) for text in TEXTS]
    stream = b"".join(proto.encode(m) for m in messages)
    decoder = proto.PacketDecoder()
    payloads = []
    for i in range(len(stream)):
        payloads += decoder.feed(stream[i:i + 1])
    assert [proto.parse_server_message(p) for p in payloads] == messages
    assert decoder.pending == 0


def test_several_packets_in_one_chunk_and_a_partial_tail():
    stream = packet({"type": "chat", "message": "a"}) + packet({"type": "chat", "message": "b"})
    tail = packet({"type": "chat", "message": "c"})
    decoder = proto.PacketDecoder()
    assert len(decoder.feed(stream + tail[:3])) == 2
    assert decoder.pending == 3
    [last] = decoder.feed(tail[3:])
    assert proto.parse_client_message(last) == proto.Chat("c")


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(), min_size=1, max_size=8),
       cuts=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50))
def test_stream_in_random_chunks(texts, cuts):
    messages = [proto.Chat(text) for text in texts
                if proto.fits_in_packet(proto.Chat(text))]
    stream = b"".join(proto.encode(m) for m in messages)
    decoder = proto.PacketDecoder()
    payloads, position, i = [], 0, 0
    while position < len(stream):
        size = cuts[i % len(cuts)]
        payloads += decoder.feed(stream[position:position + size])
        position += size
        i += 1
    assert [proto.parse_client_message(p) for p in payloads] == messages


def test_payload_of_exactly_65535_bytes():
    overhead = len(proto.encode(proto.Chat(""))) - 2
    message = proto.Chat("x" * (proto.MAX_PAYLOAD - overhead))
    data = proto.encode(message)
    assert data[:2] == b"\xff\xff" and len(data) == 2 + 65535
    [payload] = proto.PacketDecoder().feed(data)
    assert proto.parse_client_message(payload) == message


def test_encoding_refuses_one_byte_too_many():
    overhead = len(proto.encode(proto.Chat(""))) - 2
    with pytest.raises(proto.PacketTooLarge):
        proto.encode(proto.Chat("x" * (proto.MAX_PAYLOAD - overhead + 1)))
    with pytest.raises(proto.PacketTooLarge):
        proto.encode(proto.Chat("é" * 40000))  # 80,000 bytes of UTF-8
    assert not proto.fits_in_packet(proto.Chat("🎉" * 20000))


def test_lone_surrogate_cannot_be_encoded():
    with pytest.raises(proto.ProtocolError):
        proto.encode(proto.Chat("\ud800"))


@pytest.mark.parametrize("payload, error", [
    (b"\xff\xfe", proto.MalformedPacket),
    (b"{not json", proto.MalformedPacket),
    (b"", proto.MalformedPacket),
    (b"[" * 5000 + b"]" * 5000, proto.MalformedPacket),
    (b"1" * 5000, proto.MalformedPacket),
    (b"[1, 2]", proto.InvalidMessage),
    (b'"hello"', proto.InvalidMessage),
    (b"{}", proto.InvalidMessage),
    (b'{"type": 5}', proto.InvalidMessage),
    (b'{"type": "shout"}', proto.InvalidMessage),
    (b'{"type": "hello"}', proto.InvalidMessage),
    (b'{"type": "hello", "nick": 7}', proto.InvalidMessage),
    (b'{"type": "hello", "nick": ""}', proto.InvalidMessage),
    (b'{"type": "hello", "nick": "two words"}', proto.InvalidMessage),
    (b'{"type": "hello", "nick": "/slash"}', proto.InvalidMessage),
    (b'{"type": "hello", "nick": "bell\\u0007"}', proto.InvalidMessage),
    (b'{"type": "hello", "nick": "' + b"n" * 33 + b'"}', proto.InvalidMessage),
    (b'{"type": "chat", "message": null}', proto.InvalidMessage),
    (b'{"type": "chat", "message": "\\ud800"}', proto.InvalidMessage),
    (b'{"type": "dm", "to": "pat", "message": ""}', proto.InvalidMessage),
    (b'{"type": "dm", "message": "hi"}', proto.InvalidMessage),
    (b'{"type": "emote", "message": "   "}', proto.InvalidMessage),
    (b'{"type": "enter", "room": "two words"}', proto.InvalidMessage),
])
def test_malformed_input_raises_protocol_error(payload, error):
    with pytest.raises(error):
        proto.parse_client_message(payload)
    assert issubclass(error, proto.ProtocolError)


def test_unknown_fields_are_ignored():
    payload = b'{"type": "chat", "message": "hi", "color": "red"}'
    assert proto.parse_client_message(payload) == proto.Chat("hi")


@pytest.mark.parametrize("nick", ["pat", "Zoë", "李雷", "🎉party", "a" * 32, "x-_.!"])
def test_valid_names(nick):
    assert proto.name_problem(nick) is None
    assert proto.parse_client_message(proto.encode(proto.Hello(nick))[2:]).nick == nick


def test_name_key_ignores_case():
    assert proto.name_key("PAT") == proto.name_key("pat")
    assert proto.name_key("Straße") == proto.name_key("STRASSE")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_payload_raises_only_protocol_errors(data):
    try:
        proto.parse_client_message(data)
    except proto.ProtocolError:
        pass
