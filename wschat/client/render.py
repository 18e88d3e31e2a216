"""How ``wschat chat`` shows events: one event in, lines of text out. Pure.

Lines look like an IRC client's: ``16:00:05 #lobby <alice> hello`` for
messages, ``* ...`` for who comes and goes, ``! ...`` for problems. Times are
shown in the local time zone the caller passes in.

Everything other users control is made printable first: a message carrying
terminal escape sequences must not recolour, move or retitle the reader's
terminal.
"""

from __future__ import annotations

from datetime import tzinfo

from .events import (
    Ack,
    Disconnected,
    Error,
    Event,
    Gap,
    History,
    Joined,
    Left,
    Message,
    Presence,
    Reconnected,
    Typing,
)


def render(event: Event, zone: tzinfo | None = None) -> list[str]:
    """The lines that show ``event`` (none for acks and typing notifications).

    Args:
        event: What the client yielded.
        zone: Time zone for message times (None: the machine's local zone).
    """
    if isinstance(event, Message):
        return [message_line(event, zone)]
    if isinstance(event, History):
        lines = [message_line(m, zone) for m in event.messages]
        if not event.complete:
            lines.insert(0, f"* #{event.room}: older messages are no longer in history")
        return lines
    if isinstance(event, Presence):
        members = ", ".join(_printable(m) for m in event.members)
        return [f"* #{event.room}: here now: {members or 'nobody'}"]
    if isinstance(event, Joined):
        return [f"* #{event.room}: {_who(event.username, event.name)} joined"]
    if isinstance(event, Left):
        return [f"* #{event.room}: {_who(event.username, event.name)} left"]
    if isinstance(event, Gap):
        return [f"* #{event.room}: some messages were missed (no longer in history)"]
    if isinstance(event, Disconnected):
        reason = f" {_printable(event.reason)}" if event.reason else ""
        return [f"! disconnected ({event.code}{reason}); reconnecting in {event.delay:.1f}s"]
    if isinstance(event, Reconnected):
        return ["* reconnected"]
    if isinstance(event, Error):
        return [f"! {_printable(event.code)}: {_printable(event.reason)}"]
    assert isinstance(event, (Ack, Typing))
    return []


def message_line(message: Message, zone: tzinfo | None = None) -> str:
    """``HH:MM:SS #room <sender> text``, one line (a newline in the text shows as ``⏎``)."""
    clock = message.time.astimezone(zone).strftime("%H:%M:%S")
    sender = "server" if message.server else _who(message.username, message.name)
    text = _printable(message.text.replace("\r\n", "\n").replace("\n", " ⏎ "))
    return f"{clock} #{message.room} <{sender}> {text}"


def _who(username: str, name: str | None) -> str:
    return _printable(name if name else username)


def _printable(text: str) -> str:
    """``text`` with control and other non-printable characters shown as U+FFFD."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)
