"""A moderation hook: mask words, refuse shouting and anonymous links, two slash commands.

Run it (anonymous chat, names chosen by the users, as ``wschat serve`` does)::

    wschat serve examples.moderation.chat:app

``on_message`` sees every message before it is published. What it returns is
published (so it can rewrite); raising :class:`~wschat.Rejection` refuses the
message, and only its sender gets ``{"type": "error", "code", "reason"}``.
"""

from __future__ import annotations

import re

from wschat import App, Identity, Rejection

BANNED = ("darn", "heck", "fiddlesticks")
_BANNED = re.compile(r"\b(" + "|".join(map(re.escape, BANNED)) + r")\b", re.IGNORECASE)
_LINK = re.compile(r"\bhttps?://|\bwww\.", re.IGNORECASE)
# Short all-caps words ("OK", "LOL") are fine; a shouted sentence is not.
SHOUT_MIN_LETTERS = 12


def moderate(identity: Identity, room: str, text: str) -> str:
    """The ``on_message`` hook: the text to publish, or a Rejection."""
    if text.startswith("/me "):
        return f"* {identity.name} {text[4:].strip()}"
    if text.strip() == "/shrug":
        return "¯\\_(ツ)_/¯"
    letters = [c for c in text if c.isalpha()]
    if len(letters) >= SHOUT_MIN_LETTERS and all(c.isupper() for c in letters):
        raise Rejection("shouting", "please do not shout: turn caps lock off")
    if _LINK.search(text) and not identity.authenticated:
        raise Rejection("no_links", "sign in to post links")
    return _BANNED.sub(lambda match: "*" * len(match.group()), text)


app = App(on_message=moderate)
