"""World mode in the real client (both UIs), read through a terminal emulator:
the place in the prompt, the look laid out for reading, the commands and
Tab completion of exits and items."""

import pytest

from tests.support import RawClient


def row_of(term, text):
    return next(i for i, line in enumerate(term.lines) if line == text)


@pytest.mark.server_args("--world", "builtin")
def test_walking_looking_and_carrying_in_the_terminal(terminal, server):
    term = terminal("pat", rows=40)
    term.prompt_room = "The Jetty"
    term.wait_for_prompt()
    for line in ("Exits: north, east", "You see: a coil of rope", "Here: pat"):
        term.wait_for_line(line)  # the place drawn, after the prompt
    title = row_of(term, "The Jetty")
    assert term.screen.buffer[title][0].bold and term.screen.buffer[title][4].bold
    assert term.lines[title - 1] == ""  # each place set apart from what came before
    rows = term.lines[title + 1:title + 3]
    assert " ".join(rows).startswith("Grey planks run out into a green, restless sea, slick "
                                     "with weed where the tide has been. A rowing boat")
    assert all(len(row) <= 80 for row in rows)  # wrapped at words, not cut
    term.type("/go no")
    term.key("tab")
    term.wait_for_prompt("/go north ")
    term.key("enter")
    term.prompt_room = "The Cliff Path"
    term.wait_for_prompt()
    term.say("/n")
    term.prompt_room = "The Keeper's Yard"
    term.wait_for_prompt()
    chris = RawClient(server.port, "chris")  # arrives on the jetty, far away
    term.say("/w")
    term.prompt_room = "The Keeper's Cottage"
    term.wait_for_prompt()
    term.type("/take bra")
    term.key("tab")
    term.wait_for_prompt("/take brass key ")
    term.key("enter")
    term.wait_for_line(r"\[pat picks up the brass key\]")
    term.wait_for_line(r"\*\*\* You carry: a brass key")
    term.say("/look key")
    term.wait_for_text("*** Brass key: Heavy for its size")
    term.say("/e")
    term.prompt_room = "The Keeper's Yard"
    term.wait_for_prompt()
    term.say("/n")
    term.say("/d")
    term.prompt_room = "The Oil Cellar"
    term.wait_for_prompt()
    term.wait_for_text("*** You unlock the trapdoor with the brass key; it falls shut behind you.")
    term.say("/drop brass key")
    term.wait_for_line(r"\[pat drops the brass key\]")
    term.say("/i")
    term.wait_for_line(r"\*\*\* You carry nothing\.")
    assert "pat entered room" not in term.text  # one's own walk shows the place only
    term.say("/join games")  # game refusals are the world's narration, not errors
    term.wait_for_text("*** there are no rooms to join in this world")
    term.say("/go sideways")
    term.wait_for_text("*** You cannot go sideways from here (exits: up).")
    assert "error" not in term.text
    chris.close()
    term.say("/q")
    assert term.wait_exit() == 0


@pytest.mark.server_args("--world", "builtin")
def test_help_lists_the_world_commands_in_world_mode(terminal):
    term = terminal("pat")
    term.prompt_room = "The Jetty"
    term.wait_for_prompt()
    term.say("/help")
    term.wait_for_text("world:  /look [NAME] (/l)   /go DIRECTION (/n /s /e /w /u /d)")
    term.wait_for_text("/drop NAME   /inventory (/i)")
    term.wait_for(lambda t: "*** commands (/help COMMAND" in t.text and "/reconnect" in t.text,
                  what="the core commands above the world's (curses may draw them last)")


@pytest.mark.server_args("--world", "builtin")
def test_others_are_seen_going_and_coming_and_a_locked_door_is_narration(terminal, server):
    """Issue 20, finding 10: movement read 'pat left room The Jetty', and a
    locked exit was an error."""
    term = terminal("pat")
    term.prompt_room = "The Jetty"
    term.wait_for_prompt()
    chris = RawClient(server.port, "chris")
    chris.expect(lambda m: m["type"] == "look")
    chris.send({"type": "go", "exit": "north"})
    term.wait_for_text("*** chris goes north")
    chris.send({"type": "go", "exit": "south"})
    term.wait_for_text("*** chris arrives from the north")
    assert "left room" not in term.text and "entered room" not in term.text
    for step, place in (("/n", "The Cliff Path"), ("/n", "The Keeper's Yard"),
                        ("/n", "The Foot of the Tower")):
        term.say(step)
        term.prompt_room = place
        term.wait_for_prompt()
    term.say("/d")
    term.wait_for_text("*** The trapdoor is locked.")
    assert "error" not in term.text
    chris.close()
