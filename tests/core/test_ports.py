"""The core's ports (termchat.core.ports): the Redis link and the test
harness's fake link both implement Link, and the delivery layer implements
Outbox, call for call and parameter for parameter."""

import inspect

import pytest

from termchat.cluster.link import ClusterLink
from termchat.core.delivery import Delivery
from termchat.core.ports import LINK_CALLS, Link, Outbox
from tests.core_harness import FakeLink


def parameters(function) -> list[tuple[str, object]]:
    signature = inspect.signature(function)
    return [(name, parameter.default) for name, parameter in signature.parameters.items()]


@pytest.mark.parametrize("implementation", [ClusterLink, FakeLink])
def test_both_links_implement_every_call_of_the_link_port(implementation):
    for name in LINK_CALLS:
        assert hasattr(implementation, name), f"{implementation.__name__} lacks {name}"
        assert parameters(getattr(implementation, name)) == parameters(getattr(Link, name)), name
    assert isinstance(getattr(implementation, "published_count"), property)


def test_the_delivery_layer_implements_the_outbox_port():
    for name, member in vars(Outbox).items():
        if callable(member) and not name.startswith("_"):
            assert parameters(getattr(Delivery, name)) == parameters(member), name


def test_the_core_calls_nothing_but_the_ports():
    """Every link call a handler may return names a call of the port."""
    import ast
    from pathlib import Path

    import termchat.core
    folder = Path(termchat.core.__file__).parent
    named = set()
    for source in folder.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("link", "publish"):
                literal = node.args[1 if node.func.id == "publish" else 0] if node.args else None
                if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
                    named.add(literal.value)
    assert named and named <= LINK_CALLS, named - LINK_CALLS
