"""Hub URLs as they may be shown: in logs and error lines, never with a password."""

from __future__ import annotations


def shown_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and error lines."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    userinfo, hosts = netloc.rsplit("@", 1)
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hosts}{slash}{tail}"
