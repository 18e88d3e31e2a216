"""pytest configuration: async tests run on anyio's plugin.

A test marked ``every_loop`` runs three times, with the server on asyncio,
uvloop and trio (``running_server`` in helpers.py); the test itself, and the
`websockets` client it drives, run on asyncio (uvloop for the uvloop case).
``every_loop(loops=(...))`` narrows the list (the Redis backend needs asyncio).
Other async tests run once, on asyncio.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from . import helpers


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server_loop" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("every_loop")
        loops = marker.kwargs.get("loops", helpers.SERVER_LOOPS) if marker else ("asyncio",)
        metafunc.parametrize("server_loop", loops)


@pytest.fixture
def anyio_backend(server_loop: str) -> Iterator[Any]:
    helpers.server_loop = server_loop
    try:
        yield ("asyncio", {"use_uvloop": server_loop == "uvloop"})
    finally:
        helpers.server_loop = "asyncio"


@pytest.fixture(autouse=True)
def no_server_bug_logged(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Loopback tests fail if the server logged an ERROR: errors are for bugs, and a
    misbehaving client is not a bug (its connection's boundary answers it quietly)."""
    yield
    if request.node.get_closest_marker("every_loop") is None:
        return
    errors = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.get_records("call")
        if record.levelno >= logging.ERROR and record.name.startswith("wschat")
    ]
    assert not errors, f"the server logged errors: {errors}"
