"""Errors in how an app is set up (operator flags, app code), as opposed to client input."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting cannot work, e.g. a JWT secret too short or a key file that is no key.

    The message is one line, fit for ``wschat: <message>`` on stderr.
    """


class AppLoadError(ConfigError):
    """``wschat serve module:attribute`` names nothing that is a :class:`wschat.App`."""
