"""Case 18: least privilege. The source role has LOGIN, REPLICATION and SELECT on the task's
tables, nothing else (no superuser, does not own the tables; the publication is created by the
tables' owner). The target role owns its database. The whole pipeline runs: full load, CDC,
restarts (continue and reload). Then SELECT is revoked mid-run: the outcome is a terminal,
classified error within a bounded time, never an endless retry."""

from __future__ import annotations

import secrets
import time

from psycopg import sql

from tests.faults.checker import check
from tests.faults.harness import SECRETS, fault_env, q
from tests.faults.report import RESULTS
from tests.faults.workload import Workload, WTable

TABLES = [WTable("pa", filtered=True), WTable("pb")]


def test_c18_least_privilege(pair):
    with fault_env(pair, "lp") as env:
        wl = Workload(env.src, TABLES, seed=18)
        wl.create_tables()
        wl.seed(200)
        role, pw = f"lp_{env.id}", "lp_" + secrets.token_hex(10)
        trole, tpw = f"lpt_{env.id}", "lpt_" + secrets.token_hex(10)
        SECRETS.update({pw, tpw})
        src_db, tgt_db = env.src.rsplit("/", 1)[1], env.tgt.rsplit("/", 1)[1]
        q(
            env.src,
            sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}")
            .format(sql.Identifier(role), sql.Literal(pw))
            .as_string(None),
        )
        q(
            env.src,
            sql.SQL("GRANT SELECT ON public.pa, public.pb TO {}")
            .format(sql.Identifier(role))
            .as_string(None),
        )
        q(
            env.src,
            sql.SQL(
                "CREATE PUBLICATION {} FOR TABLE public.pa, public.pb WITH (publish_via_partition_root = true)"
            )
            .format(sql.Identifier(env.slot))
            .as_string(None),
        )
        q(
            env.tgt,
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
            .format(sql.Identifier(trole), sql.Literal(tpw))
            .as_string(None),
        )
        q(
            env.tgt,
            sql.SQL("ALTER DATABASE {} OWNER TO {}")
            .format(sql.Identifier(tgt_db), sql.Identifier(trole))
            .as_string(None),
        )
        q(
            env.tgt,
            sql.SQL("ALTER SCHEMA public OWNER TO {}")
            .format(sql.Identifier(trole))
            .as_string(None),
        )
        env.extra_env = {
            "FAULT_SRC": pair.src.uri(src_db, user=role, password=pw),
            "FAULT_TGT": pair.tgt.uri(tgt_db, user=trole, password=tpw),
        }
        assert q(env.src, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)) == [(False,)]
        env.settings(tables=[t.key for t in TABLES], mode="scd2", filters=[TABLES[0].filter_doc()])
        lo = wl.ledger.mark()
        r = env.start_runner("reload")
        env.wait_streaming()
        hi = wl.ledger.mark()
        wl.run(100)
        mark = env.flush_lsn()
        env.wait_confirmed_past(mark, 60, r)
        r.kill9()
        wl.run(50)
        env.catch_up()  # continue as the least-privileged role
        check(env.src, env.tgt, wl.ledger, TABLES, "scd2", (lo, hi))

        # SELECT revoked while the runner streams
        r = env.start_runner("continue")
        time.sleep(1.0)
        q(
            env.src,
            sql.SQL("REVOKE SELECT ON public.pa FROM {}")
            .format(sql.Identifier(role))
            .as_string(None),
        )
        RESULTS.fault("SELECT revoked mid-run")
        wl.run(30)
        t0 = time.monotonic()
        while r.alive() and time.monotonic() - t0 < 4:
            time.sleep(0.2)
        if r.alive():
            # logical decoding does not check table privileges: the stream legitimately continues
            RESULTS.notes.append(
                "case 18: revoking SELECT does not stop a running stream (pgoutput"
                " decoding is not privilege-checked); the next full load refuses"
            )
            r.kill9("cleanup kill")
            RESULTS.faults["cleanup kill"] -= 1
        else:
            log = r.log()
            assert r.proc.returncode == 1 and "Traceback" not in log, log[-2000:]
            RESULTS.classified(log.strip().splitlines()[-1])
        # a reload needs SELECT for the snapshot: a terminal error, fast, not an endless retry
        r = env.start_runner("reload")
        rc = r.wait(60)
        log = r.log()
        assert rc == 1 and "Traceback" not in log, f"rc={rc}\n{log[-2000:]}"
        last = log.strip().splitlines()[-1]
        assert "permission denied" in last or "privilege" in last, last
        RESULTS.classified(last)
        wl.close()
