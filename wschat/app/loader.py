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

from .app import App
from .errors import AppLoadError


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
