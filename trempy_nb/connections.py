"""Saved connections, `${VAR}` expansion and password masking.

A task names its source and target either by a saved connection's name or by
a `postgresql://` URI (docs/settings.md). Saved connections live in
`$TREMPY_HOME/connections.json` as a password-less URI plus the password
encrypted with Fernet, so the file can be read, diffed or backed up without
leaking anything. The key comes from `TREMPY_SECRET_KEY` (for CI and
scheduled jobs) or from `$TREMPY_HOME/secret.key` (mode 0600, generated once).

Masking lives in `trempy_nb.redact` (`mask`, `register_secret`, re-exported here).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import polars as pl
from psycopg.conninfo import conninfo_to_dict

from trempy_nb.db import connect
from trempy_nb.errors import SettingsError
from trempy_nb.redact import MASK, mask, register_secret
from trempy_nb.redact import forget_secrets as _forget_secrets  # noqa: F401 - tests clear the registry here
from trempy_nb.redact import join_userinfo as _join_userinfo
from trempy_nb.redact import split_userinfo as _split_userinfo

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = [
    "ConnectionInfo",
    "delete_connection",
    "expand_env",
    "get_connection",
    "has_literal_password",
    "home",
    "is_mariadb_uri",
    "list_connections",
    "mask",
    "protect",
    "register_secret",
    "resolve",
    "save_connection",
]

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
SCHEMES = ("postgresql://", "postgres://")
#: Target-only URIs (the MariaDB/MySQL writer, `writer/mariadb/uri.py`): saved, expanded and masked
#: like PostgreSQL ones, but never parsed by libpq.
MARIADB_SCHEMES = ("mysql://", "mariadb://")

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FILE_LOCK = threading.Lock()


# --------------------------------------------------------------------------- home


def home() -> Path:
    """$TREMPY_HOME (default ~/.trempy), created private (0700) on first use."""
    path = Path(os.environ.get("TREMPY_HOME") or Path.home() / ".trempy").expanduser()
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    return path


def _connections_file() -> Path:
    return home() / "connections.json"


# --------------------------------------------------------------------------- URI helpers


def is_mariadb_uri(text: str) -> bool:
    """True for a mysql:// or mariadb:// URI (a MariaDB/MySQL target; no driver needed to tell)."""
    return isinstance(text, str) and text.strip().lower().startswith(MARIADB_SCHEMES)


def _is_uri(text: str) -> bool:
    return text.lower().startswith(SCHEMES + MARIADB_SCHEMES)


def expand_env(text: str, *, context: str = "") -> str:
    """Replace `${VAR}` by the environment's value; a missing one is a SettingsError naming it.

    Inside a URI's userinfo the value is percent-encoded, so a password from the
    environment may hold '@', ':' or '/' and still parse as one password.
    """
    where = f" (used in {mask(context)})" if context else ""

    def value(name: str) -> str:
        if name not in os.environ:
            raise SettingsError(f"environment variable {name} is not set{where}")
        return os.environ[name]

    if not _VAR_RE.search(text):
        return text
    if _is_uri(text):
        scheme, user, raw_pw, after = _split_userinfo(text)
        enc = lambda m: quote(value(m.group(1)), safe="")  # noqa: E731
        user = _VAR_RE.sub(enc, user) if user is not None else None
        if raw_pw is not None:
            raw_pw = _VAR_RE.sub(enc, raw_pw)
            register_secret(unquote(raw_pw))
        after = _VAR_RE.sub(lambda m: value(m.group(1)), after)
        return _join_userinfo(scheme, user, raw_pw, after)
    return _VAR_RE.sub(lambda m: value(m.group(1)), text)


def _password_of(conninfo: str) -> str | None:
    """The decoded password of a URI or keyword conninfo, if any."""
    if _is_uri(conninfo):
        _, _, raw_pw, _ = _split_userinfo(conninfo)
        return unquote(raw_pw) if raw_pw is not None else None
    try:
        return conninfo_to_dict(conninfo).get("password")  # type: ignore[return-value]
    except Exception:
        return None


def has_literal_password(ref: str) -> bool:
    """True when `ref` is a URI/conninfo whose password is written out (not a `${VAR}`)."""
    if _is_uri(ref):
        _, _, raw_pw, _ = _split_userinfo(ref)
        return bool(raw_pw) and not _VAR_RE.fullmatch(raw_pw or "")
    if "=" in ref:
        pw = _password_of(ref)
        return bool(pw) and not _VAR_RE.fullmatch(pw or "")
    return False


def _to_uri(conninfo: str) -> str:
    """A keyword conninfo (`host=... dbname=...`) as an equivalent postgresql:// URI."""
    try:
        params = conninfo_to_dict(conninfo)
    except Exception as exc:
        raise SettingsError(
            f"not a valid connection string: {mask(conninfo)} ({mask(exc)})"
        ) from None
    params = {k: str(v) for k, v in params.items()}
    host = params.pop("host", "")
    port = params.pop("port", "")
    user = params.pop("user", None)
    pw = params.pop("password", None)
    db = params.pop("dbname", "")
    hosts = ",".join(f"[{h}]" if ":" in h else h for h in host.split(",")) if host else ""
    netloc = hosts + (f":{port}" if port and "," not in port else "")
    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params.items())
    uri = urlunsplit(("postgresql", netloc, "/" + quote(db, safe="") if db else "", query, ""))
    return _join_userinfo(
        "postgresql",
        quote(user, safe="") if user else None,
        quote(pw, safe="") if pw else None,
        uri.partition("://")[2],
    )


def _describe(uri: str) -> dict[str, str]:
    """host/port/database/user and extra params of a password-less URI, for display."""
    try:
        if uri.lower().startswith(MARIADB_SCHEMES):
            raise ValueError("not a libpq URI")
        params = {k: str(v) for k, v in conninfo_to_dict(uri).items()}
    except Exception:
        # `${VAR}` in odd places may not parse: fall back to plain URL splitting
        parts = urlsplit(uri)
        params = {
            "host": parts.hostname or "",
            "port": str(parts.port or "") if not _VAR_RE.search(parts.netloc) else "",
            "dbname": unquote(parts.path.lstrip("/")),
            "user": unquote(parts.username or ""),
        }
    params.pop("password", None)
    return params


# --------------------------------------------------------------------------- ConnectionInfo


@dataclass(frozen=True)
class ConnectionInfo:
    """A saved connection as shown to users: it holds no password at all, so no repr can leak one."""

    name: str
    host: str
    port: str
    database: str
    user: str
    uri: str  # password-less; `${VAR}` references kept as written
    has_password: bool = False
    params: dict[str, str] = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        scheme, user, _, after = _split_userinfo(self.uri)
        shown = _join_userinfo(scheme, user, MASK if self.has_password else None, after)
        return f"{self.name} -> {shown}"


def _info(name: str, entry: dict[str, Any]) -> ConnectionInfo:
    uri = entry["uri"]
    params = _describe(uri)
    return ConnectionInfo(
        name=name,
        host=params.pop("host", ""),
        port=params.pop("port", ""),
        database=params.pop("dbname", ""),
        user=params.pop("user", ""),
        uri=uri,
        has_password=bool(entry.get("password")),
        params=params,
    )


# --------------------------------------------------------------------------- key and file


def _fernet() -> Fernet:
    """Fernet from TREMPY_SECRET_KEY, else from $TREMPY_HOME/secret.key (created 0600 once).

    cryptography loads here, when a saved password is used: a task given URIs does not pay its import.
    """
    from cryptography.fernet import Fernet

    env = os.environ.get("TREMPY_SECRET_KEY")
    if env:
        try:
            return Fernet(env.strip().encode())
        except (ValueError, TypeError):
            raise SettingsError(
                "TREMPY_SECRET_KEY is not a Fernet key (32 url-safe base64 bytes; "
                "make one with cryptography.fernet.Fernet.generate_key())"
            ) from None
    path = home() / "secret.key"
    if not path.exists():
        tmp = path.with_name(f".secret.key.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, Fernet.generate_key())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic create-if-absent: a concurrent process's key wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        return Fernet(path.read_bytes().strip())
    except ValueError:
        raise SettingsError(f"{path} does not hold a Fernet key") from None


@contextmanager
def _locked() -> Iterator[None]:
    """Serialise read-modify-write of connections.json across threads and processes."""
    with _FILE_LOCK:
        lock_path = home() / ".connections.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - non-POSIX
                pass
            yield
        finally:
            os.close(fd)


def _load() -> dict[str, dict[str, Any]]:
    path = _connections_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path} is not valid JSON: {exc}") from None
    return data.get("connections", {})


def _store(conns: dict[str, dict[str, Any]]) -> None:
    path = _connections_file()
    tmp = path.with_name(f".connections.json.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"version": 1, "connections": conns}, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SettingsError(
            f"invalid connection name {name!r}: a letter, then up to 62 letters, digits, '_' or '-'"
        )


def _unknown(name: str, conns: dict[str, Any]) -> SettingsError:
    saved = ", ".join(sorted(conns)) or "none"
    return SettingsError(
        f"unknown connection {name!r}; saved connections: {saved} "
        "(give a postgresql:// URI or save one with save_connection)"
    )


# --------------------------------------------------------------------------- public API


def save_connection(
    name: str, uri: str, test: bool = False, *, keep_password_of: str | None = None,
    tester: Callable[[str], object] | None = None,
) -> ConnectionInfo:
    """Save `uri` under `name`: password-less URI in clear, password encrypted with Fernet.

    `${VAR}` references are kept as written and expanded at `resolve` time, so a
    password taken from the environment never lands on disk at all. With
    `test=True` the connection is opened first and nothing is saved if it fails.
    `keep_password_of`: when `uri` has no password, keep the one saved with that
    connection (a form editing host or user, its password field left empty). `tester` opens
    the full URI for `test` (`connection_check.check_connection`: any database); without
    it a PostgreSQL connection is opened, and a MariaDB/MySQL one cannot be tested here.
    """
    _check_name(name)
    uri = uri.strip()
    if not _is_uri(uri):
        if "=" not in uri:
            raise SettingsError(f"not a postgresql:// URI or keyword conninfo: {mask(uri)}")
        uri = _to_uri(uri)
    scheme, user, raw_pw, after = _split_userinfo(uri)
    scheme = scheme.lower()
    password = unquote(raw_pw) if raw_pw else None
    is_ref = bool(raw_pw) and bool(_VAR_RE.search(raw_pw or ""))
    if password and not is_ref:
        register_secret(password)
    bare = _join_userinfo(scheme, user, None, after)
    try:
        if uri.lower().startswith(MARIADB_SCHEMES):
            urlsplit(_VAR_RE.sub("x", bare)).port  # noqa: B018 (raises on a bad host:port)
        else:
            conninfo_to_dict(_VAR_RE.sub("x", bare))
    except Exception as exc:
        raise SettingsError(f"invalid connection URI {mask(uri)}: {mask(exc)}") from None
    entry: dict[str, Any] = {"uri": bare, "password": None, "password_is_template": is_ref}
    if password:
        stored = raw_pw if is_ref else password
        entry["password"] = _fernet().encrypt(stored.encode()).decode()  # type: ignore[union-attr]
    if keep_password_of and not password:
        with _locked():
            kept = _load().get(keep_password_of)
        if kept is not None and kept.get("password"):
            entry["password"] = kept["password"]
            entry["password_is_template"] = bool(kept.get("password_is_template"))
    if test:
        full = expand_env(_build(bare, entry), context=f"connection {name}")
        if tester is not None:
            tester(full)
        elif is_mariadb_uri(full):
            raise SettingsError(f"{mask(uri)}: a MariaDB/MySQL connection is tested by its own driver"
                                " (connection_check.check_connection)")
        else:
            connect(full, connect_timeout=10).close()
    with _locked():
        conns = _load()
        conns[name] = entry
        _store(conns)
    return _info(name, entry)


def get_connection(name: str) -> ConnectionInfo:
    """The saved connection `name` (no password); SettingsError listing saved names if unknown."""
    with _locked():
        conns = _load()
    if name not in conns:
        raise _unknown(name, conns)
    return _info(name, conns[name])


def list_connections() -> pl.DataFrame:
    """Saved connections as a frame (name, host, port, database, user): never a password."""
    with _locked():
        conns = _load()
    rows = [_info(n, conns[n]) for n in sorted(conns)]
    return pl.DataFrame(
        {
            "name": [r.name for r in rows],
            "host": [r.host for r in rows],
            "port": [r.port for r in rows],
            "database": [r.database for r in rows],
            "user": [r.user for r in rows],
        },
        schema={c: pl.String for c in ("name", "host", "port", "database", "user")},
    )


def password_source(name: str) -> str:
    """How connection `name` keeps its password, for lists: 'encrypted', '${VAR}' or 'none'."""
    with _locked():
        conns = _load()
    if name not in conns:
        raise _unknown(name, conns)
    entry = conns[name]
    if not entry.get("password"):
        return "none"
    return "${VAR}" if entry.get("password_is_template") else "encrypted"


def with_password(uri: str, password: str) -> str:
    """`uri` with `password` (typed apart, e.g. in a form's password field) put in, encoded."""
    uri = uri.strip()
    if not _is_uri(uri):
        raise SettingsError(f"not a postgresql:// URI: {mask(uri)}")
    register_secret(password)
    scheme, user, _, after = _split_userinfo(uri)
    return _join_userinfo(scheme, user or "", quote(password, safe=""), after)


def conninfo_to_test(ref: str, *, keep_password_of: str | None = None) -> str:
    """The full conninfo a test of `ref` (a saved name or a URI, PostgreSQL or MariaDB/MySQL) opens.

    `keep_password_of`: a URI without password is tried with that saved connection's
    password (a form testing an edited host before saving). Opening it is the caller's
    (`connection_check.check_connection`, which knows every database's driver).
    """
    conninfo = resolve(ref, mariadb=True)
    if keep_password_of and _is_uri(conninfo) and _split_userinfo(conninfo)[2] is None:
        with _locked():
            kept = _load().get(keep_password_of)
        if kept is not None:
            conninfo = expand_env(_build(conninfo, kept), context=f"connection {keep_password_of}")
    return conninfo


def delete_connection(name: str) -> None:
    """Forget a saved connection; SettingsError listing saved names if unknown."""
    with _locked():
        conns = _load()
        if name not in conns:
            raise _unknown(name, conns)
        del conns[name]
        _store(conns)


def _build(bare: str, entry: dict[str, Any]) -> str:
    """Password-less URI + decrypted password -> full URI (percent-encoded password)."""
    token = entry.get("password")
    if not token:
        return bare
    from cryptography.fernet import InvalidToken

    try:
        password = _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SettingsError(
            "cannot decrypt a saved password: the key changed "
            "(TREMPY_SECRET_KEY or $TREMPY_HOME/secret.key); save the connection again"
        ) from None
    raw = password if entry.get("password_is_template") else quote(password, safe="")
    if not entry.get("password_is_template"):
        register_secret(password)
    scheme, user, _, after = _split_userinfo(bare)
    return _join_userinfo(scheme, user or "", raw, after)


def resolve(ref: str, *, mariadb: bool = False) -> str:
    """Turn a task's `source`/`target` into a conninfo psycopg accepts.

    `ref` is a saved connection name or a `postgresql://`/`postgres://` URI (a
    keyword conninfo is accepted too); `${VAR}` is read from the environment.
    Every password seen is registered with `mask`. With `mariadb=True` (the
    MariaDB target's writer) a `mysql://`/`mariadb://` URI is accepted too.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise SettingsError("empty connection reference: give a saved connection name or a URI")
    ref = ref.strip()
    out = ref if NAME_RE.fullmatch(ref) else expand_env(ref, context=ref)
    if NAME_RE.fullmatch(out):
        with _locked():
            conns = _load()
        if out not in conns:
            raise _unknown(out, conns)
        out = expand_env(_build(conns[out]["uri"], conns[out]), context=f"connection {out}")
    elif not _is_uri(out):
        if "=" not in out:
            raise SettingsError(f"not a saved connection name or a postgresql:// URI: {mask(ref)}")
        try:
            conninfo_to_dict(out)
        except Exception as exc:
            raise SettingsError(f"invalid connection string {mask(out)}: {mask(exc)}") from None
    register_secret(_password_of(out))
    if not mariadb and out.lower().startswith(MARIADB_SCHEMES):
        raise SettingsError(f"{mask(ref)} is a MariaDB/MySQL connection: it can only be a task's target")
    return out


def protect(ref: str, name: str) -> str:
    """Keep a literal password out of stored settings: save `ref` as connection `name`, return `name`.

    Names, `${VAR}` references and password-less URIs come back unchanged, so
    the settings stay exactly as written whenever they carry no secret.
    """
    if not isinstance(ref, str) or not has_literal_password(ref.strip()):
        return ref
    save_connection(name, ref)
    return name
