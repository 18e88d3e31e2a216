"""pytest configuration: async tests run on anyio's plugin.

A test marked ``every_loop`` runs three times, with the server on asyncio,
uvloop and trio (``running_server`` in helpers.py); the test itself, and the
`websockets` client it drives, run on asyncio (uvloop for the uvloop case).
``every_loop(loops=(...))`` narrows the list (the Redis backend needs asyncio).
Other async tests run once, on asyncio.
"""

from __future__ import annotations

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
