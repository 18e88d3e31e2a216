"""An app with no ``typing`` event type, served by ``wschat serve tests.app_without_typing:app``
(the page must cope with a server that refuses typing)."""

from wschat import App

app = App(typing=False)

# An app that sets its own server settings: the operator's flags win, defaults do not.
from wschat.server import ServerConfig  # noqa: E402

tuned = App(ServerConfig(history_size=7, max_connections=123), typing=False)
