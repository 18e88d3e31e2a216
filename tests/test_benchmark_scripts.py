"""Every benchmark script with a command line still starts: ``--help`` exits 0 with its usage.

The benchmarks are not run by the suite, so a helper moved or renamed in one of them can
break another script unseen (cluster.py imported names that loadgen.py no longer had). Each
script runs in a subprocess, as its users run it, so its imports are checked too.

Not here, because ``--help`` is not a command line of theirs: ``selfcheck.py`` (no flags:
``--help`` runs the whole self-check), ``loadgen.py`` (``PORT CLIENTS`` only, a manual
check), ``experiments/wschat_variants.py`` (its first argument is the variant).
``peers/picows_server.py`` needs picows, which only the bench extra installs (``make bench``,
not ``make test``), so the suite could never run it: ``make bench`` starts it first thing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

SCRIPTS = [
    "run.py",
    "cluster.py",
    "memory.py",
    "history_size.py",
    "micro.py",
    "pyspy_profile.py",
    "peers/websockets_server.py",
    "experiments/memory_breakdown.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
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
