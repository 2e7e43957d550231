"""World mode: the model (model.py, no I/O) and the worlds shipped with
termchat (``--world builtin``: builtin.toml, Gull Point)."""

from importlib import resources

BUILTIN = "builtin.toml"


def builtin_text() -> str:
    """The TOML text of the built-in world."""
    return resources.files(__name__).joinpath(BUILTIN).read_text(encoding="utf-8")
