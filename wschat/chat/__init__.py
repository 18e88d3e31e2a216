"""Chat rules, pure: the JSON wire schema, validation, per-connection state."""

from .errors import ChatError
from .schema import (
    DEFAULT_ROOM,
    MAX_MESSAGE_LENGTH,
    MAX_USERNAME_LENGTH,
    Command,
    Join,
    Leave,
    Position,
    Say,
    decode_event,
    encode,
    error_event,
    format_time,
    history_event,
    membership_event,
    message_event,
    parse_command,
    presence_event,
    validate_room,
    validate_username,
)
from .session import ChatSession

__all__ = [
    "DEFAULT_ROOM",
    "MAX_MESSAGE_LENGTH",
    "MAX_USERNAME_LENGTH",
    "ChatError",
    "ChatSession",
    "Command",
    "Join",
    "Leave",
    "Position",
    "Say",
    "decode_event",
    "encode",
    "error_event",
    "format_time",
    "history_event",
    "membership_event",
    "message_event",
    "parse_command",
    "presence_event",
    "validate_room",
    "validate_username",
]
