"""Each folder one job: the library never reaches into the BIDS-App (or its CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Library folders: importable without the BIDS-App.
LIBRARY = ("mmreg", "imaging", "methods", "segmentation")
#: ``python -m mmreg`` is the command line's entry point, not a library module.
ENTRY_POINTS = {Path("mmreg/__main__.py")}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _modules(*folders: str) -> list[Path]:
    return sorted(p.relative_to(ROOT) for f in folders for p in (ROOT / f).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(*LIBRARY), ids=str)
def test_library_modules_do_not_import_the_bids_app(path: Path) -> None:
    if path in ENTRY_POINTS:
        return
    bad = sorted(n for n in _imports(ROOT / path) if n.startswith("mmreg.bids_app"))
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", _modules("reports", "tasks", "workflows"), ids=str)
def test_nothing_outside_the_bids_app_imports_its_command_line(path: Path) -> None:
    cli = ("mmreg.bids_app.cli", "mmreg.bids_app.train", "mmreg.bids_app.run")
    bad = sorted(n for n in _imports(ROOT / path) if n.startswith(cli))
    assert not bad, f"{path} imports {bad}"
