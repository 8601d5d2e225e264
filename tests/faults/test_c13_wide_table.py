"""Case 13: a 1,600-column table (PostgreSQL's maximum) replicates: full load and CDC in upsert
mode. In SCD2 mode the target would need 1,603 columns: the task must stop with a classified
error (or succeed), never crash or half-write."""

from __future__ import annotations

import pytest

from tests.faults.harness import fault_env, q
from tests.faults.report import RESULTS

NCOL = 1600


def _create(uri: str) -> None:
    cols = ", ".join(f"c{i} int" for i in range(1, NCOL))
    q(uri, f"CREATE TABLE wide (id int PRIMARY KEY, {cols})")
    vals = ", ".join(f"i + {i}" for i in range(1, NCOL))
    q(uri, f"INSERT INTO wide SELECT i, {vals} FROM generate_series(1, 30) i")


def _digest(uri: str, mode: str) -> list[tuple]:
    where = "WHERE scd_current" if mode == "scd2" else ""
    cols = ", ".join(["id"] + [f"c{i}" for i in range(1, NCOL)])
    return q(
        uri,
        f"SELECT md5(string_agg(ROW({cols})::text, '|' ORDER BY id)), count(*) FROM wide {where}",
    )


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_c13_1600_columns(pair, mode):
    with fault_env(pair, f"wide{mode}") as env:
        _create(env.src)
        env.settings(tables=[("public", "wide")], mode=mode)
        r = env.start_runner("reload", until_caught_up=True)
        rc = r.wait(120)
        log = r.log()
        RESULTS.fault("1,600-column table")
        if mode == "scd2" and rc != 0:
            assert rc in (1, 2) and "Traceback" not in log, log[-2000:]
            assert "1600" in log or "columns" in log, log[-2000:]
            RESULTS.classified(log.strip().splitlines()[-1])
            return
        assert rc == 0, log[-3000:]
        q(env.src, "UPDATE wide SET c1 = -c1, c1599 = 0 WHERE id % 2 = 0")
        q(env.src, "DELETE FROM wide WHERE id % 7 = 0")
        q(env.src, f"INSERT INTO wide (id, c{NCOL - 1}) VALUES (100, 1)")
        env.catch_up()
        assert _digest(env.src, "upsert") == _digest(env.tgt, mode)
