"""One method table: `protocols/api.METHODS` is the source every other list of methods is checked against.

The gateway's dispatch is built from it (and refuses to start if a handler is missing), `shoal.version`
lists it; the Python client, the CLI, the dashboard's scripts and docs/protocol.md's method tables are
written by hand, so these tests fail the moment one of them drifts: a method documented but not served,
served but not documented, or called by a client under a name the gateway does not know.
"""

from __future__ import annotations

import re
from pathlib import Path

from shoal.protocols import api

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Namespaces of gateway methods (event topics are singular: `task.done`, `worker.state`).
NAMESPACES = "auth|shoal|swarm|workers|tasks|events|alerts|models|workspaces|nodes"
NAME = re.compile(rf"""["'`]((?:{NAMESPACES})\.[a-z_]+(?:\.[a-z_]+)?)["'`]""")
# Browser storage keys of the dashboard, not methods.
STORAGE_KEYS = {"shoal.tab", "shoal.token"}


def _method_table_names(markdown: str) -> set[str]:
    """The names in the first column of every table whose header starts with `| method`."""
    names: set[str] = set()
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("| method"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not line.startswith("|---"):
            first = line.split("|")[1]
            names.update(re.findall(r"`([a-z_]+\.[a-z_.]+)`", first))
    return names


def _documented_non_methods() -> set[str]:
    """Dotted names the docs mention outside the method tables: event topics, notifications, config keys."""
    named: set[str] = set()
    for page in DOCS.glob("*.md"):
        named.update(NAME.findall(page.read_text()))
    return named - set(api.METHODS)


def test_protocol_md_documents_exactly_the_methods_served() -> None:
    documented = _method_table_names((DOCS / "protocol.md").read_text())
    assert documented - set(api.METHODS) == set(), "documented in protocol.md but not served"
    assert set(api.METHODS) - documented == set(), "served but missing from protocol.md's method tables"


def test_every_method_has_a_summary_and_a_params_class() -> None:
    for name, method in api.METHODS.items():
        assert method.name == name and method.summary.strip(), name
        assert hasattr(method.params, "__attrs_attrs__"), f"{name}: params must be an attrs class"


def test_the_gateway_dispatches_every_method_and_no_other() -> None:
    source = (ROOT / "actors" / "gateway.py").read_text()
    handlers = source.split("self._handlers", 1)[1].split("}", 1)[0]
    assert set(re.findall(r'"([a-z_]+\.[a-z_.]+)":', handlers)) == set(api.METHODS)


def test_the_python_client_wraps_every_method() -> None:
    named = set(NAME.findall((ROOT / "actors" / "client.py").read_text()))
    assert set(api.METHODS) - named == set(), "methods the Python client cannot call by name"


def test_clients_call_only_methods_the_gateway_serves() -> None:
    """A method renamed or dropped in api.py, or misspelt in a client, fails here, not for a user."""
    known = set(api.METHODS) | _documented_non_methods() | STORAGE_KEYS
    static = sorted((ROOT / "actors" / "static").glob("*.js"))
    cli = sorted((ROOT / "actors" / "cli").glob("*.py"))
    sources = [ROOT / "actors" / "client.py", *cli, *static]
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sources
        for name in NAME.findall(path.read_text())
        if name not in known
    }
    assert unknown == set()


def test_the_check_catches_a_misspelt_method() -> None:
    """The scan above would see a drift: a call to a method that is not in the table."""
    known = set(api.METHODS) | _documented_non_methods()
    assert set(NAME.findall('await client.call("tasks.cancle", {"id": x})')) - known == {"tasks.cancle"}
    assert _method_table_names("| method | params |\n|---|---|\n| `a.b` / `a.c` | x |\n\ntext `d.e`\n") == {
        "a.b",
        "a.c",
    }
