"""The house rules of the layout (docs/ARCHITECTURE.md), read from the code's own imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for top in ("handler", "backends") for p in sorted((ROOT / top).rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every module `name` imports, at run time or for type checking, as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _within(prefix: str) -> list[str]:
    return [name for name in MODULES if name == prefix or name.startswith(prefix + ".")]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_400_lines(name: str) -> None:
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES, "split it by concern"


def test_the_api_has_no_web_framework_in_it() -> None:
    for name in _within("handler.api"):
        framework = {m for m in imports(name) if m.split(".")[0] in {"starlette", "uvicorn", "anyio"}}
        assert not framework, f"{name} imports {sorted(framework)}"


def test_the_queue_worker_does_not_go_through_http() -> None:
    assert not {m for m in imports("handler.serverless") if m.startswith("handler.asgi")}


def test_backends_never_import_the_server() -> None:
    for name in _within("backends"):
        assert not {m for m in imports(name) if m.split(".")[0] == "handler"}, name


def test_no_two_modules_import_each_other_in_a_loop() -> None:
    graph = {
        name: {m for m in imports(name) if m in MODULES and m not in {"handler", "backends"}}
        for name in MODULES
    }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
