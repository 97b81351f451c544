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
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """`url` with its userinfo and query values replaced by REDACTED; anything else unchanged."""
    if not isinstance(url, str) or "://" not in url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unbalanced '[' in the host: keep nothing after the scheme
        return url.split("://", 1)[0] + "://" + REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{urllib.parse.quote(k, safe='')}={REDACTED}" for k, _ in pairs) or REDACTED
    fragment = REDACTED if parts.fragment else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


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
    """(url without userinfo, user, password): the user and password percent-decoded, None if absent."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, urllib.parse.unquote(user), (urllib.parse.unquote(password) if ":" in userinfo else None)
