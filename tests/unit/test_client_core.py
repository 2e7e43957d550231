"""The client's core with no socket and no terminal: typed lines in,
packets and lines out; packets in, lines and the prompt out.  What the
terminal tests check of the client's logic is checked here first, line by
line (the terminal tests then check the wiring, in both UIs)."""

import json

import pytest

from termchat.client.core import ClientCore, RecentIds
from termchat.client.effects import Leave, Ring, Send, Show
from termchat.client.session import Phase
from termchat.client.view import NICKS_KEPT, View
from termchat.wire import protocol as proto

SERVER = "127.0.0.1:3490"


def payload(message, **extra):
    return proto.encode(message, **extra)[proto.HEADER_SIZE:]


def raw(obj):
    return json.dumps(obj).encode()


def shown(effects):
    return ["".join(text for text, _ in e.line) for e in effects if isinstance(e, Show)]


def sent(effects):
    return [e.message for e in effects if isinstance(e, Send)]


def live(nick="pat", **options):
    core = ClientCore(nick, SERVER, **options)
    core.receive(payload(proto.Joined(nick)))
    return core


@pytest.fixture
def core():
    return live()


def typed(core, line):
    return core.line(line)


# ---- commands: what each line sends or says ----

@pytest.mark.parametrize("line, packet", [
    ("hello, world", proto.Chat("hello, world")),
    ("//dance is a chat", proto.Chat("/dance is a chat")),
    ("/message chris how's it going?", proto.SendDirect("chris", "how's it going?")),
    ("/msg CHRIS short form", proto.SendDirect("CHRIS", "short form")),
    ("/me goes out to buy some snacky cakes", proto.Emote("goes out to buy some snacky cakes")),
    ("/who", proto.WhoRequest()),
    ("/rooms", proto.RoomsRequest()),
    ("/join games", proto.EnterRoom("games")),
    ("/leave", proto.EnterRoom("lobby")),
    ("/nick pam", proto.ChangeNick("pam")),
    ("/away lunch", proto.Away("lunch")),
    ("/away", proto.Away("")),
    ("/op opsecret", proto.BecomeOperator("opsecret")),
    ("/kick chris too chatty", proto.KickRequest("chris", "too chatty")),
    ("/ban chris 5 spam", proto.BanRequest("chris", 5, "spam")),
    ("/ban", proto.BanRequest()),
    ("/look", proto.Look()),
    ("/l key", proto.Look("key")),
    ("/go north", proto.Go("north")),
    ("/d", proto.Go("down")),
    ("/take brass key", proto.Take("brass key")),
    ("/drop brass key", proto.Drop("brass key")),
    ("/i", proto.InventoryRequest()),
])
def test_each_command_sends_its_packet(core, line, packet):
    assert typed(core, line) == [Send(packet)]


@pytest.mark.parametrize("line, answer", [
    ("/msg chris", "*** usage: /msg NICK TEXT"),
    ("/message", "*** usage: /message NICK TEXT"),
    ("/me   ", "*** usage: /me TEXT"),
    ("/join", "*** room name is missing; usage: /join ROOM"),
    ("/nick", "*** nick is missing; usage: /nick NEW"),
    ("/op", "*** usage: /op PASSWORD"),
    ("/kick", "*** usage: /kick NICK [REASON]"),
    ("/ban chris soon", "*** usage: /ban [NICK MINUTES [REASON]]"),
    ("/go", "*** usage: /go DIRECTION"),
    ("/take", "*** usage: /take NAME"),
    ("/unignore", "*** usage: /unignore NICK"),
    ("/dance wildly", "*** unknown command: /dance (try /help)"),
])
def test_a_bad_command_line_is_answered_here_and_sends_nothing(core, line, answer):
    effects = typed(core, line)
    assert sent(effects) == [] and shown(effects) == [answer]


def test_blank_lines_do_nothing_and_q_leaves(core):
    assert typed(core, "   ") == []
    assert typed(core, "/q") == [Leave()]
    assert core.leave() == []  # no session granted: nothing to tell the server


def test_a_line_too_long_for_a_packet_is_refused_here(core):
    effects = typed(core, "x" * 70000)
    assert sent(effects) == [] and shown(effects) == [
        "*** message too long to send (70000 bytes); nothing was sent"]


def test_while_disconnected_nothing_is_sent_and_the_user_is_told(core):
    core.session.lost(1.0)
    for line in ("half", "/who", "/me waves"):
        assert shown(typed(core, line)) == [
            "*** not connected: that was not sent (Up brings it back)"]


def test_ignore_hides_chat_emotes_and_dms_here_only(core):
    assert shown(typed(core, "/ignore")) == ["*** ignoring nobody"]
    assert shown(typed(core, "/ignore chris")) == ["*** ignoring chris"]
    assert shown(typed(core, "/ignore")) == ["*** ignoring: chris"]
    for message in (proto.ChatFrom("chris", "you cannot see this"),
                    proto.EmoteFrom("Chris", "waves unseen"),
                    proto.DirectFrom("chris", "pat", "psst")):
        assert core.receive(payload(message)) == []
    assert shown(core.receive(payload(proto.ChatFrom("ann", "visible")))) == ["ann: visible"]
    assert shown(typed(core, "/unignore chris")) == ["*** no longer ignoring chris"]
    assert shown(typed(core, "/unignore chris")) == ["*** not ignoring chris"]
    assert shown(core.receive(payload(proto.ChatFrom("chris", "now you can")))) == [
        "chris: now you can"]


# ---- packets: what each shows ----

def test_the_prompt_follows_our_room_and_nick(core):
    assert core.prompt() == "pat> "
    core.receive(payload(proto.EnteredRoom("pat", "games")))
    assert core.prompt() == "pat [games]> "
    core.receive(payload(proto.EnteredRoom("chris", "elsewhere")))
    assert core.prompt() == "pat [games]> "
    core.receive(payload(proto.NickChanged("pat", "pam")))
    assert core.prompt() == "pam [games]> "
    assert sent(typed(core, "hi")) == [proto.Chat("hi")]
    assert core.opened(1.0).nick == "pam"  # a reconnection uses the new nick


def test_a_line_naming_us_is_highlighted_and_rings_with_bell():
    core = live(bell=True)
    effects = core.receive(payload(proto.ChatFrom("chris", "hey Pat, look")))
    assert Ring() in effects
    assert all(style == "mention" for text, style in effects[0].line[1:])
    assert Ring() not in core.receive(payload(proto.ChatFrom("chris", "patently not")))
    assert Ring() in core.receive(payload(proto.DirectFrom("chris", "pat", "psst")))
    assert Ring() not in core.receive(payload(proto.ChatFrom("pat", "pat says")))
    assert Ring() not in live().receive(payload(proto.DirectFrom("chris", "pat", "psst")))


def test_history_is_dimmed_and_shown_with_the_server_time(core):
    effects = core.receive(payload(proto.ChatFrom("chris", "earlier"), id="5", time=1234.5,
                                   history=True))
    assert effects == [Show([("chris", "dim"), (": earlier", "dim")], 1234.5)]


def test_a_rejoin_does_not_show_again_the_history_already_on_screen(core):
    core.receive(payload(proto.ChatFrom("chris", "seen live"), id="5", time=1.0))
    core.session.lost(2.0)
    core.opened(2.5)
    core.receive(payload(proto.Joined("pat")))
    assert core.receive(payload(proto.ChatFrom("chris", "seen live"), id="5", time=1.0,
                                history=True)) == []
    assert shown(core.receive(payload(proto.ChatFrom("ann", "new"), id="6", history=True))) \
        == ["ann: new"]


def test_the_ids_remembered_are_bounded():
    ids = RecentIds(limit=3)
    for number in range(10):
        ids.add(str(number))
    assert len(ids) == 3 and "9" in ids and "6" not in ids


def test_unknown_and_malformed_packets_show_nothing(core):
    for junk in (raw({"type": "poke"}), raw({"type": "chat", "nick": 5, "message": "x"}),
                 b"\xff", b"[]", raw({"type": "who", "room": "r", "nicks": "notalist"})):
        assert core.receive(junk) == []


# ---- a fresh join keeps the prompt true (issue 20, finding 3) ----

def test_after_a_fresh_join_the_client_goes_back_to_its_room():
    core = live()
    core.receive(payload(proto.EnteredRoom("pat", "games")))
    core.receive(payload(proto.WhoList("games", ("chris", "gone", "pat"))))
    core.session.lost(1.0)
    assert core.prompt() == "pat [games]> "  # while away: where we were
    core.opened(1.5)
    effects = core.receive(payload(proto.Joined("pat")))
    assert shown(effects) == ["*** pat has joined the chat",
                              "*** reconnected; messages sent while you were away are lost"]
    assert sent(effects) == [proto.EnterRoom("games")]
    assert core.prompt() == "pat> "  # what the server says, until it says more
    assert core.complete("go", False) == []  # what we knew of the room is gone
    core.receive(payload(proto.EnteredRoom("pat", "games")))
    assert core.prompt() == "pat [games]> "


def test_after_a_fresh_join_in_the_lobby_or_a_world_nothing_is_entered():
    core = live()
    core.session.lost(1.0)
    core.opened(1.5)
    assert sent(core.receive(payload(proto.Joined("pat")))) == []
    world = live()
    world.receive(payload(proto.PlaceView("jetty", "The Jetty", "Planks.", ("north",), (),
                                          ("pat",))))
    assert world.prompt() == "pat [The Jetty]> "
    world.session.lost(1.0)
    world.opened(1.5)
    assert sent(world.receive(payload(proto.Joined("pat")))) == []


def test_a_resume_keeps_the_room():
    core = live()
    core.receive(payload(proto.SessionGranted("tok", 60)))
    core.receive(payload(proto.EnteredRoom("pat", "games"), id="3"))
    core.session.lost(1.0)
    assert core.opened(1.5).resume == "tok"
    resumed = core.receive(payload(proto.Resumed(0)))
    assert shown(resumed) == ["*** reconnected"]
    assert sent(resumed) == [proto.WhoRequest()]  # where the server has us
    assert shown(core.receive(payload(proto.WhoList("games", ("pat",))))) == []
    assert core.prompt() == "pat [games]> "


def test_after_a_resume_the_prompt_names_the_room_the_server_has_us_in():
    core = live()
    core.receive(payload(proto.SessionGranted("tok", 60)))
    core.receive(payload(proto.EnteredRoom("pat", "games"), id="3"))  # echoed by a node
    core.session.lost(1.0)                                            # that died before
    core.opened(1.5)                                                  # passing it on
    assert sent(core.receive(payload(proto.Resumed(0)))) == [proto.WhoRequest()]
    assert shown(core.receive(payload(proto.WhoList("lobby", ("pat", "ann"))))) == \
        ["*** you are in lobby"]
    assert core.prompt() == "pat> "
    later = core.receive(payload(proto.WhoList("lobby", ("pat", "ann"))))  # /who: shown
    assert shown(later) == ["*** in lobby: pat, ann"]


# ---- world mode (issue 20, finding 10) ----

def in_world():
    core = live()
    core.receive(payload(proto.PlaceView("tower", "The Foot of the Tower", "Round.",
                                         ("south", "up", "down"), ("a brass key",),
                                         ("pat", "ann"))))
    return core


@pytest.mark.parametrize("kind, way, line", [
    ("exit", "down", "*** ann goes down"),
    ("exit", "north", "*** ann goes north"),
    ("enter", "down", "*** ann comes down from above"),
    ("enter", "up", "*** ann comes up from below"),
    ("enter", "north", "*** ann arrives from the south"),
    ("enter", "southwest", "*** ann arrives from the northeast"),
    ("enter", "in", "*** ann comes in from outside"),
    ("enter", "out", "*** ann comes out from inside"),
    ("enter", "portal", "*** ann arrives, having gone portal"),
])
def test_others_moving_say_which_way(kind, way, line):
    core = in_world()
    packet = raw({"type": kind, "nick": "ann", "room": "The Jetty", "way": way})
    assert shown(core.receive(packet)) == [line]


def test_without_a_way_movement_shows_as_before():
    core = in_world()
    assert shown(core.receive(payload(proto.ExitedRoom("ann", "The Jetty")))) == [
        "*** ann left room The Jetty"]
    assert shown(core.receive(raw({"type": "enter", "nick": "ann", "room": "x", "way": " "}))) \
        == ["*** ann entered room x"]


def test_our_own_walk_shows_only_the_new_place():
    core = in_world()
    for kind in ("exit", "enter"):
        assert core.receive(raw({"type": kind, "nick": "pat", "room": "r", "way": "up"})) == []


def test_game_refusals_are_narration_and_other_errors_stay_errors():
    core = in_world()
    effects = core.receive(payload(proto.Error("The trapdoor is locked.", proto.Code.WORLD)))
    assert effects == [Show([("*** ", "info"), ("The trapdoor is locked.", None)], None)]
    assert shown(core.receive(payload(proto.Error("no such user: lee", proto.Code.NO_USER)))) \
        == ["*** error: no such user: lee"]


def test_world_commands_complete_what_they_can_name():
    core = in_world()
    core.receive(payload(proto.Inventory(("a smooth stone",))))
    assert core.complete("d", False, "/go ") == ["down"]
    assert core.complete("bra", False, "/take ") == ["brass key"]
    assert core.complete("sto", False, "/drop ") == ["smooth stone"]
    assert core.complete("", False, "/look ") == ["brass key", "smooth stone", "south",
                                                   "up", "down"]
    assert core.complete("/l", True) == ["/leave", "/look", "/l"]
    assert live().complete("/l", True) == ["/leave"]  # no world: no world commands


def test_tab_completes_commands_and_the_nicks_seen(core):
    core.receive(payload(proto.Joined("chris")))
    core.receive(payload(proto.WhoList("lobby", ("christine", "pat"))))
    core.receive(payload(proto.Left("christine")))
    assert core.complete("chr", False) == ["chris"]
    assert core.complete("/he", True) == ["/help"]
    core.receive(payload(proto.NickChanged("chris", "kit")))
    assert core.complete("", False) == ["kit", "pat"]


# ---- the bounds on what the client keeps (issue 20, finding 11) ----

def test_a_flood_of_nicks_keeps_only_the_most_recent():
    view = View("pat")
    names = tuple(f"user{number}" for number in range(NICKS_KEPT * 3))
    for start in range(0, len(names), 6000):
        view.track(proto.WhoList("lobby", names[start:start + 6000]))
    assert len(view.nicks) == NICKS_KEPT
    assert view.complete("user0", "") == []  # the oldest went first
    assert view.complete(names[-1], "") == [names[-1]]
    view.track(proto.ChatFrom("user1", "back"))  # speaking makes one recent again
    assert view.complete("user1", "")[:1] == ["user1"]


def test_the_ignore_list_and_world_lists_are_bounded():
    from termchat.client.view import IGNORED_KEPT, NAMES_KEPT
    core = live()
    for number in range(IGNORED_KEPT + 10):
        core.line(f"/ignore spammer{number}")
    assert len(core.view.ignored) == IGNORED_KEPT
    many = tuple(f"thing {number}" for number in range(NAMES_KEPT * 2))
    core.view.track(proto.PlaceView("r", "R", "", many, many, ()))
    core.view.track(proto.Inventory(many))
    assert len(core.view.exits) == len(core.view.items_here) == len(core.view.carried) \
        == NAMES_KEPT


def test_a_password_prompt_is_secret_and_its_line_is_the_password():
    from termchat.ui.screen import SecretPrompt
    core = ClientCore("pat", SERVER)
    core.receive(payload(proto.Error("this server needs a server password",
                                     proto.Code.NEEDS_PASSWORD)))
    core.session.lost(0.1)
    assert isinstance(core.prompt(), SecretPrompt)
    assert core.prompt() == f"password for {SERVER}: "
    assert shown(core.line("")) == ["*** type the password, or Ctrl-C to quit"]
    assert sent(core.line("sesame")) == []
    assert core.session.phase is Phase.DOWN and core.opened(0.2).password == "sesame"
    assert core.prompt() == "pat> "


def test_the_prompt_is_secret_from_the_refusal_on_not_only_once_the_server_closed():
    from termchat.ui.screen import SecretPrompt
    core = ClientCore("pat", SERVER)
    core.receive(payload(proto.Error("wrong server password", proto.Code.WRONG_PASSWORD)))
    assert isinstance(core.prompt(), SecretPrompt)  # the close has not been read yet
    assert sent(core.line("sesame")) == []          # never a chat line
    assert core.session.lost(0.1) == []             # the close of the refused connection
    assert core.session.due_to_connect(0.1) and core.opened(0.1).password == "sesame"
