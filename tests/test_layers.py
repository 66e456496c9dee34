"""The house's shape holds: the riskwatch package's layers import only downward, nothing imports a stage script,
and each script is its stage's command line over the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT

SCRIPTS = sorted(path.stem for path in PROJECT_ROOT.glob("*.py") if path.stem != "gunicorn.conf")


def imported_modules(path: Path) -> set[str]:
    """The absolute module names a file imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_layer_contract_is_kept(monkeypatch):
    from importlinter.application.use_cases import lint_imports
    from importlinter.configuration import configure

    configure()  # what the lint-imports command sets up first
    monkeypatch.chdir(PROJECT_ROOT)  # import-linter reads pyproject.toml from the working folder
    assert lint_imports(cache_dir=None, no_logo=True) is True


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "riskwatch").rglob("*.py")), ids=lambda path: path.stem)
def test_no_module_of_the_package_imports_a_script(path):
    assert not {name.split(".")[0] for name in imported_modules(path)} & set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_is_a_front_door_over_the_package(script):
    path = PROJECT_ROOT / f"{script}.py"
    local = {name for name in imported_modules(path) if name.split(".")[0] not in ("typing", "__future__")}
    assert local and all(name.startswith("riskwatch.") or name == "riskwatch" for name in local), local
    assert len(path.read_text().splitlines()) < 40  # the command line; the work is in the package
