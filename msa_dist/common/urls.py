"""Secrets in shard URLs: what is written down or printed never holds them.

A shard URL may carry a password (`https://user:PASSWORD@host/shards`) or a token in its query
(`?sv=...&sig=...`, an Azure SAS token; `?X-Amz-Signature=...`). The stores use the whole URL;
everything that writes a URL down (config.yaml, run_info.json, tracking, checkpoints) or prints
it (messages) goes through `redact_url` / `redact_text` first.
"""

from __future__ import annotations

import re
import urllib.parse

REDACTED = "REDACTED"
# A URL in a message: up to the next space, unless a space comes before an '@' on the same line (a
# password with an unencoded space: the whole userinfo is taken, at the cost of redacting too much).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^\s'\"<>@]*[ \t][^'\"<>@\n]*@)?[^\s'\"<>]+")
_HOST_AFTER_AT = re.compile(r"[A-Za-z0-9._~%\[\]:-]*(?=[/?#]|\Z)")  # a host[:port], up to the path


def _userinfo_end(rest: str) -> int:
    """Where the userinfo of `rest` (a URL after `scheme://`) ends: its last '@' that a host[:port]
    follows; -1 if none. Not urlsplit's netloc: a password with an unencoded '/', '?', '#' or space
    would end it early and the rest of the password would pass as the path."""
    for at in reversed([i for i, c in enumerate(rest) if c == "@"]):
        if _HOST_AFTER_AT.match(rest, at + 1):
            return at
    return -1


def redact_url(url: str) -> str:
    """`url` with its userinfo and query values replaced by REDACTED; anything else unchanged. When in
    doubt (an '@' later in the URL) everything before that '@' counts as userinfo."""
    if not isinstance(url, str) or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    at = _userinfo_end(rest)
    try:
        parts = urllib.parse.urlsplit(f"{scheme}://{rest[at + 1 :]}")
    except ValueError:  # e.g. an unbalanced '[' in the host: keep nothing after the scheme
        return f"{scheme}://{REDACTED}"
    netloc = f"{REDACTED}@{parts.netloc}" if at >= 0 else parts.netloc
    # keys are kept (they say what kind of token it was); a bare value (`?TOKEN`) is a value
    query = "&".join(
        f"{urllib.parse.quote(urllib.parse.unquote(piece.split('=', 1)[0]), safe='')}={REDACTED}"
        if "=" in piece
        else REDACTED
        for piece in parts.query.split("&")
    )
    fragment = REDACTED if parts.fragment else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query if parts.query else "", fragment))


def redact_text(text: str) -> str:
    """`text` (a message, a command-line argument) with every URL in it redacted."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact_values(value):
    """A plain nested structure (dicts, lists, strings) with every URL in its strings redacted."""
    if isinstance(value, dict):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_values(v) for v in value)
    return redact_text(value) if isinstance(value, str) else value


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without userinfo, user, password): the user and password percent-decoded, None if absent.
    ValueError for an '@' in the path, which may end a password holding an unencoded '/'."""
    parts = urllib.parse.urlsplit(url)
    rest = url.split("://", 1)[1] if "://" in url else url
    at, path = _userinfo_end(rest), rest.find("/")
    if 0 <= path < at and "?" not in rest[:at] and "#" not in rest[:at]:
        raise ValueError(
            "an '@' after the host: percent-encode '/', '?', '#' and '@' in a user or password "
            "(%2F, %3F, %23, %40), and '@' in a path (%40)"
        )
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, urllib.parse.unquote(user), (urllib.parse.unquote(password) if ":" in userinfo else None)
