"""A throwaway PostgreSQL cluster with `wal_level=logical`, for the demo, notebooks and tests.

Uses the machine's PostgreSQL binaries when present, else the ones shipped in
the `pgserver` wheel, so nothing has to be installed by hand. PostgreSQL refuses
to run as root, so when we are root the cluster belongs to an unprivileged
user (`postgres`, created if missing).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from trempy_nb.errors import TrempyError


def find_bindir() -> Path:
    """Directory holding initdb/pg_ctl: $TREMPY_PG_BINDIR, system PostgreSQL, or pgserver's."""
    env = os.environ.get("TREMPY_PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for c in candidates:
        if (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    which = shutil.which("initdb")
    if which and shutil.which("pg_ctl"):
        return Path(os.path.realpath(which)).parent
    try:
        import pgserver  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - pgserver is a dependency
        raise TrempyError("no PostgreSQL binaries found; install PostgreSQL or `pip install pgserver`") from exc
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _version_key(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    """The unprivileged user to run PostgreSQL as when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "trempy"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "trempy"], check=True)
    return "trempy"


@dataclass
class Cluster:
    """A running throwaway cluster; `uri(db)` gives a password URI over TCP."""

    datadir: Path
    port: int
    password: str
    bindir: Path
    user: str = "postgres"
    owner: str | None = None
    extra_conf: dict[str, str] = field(default_factory=dict)

    def uri(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        u = user or self.user
        pw = self.password if password is None else password
        return f"postgresql://{u}:{pw}@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.owner:
            cmd = ["runuser", "-u", self.owner, "--", *cmd]
        return cmd

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        log = self.datadir.parent / "postgres.log"
        return subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.datadir), "-l", str(log), "-w", "-t", "60", *args),
            check=check,
            capture_output=True,
            text=True,
        )

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode, check=False)

    def restart(self, mode: str = "fast") -> None:
        self.pg_ctl("restart", "-m", mode)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def create_database(self, name: str) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.uri(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.uri(name)


def start_cluster(
    base: str | Path | None = None,
    port: int | None = None,
    conf: dict[str, str] | None = None,
    password: str | None = None,
) -> Cluster:
    """initdb + pg_ctl start a new cluster with wal_level=logical on a free loopback port."""
    bindir = find_bindir()
    owner = _run_as()
    root = Path(base) if base else Path(tempfile.mkdtemp(prefix="trempy_pg_"))
    root.mkdir(parents=True, exist_ok=True)
    datadir = root / "data"
    password = password or "pw_" + secrets.token_hex(8)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if owner:
        info = pwd.getpwnam(owner)
        os.chmod(root, 0o755)
        os.chown(root, info.pw_uid, info.pw_gid)
        os.chown(pwfile, info.pw_uid, info.pw_gid)
    cluster = Cluster(datadir=datadir, port=port or free_port(), password=password, bindir=bindir, owner=owner)
    cmd = cluster._cmd(
        "initdb", "-D", str(datadir), "-U", "postgres", "--pwfile", str(pwfile),
        "-A", "scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C",
    )
    res = subprocess.run(cmd, capture_output=True, text=True)
    pwfile.unlink(missing_ok=True)
    if res.returncode != 0:
        raise TrempyError(f"initdb failed: {res.stderr.strip()[-500:]}")
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(cluster.port),
        "unix_socket_directories": f"'{root}'",
        "wal_level": "logical",
        "max_replication_slots": "40",
        "max_wal_senders": "40",
        "max_connections": "200",
        "fsync": "off",
        "full_page_writes": "off",
        "shared_buffers": "128MB",
        "max_wal_size": "2GB",
        "logical_decoding_work_mem": "64MB",
        **(conf or {}),
    }
    with open(datadir / "postgresql.conf", "a") as fh:
        fh.write("\n# trempy_nb throwaway cluster\n")
        for k, v in settings.items():
            fh.write(f"{k} = {v}\n")
    with open(datadir / "pg_hba.conf", "a") as fh:
        fh.write("host replication all 127.0.0.1/32 scram-sha-256\n")
    cluster.extra_conf = settings
    res = cluster.pg_ctl("start", check=False)
    if res.returncode != 0:
        log = (root / "postgres.log")
        tail = log.read_text()[-800:] if log.exists() else res.stderr
        raise TrempyError(f"PostgreSQL did not start: {tail.strip()}")
    _wait_ready(cluster)
    return cluster


def _wait_ready(cluster: Cluster, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(cluster.uri(), connect_timeout=3):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


_EMBEDDED: Cluster | None = None


def embedded_cluster() -> Cluster:
    """One cluster per process for the demo and notebooks, removed at exit."""
    global _EMBEDDED
    if _EMBEDDED is None:
        _EMBEDDED = start_cluster()
        atexit.register(_EMBEDDED.destroy)
    return _EMBEDDED
