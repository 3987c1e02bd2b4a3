"""The clients and the development-token issuer import nothing of the server. Every import statement
is read from the source, those inside functions too, since a late import is an import all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TASKFLOW_MODULES = {path.stem for path in ROOT.glob("*.py")}
CLIENTS = {"taskflow_client", "taskflow_cli", "taskflow_mcp"}


def taskflow_imports(module: str) -> set[str]:
    """The TaskFlow modules that `module` imports anywhere in its source."""
    imported = set()
    for node in ast.walk(ast.parse((ROOT / f"{module}.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module.partition(".")[0])
    return imported & TASKFLOW_MODULES


def test_the_clients_sit_beside_the_servers_modules() -> None:
    assert CLIENTS < TASKFLOW_MODULES
    assert "devtoken" in TASKFLOW_MODULES


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_client_imports_only_the_clients(client: str) -> None:
    assert taskflow_imports(client) <= CLIENTS


def test_devtoken_imports_no_other_taskflow_module() -> None:
    assert taskflow_imports("devtoken") == set()
