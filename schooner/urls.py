"""URLs that may carry a secret (a Redis URL with a password), made safe to print."""

from __future__ import annotations


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs, errors and printed addresses)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
