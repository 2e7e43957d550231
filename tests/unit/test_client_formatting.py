"""The client's packet-to-line formatting and name completion, with no
socket and no terminal."""

import pytest

from termchat.client.formatting import format_message, place_lines
from termchat.client.view import complete_name
from termchat.wire import protocol as proto


def text_of(message):
    return "".join(text for text, _ in format_message(message))


@pytest.mark.parametrize("message, shown", [
    (proto.ChatFrom("pat", "hows it going"), "pat: hows it going"),
    (proto.Joined("leslie"), "*** leslie has joined the chat"),
    (proto.Left("chris"), "*** chris has left the chat"),
    (proto.Error("no such user: lee"), "*** error: no such user: lee"),
    (proto.Info("back in contact"), "*** back in contact"),
    (proto.DirectFrom("pat", "chris", "psst"), "pat -> chris: psst"),
    (proto.EmoteFrom("pat", "waves"), "[pat waves]"),
    (proto.WhoList("lobby", ("chris", "pat")), "*** in lobby: chris, pat"),
    (proto.Kicked("lee", "op", "spam"), "*** lee was kicked by op (spam)"),
    (proto.NickChanged("pat", "pam"), "*** pat is now known as pam"),
    (proto.WhoList("lobby", ("chris", "pat"), {"chris": "lunch"}),
     "*** in lobby: chris (away), pat"),
    (proto.EnteredRoom("pat", "games"), "*** pat entered room games"),
    (proto.ExitedRoom("pat", "lobby"), "*** pat left room lobby"),
    (proto.RoomList((proto.RoomCount("lobby", 3), proto.RoomCount("games", 1))),
     "*** rooms: lobby (3), games (1)"),
])
def test_every_packet_has_its_display_form(message, shown):
    assert text_of(message) == shown


def test_world_names_complete_from_the_start_of_any_word():
    names = ["smooth stone", "storm lantern", "brass key"]
    complete = complete_name
    assert complete(names, "", "sto") == ["smooth stone", "storm lantern"]
    assert complete(names, "", "br") == ["brass key"]
    assert complete(names, "smooth ", "st") == ["stone"]  # the rest of a name begun
    assert complete(names, "", "") == names


def test_a_place_and_an_inventory_cut_short_say_how_many_more():
    view = proto.PlaceView("hall", "The Hall", "A hall.", ("north",), ("a key",),
                           ("ann", "bob"), 0, 1234)
    lines = ["".join(text for text, _ in line) for line in place_lines(view)]
    assert lines == ["", "The Hall", "A hall.", "Exits: north", "You see: a key",
                     "Here: ann, bob and 1,234 more"]
    shown = format_message(proto.Inventory(("a key",), 7))
    assert "".join(text for text, _ in shown) == "*** You carry: a key and 7 more"
