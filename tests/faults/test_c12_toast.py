"""Case 12: unchanged TOAST values under REPLICA IDENTITY DEFAULT, in both modes (an update of
another column, and a primary-key change, each leaving a large value unchanged, which pgoutput
does not resend), and a 50 MB value replicated exactly (md5 compared on both sides). The broker
size limit half of this case is in test_c14_rabbitmq.py."""

from __future__ import annotations

import pytest

from tests.faults.harness import fault_env, q
from tests.faults.report import RESULTS

BIG = 50 * 2**20


def _digest(uri: str, mode: str) -> list[tuple]:
    where = "WHERE scd_current" if mode == "scd2" else ""
    return q(uri, f"SELECT id, v, md5(big), length(big) FROM tt {where} ORDER BY id")


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
def test_c12_unchanged_toast_and_50mb(pair, mode):
    with fault_env(pair, f"toast{mode}") as env:
        q(env.src, "CREATE TABLE tt (id int PRIMARY KEY, v int, big text)")
        # incompressible values well over the TOAST threshold
        q(
            env.src,
            "INSERT INTO tt SELECT i, 0, (SELECT string_agg(md5(i::text || j::text), '')"
            " FROM generate_series(1, 3000) j) FROM generate_series(1, 20) i",
        )
        env.settings(tables=[("public", "tt")], mode=mode)
        env.catch_up(start_mode="reload")
        q(env.src, "UPDATE tt SET v = v + 1 WHERE id <= 10")  # big unchanged: sent as 'u'
        q(env.src, "UPDATE tt SET id = id + 100 WHERE id IN (11, 12)")  # key change, big unchanged
        q(env.src, "UPDATE tt SET v = 7 WHERE id = 101")
        q(env.src, "DELETE FROM tt WHERE id = 13")
        env.catch_up()
        RESULTS.fault("unchanged TOAST updates", 13)
        assert _digest(env.src, "upsert") == _digest(env.tgt, mode)
        if mode == "scd2":
            versions = q(env.tgt, "SELECT count(*) FROM tt WHERE big IS NULL")
            assert versions == [(0,)], "a version lost its unchanged TOAST value"
        # a 50 MB value (5 MB in SCD2 mode, to bound the suite), then an update leaving it unchanged
        size = BIG if mode == "upsert" else BIG // 10
        q(
            env.src,
            "INSERT INTO tt SELECT 1000, 0, (SELECT string_agg(md5(j::text), '')"
            " FROM generate_series(1, %s) j)",
            (size // 32,),
        )
        q(env.src, "UPDATE tt SET v = 1 WHERE id = 1000")
        env.catch_up(timeout=180)
        RESULTS.fault(f"{size // 2**20} MB value")
        got = _digest(env.tgt, mode)
        assert got == _digest(env.src, "upsert"), "a large value differs"
        assert any(r[3] == size for r in got)
