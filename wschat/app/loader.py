"""``wschat serve myproject.chat:app``: find the App a ``module:attribute`` string names.

The convention is uvicorn's (``uvicorn main:app``): a module path, a colon, and
an attribute path inside the module (``pkg.mod:holder.app`` works too). The
module is imported with the current directory first on ``sys.path``, so that a
project's own package is found when ``wschat`` runs from the project's root.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from .app import App
from .config import AppConfig
from .errors import AppLoadError

if TYPE_CHECKING:
    from ..server.config import ServerConfig


def load_app(spec: str, app_dir: str = ".") -> App:
    """Import and return the :class:`App` ``spec`` (``"module:attribute"``) names.

    Args:
        spec: ``"package.module:attribute"``.
        app_dir: Directory put first on ``sys.path`` (default: the current one).

    Raises:
        AppLoadError: The spec is malformed, the module or attribute does not
            exist, or the attribute is not an App. An error raised while the
            module itself runs is not caught: its traceback is the message.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise AppLoadError(f'app {spec!r}: expected "module:attribute", e.g. "myproject.chat:app"')
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only a missing *named* module is the spec's fault; a missing import
        # inside it is the app's bug and keeps its traceback.
        if exc.name is None or not module_name.startswith(exc.name):
            raise
        raise AppLoadError(f"app {spec!r}: no module named {exc.name!r}") from None
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise AppLoadError(
                f"app {spec!r}: {module_name} has no attribute {attribute!r}"
            ) from None
    if not isinstance(value, App):
        raise AppLoadError(f"app {spec!r} is a {type(value).__name__}, not a wschat.App")
    return value


@dataclass(frozen=True)
class AppRecipe:
    """How to make the app ``wschat serve`` runs, again in every worker process.

    Attributes:
        spec: ``"module:attribute"`` of the app, or None for the built-in chat.
        config: The server settings from flags and ``WSCHAT_*`` (defaults included).
        settings: The app settings from flags and ``WSCHAT_*`` (defaults included).
        explicit: The settings the operator gave (on the command line or in the
            environment): they win over a loaded app's own; the defaults do not.
    """

    spec: str | None
    config: ServerConfig
    settings: AppConfig
    explicit: frozenset[str]

    def build(self) -> App:
        """The app: the built-in chat on these settings, or ``spec``'s with the
        explicit ones applied.

        Raises:
            AppLoadError: ``spec`` names no App.
            ConfigError: The settings cannot work together.
        """
        if self.spec is None:
            return App(self.config, self.settings)
        app = load_app(self.spec)
        server_fields = {f.name for f in fields(self.config)}
        overrides: dict[str, Any] = {
            name: getattr(self.config if name in server_fields else self.settings, name)
            for name in self.explicit
        }
        if overrides:
            app.override(**overrides)
        return app
