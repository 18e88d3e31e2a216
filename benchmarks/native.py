"""The load generator's C fast path (``_scan.c``), compiled on first use with the system's cc.

``scanner()`` returns the compiled ``scan`` function, or None when no C compiler or Python
headers are there: the load generator then walks every frame in Python (the same checks,
about 0.5 µs per frame more) and the report says which one ran. The build goes to
``results/native/`` keyed by a hash of the source and the interpreter, so it is made once.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_scan.c"

ScanResult = tuple[int, int, int, int, bytes, bytes, int]
Scan = Callable[..., ScanResult]

_loaded: dict[str, Any] = {}


def build() -> Path:
    """Compile ``_scan.c`` (once per source and interpreter); return the extension's path."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    digest = hashlib.sha256(SOURCE.read_bytes() + sys.version.encode()).hexdigest()[:12]
    target = HERE / "results" / "native" / f"_scan-{digest}{suffix}"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if compiler is None or not (Path(include) / "Python.h").exists():
        raise RuntimeError("no C compiler or no Python headers")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", f"-I{include}", str(SOURCE), "-o", str(partial)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    partial.replace(target)
    return target


def scanner() -> Scan | None:
    """The native ``scan`` function, or None (and the reason in ``status()``)."""
    if "scan" in _loaded:
        return _loaded["scan"]  # type: ignore[no-any-return]
    scan = None
    try:
        path = build()
        spec = importlib.util.spec_from_file_location("_scan", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        scan = module.scan
        _loaded["status"] = "native (C)"
    except (OSError, RuntimeError, subprocess.SubprocessError, ImportError) as exc:
        _loaded["status"] = f"python (no native scanner: {exc})"
    _loaded["scan"] = scan
    return scan


def status() -> str:
    """Which frame scanner the load generator uses, for the report."""
    scanner()
    return str(_loaded["status"])
