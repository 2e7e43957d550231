"""Worlds shipped with termchat for world mode (``--world builtin``)."""

from importlib import resources

BUILTIN = "builtin.toml"


def builtin_text() -> str:
    """The TOML text of the built-in world."""
    return resources.files(__name__).joinpath(BUILTIN).read_text(encoding="utf-8")
