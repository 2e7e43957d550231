"""World mode in the chat core, in memory: the core routes world packets to
the world module and turns what happened into packets for the right people."""

import pytest

from termchat.world import model as world
from tests.core_harness import Harness
from tests.support import chat_from, join
from tests.unit.test_world import SMALL


@pytest.fixture
def mud():
    return Harness(world_state=world.WorldState.fresh(world.parse_world(SMALL, "small")))


def look(mud, outlet):
    mud.send(outlet, {"type": "look"})
    return mud.received(outlet)[-1]


def test_a_newcomer_gets_the_start_place_after_its_own_join(mud):
    pat = mud.connect("pat")
    got = mud.received(pat)
    assert got[0] == join("pat")
    assert got[1] == {"type": "look", "room": "hall", "title": "The Hall",
                      "description": "A hall.\nWith two paragraphs.",
                      "exits": ["north", "down"], "items": ["a brass key", "an oil lamp"],
                      "people": ["pat"]}


def test_going_tells_the_old_place_and_the_new_and_shows_the_mover_around(mud):
    pat, chris, lee = mud.joined("pat", "chris", "lee")
    mud.send(lee, {"type": "go", "exit": "north"})
    mud.received(lee), mud.received(chris), mud.received(pat)
    mud.send(pat, {"type": "go", "exit": "n"})
    assert mud.received(chris) == [{"type": "exit", "nick": "pat", "room": "The Hall",
                                    "way": "north"}]
    assert mud.received(lee) == [{"type": "enter", "nick": "pat", "room": "The Study",
                                  "way": "north"}]
    got = mud.received(pat)
    assert got[0] == {"type": "enter", "nick": "pat", "room": "The Study", "way": "north"}
    assert got[1]["type"] == "look" and got[1]["people"] == ["lee", "pat"]


def test_chat_and_emotes_stay_in_the_place(mud):
    pat, chris = mud.joined("pat", "chris")
    mud.send(pat, {"type": "go", "exit": "north"})
    mud.received(pat), mud.received(chris)
    mud.chat(chris, "anyone in the hall?")
    assert mud.received(pat) == []
    assert mud.received(chris) == [chat_from("chris", "anyone in the hall?")]


def test_an_item_taken_is_gone_for_the_others_and_the_place_sees_it(mud):
    pat, chris = mud.joined("pat", "chris")
    mud.send(pat, {"type": "take", "item": "key"})
    picked = {"type": "emote", "nick": "pat", "message": "picks up the brass key"}
    assert mud.received(chris) == [picked]
    assert mud.received(pat) == [picked, {"type": "inventory", "items": ["a brass key"]}]
    mud.send(chris, {"type": "take", "item": "key"})
    assert mud.received(chris) == [{"type": "error", "message": "There is no key here.",
                                    "code": "world"}]
    assert look(mud, chris)["items"] == ["an oil lamp"]


def test_the_locked_exit_answers_with_the_worlds_text_until_the_key_is_carried(mud):
    (pat,) = mud.joined("pat")
    mud.send(pat, {"type": "go", "exit": "down"})
    assert mud.received(pat) == [{"type": "error", "message": "The cellar door is locked.",
                                  "code": "world"}]
    mud.send(pat, {"type": "take", "item": "brass key"}, {"type": "go", "exit": "down"})
    got = mud.received(pat)
    passing = {"type": "info",
               "message": "You unlock the way down with the brass key; it locks again behind you."}
    assert passing in got
    assert got[-1]["title"] == "The Cellar"
    mud.send(pat, {"type": "go", "exit": "up"}, {"type": "go", "exit": "down"})
    assert mud.received(pat).count(passing) == 1  # said each time the key opens it


def test_a_locked_exit_lets_through_only_while_the_key_is_carried(mud):
    pat, chris = mud.joined("pat", "chris")
    mud.send(pat, {"type": "take", "item": "key"}, {"type": "go", "exit": "down"},
             {"type": "drop", "item": "key"}, {"type": "go", "exit": "up"})
    mud.received(pat), mud.received(chris)
    mud.send(chris, {"type": "go", "exit": "down"})  # the key lies in the cellar now
    assert mud.received(chris) == [{"type": "error", "message": "The cellar door is locked.",
                                    "code": "world"}]
    mud.send(pat, {"type": "go", "exit": "down"})
    assert mud.received(pat)[0]["code"] == "world"


def test_rooms_are_refused_in_world_mode_and_world_packets_elsewhere(mud):
    (pat,) = mud.joined("pat")
    mud.send(pat, {"type": "enter", "room": "games"})
    assert mud.received(pat)[0]["message"].startswith("there are no rooms to join")
    plain = Harness()
    (chris,) = plain.joined("chris")
    for packet in ({"type": "look"}, {"type": "go", "exit": "north"},
                   {"type": "take", "item": "x"}, {"type": "inventory"}):
        plain.send(chris, packet)
        assert plain.received(chris) == [{"type": "error", "code": "no-world", "message":
                                          "this server has no world (it was started "
                                          "without --world)"}]


def test_who_and_rooms_name_places_by_their_titles(mud):
    pat, chris = mud.joined("pat", "chris")
    mud.send(pat, {"type": "go", "exit": "north"})
    mud.send(pat, {"type": "who"}, {"type": "rooms"})
    got = mud.received(pat)
    assert {"type": "who", "room": "The Study", "nicks": ["pat"]} in got
    assert got[-1] == {"type": "rooms", "rooms": [{"name": "The Hall", "count": 1},
                                                  {"name": "The Study", "count": 1}]}


def test_a_user_who_comes_back_finds_its_place_and_inventory(mud):
    (pat,) = mud.joined("pat")
    mud.send(pat, {"type": "take", "item": "lamp"}, {"type": "go", "exit": "north"})
    mud.lose(pat)
    again = mud.connect("PAT")  # the same name, as the nick rules see it
    got = mud.received(again)
    assert got[1]["title"] == "The Study"
    mud.send(again, {"type": "inventory"}, {"type": "look", "at": "lamp"})
    assert mud.received(again) == [{"type": "inventory", "items": ["an oil lamp"]},
                                   {"type": "info", "message": "Oil lamp: Smoky."}]


def test_a_rename_keeps_the_place_and_what_is_carried(mud):
    pat, chris = mud.joined("pat", "chris")
    mud.send(pat, {"type": "take", "item": "lamp"}, {"type": "go", "exit": "north"})
    mud.send(pat, {"type": "nick", "nick": "pam"})
    mud.received(pat)
    assert look(mud, pat)["title"] == "The Study"
    mud.send(pat, {"type": "inventory"})
    assert mud.received(pat) == [{"type": "inventory", "items": ["an oil lamp"]}]
    mud.send(pat, {"type": "go", "exit": "south"})
    assert mud.received(chris)[-1] == {"type": "enter", "nick": "pam", "room": "The Hall",
                                       "way": "south"}


def test_a_session_newcomer_gets_the_history_of_the_place_it_arrives_in(mud):
    (pat,) = mud.joined("pat")
    mud.send(pat, {"type": "go", "exit": "north"})
    mud.chat(pat, "said in the study")
    mud.lose(pat)
    again = mud.connect()
    mud.send(again, {"type": "hello", "nick": "pat", "session": True})
    got = mud.received(again)
    history = [m for m in got if m.get("history")]
    assert [m["message"] for m in history] == ["said in the study"]
    assert got[-1]["title"] == "The Study"


def test_in_a_cluster_a_take_waits_for_redis_and_says_why_when_refused():
    from termchat.cluster import events as cluster
    from tests.core_harness import FakeLink
    node = Harness(link=FakeLink(), world_state=world.WorldState.fresh(
        world.parse_world(SMALL, "small")))
    pat = node.connect()
    node.send(pat, {"type": "hello", "nick": "pat"})
    claim = next(c for c in node.core.link.calls if c[0] == "claim")
    node.core.cluster_event(cluster.Claimed(claim[1], "pat", True), node.now)
    node.received(pat)
    node.send(pat, {"type": "take", "item": "key"})
    assert node.received(pat) == []  # Redis decides
    token = next(c for c in node.core.link.calls if c[0] == "take_item")[1]
    node.core.cluster_event(cluster.ItemTaken(token, "key", False), node.now)
    assert node.received(pat)[0]["message"] == (
        "The brass key is not here any more: someone was quicker.")
    node.core.cluster_event(cluster.ItemTaken(token, "key", False, unreachable=True), node.now)
    assert "shared store is away" in node.received(pat)[0]["message"]
    node.core.cluster_event(cluster.ItemTaken(token, "key", True), node.now)
    assert node.received(pat)[-1] == {"type": "inventory", "items": ["a brass key"]}


def test_a_crowded_place_names_a_hundred_people_and_says_how_many_more(mud):
    crowd = mud.crowd(*[f"u{number:04d}" for number in range(1500)])
    got = look(mud, crowd[0])
    assert len(got["people"]) == 100 and got["more_people"] == 1400
    assert got["people"][:2] == ["u0000", "u0001"]
