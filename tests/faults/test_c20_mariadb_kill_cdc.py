"""Case 20 (MariaDB target, local transport): kill -9 of the runner during CDC, repeated, under a
live workload, then a `continue --until-caught-up` run.

The checker is the suite's own (tests/faults/checker.py, PostgreSQL SQL): after the last run the
MariaDB tables are copied as they are into tables of the same shape in the PostgreSQL target
database (DATETIME(6) values are UTC, so they become timestamptz at UTC), and checked there
against the ledger: nothing lost, nothing applied twice, exact SCD2 chains at the commit times.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from psycopg import sql

from tests.faults.checker import SCD, check
from tests.faults.harness import FaultEnv, connect, fault_env, in_ci, wait_until
from tests.faults.report import RESULTS
from tests.faults.workload import COLS, Workload, WTable

SERVER = "mysql://root@127.0.0.1:3306"
TABLES = [WTable("ma", filtered=True), WTable("mb")]

pymysql = pytest.importorskip("pymysql")


@pytest.fixture
def maria_dbs() -> Iterator[tuple[str, str]]:
    """(state database, data database) on the machine's MariaDB, dropped after the test."""
    state, data = f"fst_{uuid.uuid4().hex[:8]}", f"fdw_{uuid.uuid4().hex[:8]}"
    try:
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    except pymysql.err.MySQLError as exc:
        if in_ci():
            pytest.fail(f"MariaDB is not running on 127.0.0.1:3306 (CI needs it): {exc}")
        pytest.skip(f"MariaDB is not running: {exc}")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{state}`")  # names made above: no quoting needed
    try:
        yield state, data
    finally:
        with admin.cursor() as cur:
            for db in (state, data):
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        admin.close()


def _maria_query(db: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=db)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def _copy_to_pg(env: FaultEnv, data: str, mode: str) -> None:
    """The MariaDB tables, unchanged, into same-shaped tables of the PostgreSQL target database."""
    extra = SCD if mode == "scd2" else ()
    scd_ddl = ", scd_start_date timestamptz, scd_end_date timestamptz, scd_current boolean" if extra else ""
    with connect(env.tgt) as pg:
        for t in TABLES:
            rows = _maria_query(data, f"SELECT {', '.join(COLS + extra)} FROM `{t.name}`")
            pg.execute(sql.SQL("CREATE TABLE {} (id bigint, grp int, v bigint, s text, n numeric(12,2),"
                               " d timestamptz" + scd_ddl + ")").format(t.ident))
            fixed = [tuple(v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) else v for v in r)
                     for r in rows]
            fixed = [r[:-1] + (bool(r[-1]),) if extra else r for r in fixed]  # BOOLEAN is TINYINT
            with pg.cursor() as cur, cur.copy(sql.SQL("COPY {} FROM STDIN").format(t.ident)) as cp:
                for r in fixed:
                    cp.write_row(r)


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_c20_kill9_during_cdc_into_mariadb(pair, long_run, maria_dbs, mode):
    kills = 20 if long_run else 4  # x2 modes: 8 kill -9 in CI
    rng = random.Random(f"c20{mode}")
    state, data = maria_dbs
    with fault_env(pair, f"m{mode}") as env:
        env.extra_env["FAULT_TGT"] = f"{SERVER}/{state}"
        wl = Workload(env.src, TABLES, seed=hash(mode) & 0xFFFF)
        wl.create_tables()
        wl.seed(300)
        env.settings(tables=[t.key for t in TABLES], mode=mode, filters=[TABLES[0].filter_doc()],
                     transformations=[{"schema_name": "public", "table_name": t.name, "priority": 0,
                                       "transformation_type": "modify_schema_name",
                                       "contract": {"target_schema_name": data}} for t in TABLES])
        lo = wl.ledger.mark()
        runner = env.start_runner("reload")

        def streaming() -> bool:
            assert runner.alive(), runner.log()[-3000:]
            try:
                return bool(_maria_query(state, "SELECT lsn FROM trempy_checkpoints WHERE task = %s", (env.task,)))
            except pymysql.err.ProgrammingError:  # the state table is not there yet
                return False

        wait_until(streaming, 120, "the full load into MariaDB")
        hi = wl.ledger.mark()
        wl.start(rate=40)
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 1.2))
            mark = env.flush_lsn()
            runner.kill9()
            runner = env.start_runner()
            RESULTS.recovery(env.wait_confirmed_past(mark, 90, runner))
        wl.stop()
        time.sleep(0.5)
        runner.kill9()
        env.catch_up()
        _copy_to_pg(env, data, mode)
        check(env.src, env.tgt, wl.ledger, TABLES, mode, (lo, hi))
        wl.close()
