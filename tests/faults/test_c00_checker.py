"""The checker is not vacuous: on a correct run it finds nothing, and on a target corrupted by
hand it counts exactly what was lost, duplicated or unexpected (upsert and SCD2)."""

from __future__ import annotations

from tests.faults.checker import check_scd2, check_upsert
from tests.faults.harness import fault_env, q
from tests.faults.workload import Workload, WTable

T = WTable("ka", filtered=True)


def test_c00_checker_detects_corruption(pair):
    with fault_env(pair, "chk") as env:
        wl = Workload(env.src, [T], seed=3)
        wl.create_tables()
        wl.seed(100)
        env.settings(tables=[T.key], mode="scd2", filters=[T.filter_doc()])
        env.catch_up(start_mode="reload")
        lo = hi = wl.ledger.mark()
        wl.run(150)
        env.catch_up()
        ok = check_scd2(env.src, env.tgt, wl.ledger, T, (lo, hi))
        assert ok.ok, str(ok)
        # corrupt: drop one closed version, duplicate one current version, flip one current flag
        closed = q(
            env.tgt,
            "SELECT id, scd_start_date FROM ka WHERE NOT scd_current"
            " AND scd_start_date > (SELECT min(scd_start_date) FROM ka) ORDER BY id LIMIT 1",
        )[0]
        q(env.tgt, "DELETE FROM ka WHERE id = %s AND scd_start_date = %s", closed)
        cur = q(env.tgt, "SELECT id FROM ka WHERE scd_current ORDER BY id DESC LIMIT 1")[0][0]
        q(env.tgt, "DROP INDEX IF EXISTS ka_current_uq")
        q(env.tgt, "INSERT INTO ka SELECT * FROM ka WHERE id = %s AND scd_current", (cur,))
        bad = check_scd2(env.src, env.tgt, wl.ledger, T, (lo, hi))
        assert bad.lost == 1 and bad.duplicated == 1, str(bad)
        assert any("current versions" in d for d in bad.details), str(bad)

    with fault_env(pair, "chku") as env:
        wl = Workload(env.src, [T], seed=4)
        wl.create_tables()
        wl.seed(100)
        env.settings(tables=[T.key], mode="upsert", filters=[T.filter_doc()])
        env.catch_up(start_mode="reload")
        wl.run(100)
        env.catch_up()
        assert check_upsert(env.src, env.tgt, wl.ledger, T).ok
        ids = [r[0] for r in q(env.tgt, "SELECT id FROM ka ORDER BY id LIMIT 2")]
        q(env.tgt, "DELETE FROM ka WHERE id = %s", (ids[0],))
        q(env.tgt, "UPDATE ka SET v = -1 WHERE id = %s", (ids[1],))
        q(env.tgt, "INSERT INTO ka (id, grp) VALUES (10000000, 1)")
        bad = check_upsert(env.src, env.tgt, wl.ledger, T)
        assert (bad.lost, bad.unexpected) == (2, 1), str(bad)
        assert "digest" in bad.details[0]
