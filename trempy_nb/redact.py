"""Masking of secrets: the one gate every user-facing text goes through.

It hides URI passwords (PostgreSQL, MySQL/MariaDB, AMQP), `password=` keywords,
`'password': ...` in dict reprs or JSON, and every password this process has
seen (`register_secret`), since libpq, psycopg and pika error messages may echo
a password outside any URI. Pure: no I/O, and it imports nothing from the
package, so every layer may use it (it ended the old connections <-> db cycle).
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import quote

__all__ = ["MASK", "mask", "register_secret", "split_userinfo", "join_userinfo"]

MASK = "***"
# Shorter secrets would turn ordinary words into *** everywhere; libpq never
# needs them masked for safety in practice and they cannot be strong anyway.
MIN_SECRET_LEN = 4

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_SECRETS_SORTED: tuple[str, ...] = ()


def register_secret(secret: str | None) -> None:
    """Remember a password so `mask` hides it wherever it shows up in plain text.

    Its percent-encoded forms are registered too, because a URI carries it so.
    """
    global _SECRETS_SORTED
    if not secret or len(secret) < MIN_SECRET_LEN:
        return
    forms = {secret, quote(secret, safe=""), quote(secret)}
    with _SECRETS_LOCK:
        if forms <= _SECRETS:
            return
        _SECRETS.update(forms)
        # longest first, so a secret that contains another is hidden whole
        _SECRETS_SORTED = tuple(sorted(_SECRETS, key=len, reverse=True))


def forget_secrets() -> None:
    """Clear the registry (tests only)."""
    global _SECRETS_SORTED
    with _SECRETS_LOCK:
        _SECRETS.clear()
        _SECRETS_SORTED = ()


_URI_TOKEN = re.compile(r"(?:postgres(?:ql)?|mysql|mariadb|amqps?)://[^\s'\"<>`]*", re.IGNORECASE)
# password=value in keyword conninfo or a URI query; quoted values may hold spaces
_KW_PW = re.compile(
    r"(?<![A-Za-z0-9_])((?:pg)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&]+)",
    re.IGNORECASE,
)
# 'password': 'value' in a dict repr or JSON
_DICT_PW = re.compile(
    r"""((['"])(?:pg)?password\2\s*:\s*)(['"])((?:(?!\3)[^\\]|\\.)*)\3""",
    re.IGNORECASE,
)


def _mask_uri(token: str) -> str:
    """Hide the password in one URI token, reading the userinfo as `split_userinfo` does."""
    scheme, user, raw_pw, after = split_userinfo(token)
    if raw_pw is None:
        return token
    return join_userinfo(scheme, user, MASK, after)


def mask(text: Any) -> str:
    """Return `text` with every password hidden: URIs, `password=`, dict/JSON, known secrets."""
    if text is None:
        return ""
    s = text if isinstance(text, str) else str(text)
    if not s:
        return s
    s = _URI_TOKEN.sub(lambda m: _mask_uri(m.group(0)), s)
    s = _KW_PW.sub(lambda m: m.group(1) + MASK, s)
    s = _DICT_PW.sub(lambda m: f"{m.group(1)}{m.group(3)}{MASK}{m.group(3)}", s)
    for secret in _SECRETS_SORTED:
        if secret in s:
            s = s.replace(secret, MASK)
    return s


def split_userinfo(uri: str) -> tuple[str, str | None, str | None, str]:
    """Split a URI into (scheme, user, raw password or None, rest after '@').

    Raw means still percent-encoded, as written. Like libpq, the userinfo ends
    before the first '/'; failing that, an unencoded '/' in a password is
    tolerated (last '@' before the host part) so it is never taken for a host.
    """
    scheme, _, rest = uri.partition("://")
    slash = rest.find("/")
    head = rest if slash < 0 else rest[:slash]
    at = head.rfind("@")
    if at < 0:
        at = _lenient_at(rest)
    if at < 0:
        return scheme, None, None, rest
    userinfo, after = rest[:at], rest[at + 1 :]
    if ":" in userinfo:
        user, pw = userinfo.split(":", 1)
        return scheme, user, pw, after
    return scheme, userinfo, None, after


def _lenient_at(rest: str) -> int:
    """Position of the '@' ending a userinfo whose password holds '/', or -1."""
    first_at = rest.find("@")
    if first_at < 0:
        return -1
    end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep, first_at)
        if 0 <= pos < end:
            end = pos
    at = rest.rfind("@", 0, end)
    userinfo = rest[:at]
    if ":" not in userinfo or "?" in userinfo or "#" in userinfo:
        return -1
    return at


def join_userinfo(scheme: str, user: str | None, raw_pw: str | None, after: str) -> str:
    if user is None and raw_pw is None:
        return f"{scheme}://{after}"
    info = user or ""
    if raw_pw is not None:
        info += ":" + raw_pw
    return f"{scheme}://{info}@{after}"
