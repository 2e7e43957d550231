"""World mode's world: places, exits, items and where everything is, with no I/O.

A :class:`World` is what a world file describes; :func:`parse_world` reads
one from TOML text and refuses anything wrong with the file, line and
reason (:class:`WorldError`).  A :class:`WorldState` is where every item
and every player is now; it turns into JSON-able data and back (for
``--state`` and for Redis).  Each verb (:func:`go`, :func:`take`,
:func:`drop`, :func:`look_at`, ...) is a function of the world and the
state returning what happened, or a :class:`Refusal` with the text to
show; the chat core turns results into packets.  Players are named by
their nick's name key.

The format (the built-in world, termchat/world/builtin.toml, is the example)::

    name = "Gull Point"
    start = "jetty"

    [places.jetty]
    title = "The Jetty"
    description = "Planks, gulls, the sea."
    exits = { north = "path" }
    items = ["rope"]

    [places.hall.exits]
    down = { to = "cellar", key = "brass-key", locked = "The trapdoor is locked.",
             unlock = "You unlock the trapdoor with the brass key; it falls shut behind you." }

    [items.brass-key]
    name = "brass key"
    description = "Small and green with age."
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from termchat.wire.names import name_problem
from termchat.wire.protocol import quote

DIRECTIONS = ("north", "south", "east", "west", "up", "down",
              "northeast", "northwest", "southeast", "southwest", "in", "out")
SHORT_DIRECTIONS = {"n": "north", "s": "south", "e": "east", "w": "west", "u": "up",
                    "d": "down", "ne": "northeast", "nw": "northwest", "se": "southeast",
                    "sw": "southwest"}
ARTICLES = ("a", "an", "the", "some")
MAX_PLAYERS = 100_000  # players whose place is remembered (the longest unseen go first)
MAX_TEXT = 3000        # characters of a description...
MAX_TITLE = 100        # ...of a place's title (or the world's name)...
MAX_NAME = 60          # ...and of an item's name: a look always fits in a packet
MAX_ARTICLE = 12       # characters of an item's article ("a", "an", "some", ...)


class WorldError(ValueError):
    """A world file that cannot be used: where, and why."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        where = f"{source}, line {line}" if line else source
        super().__init__(f"{where}: {reason}")
        self.source, self.line, self.reason = source, line, reason


@dataclass(frozen=True)
class Item:
    id: str
    name: str            # "brass key"
    description: str
    article: str = "a"

    @property
    def shown(self) -> str:
        """As a list shows it: "a brass key"."""
        return f"{self.article} {self.name}" if self.article else self.name

    @property
    def the(self) -> str:
        """As a sentence names it: "the brass key"."""
        return f"the {self.name}"


@dataclass(frozen=True)
class Exit:
    direction: str
    to: str
    key: str | None = None   # the item that opens it, each time one goes through
    locked: str = ""         # what is said to someone without the key
    unlock: str = ""         # what is said to someone going through with it


@dataclass(frozen=True)
class Place:
    id: str
    title: str
    description: str
    exits: dict[str, Exit]
    items: tuple[str, ...] = ()  # where the items start


@dataclass(frozen=True)
class World:
    name: str
    start: str
    places: dict[str, Place]
    items: dict[str, Item]


# --------------------------------------------------------------------------
# Reading a world file


class Lines:
    """Which line of the TOML text a table or key is on, for error
    messages: table headers and ``key =`` lines are found by a scan (good
    enough for the keys a world file has; inline tables count as their
    key's line)."""

    HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
    KEY = re.compile(r'^\s*("?)([A-Za-z0-9_.-]+)\1\s*=')

    def __init__(self, text: str) -> None:
        self.tables: dict[tuple[str, ...], int] = {}
        self.keys: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), 1):
            header = self.HEADER.match(line)
            if header:
                table = tuple(part.strip().strip('"') for part in header.group(1).split("."))
                self.tables.setdefault(table, number)
                continue
            key = self.KEY.match(line)
            if key:
                path = table + tuple(key.group(2).split("."))
                self.keys.setdefault(path, number)

    def of(self, *path: str) -> int | None:
        """The line of the deepest part of ``path`` that can be found."""
        for end in range(len(path), 0, -1):
            found = self.keys.get(path[:end]) or self.tables.get(path[:end])
            if found:
                return found
        return None


def parse_world(text: str, source: str = "<world>") -> World:
    """The world a TOML text describes; WorldError (with the line where it
    can be told) for a file that does not parse, leaves something out, or
    refers to places or items that do not exist."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise WorldError(source, int(match.group(1)) if match else None,
                         f"not valid TOML: {exc}") from None
    except RecursionError:
        raise WorldError(source, None, "not a world: tables or arrays nested too deeply") \
            from None
    return WorldReader(data, Lines(text), source).world()


class WorldReader:
    """Checks the parsed TOML piece by piece, naming the line of each fault."""

    def __init__(self, data: dict, lines: Lines, source: str) -> None:
        self.data, self.lines, self.source = data, lines, source

    def fail(self, reason: str, *path: str):
        raise WorldError(self.source, self.lines.of(*path), reason)

    def text(self, table: dict, key: str, *path: str, required: bool = True,
             limit: int = MAX_TEXT) -> str:
        value = table.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            self.fail(f'"{key}" must be {"a non-empty" if required else "a"} string',
                      *path, key)
        if len(value.strip()) > limit:
            self.fail(f'"{key}" is longer than {limit} characters', *path, key)
        return value.strip()

    def only(self, table: dict, allowed: set[str], *path: str) -> None:
        for key in table:
            if key not in allowed:
                self.fail(f'unknown key "{key}" (expected one of: '
                          f'{", ".join(sorted(allowed))})', *path, key)

    def world(self) -> World:
        data = self.data
        self.only(data, {"name", "start", "places", "items"})
        name = self.text(data, "name", required=False, limit=MAX_TITLE) or "the world"
        items = {item_id: self.item(item_id, table)
                 for item_id, table in self.tables(data, "items").items()}
        places = {place_id: self.place(place_id, table, items)
                  for place_id, table in self.tables(data, "places").items()}
        if not places:
            self.fail('a world needs at least one place: "[places.ID]"')
        start = self.text(data, "start")
        if start not in places:
            self.fail(f'"start" is "{start}", which is not a place', "start")
        placed: dict[str, str] = {}
        for place in places.values():
            for exit_ in place.exits.values():
                if exit_.to not in places:
                    self.fail(f'the exit {exit_.direction} of "{place.id}" leads to '
                              f'"{exit_.to}", which is not a place',
                              "places", place.id, "exits", exit_.direction)
            for item_id in place.items:
                if item_id in placed:
                    self.fail(f'the item "{item_id}" is in "{placed[item_id]}" already',
                              "places", place.id, "items")
                placed[item_id] = place.id
        return World(name, start, places, items)

    def tables(self, data: dict, key: str) -> dict[str, dict]:
        tables = data.get(key, {})
        if not isinstance(tables, dict):
            self.fail(f'"{key}" must be tables: "[{key}.ID]"', key)
        for table_id, table in tables.items():
            problem = name_problem(table_id)
            if problem:
                self.fail(f'the id "{table_id}" {problem}', key, table_id)
            if not isinstance(table, dict):
                self.fail(f'"{key}.{table_id}" must be a table', key, table_id)
        return tables

    def item(self, item_id: str, table: dict) -> Item:
        path = ("items", item_id)
        self.only(table, {"name", "description", "article"}, *path)
        name = self.text(table, "name", *path, limit=MAX_NAME)
        article = table.get("article", "an" if name[:1].lower() in "aeiou" else "a")
        if not isinstance(article, str):
            self.fail('"article" must be a string', *path, "article")
        if len(article.strip()) > MAX_ARTICLE:
            self.fail(f'"article" is longer than {MAX_ARTICLE} characters', *path, "article")
        return Item(item_id, name, prose(self.text(table, "description", *path)),
                    article.strip())

    def place(self, place_id: str, table: dict, items: dict[str, Item]) -> Place:
        path = ("places", place_id)
        self.only(table, {"title", "description", "exits", "items"}, *path)
        exits_table = table.get("exits", {})
        if not isinstance(exits_table, dict):
            self.fail('"exits" must be a table of direction = place', *path, "exits")
        exits = {direction: self.exit(direction, target, items, *path, "exits", direction)
                 for direction, target in exits_table.items()}
        placed = table.get("items", [])
        if not isinstance(placed, list) or not all(isinstance(i, str) for i in placed):
            self.fail('"items" must be a list of item ids', *path, "items")
        for item_id in placed:
            if item_id not in items:
                self.fail(f'the item "{item_id}" is not described in "[items]"',
                          *path, "items")
        return Place(place_id, self.text(table, "title", *path, limit=MAX_TITLE),
                     prose(self.text(table, "description", *path)), exits, tuple(placed))

    def exit(self, direction: str, target: Any, items: dict[str, Item], *path: str) -> Exit:
        if direction not in DIRECTIONS:
            self.fail(f'"{direction}" is not a direction (use one of: '
                      f'{", ".join(DIRECTIONS)})', *path)
        if isinstance(target, str):
            return Exit(direction, target)
        if not isinstance(target, dict):
            self.fail(f'the exit {direction} must be a place id or a table', *path)
        self.only(target, {"to", "key", "locked", "unlock"}, *path)
        to = self.text(target, "to", *path)
        key = target.get("key")
        if key is not None and key not in items:
            self.fail(f'the key "{key}" of the exit {direction} is not described in '
                      '"[items]"', *path)
        locked = self.text(target, "locked", *path, required=False) or "It is locked."
        unlock = self.text(target, "unlock", *path, required=False)
        if key is not None and not unlock:
            unlock = (f"You unlock the way {direction} with {items[key].the}; it locks again "
                      "behind you.")
        return Exit(direction, to, key, locked, unlock)


def prose(text: str) -> str:
    """A description as the reader gets it: lines joined into paragraphs
    (a blank line starts a new one), which the terminal wraps to its width."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


# --------------------------------------------------------------------------
# Where everything is now


@dataclass
class WorldState:
    """Where each item lies (a place id) or who carries it (a player), and
    each player's place.  ``version`` grows with every change, so a writer
    can tell when to save."""

    world: World
    item_place: dict[str, str] = field(default_factory=dict)     # item -> place
    carried: dict[str, list[str]] = field(default_factory=dict)  # player -> items
    player_place: OrderedDict[str, str] = field(default_factory=OrderedDict)
    version: int = 0
    changed_players: set = field(default_factory=set)  # since take_changes()...
    changed_items: set = field(default_factory=set)    # ...(for a database)

    @classmethod
    def fresh(cls, world: World) -> WorldState:
        return cls(world, {item: place.id for place in world.places.values()
                           for item in place.items})

    def changed(self) -> None:
        self.version += 1

    def items_in(self, place: str) -> list[Item]:
        return [self.world.items[i] for i, at in self.item_place.items() if at == place]

    def carried_by(self, player: str) -> list[Item]:
        return [self.world.items[i] for i in self.carried.get(player, ())]

    def place_of(self, player: str) -> str:
        return self.player_place.get(player, self.world.start)

    def put_player(self, player: str, place: str) -> list[str]:
        """The player is in ``place`` now; returns the players forgotten to
        keep the list bounded: the longest unseen of those carrying nothing
        (so no item moves; those carrying something are at most as many as
        the items)."""
        self.player_place[player] = place
        self.player_place.move_to_end(player)
        forgotten = []
        if len(self.player_place) > MAX_PLAYERS:
            for old in list(self.player_place):
                if len(self.player_place) <= MAX_PLAYERS:
                    break
                if old != player and not self.carried.get(old):
                    del self.player_place[old]
                    forgotten.append(old)
        self.changed_players.update(forgotten, (player,))
        self.changed()
        return forgotten

    def rename_player(self, old: str, new: str) -> None:
        """A player now known by another name keeps its place and things."""
        if old == new:
            return
        if old in self.player_place:
            self.player_place[new] = self.player_place.pop(old)
        if old in self.carried:
            self.changed_items.update(self.carried[old])
            self.carried.setdefault(new, []).extend(self.carried.pop(old))
        self.changed_players.update((old, new))
        self.changed()

    def start_of(self, item: str) -> str:
        return next((p.id for p in self.world.places.values() if item in p.items),
                    self.world.start)

    def place_item(self, item: str, place: str | None = None,
                   player: str | None = None) -> None:
        """Put an item in a place, or in a player's hands."""
        self.item_place.pop(item, None)
        for holder, items in list(self.carried.items()):
            if item in items:
                items.remove(item)
                if not items:
                    del self.carried[holder]
        if player is not None:
            self.carried.setdefault(player, []).append(item)
        else:
            self.item_place[item] = place or self.start_of(item)
        self.changed_items.add(item)
        self.changed()

    def take_changes(self) -> tuple[dict[str, str | None], dict[str, tuple]]:
        """What changed since the last call: player -> place (None:
        forgotten), and item -> (place, None) or (None, holder)."""
        players = {player: self.player_place.get(player) for player in self.changed_players}
        holders = {item: player for player, items in self.carried.items() for item in items
                   if item in self.changed_items}
        items = {item: (self.item_place.get(item), holders.get(item))
                 for item in self.changed_items}
        self.changed_players, self.changed_items = set(), set()
        return players, items

    def to_data(self) -> dict:
        return {"world": self.world.name, "items": dict(self.item_place),
                "carried": {p: list(i) for p, i in self.carried.items()},
                "players": dict(self.player_place)}

    @classmethod
    def from_data(cls, world: World, data: Any) -> WorldState:
        """The state saved earlier, fitted to the world as it is now: an
        item or place the world no longer has is dropped, an item missing
        from the saved state starts where the world puts it.  A state of
        the wrong shape (not what to_data() writes) is a ValueError."""
        state = cls.fresh(world)
        if not isinstance(data, dict):
            raise ValueError("the saved state is not a JSON object")
        places, items = world.places, world.items
        for player, place in _pairs(data, "players", str):
            if place in places:
                state.player_place[player] = place
        for player, held in _pairs(data, "carried", list):
            for item in held:
                if not isinstance(item, str):
                    raise ValueError('"carried" must map each player to a list of item ids')
                if item in items:
                    state.place_item(item, player=player)
        for item, place in _pairs(data, "items", str):
            if item in items and place in places:
                state.place_item(item, place)
        if len(state.player_place) > MAX_PLAYERS:
            for player in list(state.player_place)[:len(state.player_place) - MAX_PLAYERS]:
                if not state.carried.get(player):
                    del state.player_place[player]
        state.version = 0
        state.changed_players, state.changed_items = set(), set()
        return state


def _pairs(data: dict, key: str, kind: type) -> list[tuple[str, Any]]:
    """The entries of one table of a saved state, checked for their shape."""
    table = data.get(key, {})
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, kind)
                                              for k, v in table.items()):
        what = "a place id" if kind is str else "a list of item ids"
        raise ValueError(f'"{key}" must map names to {what}')
    return list(table.items())


# --------------------------------------------------------------------------
# The verbs


@dataclass(frozen=True)
class Refusal:
    text: str


@dataclass(frozen=True)
class View:
    place: Place
    exits: list[str]
    items: list[Item]


@dataclass(frozen=True)
class Moved:
    old: Place
    new: Place
    way: Exit                # the exit taken (its direction; its key and words, if locked)
    key: Item | None = None  # what opened a locked exit


@dataclass(frozen=True)
class Handled:
    """An item taken or dropped."""
    item: Item


def view(state: WorldState, player: str) -> View:
    place = state.world.places[state.place_of(player)]
    return View(place, list(place.exits), state.items_in(place.id))


def direction_of(text: str) -> str:
    word = text.strip().lower()
    return SHORT_DIRECTIONS.get(word, word)


def go(state: WorldState, player: str, direction: str) -> Moved | Refusal:
    world = state.world
    here = world.places[state.place_of(player)]
    way = here.exits.get(direction_of(direction))
    if way is None:
        exits = ", ".join(here.exits) or "none"
        return Refusal(f"You cannot go {quote(direction.strip()) or 'nowhere'} from here "
                       f"(exits: {exits}).")
    key = None
    if way.key is not None:
        if way.key not in state.carried.get(player, ()):
            return Refusal(way.locked)
        key = world.items[way.key]
    state.put_player(player, way.to)
    return Moved(here, world.places[way.to], way, key)


def find_item(items: list[Item], name: str) -> Item | None | list[Item]:
    """The item a player means by ``name``: its name with or without an
    article, its id, or a word of its name (or the start of one) if only
    one item has it (a list when several do)."""
    wanted = " ".join(name.casefold().split())
    first, _, rest = wanted.partition(" ")
    if first in ARTICLES and rest:
        wanted = rest
    for item in items:
        if wanted in (item.name.casefold(), item.id.casefold(), item.shown.casefold()):
            return item
    partial = [item for item in items if wanted in item.name.casefold().split()
               or item.name.casefold().endswith(wanted)]
    if not partial:  # the start of a word will do too: "sto" for the stone
        partial = [item for item in items
                   if any(word.startswith(wanted) for word in item.name.casefold().split())]
    if len(partial) == 1:
        return partial[0]
    return partial or None


def _chosen(found: Item | None | list[Item], name: str, where: str) -> Item | Refusal:
    if isinstance(found, Item):
        return found
    if found:
        names = " or ".join(item.the for item in found)
        return Refusal(f"Which do you mean: {names}?")
    return Refusal(f"There is no {quote(name.strip()) or 'such thing'} {where}.")


def choose_here(state: WorldState, player: str, name: str) -> Item | Refusal:
    """The item lying here that ``name`` means (nothing is moved)."""
    return _chosen(find_item(state.items_in(state.place_of(player)), name), name, "here")


def take(state: WorldState, player: str, name: str) -> Handled | Refusal:
    item = choose_here(state, player, name)
    if isinstance(item, Refusal):
        return item
    state.place_item(item.id, player=player)
    return Handled(item)


def drop(state: WorldState, player: str, name: str) -> Handled | Refusal:
    item = _chosen(find_item(state.carried_by(player), name), name, "that you carry")
    if isinstance(item, Refusal):
        return item
    state.place_item(item.id, state.place_of(player))
    return Handled(item)


def look_at(state: WorldState, player: str, name: str) -> str | Refusal:
    """An item here or carried, described; or where an exit leads."""
    world = state.world
    here = world.places[state.place_of(player)]
    way = here.exits.get(direction_of(name))
    if way is not None:
        there = world.places[way.to].title
        return f"{way.direction.capitalize()}: {there}" + (
            " (locked)" if way.key and way.key not in state.carried.get(player, ()) else "")
    items = state.items_in(here.id) + state.carried_by(player)
    item = _chosen(find_item(items, name), name, "here")
    if isinstance(item, Refusal):
        return item
    return f"{item.name.capitalize()}: {item.description}"
