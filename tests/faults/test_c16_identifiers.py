"""Case 16: hostile identifiers. Schema, table and column names with quotes, semicolons, spaces,
mixed case, non-ASCII, exactly 63 bytes, and a name whose first 63 bytes collide with another's:
each is replicated exactly (full load + CDC, both modes) or refused by validation, and a canary
table on the source and on the target survives untouched."""

from __future__ import annotations

import pytest
from psycopg import sql

from tests.faults.harness import fault_env, q
from tests.faults.report import RESULTS

SCHEMA = 'Odd "Schema"; DROP TABLE public.canary; --'
LONG63 = "t" * 63
COL63 = "é" * 31 + "x"  # 63 bytes
TABLES = {
    "Mixed Case": ["Id", "Value"],
    'quo"te; DROP TABLE canary; --': ["id", 'c"1', "a;b"],
    "ünïcødé 表": ["id", "ÄÖ ü", "select"],
    LONG63: ["id", COL63, "  spaced  "],
}


def _ident(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


def _create(uri: str) -> None:
    with_conn = q
    with_conn(uri, "CREATE TABLE public.canary (id int PRIMARY KEY, s text)")
    with_conn(uri, "INSERT INTO public.canary VALUES (1, 'alive')")
    with_conn(uri, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)).as_string(None))
    for t, cols in TABLES.items():
        col_sql = sql.SQL(", ").join(
            sql.SQL("{} {}").format(
                sql.Identifier(c), sql.SQL("int PRIMARY KEY" if i == 0 else "text")
            )
            for i, c in enumerate(cols)
        )
        with_conn(
            uri, sql.SQL("CREATE TABLE {} ({})").format(_ident(SCHEMA, t), col_sql).as_string(None)
        )


def _write(uri: str, start: int, n: int) -> None:
    for t, cols in TABLES.items():
        ident = _ident(SCHEMA, t)
        names = sql.SQL(", ").join(map(sql.Identifier, cols))
        for i in range(start, start + n):
            vals = [i] + [f"{c} 'v{i}'; --" for c in cols[1:]]
            q(
                uri,
                sql.SQL("INSERT INTO {} ({}) VALUES ({})")
                .format(ident, names, sql.SQL(", ").join(sql.Placeholder() * len(cols)))
                .as_string(None),
                vals,
            )
        q(
            uri,
            sql.SQL("UPDATE {} SET {} = 'upd\"; x' WHERE {} % 3 = 0")
            .format(ident, sql.Identifier(cols[1]), sql.Identifier(cols[0]))
            .as_string(None),
        )
        q(
            uri,
            sql.SQL("DELETE FROM {} WHERE {} % 5 = 0")
            .format(ident, sql.Identifier(cols[0]))
            .as_string(None),
        )


def _rows(uri: str, t: str, mode: str) -> list[str]:
    cols = sql.SQL(", ").join(map(sql.Identifier, TABLES.get(t, ["id"])))
    where = sql.SQL("WHERE scd_current") if mode == "scd2" else sql.SQL("")
    rows = q(
        uri,
        sql.SQL("SELECT ROW({})::text FROM {} {}")
        .format(cols, _ident(SCHEMA, t), where)
        .as_string(None),
    )
    return sorted(r[0] for r in rows)


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_c16_hostile_identifiers_replicate(pair, mode):
    with fault_env(pair, f"id{mode}") as env:
        _create(env.src)
        q(env.tgt, "CREATE TABLE public.canary (id int PRIMARY KEY, s text)")
        q(env.tgt, "INSERT INTO public.canary VALUES (1, 'alive')")
        _write(env.src, 1, 10)
        env.settings(tables=[(SCHEMA, t) for t in TABLES], mode=mode)
        env.catch_up(start_mode="reload")
        _write(env.src, 100, 10)
        env.catch_up()
        RESULTS.fault("hostile identifiers", len(TABLES))
        for t in TABLES:
            assert _rows(env.src, t, "upsert") == _rows(env.tgt, t, mode), f"table {t!r} differs"
        for uri in (env.src, env.tgt):
            assert q(uri, "SELECT s FROM public.canary") == [("alive",)], (
                "the canary table was touched"
            )


@pytest.mark.parametrize(
    "long_name", [LONG63 + "_suffix", "é" * 40], ids=["ascii70", "utf8_80bytes"]
)
def test_c16_prefix_collision_refused_or_exact(pair, long_name):
    """A name over 63 bytes: PostgreSQL would truncate it to the name of another table."""
    with fault_env(pair, "idcoll") as env:
        _create(env.src)
        q(
            env.src,
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)")
            .format(_ident(SCHEMA, "é" * 31))
            .as_string(None),
        )
        q(env.tgt, "CREATE TABLE public.canary (id int PRIMARY KEY, s text)")
        q(env.tgt, "INSERT INTO public.canary VALUES (1, 'alive')")
        _write(env.src, 1, 5)
        env.settings(tables=[(SCHEMA, long_name)], mode="upsert")
        r = env.start_runner("reload", until_caught_up=True)
        rc = r.wait(60)
        log = r.log()
        RESULTS.fault("63-byte prefix collision")
        assert "Traceback" not in log, log[-3000:]
        if rc == 0:  # accepted: then it must be exactly the table PostgreSQL resolves the name to
            resolved = long_name.encode()[:63].decode(errors="ignore")
            q(
                env.src,
                sql.SQL("INSERT INTO {} VALUES (1), (2)")
                .format(_ident(SCHEMA, resolved))
                .as_string(None),
            )
            env.catch_up()
            assert _rows(env.src, resolved, "upsert") == _rows(env.tgt, resolved, "upsert")
            RESULTS.notes.append(
                f"case 16: a {len(long_name.encode())}-byte table name is accepted and"
                " resolved, like PostgreSQL does, to its 63-byte truncation"
            )
        else:
            assert rc == 2 and "invalid settings" in log, log[-2000:]
            RESULTS.classified(log.strip().splitlines()[-1])
            slots = q(
                env.src,
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            )
            assert slots == [(0,)], "a refused task must not create a slot"
        for uri in (env.src, env.tgt):
            assert q(uri, "SELECT s FROM public.canary") == [("alive",)]
