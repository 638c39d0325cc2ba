"""Every package the code imports is declared in pyproject.toml, where its users install it from."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
LOCAL = {"handler", "backends", "tests", "reliability", "bench", "loadtest", "deployments"}
# Where each folder's code is run from, as the extras a user installs for it.
GROUPS = {
    "handler": {"int8", "serverless"},  # guarded imports: bitsandbytes, runpod
    "backends": {"int8"},
    "reliability": {"dev"},
    "bench": {"bench", "dev"},
    "loadtest": {"loadtest"},
    "deployments/bundle": {"bundle"},
    "tests": {"dev", "bench", "loadtest", "int8", "serverless"},
}
# Imported only where installed, behind a guard, and said so where they are used.
OPTIONAL = {
    "optimum",  # hf_bettertransformer uses optimum.bettertransformer only where an old optimum has it
    "modal",  # deployments/modal is run by the `modal` command, which brings it
}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(groups: set[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for group in groups:
        specs += project["optional-dependencies"][group]
    return {normalized(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in specs}


def imported(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - LOCAL - set(sys.stdlib_module_names) - {"__future__"}


@pytest.mark.parametrize("folder", sorted(GROUPS))
def test_every_import_is_declared(folder: str) -> None:
    distributions = packages_distributions()
    allowed = declared(GROUPS[folder])
    missing = []
    for module in sorted(imported(ROOT / folder)):
        if module in OPTIONAL:
            continue
        owners = {normalized(d) for d in distributions.get(module, [module])}
        if not owners & allowed:
            missing.append(f"{module} (from {', '.join(sorted(owners))})")
    assert not missing, f"{folder} imports undeclared packages: {missing}"


def test_a_license_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "LICENSE").read_text()
    assert project["license"] == "MIT" and text.startswith("MIT License")
    assert "the ladle authors" in text
