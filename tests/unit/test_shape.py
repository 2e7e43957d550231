"""The product's shape, as ARCHITECTURE.md promises it: no class over 400
lines, no module over 900, the chat core's facade under 350, and no layer
importing one above it (the wire knows no sockets or terminals; the core
knows no threads; the UI knows no packets)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = sorted([*ROOT.glob("*.py"), *(ROOT / "termchat").rglob("*.py")])
MAX_CLASS_LINES, MAX_MODULE_LINES, MAX_FACADE_LINES = 400, 900, 350

# A package may not import these (its layer is below them).
FORBIDDEN_IMPORTS = {
    "termchat/wire": ("socket", "selectors", "ssl", "threading", "curses", "termchat.core",
                      "termchat.cluster", "termchat.ui", "termchat.client", "termchat.store"),
    "termchat/core": ("socket", "selectors", "ssl", "threading", "curses", "redis",
                      "termchat.cluster.link", "termchat.ui", "termchat.client"),
    "termchat/ui": ("socket", "termchat.wire", "termchat.core", "termchat.cluster"),
}


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PRODUCT, ids=relative)
def test_no_module_or_class_is_too_long(path):
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{relative(path)}: {lines} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"{relative(path)}: class {node.name}, {length} lines"


def test_the_core_facade_stays_small():
    lines = len((ROOT / "termchat" / "core" / "core.py").read_text().splitlines())
    assert lines < MAX_FACADE_LINES, lines


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_no_layer_imports_one_above_it(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(ast.parse(path.read_text())):
            if any(name == banned or name.startswith(banned + ".")
                   for banned in FORBIDDEN_IMPORTS[package]):
                wrong.append(f"{relative(path)} imports {name}")
    assert not wrong, wrong
