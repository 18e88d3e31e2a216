"""Start-up failures an operator can fix, each told in one line.

Two kinds: what can be checked before serving (:func:`check_before_serving`:
the TLS certificate and key), and what only binding or connecting reveals
(:func:`describe_startup_failure`: the address is in use or not on this
machine, the port needs privileges, the hub backend is unreachable). Both end
as a :class:`StartupError` whose message is the line ``wschat`` prints.
"""

from __future__ import annotations

import errno
import socket
import ssl

from .hub import BackendUnavailable, shown_url
from .server import ServerConfig

# What an operator should read for the errno a bind fails with; anything else
# gets the system's own text.
_BIND_ERRORS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "address not available on this machine",
    errno.EACCES: "permission denied",
}


class StartupError(Exception):
    """The server cannot start for a reason the operator can fix.

    ``str(error)`` is the whole explanation, one line, without the ``wschat:``
    prefix.
    """


def check_before_serving(config: ServerConfig) -> None:
    """Check what can be checked without binding: today the TLS files.

    Raises:
        StartupError: A file is missing, unreadable, not PEM, encrypted, or the
            key does not match the certificate.
    """
    if not config.certfile or not config.keyfile:
        return
    for what, path in (("certificate", config.certfile), ("private key", config.keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise StartupError(f"cannot read the TLS {what} {path}: {_os_reason(exc)}") from None
    if not _holds_a_certificate(config.certfile):
        raise StartupError(f"the TLS certificate {config.certfile} holds no PEM certificate")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # With a password callback an encrypted key fails here instead of
        # OpenSSL prompting on the terminal of a service.
        context.load_cert_chain(config.certfile, config.keyfile, password=_no_password)
    except _EncryptedKey:
        raise StartupError(
            f"the TLS private key {config.keyfile} is encrypted: give an unencrypted key"
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            reason = f"the TLS private key {config.keyfile} does not match the certificate"
        else:  # the certificate parsed above, so OpenSSL's "PEM lib" is about the key
            reason = f"the TLS private key {config.keyfile} holds no PEM private key"
        raise StartupError(f"{reason} ({_ssl_reason(exc)})") from None


def _holds_a_certificate(path: str) -> bool:
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except ssl.SSLError:
        return False
    return True


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    raise _EncryptedKey


def describe_startup_failure(exc: BaseException, config: ServerConfig) -> str | None:
    """The one line for an exception raised while the server was starting.

    Args:
        exc: What the start-up raised, maybe an exception group from the
            server's task groups (its first explainable exception is told).
        config: The settings it started with.

    Returns:
        The line (without the ``wschat:`` prefix), or None for an exception
        that is not the operator's to fix (a bug: let its traceback show).
    """
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            line = describe_startup_failure(inner, config)
            if line is not None:
                return line
        return None
    if isinstance(exc, BackendUnavailable):
        return f"cannot reach the hub backend {shown_url(config.hub_url)}: {exc}"
    if isinstance(exc, ssl.SSLError):
        return f"cannot load the TLS certificate {config.certfile}: {_ssl_reason(exc)}"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {config.host}: cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, OSError):
        where = f"{_host_for_display(config.host)}:{config.port}"
        reason = _BIND_ERRORS.get(exc.errno or 0) or _os_reason(exc)
        if exc.errno == errno.EACCES and 0 < config.port < 1024:
            reason += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        return f"cannot listen on {where}: {reason}"
    return None


def _host_for_display(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _os_reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


def _ssl_reason(exc: ssl.SSLError) -> str:
    # "[SSL] PEM lib (_ssl.c:3900)" -> "PEM lib"; "[X509: KEY_VALUES_MISMATCH] key
    # values mismatch (_ssl.c:3917)" -> "key values mismatch".
    reason = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    reason = reason.split("] ", 1)[-1]
    return reason.split(" (_ssl.c", 1)[0]
