"""``wschat serve module:app``: finding the App, and the settings that cannot work together."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from wschat.app import CLI_OPTIONS, App, AppConfig, AppLoadError, ConfigError, load_app
from wschat.app.config import FIELDS
from wschat.cli import build_parser
from wschat.server import ServerConfig

SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A project directory with a package holding an app, as a developer would lay it out."""
    package = tmp_path / "myproject"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "chat.py").write_text(
        textwrap.dedent(
            """
            from wschat import App

            app = App()
            app.ephemeral("reaction", rate=2, burst=4, max_data=64)

            class Holder:
                app = app

            not_an_app = 42
            """
        )
    )
    (package / "broken.py").write_text("import a_module_that_does_not_exist\n")
    saved = list(sys.path)
    yield tmp_path
    sys.path[:] = saved
    for name in [n for n in sys.modules if n.startswith("myproject")]:
        del sys.modules[name]


def test_loads_module_attribute(project: Path) -> None:
    app = load_app("myproject.chat:app", str(project))
    assert isinstance(app, App) and "reaction" in app.ephemeral_types


def test_nested_attribute(project: Path) -> None:
    assert load_app("myproject.chat:Holder.app", str(project)) is load_app(
        "myproject.chat:app", str(project)
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("myproject.chat", 'expected "module:attribute"'),
        (":app", 'expected "module:attribute"'),
        ("myproject.chat:", 'expected "module:attribute"'),
        ("myproject.nope:app", "no module named 'myproject.nope'"),
        ("nothere:app", "no module named 'nothere'"),
        ("myproject.chat:missing", "has no attribute 'missing'"),
        ("myproject.chat:not_an_app", "is a int, not a wschat.App"),
    ],
)
def test_bad_specs(project: Path, spec: str, message: str) -> None:
    with pytest.raises(AppLoadError, match=message):
        load_app(spec, str(project))


def test_an_import_error_inside_the_app_is_the_apps(project: Path) -> None:
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist"):
        load_app("myproject.broken:app", str(project))


def test_the_current_directory_is_searched(project: Path) -> None:
    code = "from wschat.app import load_app; print(type(load_app('myproject.chat:app')).__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "App", result.stderr


def test_serve_takes_an_app_argument() -> None:
    args = build_parser().parse_args(["serve", "myproject.chat:app", "--port", "0"])
    assert args.app == "myproject.chat:app"
    assert build_parser().parse_args(["serve"]).app is None


class TestSettings:
    @pytest.mark.parametrize(
        ("settings", "server", "message"),
        [
            (AppConfig(auth="required"), ServerConfig(), "needs --jwt-secret"),
            (AppConfig(auth="optional"), ServerConfig(), "needs --jwt-secret"),
            (AppConfig(auth="sometimes"), ServerConfig(), "off, optional or required"),  # type: ignore[arg-type]
            (AppConfig(jwt_secret=SECRET, jwt_public_key="k.pem"), ServerConfig(), "not both"),
            (AppConfig(jwt_secret="short"), ServerConfig(), "at least 32 bytes"),
            (AppConfig(jwt_secret=SECRET, jwt_leeway=-1), ServerConfig(), "--jwt-leeway"),
            (AppConfig(jwt_public_key="/nonexistent.pem"), ServerConfig(), "nonexistent.pem"),
            (AppConfig(api_key="short"), ServerConfig(), "at least 16"),
            (AppConfig(jwt_secret=SECRET, jwt_cookie="bad name"), ServerConfig(), "cookie name"),
            (
                AppConfig(jwt_secret=SECRET, jwt_cookie="t"),
                ServerConfig(allowed_origins=("*",)),
                "any site",
            ),
        ],
    )
    def test_what_cannot_work_is_one_line(
        self, settings: AppConfig, server: ServerConfig, message: str
    ) -> None:
        with pytest.raises(ConfigError, match=message) as info:
            App(server, settings)
        assert "\n" not in str(info.value)

    def test_modes(self) -> None:
        assert App().auth_mode == "off"
        assert App(settings=AppConfig(jwt_secret=SECRET)).auth_mode == "required"
        assert App(settings=AppConfig(jwt_secret=SECRET, auth="optional")).auth_mode == "optional"
        assert App(settings=AppConfig(jwt_secret=SECRET, auth="off")).auth_mode == "off"

    def test_override_by_name(self) -> None:
        app = App(ServerConfig(port=9000))
        first_hub = app.hub
        app.override(port=0, hub_url="memory://", jwt_secret=SECRET)
        assert app.config.port == 0 and app.auth_mode == "required"
        assert app.verifier is not None and app.hub is not first_hub
        with pytest.raises(TypeError, match="unknown setting 'prot'"):
            app.override(prot=1)
        with pytest.raises(ConfigError):
            app.override(jwt_secret="short")

    def test_cli_options_name_fields(self) -> None:
        assert {field for _, field, _, _ in CLI_OPTIONS} == FIELDS
        flags = [flag for flag, _, _, _ in CLI_OPTIONS]
        assert all(
            flag == "--" + field.replace("_", "-")
            for flag, (_, field, _, _) in zip(flags, CLI_OPTIONS, strict=True)
        )
