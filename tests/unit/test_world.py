"""The world model in memory: the verbs, locked exits, the state's round
trip, and every way a world file can be refused (with its line)."""

import json
import os
import threading

import pytest

from termchat.world import model as world
from termchat.world import builtin_text

SMALL = '''
name = "Test House"
start = "hall"

[places.hall]
title = "The Hall"
description = """
A hall.

With two paragraphs."""
exits = { north = "study", down = { to = "cellar", key = "key", locked = "The cellar door is locked." } }
items = ["key", "lamp"]

[places.study]
title = "The Study"
description = "Books."
exits = { south = "hall" }
items = ["red-book", "blue-book"]

[places.cellar]
title = "The Cellar"
description = "Damp."
exits = { up = "hall" }

[items.key]
name = "brass key"
description = "Small."

[items.lamp]
name = "oil lamp"
description = "Smoky."
article = "an"

[items.red-book]
name = "red book"
description = "Red."

[items.blue-book]
name = "blue book"
description = "Blue."
'''


@pytest.fixture
def state():
    return world.WorldState.fresh(world.parse_world(SMALL, "small.toml"))


def test_the_builtin_world_is_big_enough_and_has_a_locked_exit_and_its_key():
    built = world.parse_world(builtin_text(), "builtin")
    assert len(built.places) >= 8 and len(built.items) >= 3
    locked = [e for p in built.places.values() for e in p.exits.values() if e.key]
    assert locked and all(e.key in built.items for e in locked)
    assert all(p.description and p.title for p in built.places.values())


def test_look_shows_the_place_its_exits_and_items(state):
    seen = world.view(state, "pat")
    assert seen.place.title == "The Hall"
    assert seen.place.description == "A hall.\nWith two paragraphs."
    assert seen.exits == ["north", "down"]
    assert [item.shown for item in seen.items] == ["a brass key", "an oil lamp"]


def test_go_moves_through_exits_and_refuses_what_is_not_there(state):
    moved = world.go(state, "pat", "n")
    assert isinstance(moved, world.Moved) and (moved.old.id, moved.new.id) == ("hall", "study")
    assert state.place_of("pat") == "study"
    refused = world.go(state, "pat", "west")
    assert refused == world.Refusal("You cannot go west from here (exits: south).")
    assert state.place_of("pat") == "study"
    long = world.go(state, "pat", "x" * 10000)
    assert len(long.text) < 120  # no reply grows with the input


def test_a_locked_exit_opens_only_for_whoever_carries_its_key(state):
    assert world.go(state, "pat", "down") == world.Refusal("The cellar door is locked.")
    assert isinstance(world.take(state, "chris", "key"), world.Handled)
    assert world.go(state, "pat", "down") == world.Refusal("The cellar door is locked.")
    moved = world.go(state, "chris", "down")
    assert moved.new.id == "cellar" and moved.key.name == "brass key"


def test_take_and_drop_move_items_between_places_and_players(state):
    assert world.take(state, "pat", "the oil lamp").item.id == "lamp"
    assert [i.id for i in state.items_in("hall")] == ["key"]
    assert [i.id for i in state.carried_by("pat")] == ["lamp"]
    assert world.take(state, "chris", "lamp") == world.Refusal("There is no lamp here.")
    world.go(state, "pat", "north")
    assert world.drop(state, "pat", "lamp").item.id == "lamp"
    assert [i.id for i in state.items_in("study")] == ["red-book", "blue-book", "lamp"]
    assert world.drop(state, "pat", "lamp") == world.Refusal(
        "There is no lamp that you carry.")


def test_item_names_are_matched_by_name_word_or_id_and_ambiguity_is_asked(state):
    world.go(state, "pat", "north")
    assert world.take(state, "pat", "book") == world.Refusal(
        "Which do you mean: the red book or the blue book?")
    assert world.take(state, "pat", "RED").item.id == "red-book"
    assert world.take(state, "pat", "blu").item.id == "blue-book"  # the start of a word
    world.drop(state, "pat", "blue book")
    assert world.take(state, "pat", "blue-book").item.id == "blue-book"  # its id


def test_look_at_describes_items_here_or_carried_and_where_exits_lead(state):
    assert world.look_at(state, "pat", "lamp") == "Oil lamp: Smoky."
    assert world.look_at(state, "pat", "down") == "Down: The Cellar (locked)"
    world.take(state, "pat", "key")
    world.go(state, "pat", "n")
    assert world.look_at(state, "pat", "key") == "Brass key: Small."
    assert world.look_at(state, "pat", "unicorn") == world.Refusal("There is no unicorn here.")


def test_the_state_survives_a_round_trip_through_json(state):
    world.take(state, "pat", "key")
    world.go(state, "pat", "down")
    world.take(state, "chris", "lamp")
    world.go(state, "chris", "north")
    world.drop(state, "chris", "lamp")
    data = json.loads(json.dumps(state.to_data()))
    again = world.WorldState.from_data(state.world, data)
    assert again.to_data() == state.to_data()
    assert again.place_of("pat") == "cellar" and again.place_of("nobody") == "hall"


def test_a_saved_state_is_fitted_to_a_world_that_changed(state):
    data = {"players": {"pat": "gone-place", "chris": "study"},
            "carried": {"pat": ["key", "vanished-item"]},
            "items": {"lamp": "gone-place"}}
    again = world.WorldState.from_data(state.world, data)
    assert again.place_of("pat") == "hall" and again.place_of("chris") == "study"
    assert [i.id for i in again.carried_by("pat")] == ["key"]
    assert [i.id for i in again.items_in("hall")] == ["lamp"]  # back where it began
    with pytest.raises(ValueError):
        world.WorldState.from_data(state.world, ["not", "an", "object"])


def test_players_remembered_are_bounded_but_not_those_carrying_things(state, monkeypatch):
    monkeypatch.setattr(world, "MAX_PLAYERS", 3)
    state.put_player("p0", "hall")
    world.take(state, "p0", "key")
    forgotten = [state.put_player(f"p{number}", "study") for number in range(1, 6)]
    assert forgotten == [[], [], ["p1"], ["p2"], ["p3"]]
    assert list(state.player_place) == ["p0", "p4", "p5"]
    assert [i.id for i in state.carried_by("p0")] == ["key"]  # nothing moved


@pytest.mark.parametrize("text, line, reason", [
    ('start = "a"\n[places.a\ntitle = "A"', 2, "not valid TOML"),
    ('start = "b"\n[places.a]\ntitle = "A"\ndescription = "x"\n', 1, '"start" is "b"'),
    ('[places.a]\ntitle = "A"\ndescription = "x"\n', None, '"start" must be'),
    ('start = "a"\n[places.a]\ntitle = "A"\ndescription = "x"\nexits = { north = "b" }\n',
     5, 'leads to "b", which is not a place'),
    ('start = "a"\n[places.a]\ntitle = "A"\ndescription = "x"\n[places.a.exits]\n'
     'sideways = "a"\n', 6, '"sideways" is not a direction'),
    ('start = "a"\n[places.a]\ntitle = "A"\ndescription = "x"\nitems = ["ghost"]\n',
     5, 'the item "ghost" is not described'),
    ('start = "a"\n[places.a]\ndescription = "x"\n', 2, '"title" must be'),
    ('start = "a"\n[places.a]\ntitle = "A"\ndescription = "x"\ncolour = "red"\n',
     5, 'unknown key "colour"'),
    ('start = "a"\n[places.a]\ntitle = "A"\ndescription = "x"\n'
     'exits = { up = { to = "a", key = "nokey" } }\n', 5, 'the key "nokey"'),
    ('start = "a"\n[places.a]\ntitle = "A"\ndescription = "x"\nitems = ["k"]\n'
     '[places.b]\ntitle = "B"\ndescription = "y"\nitems = ["k"]\n'
     '[items.k]\nname = "k"\ndescription = "z"\n', 9, 'is in "a" already'),
    ('start = "a"\n[places.a]\ntitle = "A"\ndescription = "x"\n[items.k]\nname = "k"\n',
     5, '"description" must be'),
    ('start = "a"\n[places."two words"]\ntitle = "A"\ndescription = "x"\n', 2,
     'the id "two words"'),
    ('start = "a"\n', None, "at least one place"),
    ('start = "a"\n[places.a]\ntitle = "' + 'T' * 101 + '"\ndescription = "x"\n', 3,
     '"title" is longer than 100 characters'),
    ('start = "a"\n[places.a]\ntitle = "A"\ndescription = "x"\n[items.k]\nname = "'
     + 'n' * 61 + '"\ndescription = "z"\n', 6, '"name" is longer than 60 characters'),
])
def test_a_broken_world_file_is_refused_with_its_line_and_reason(text, line, reason):
    with pytest.raises(world.WorldError) as refused:
        world.parse_world(text, "broken.toml")
    assert refused.value.line == line, str(refused.value)
    assert reason in refused.value.reason
    assert str(refused.value).startswith("broken.toml" + (f", line {line}" if line else ""))


def test_the_largest_look_a_world_file_allows_fits_in_one_packet():
    from termchat.wire import protocol as proto
    from termchat.core.worldplay import ITEMS_SHOWN, PEOPLE_SHOWN
    wide = "\U0001F600"  # four bytes of UTF-8 each
    view = proto.PlaceView(
        "p" * 32, wide * world.MAX_TITLE, wide * world.MAX_TEXT,
        tuple(world.DIRECTIONS), tuple(f"a {wide * world.MAX_NAME}" for _ in range(ITEMS_SHOWN)),
        tuple(wide * 32 for _ in range(PEOPLE_SHOWN)), 10**9, 10**9)
    assert len(proto.encode(view)) <= proto.MAX_PAYLOAD + proto.HEADER_SIZE


# ---- the state file ----

def test_the_state_is_written_through_an_exclusive_temporary_file(tmp_path):
    from termchat.world.files import write_atomically
    target = tmp_path / "someone-elses.txt"
    target.write_text("keep me")
    state = tmp_path / "state.json"
    for pid in (os.getpid(), os.getpid() + 1):  # the old, predictable names
        (tmp_path / f".state.json.{pid}.tmp").symlink_to(target)
    write_atomically(state, "{}")
    assert target.read_text() == "keep me"
    assert not state.is_symlink() and state.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == \
        ["someone-elses.txt", "state.json"]


def test_the_state_is_written_by_its_own_thread_from_a_snapshot(tmp_path, monkeypatch):
    from termchat.world import files
    writers = []
    write = files.write_atomically
    monkeypatch.setattr(files, "write_atomically",
                        lambda path, text: (writers.append(threading.current_thread()),
                                            write(path, text)))
    state = world.WorldState.fresh(world.parse_world(SMALL, "small"))
    saver = files.StateSaver(state, tmp_path / "state.json")
    state.put_player("pat", "study")
    saver.save_if_due(10.0)
    state.put_player("pat", "cellar")  # after the snapshot: written by the next save
    saver.save()
    assert writers and threading.main_thread() not in writers
    assert json.loads((tmp_path / "state.json").read_text())["players"] == {"pat": "cellar"}
