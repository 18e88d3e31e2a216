"""Every benchmark script with a command line still starts: ``--help`` exits 0 with its usage.

The benchmarks are not run by the suite, so a helper moved or renamed in one of them can
break another script unseen (cluster.py imported names that loadgen.py no longer had). Each
script runs in a subprocess, as its users run it, so its imports are checked too.

Not here, because ``--help`` is not a command line of theirs: ``selfcheck.py`` (no flags:
``--help`` runs the whole self-check), ``loadgen.py`` (``PORT CLIENTS`` only, a manual
check), ``experiments/wschat_variants.py`` (its first argument is the variant).
``peers/picows_server.py`` needs picows, which only the bench extra installs (``make bench``,
not ``make test``): it is skipped where picows is missing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# script, and the modules it needs that only the bench extra installs
SCRIPTS = [
    ("run.py", ()),
    ("cluster.py", ()),
    ("memory.py", ()),
    ("micro.py", ()),
    ("pyspy_profile.py", ()),
    ("peers/websockets_server.py", ()),
    ("peers/picows_server.py", ("picows",)),
    ("experiments/memory_breakdown.py", ()),
]


@pytest.mark.parametrize(("script", "needs"), SCRIPTS, ids=[s for s, _ in SCRIPTS])
def test_help(script: str, needs: tuple[str, ...]) -> None:
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (the bench extra: make .venv/.bench-installed)")
    path = BENCHMARKS / script
    done = subprocess.run(
        [sys.executable, str(path), "--help"],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {path.name} "), done.stdout[:500]
