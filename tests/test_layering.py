"""DESIGN.md: "protocol/ and chat/ never import anyio, asyncio, trio, socket, ssl ... A test
enforces it." This is that test, checked twice: at run time in a fresh interpreter, and
statically over every source file (so a lazy import inside a function is caught too).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE_PACKAGES = ("wschat.protocol", "wschat.chat")
FORBIDDEN = frozenset({"anyio", "asyncio", "trio", "socket", "ssl", "selectors", "time"})
# Imported at run time by the standard library itself for reasons of its own: only the
# static scan (below) can say that wschat does not use them directly.
RUNTIME_FORBIDDEN = frozenset({"anyio", "asyncio", "trio", "socket", "ssl", "selectors"})


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def test_importing_the_pure_layers_loads_no_io_modules() -> None:
    code = (
        "import sys\nimport wschat.protocol, wschat.chat\nprint('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = set(result.stdout.split())
    assert "wschat.protocol" in loaded and "wschat.chat" in loaded
    offenders = sorted(name for name in loaded if _top(name) in RUNTIME_FORBIDDEN)
    assert offenders == [], f"importing wschat.protocol/wschat.chat loaded {offenders}"
    # Nor do they pull in the layers that are allowed to do I/O.
    assert not [n for n in loaded if n.startswith(("wschat.server", "wschat.hub"))]


def _source_files() -> list[Path]:
    files = []
    for package in PURE_PACKAGES:
        directory = ROOT.joinpath(*package.split("."))
        files += sorted(directory.rglob("*.py"))
    return files


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports: ``import x``, ``from x import y``, ``__import__("x")``,
    ``importlib.import_module("x")``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def test_the_scan_covers_the_packages() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in _source_files()}
    assert "wschat/protocol/connection.py" in names
    assert "wschat/chat/session.py" in names


@pytest.mark.parametrize("path", _source_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_source_imports_no_io_or_clock_modules(path: Path) -> None:
    bad = [(line, name) for line, name in _imports(path) if _top(name) in FORBIDDEN]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", _source_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_source_imports_no_io_layer(path: Path) -> None:
    bad = [
        (line, name)
        for line, name in _imports(path)
        if name.startswith(("wschat.server", "wschat.hub", "wschat.cli"))
    ]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_scanner_catches_each_import_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, socket\n"
        "from ssl import SSLContext\n"
        "def f():\n"
        "    import asyncio.events\n"
        "    return __import__('trio')\n"
        "importlib.import_module('anyio')\n"
        "from . import sibling\n"
    )
    names = {_top(name) for _, name in _imports(sample)}
    assert names >= {"socket", "ssl", "asyncio", "trio", "anyio"}
    assert "sibling" not in names
