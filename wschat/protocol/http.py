"""The HTTP phase's bounds, and the status lines and headers a server connection answers with.

Each bound says what a client can make the server hold before its request is
answered; the comments give the precedents each default follows. Every final
response (the caller's and the connection's own rejections alike) carries
:data:`SECURITY_HEADERS`.
"""

from __future__ import annotations

from typing import Final

from .events import Headers

# Some precedents for the request-head limit (request line + headers):
# - h11: 16 KiB; node.js: 16 KiB (was 80 KiB); nginx: 8 KiB per line, 32 KiB total
# - Answered with 431 Request Header Fields Too Large (RFC 6585 5).
DEFAULT_MAX_REQUEST_HEAD = 16 * 1024

# Pipelined requests are parsed only while at most this many response bytes wait
# in data_to_send(). Precedents: node.js pauses its parser on pipelined requests
# once the socket's buffered output reaches writableHighWaterMark (16 KiB);
# asyncio's transports call pause_writing() at a 64 KiB high-water mark.
DEFAULT_MAX_PENDING_OUTPUT = 64 * 1024

# Request bodies (the HTTP API's JSON) are read whole, up to this; over it: 413.
# Precedents: nginx's client_max_body_size is 1 MiB; a chat message is 4096
# characters, so 64 KiB holds any API call with room to spare.
DEFAULT_MAX_REQUEST_BODY = 64 * 1024

SERVER_HEADER: Final = ("server", "wschat")

# The page loads its own script and stylesheet only (no inline code, so an
# injected <script> does not run), opens its WebSocket to the same host
# (CSP Level 3: 'self' covers ws:/wss: of the page's host), and may not be
# framed (clickjacking). The icon is a data: URL.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

# On every final response, errors included: a 400 or 421 whose text/plain body
# echoes the request (the Host it refused) must not be sniffed into HTML or a
# script, nor framed. (1xx responses carry none: they describe no resource.)
SECURITY_HEADERS: Final[Headers] = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    # Take the Content-Type as sent: no sniffing a text/plain error into a script.
    ("x-content-type-options", "nosniff"),
    # A link in a chat message does not tell the site it leads to which server and
    # page the user came from.
    ("referrer-policy", "no-referrer"),
)

STATUS_TEXT: Final = {
    100: "Continue",
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    421: "Misdirected Request",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
