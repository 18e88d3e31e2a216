"""The app layer and the server import each other one way only at load time.

The server imports ``wschat.app`` (it calls the app's hooks and matches its
outcomes); so ``wschat.app`` must not import ``wschat.server`` when it is
loaded, or whichever is imported first would find the other half-initialised.
Its uses of server modules (settings, the HTTP response type, the rate-limit
bucket, the Server in ``App.serve``) are imported where they are used.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def loaded_after(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(result.stdout.split())


def test_loading_the_app_layer_loads_no_server_module() -> None:
    loaded = loaded_after("import wschat.app\nfrom wschat import App, Identity, Rejection")
    assert "wschat.app.app" in loaded
    assert sorted(n for n in loaded if n.startswith("wschat.server")) == []


def test_the_pure_layers_do_not_load_the_app_layer() -> None:
    loaded = loaded_after("import wschat, wschat.chat, wschat.protocol")
    assert not [n for n in loaded if n.startswith("wschat.app")]


def test_an_app_is_made_and_routes_without_the_server_loaded_first() -> None:
    code = (
        "from wschat import App\n"
        "from wschat.app import AppConfig\n"
        "app = App(settings=AppConfig(api_key='k' * 16))\n"
        "import anyio\n"
        "r = anyio.run(app.handle_api, 'GET', '/api/nope', '', (), b'')\n"
        "assert r.status == 401, r\n"
    )
    assert "wschat.server.http" in loaded_after(code)
