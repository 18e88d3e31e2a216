"""Descriptor limits: the soft limit is raised at start-up, the socket cap stays below it."""

from __future__ import annotations

import resource
import subprocess
import sys

from wschat.server.descriptors import DESCRIPTOR_RESERVE, connection_cap

LOWERED_SOFT_LIMIT = 256

_REPORT_LIMITS = """
import logging, resource, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from wschat.server.descriptors import raise_open_file_limit
before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
answer = raise_open_file_limit()
after = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
print(before, answer, after)
"""


def _lower_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOWERED_SOFT_LIMIT, hard))


def test_soft_limit_is_raised_to_the_hard_limit_and_logged() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    result = subprocess.run(
        [sys.executable, "-c", _REPORT_LIMITS],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        preexec_fn=_lower_soft_limit,
    )
    before, answer, after = (int(word) for word in result.stdout.split())
    assert before == LOWERED_SOFT_LIMIT
    assert answer == after == hard
    assert f"open-file limit raised from {LOWERED_SOFT_LIMIT} to {hard}" in result.stderr


def test_cap_is_max_connections_when_descriptors_are_plentiful() -> None:
    assert connection_cap(10_000, 1_048_576) == 10_000


def test_cap_keeps_the_reserve_under_a_low_limit() -> None:
    # The common 1,024 soft limit with the default --max-connections 10,000.
    cap = connection_cap(10_000, 1024)
    assert cap == 1024 - DESCRIPTOR_RESERVE
    assert cap + DESCRIPTOR_RESERVE <= 1024


def test_cap_is_at_least_one_socket() -> None:
    assert connection_cap(10_000, 10) == 1
