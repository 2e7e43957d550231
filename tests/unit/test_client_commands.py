"""The command table and the layout of /help (issue 20, finding 5): the
whole list fits an 80x24 terminal, world commands only in world mode."""

import re

import pytest

from termchat.client import commands
from termchat.client.commands import COMMANDS, command_help, help_lines, keys_lines

OUTPUT_ROWS = 23  # of an 80x24 terminal: the last row is the input line


@pytest.mark.parametrize("in_world", [False, True])
def test_help_fits_80x24_with_room_to_spare(in_world):
    lines = ["*** " + line for line in help_lines(in_world)]
    assert all(len(line) <= 80 for line in lines), lines
    assert len(lines) <= OUTPUT_ROWS // 2


@pytest.mark.parametrize("in_world", [False, True])
def test_help_lists_every_command_it_offers(in_world):
    text = "\n".join(help_lines(in_world))
    names = set(re.findall(r"/\w+", text))
    for command in COMMANDS.values():
        if command.world and not in_world:
            assert command.name not in names
        elif command.alias_of is None:
            assert command.usage in text, command.usage
        else:
            assert command.name in text, command.name
    assert "//TEXT" in text


def test_the_groups_come_in_order_and_world_only_in_world_mode():
    labels = [line.split(":")[0].strip() for line in help_lines(True)[1:]
              if line[2] != " "]
    assert labels == ["talk", "rooms", "you", "ops", "world", "client"]
    assert "world" not in "\n".join(help_lines(False))


def test_keys_have_their_own_page_that_fits():
    lines = ["*** " + line for line in keys_lines()]
    assert len(lines) <= OUTPUT_ROWS and all(len(line) <= 80 for line in lines), lines
    assert any("PageUp/PageDown" in line for line in lines)
    assert any(line.startswith("***   End ") for line in lines)


@pytest.mark.parametrize("topic, line", [
    ("msg", "/message NICK TEXT (also /msg): a direct message, seen by NICK and you only, "
            "shown as pat -> chris: TEXT"),
    ("/message", "/message NICK TEXT (also /msg): a direct message, seen by NICK and you "
                 "only, shown as pat -> chris: TEXT"),
    ("n", "/n: same as /go north (world mode)"),
    ("I", "/inventory (also /i): what you carry (world mode)"),
    ("reconnect", "/reconnect: connect again now (after a kick, a ban, or while the client "
                  "waits to retry)"),
    ("nosuch", "no command /nosuch (try /help)"),
])
def test_help_on_one_command(topic, line):
    assert command_help(topic) == [line]


def test_every_command_has_a_summary_or_is_an_alias_and_names_are_unique():
    for name, command in COMMANDS.items():
        assert name == command.name and name.startswith("/")
        assert command.summary or command.alias_of in COMMANDS
        assert command.group in commands.GROUPS


def test_packing_never_splits_an_entry():
    assert commands.packed(["/a B C", "/dd E", "/f"], "  x: ", 15) == [
        "  x: /a B C", "     /dd E   /f"]
