"""Imports run one way: each server module imports only from the layers below it, and the
clients import nothing of the server's.

A newcomer reading the layout in the README can trust it: a rule that needs a lower module to
know a higher one (a service reaching for the request, say) fails here instead of in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import modules of the layers before its own, never of its own or later.
SERVER_LAYERS: list[set[str]] = [
    # Foundations: they import no TaskFlow module.
    {"config", "models", "errors", "auth", "database", "devtoken", "swagger_ui"},
    {"telemetry", "audit"},
    # The access policy; rate limits and idempotency keys, which apply to every request alike.
    {"access", "ratelimit", "idempotency", "wakeups"},
    {"workflow"},
    {"services", "sweeper", "events"},
    # Comments use the task lookup and the paging of services.
    {"comments"},
    # The HTTP edge: what routes receive, and how failures are answered.
    {"dependencies", "handlers"},
    # /mcp: the MCP tools of `taskflow_mcp`, run in-process as each caller.
    {"remote_mcp"},
    {"main"},
]
CLIENT = "taskflow_client"
# The clients talk to the API over HTTP; they may import the client library, nothing of the server.
CLIENTS = {CLIENT, "taskflow_cli", "taskflow_mcp"}
# The one way round: /mcp serves the very tools `taskflow-mcp` defines, so one tool list serves both.
SERVES_CLIENT_TOOLS = {"remote_mcp": {"taskflow_mcp", CLIENT}}


def _modules() -> set[str]:
    return {path.stem for path in ROOT.glob("*.py")}


def _imported(source: str) -> set[str]:
    """The top-level names of every module `source` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.add(node.module.split(".")[0])
    return names


def _imports(module: str) -> set[str]:
    """Every TaskFlow module `module` imports."""
    return _imported((ROOT / f"{module}.py").read_text()) & _modules()


def _layer_of(module: str) -> int:
    return next(index for index, layer in enumerate(SERVER_LAYERS) if module in layer)


def test_every_module_has_a_place() -> None:
    placed = set().union(*SERVER_LAYERS) | CLIENTS
    assert _modules() == placed, "a new top-level module needs a layer here (and a line in the README's layout)"


@pytest.mark.parametrize("module", sorted(set().union(*SERVER_LAYERS)))
def test_a_server_module_imports_only_from_the_layers_below(module: str) -> None:
    layer = _layer_of(module)
    clients = CLIENTS - SERVES_CLIENT_TOOLS.get(module, set())
    against = {
        name
        for name in _imports(module) - SERVES_CLIENT_TOOLS.get(module, set())
        if name in clients or _layer_of(name) >= layer
    }
    assert not against, f"{module} (layer {layer}) imports {sorted(against)}, which are not below it"


@pytest.mark.parametrize("module", sorted(CLIENTS))
def test_a_client_imports_nothing_of_the_server(module: str) -> None:
    allowed = set() if module == CLIENT else {CLIENT}
    assert _imports(module) <= allowed, f"{module} imports {sorted(_imports(module) - allowed)}"


def test_the_check_sees_imports_inside_functions() -> None:
    # Guards the guard: a lazy import is an import (the CLI once imported the server's config that way).
    source = "import json\n\ndef f():\n    from config import load_settings\n    import models.x\n"
    assert _imported(source) == {"json", "config", "models"}
