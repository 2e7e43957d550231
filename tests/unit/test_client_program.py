"""The program around the core (chat_client.ChatClient) with no socket
and no terminal: what it writes to the screen and to --log."""

import io
import time

from chat_client import ChatClient
from termchat.client.core import ClientCore
from termchat.client.formatting import info


class ScreenLines:
    """What a UI backend is given, kept."""

    def __init__(self):
        self.printed = []

    def print_message(self, line):
        self.printed.append("".join(text for text, _ in line))


def program(**options):
    ui = ScreenLines()
    client = ChatClient(ClientCore("pat", "127.0.0.1:3490"), None, ui, reconnect=None,
                        **options)
    return client, ui


def test_timestamps_stamp_a_line_without_a_server_time_with_now():
    """Issue 20, finding 1: a line with no time crashed --timestamps."""
    client, ui = program(timestamps=True)
    before = time.strftime("%H:%M ")
    client.show(info("type the password"), None)
    after = time.strftime("%H:%M ")  # (a minute may turn meanwhile)
    client.show(info("from the server"), 0.0)
    assert ui.printed[0] in (before + "*** type the password", after + "*** type the password")
    assert ui.printed[1] == time.strftime("%H:%M ", time.localtime(0.0)) + "*** from the server"


def test_the_log_carries_the_server_time_of_each_line():
    """Issue 20, finding 8: replayed history was logged with the time of the join."""
    log = io.StringIO()
    client, ui = program(log=log)
    sent = time.mktime((2026, 11, 25, 18, 40, 2, 0, 0, -1))
    client.show([("chris", "nick:chris"), (": hi \x1b[2J", None)], sent)
    client.show(info("local"), None)
    first, second = log.getvalue().splitlines()
    assert first == "2026-11-25 18:40:02 chris: hi ^[[2J"
    assert second.endswith(" *** local") and second.startswith(time.strftime("%Y-%m-%d"))
    assert ui.printed[0] == "chris: hi \x1b[2J"  # the UI escapes what it draws
