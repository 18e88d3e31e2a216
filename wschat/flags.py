"""Values of ``wschat serve`` flags and ``WSCHAT_*`` variables, and their one-line errors.

Each parser takes the text of a flag or variable and returns its value or
raises ValueError with a short reason. :func:`for_argparse` turns that into an
argparse usage error; :func:`env_default` turns a bad variable into a
:class:`BadEnvironment` default that is reported after parsing, so ``--help``
works whatever the environment holds.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, NoReturn

from .server.ratelimit import parse_networks


def _parse_int(text: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("not an integer") from None
    if maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"must be from {minimum} to {maximum}")
    if value < minimum:
        raise ValueError(f"must be at least {minimum}")
    return value


def _parse_float(text: str, minimum: float, strict: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if value != value or value < minimum or (strict and value == minimum):  # NaN too
        raise ValueError(f"must be {'above' if strict else 'at least'} {minimum:g}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        return _parse_int(text, 0, 65535)
    except ValueError:
        raise ValueError("not a TCP port (0-65535)") from None


def count(text: str) -> int:
    """An integer of at least 1 (sizes, limits, bursts)."""
    return _parse_int(text, 1)


def count_or_zero(text: str) -> int:
    """An integer of at least 0."""
    return _parse_int(text, 0)


def positive(text: str) -> float:
    """A number above 0 (seconds)."""
    return _parse_float(text, 0.0, strict=True)


def non_negative(text: str) -> float:
    """A number of at least 0 (rates, where 0 turns a limit off)."""
    return _parse_float(text, 0.0, strict=False)


def text(value: str) -> str:
    """Any text, as is."""
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
LOG_LEVELS = ("debug", "info", "warning", "error")


class BadEnvironment:
    """The default of a flag whose ``WSCHAT_*`` value is invalid.

    Reported after parsing, and only if the flag was not given (flags win), so
    that a bad variable never breaks ``--help``.
    """

    def __init__(self, variable: str, value: str, reason: str) -> None:
        self.message = f"{variable}={value!r}: {reason}"

    def __str__(self) -> str:
        return f"invalid: {self.message}"


def env(name: str) -> str | None:
    """The raw value of ``WSCHAT_<NAME>``, if set."""
    return os.environ.get(f"WSCHAT_{name.upper()}")


def env_default(field: str, parse: Callable[[str], Any], fallback: Any) -> Any:
    """``WSCHAT_<FIELD>`` parsed, or ``fallback`` when unset (a :class:`BadEnvironment`
    when it does not parse)."""
    raw = env(field)
    if raw is None:
        return fallback
    try:
        return parse(raw)
    except ValueError as exc:
        return BadEnvironment(f"WSCHAT_{field.upper()}", raw, str(exc))


def boolean(text: str) -> bool:
    """1/true/yes/on or 0/false/no/off (or empty), any case."""
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ValueError(f"not a boolean (use one of {', '.join(_TRUE + _FALSE[1:])})")


def network(text: str) -> str:
    """An IP address or network (``10.0.0.0/8``), as text."""
    try:
        parse_networks([text])
    except ValueError:
        raise ValueError("not an IP address or network") from None
    return text.strip()


def networks(text: str) -> list[str]:
    """Comma-separated :func:`network` values."""
    return [network(item) for item in text.split(",") if item.strip()]


EVENT_LOOPS = ("auto", "asyncio", "uvloop", "trio")


def event_loop(text: str) -> str:
    """One of :data:`EVENT_LOOPS`, any case."""
    if text.lower() not in EVENT_LOOPS:
        raise ValueError(f"not an event loop (use one of {', '.join(EVENT_LOOPS)})")
    return text.lower()


def log_level(text: str) -> str:
    """One of :data:`LOG_LEVELS`, any case."""
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"not a log level (use one of {', '.join(LOG_LEVELS)})")
    return text.lower()


def for_argparse(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse ``type``: its ValueError becomes a one-line usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return convert


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except None (the help text says what none means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"wschat: {message}; see {self.prog} --help\n")
