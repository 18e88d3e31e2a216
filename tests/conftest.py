"""pytest configuration: async tests run on anyio's plugin (asyncio backend)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
