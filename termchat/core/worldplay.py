"""World mode's packets: the world model (termchat.world.model) decides, this
routes.  Places are rooms; going through an exit is a move (with the way
it went); taking and dropping are emotes the place sees; a game refusal is
an ``error`` with code ``world``.  In a cluster the world's state lives in
Redis and a take is decided there in one step (link call ``take_item``,
answered by an ``ItemTaken``); every change is an item event for the
other nodes.
"""

from __future__ import annotations

from termchat.cluster import events as cluster
from termchat.core import actions
from termchat.core.actions import Parts
from termchat.core.effects import Effects, Send, link
from termchat.core.gate import Connection, State
from termchat.core.presence import Room, User
from termchat.core.tables import applies, handles
from termchat.wire import protocol as proto
from termchat.wire.protocol import Code
from termchat.world import model as world

PEOPLE_SHOWN = 100   # people named in one look...
ITEMS_SHOWN = 50     # ...and items in a look or an inventory (with the world model's
# limits on names and descriptions, a look always fits in one packet)
NO_WORLD = proto.Error("this server has no world (it was started without --world)",
                       Code.NO_WORLD)


def arrive(parts: Parts, conn: Connection, nick: str, session: bool, now: float,
           replaces: str = "") -> Effects:
    """The nick is ours (taken from the dead node ``replaces``, if not ""):
    join, in world mode where the user was (then it sees the place)."""
    if parts.world_state is None:
        return actions.join(parts, conn, nick, session, now, replaces=replaces)
    room, effects = arrival(parts, nick)
    return effects + actions.join(parts, conn, nick, session, now, room, replaces) + \
        view(parts, conn.user)


def arrival(parts: Parts, nick: str) -> tuple[Room, Effects]:
    """Where a user arriving now starts: the place it was in when it left
    (the world's start the first time)."""
    state, key = parts.world_state, proto.name_key(nick)
    place = state.place_of(key)
    forgotten = state.put_player(key, place)
    effects: Effects = []
    if parts.cluster:
        effects.append(link("save_place", key, place))
        effects += [link("save_place", player, None) for player in forgotten]
    return parts.presence.room_named(place), effects


def view(parts: Parts, user: User) -> Effects:
    """The place, naming at most PEOPLE_SHOWN people and ITEMS_SHOWN items
    (a crowd of thousands must not make a packet too large to send)."""
    seen = world.view(parts.world_state, user.key)
    people = [other.nick for other in parts.presence.who(user.room)]
    items = [item.shown for item in seen.items]
    return [Send(user.connection, proto.PlaceView(
        seen.place.id, seen.place.title, seen.place.description, tuple(seen.exits),
        tuple(items[:ITEMS_SHOWN]), tuple(people[:PEOPLE_SHOWN]),
        max(0, len(items) - ITEMS_SHOWN), max(0, len(people) - PEOPLE_SHOWN)))]


def inventory(parts: Parts, user: User) -> Effects:
    carried = [item.shown for item in parts.world_state.carried_by(user.key)]
    return [Send(user.connection, proto.Inventory(tuple(carried[:ITEMS_SHOWN]),
                                                  max(0, len(carried) - ITEMS_SHOWN)))]


def exits_here(parts: Parts, user: User) -> str:
    return ", ".join(world.view(parts.world_state, user.key).exits) or "none"


def refused(conn: Connection, refusal: world.Refusal) -> Effects:
    return [Send(conn, proto.Error(refusal.text, Code.WORLD))]


@handles(proto.Look)
def on_look(parts: Parts, conn: Connection, look: proto.Look, now: float) -> Effects:
    if parts.world_state is None:
        return [Send(conn, NO_WORLD)]
    if look.at is None or not look.at.strip():
        return view(parts, conn.user)
    said = world.look_at(parts.world_state, conn.user.key, look.at)
    return refused(conn, said) if isinstance(said, world.Refusal) else \
        [Send(conn, proto.Info(said))]


@handles(proto.Go)
def on_go(parts: Parts, conn: Connection, go: proto.Go, now: float) -> Effects:
    if parts.world_state is None:
        return [Send(conn, NO_WORLD)]
    user = conn.user
    moved = world.go(parts.world_state, user.key, go.exit)
    if isinstance(moved, world.Refusal):
        return refused(conn, moved)
    effects: Effects = []
    if moved.key is not None:  # through a locked exit with its key: every time, and said
        effects.append(Send(conn, proto.Info(moved.way.unlock)))
    if parts.cluster:
        effects.append(link("save_place", user.key, moved.new.id))
    effects += actions.move(parts, user, parts.presence.room_named(moved.new.id),
                            way=moved.way.direction)
    return effects + view(parts, user)


@handles(proto.Take)
def on_take(parts: Parts, conn: Connection, take: proto.Take, now: float) -> Effects:
    """Alone, the world decides; in a cluster Redis does (in one step),
    so that users on two nodes cannot both take the same item."""
    if parts.world_state is None:
        return [Send(conn, NO_WORLD)]
    state, player = parts.world_state, conn.user.key
    if not parts.cluster:
        return handled(parts, conn, world.take(state, player, take.item), "picks up")
    item = world.choose_here(state, player, take.item)
    if isinstance(item, world.Refusal):
        return refused(conn, item)
    return [link("take_item", conn, item.id, state.place_of(player), player)]


@applies(cluster.ItemTaken)
def on_item_taken(parts: Parts, event: cluster.ItemTaken, now: float) -> Effects:
    conn, item = event.token, parts.world_state.world.items[event.item]
    joined = conn.state is State.JOINED and conn.user is not None
    if not event.granted:
        if not joined:
            return []
        return [Send(conn, proto.Error(
            "Nothing can be picked up while the chat servers' shared store is away; try "
            "again in a moment." if event.unreachable else
            f"{item.the.capitalize()} is not here any more: someone was quicker.",
            Code.WORLD))]
    player = conn.user.key if joined else ""
    parts.world_state.place_item(item.id, player=player)
    return handled(parts, conn, world.Handled(item), "picks up") if joined else []


@handles(proto.Drop)
def on_drop(parts: Parts, conn: Connection, drop: proto.Drop, now: float) -> Effects:
    if parts.world_state is None:
        return [Send(conn, NO_WORLD)]
    state, player = parts.world_state, conn.user.key
    dropped = world.drop(state, player, drop.item)
    effects: Effects = []
    if parts.cluster and isinstance(dropped, world.Handled):
        effects.append(link("put_item", dropped.item.id, state.place_of(player)))
    return effects + handled(parts, conn, dropped, "drops")


@applies(cluster.RemoteItem)
def on_remote_item(parts: Parts, event: cluster.RemoteItem, now: float) -> Effects:
    known = parts.world_state.world if parts.world_state else None
    if known is None or event.item not in known.items or (
            event.place and event.place not in known.places):
        actions.log_once(parts, "ignoring an event about an item or place this world lacks",
                         event.node)
        return []
    parts.world_state.place_item(event.item, event.place or None, event.holder or None)
    return []


def handled(parts: Parts, conn: Connection, result: world.Handled | world.Refusal,
            verb: str) -> Effects:
    """The place sees it done (as an emote); the doer gets its inventory."""
    if isinstance(result, world.Refusal):
        return refused(conn, result)
    said = proto.EmoteFrom(conn.user.nick, f"{verb} {result.item.the}")
    return actions.say_in_room(parts, conn, said) + inventory(parts, conn.user)


@handles(proto.InventoryRequest)
def on_inventory(parts: Parts, conn: Connection, _: proto.InventoryRequest,
                 now: float) -> Effects:
    if parts.world_state is None:
        return [Send(conn, NO_WORLD)]
    return inventory(parts, conn.user)


def follow_player(parts: Parts, nick: str, room: str) -> None:
    """Where another node's user is now, in the world's state."""
    if parts.world_state is not None and room in parts.world_state.world.places:
        parts.world_state.put_player(proto.name_key(nick), room)
