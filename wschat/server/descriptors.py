"""File-descriptor limits: raise the soft limit, and cap sockets below it.

Every socket is a file descriptor. When a process reaches its soft
``RLIMIT_NOFILE``, ``accept`` fails with ``EMFILE``, and so does everything
else that needs a descriptor: opening a static file, a new Redis connection,
a log file. The soft limit is often 1,024 while the hard limit is far higher
(systemd sets 524,288), so the server raises the soft limit to the hard one at
start-up, as nginx's ``worker_rlimit_nofile`` and Go's runtime (since 1.19) do,
and counts every open socket, HTTP phase included, against
:func:`connection_cap`, which keeps a reserve of descriptors for everything that
is not a client.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("wschat.server")

# Descriptors kept for what is not a client socket: stdin/stdout/stderr, the
# listener(s), the event loop's own (epoll, self-pipe, signal wake-up), Redis
# (redis-py's pool grows with concurrent commands; its pub/sub connection),
# static files being served, log files, DNS lookups. 64 leaves room for a
# Redis pool of ~50 connections; nginx's docs size worker_connections the same
# way (connections are not the only descriptors a worker needs).
DESCRIPTOR_RESERVE = 64

# With no hard limit (RLIM_INFINITY), ask for this many: the Linux kernel's
# default fs.nr_open, above which setrlimit fails anyway.
_UNLIMITED_TARGET = 1024 * 1024


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit, as far as the system allows.

    Logs the change at info level, or a warning when the system refuses it.

    Returns:
        The soft limit now in force (a very large number where there is none,
        e.g. on Windows, which has no such limit).
    """
    if sys.platform == "win32":
        return _UNLIMITED_TARGET
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            # macOS caps the soft limit at kern.maxfilesperproc below an
            # unlimited hard limit; keep what we have.
            logger.warning("! cannot raise the open-file limit from %d: %s", soft, exc)
            return soft
        logger.info("= open-file limit raised from %d to %d", soft, target)
        return target
    return _UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft


def connection_cap(max_connections: int, open_file_limit: int) -> int:
    """How many sockets (HTTP phase included) the server may hold at once.

    Args:
        max_connections: The sockets wanted (the server passes ``--max-connections``
            plus room for HTTP-phase sockets).
        open_file_limit: The soft descriptor limit in force
            (:func:`raise_open_file_limit`'s answer).

    Returns:
        ``max_connections``, lowered so that the sockets and
        :data:`DESCRIPTOR_RESERVE` fit under ``open_file_limit``; at least 1.
    """
    return max(1, min(max_connections, open_file_limit - DESCRIPTOR_RESERVE))
