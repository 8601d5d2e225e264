"""Change-data-capture throughput, memory and latency, on throwaway clusters of its own.

    python -m benchmarks.cdc [--rows 500000] [--latency-seconds 20] [--one-cluster]
    python -m benchmarks.cdc --workloads wide [--wide-changes 300000] [--repeat 3]

Workloads, each applied by `trempy-nb run --until-caught-up` (a subprocess, so its peak RSS is
its own) from a backlog committed before the run starts, for upsert and for SCD2:
  A. 500k row updates in 5k transactions (100 rows each)
  B. one transaction updating 500k rows
Rate = changes / wall time of the run (process start, validation and catch-up included: the
time from the last source commit to the last target commit is at most that). Next to it: the
server-side decode rate, `pg_logical_slot_peek_binary_changes` alone on the same backlog.
Then p50/p95 latency (source clock_timestamp() at update -> target trigger clock_timestamp()
at apply) with a `trempy-nb run` streaming while ~1k single-row transactions/s commit.

W (`--workloads wide`): wide rows as a user has them, end to end as a user runs it: a
14-column table with jsonb, text[], bytea, uuid and timestamptz columns, a backlog of 300k
changes (3,000 transactions of 100-row updates) caught up by a `trempy-nb run --until-caught-up`
process, source and target databases in one cluster. Each of `--repeat` rounds writes a fresh
backlog (outside the timing) and times the process from its start to its exit; printed are the
median changes/s and the median of the per-round ratios to the 50k changes/s target.

Source and targets are two clusters on this machine, as in production (the target is
another server). `--one-cluster` puts the target databases in the source's cluster: the
slot then also reads every WAL record the apply writes to the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import CHILD, run_child
from trempy_nb.db import connect
from trempy_nb.embedded import start_cluster

TABLE_SQL = """
CREATE SCHEMA bench;
CREATE TABLE bench.t (id bigint PRIMARY KEY, v integer, s text, amount numeric(12,2),
                      ts timestamptz);
INSERT INTO bench.t SELECT i, i % 1000, md5(i::text), i / 7.0, now() FROM generate_series(1, {rows}) i;
ANALYZE bench.t;
"""

# A: 5k transactions of 100 row updates each (a procedure-style DO block commits in the loop)
MANY_TXNS = """
DO $$
BEGIN
  FOR k IN 0..{txns} - 1 LOOP
    UPDATE bench.t SET v = v + 1, s = md5(s) WHERE id > k * {per} AND id <= (k + 1) * {per};
    COMMIT;
  END LOOP;
END $$;
"""
ONE_TXN = "UPDATE bench.t SET v = v + 1, amount = amount + 1"

TARGETS = {"upsert": 50_000, "scd2": 30_000}

WIDE_SQL = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE bench.w (
  id bigint PRIMARY KEY, k integer NOT NULL, name text, amount numeric(12,2), qty integer,
  active boolean, created timestamptz, updated timestamptz, uid uuid, doc jsonb, tags text[],
  blob bytea, note text, score double precision
);
INSERT INTO bench.w
SELECT i, i % 1000, 'name ' || i, (i % 100000) / 7.0, i % 500, i % 3 = 0,
       TIMESTAMPTZ '2020-01-01 00:00+00' + i * INTERVAL '1 second', now(), md5(i::text)::uuid,
       jsonb_build_object('id', i, 'kind', 'order', 'lines', jsonb_build_array(i % 7, i % 11, 'x' || i),
                          'paid', i % 2 = 0),
       ARRAY['tag' || (i % 10), 'group ' || (i % 97), md5(i::text)],
       decode(md5(i::text) || md5((i + 1)::text), 'hex'),
       CASE WHEN i % 10 = 0 THEN NULL ELSE 'note about row ' || i || ' ' || md5(i::text) END,
       i / 3.0
FROM generate_series(1, {rows}) i;
ANALYZE bench.w;
"""

# {txns} transactions of {per} row updates, touching the wide columns
WIDE_TXNS = """
DO $$
BEGIN
  FOR n IN 0..{txns} - 1 LOOP
    UPDATE bench.w SET qty = qty + 1, updated = clock_timestamp(),
           doc = jsonb_set(doc, '{{paid}}', to_jsonb(NOT (doc->>'paid')::boolean)),
           tags[1] = 'tag' || (qty + 1), blob = sha256(blob), amount = amount + 1
     WHERE id > (n * {per}) % {rows} AND id <= (n * {per}) % {rows} + {per};
    COMMIT;
  END LOOP;
END $$;
"""

WIDE_CHECK = "SELECT count(*), md5(string_agg(w::text, ',' ORDER BY id)) FROM bench.w AS w"


def settings(name: str, src: str, tgt: str, mode: str) -> dict:
    return {
        "task": {
            "task_name": name,
            "source": src,
            "target": tgt,
            "replication_type": "full_load_and_cdc",
            "start_mode": "reload",
            "interval_seconds": 0.05,
            "full_load_settings": {"recreate_table_if_exists": True},
            "cdc_settings": {"mode": mode},
        },
        "tables": [{"schema_name": "bench", "table_name": "t"}],
    }


def _check_caught_up(src: str, tgt: str, mode: str) -> None:
    """A rate only counts if the run applied everything: the target must equal the source."""
    q = "SELECT count(*), sum(v), md5(string_agg(s, ',' ORDER BY id)) FROM bench.t"
    with connect(src, autocommit=True) as c:
        want = c.execute(q).fetchone()
    with connect(tgt, autocommit=True) as c:
        got = c.execute(q + (" WHERE scd_current" if mode == "scd2" else "")).fetchone()
    if got != want:
        sys.exit(f"{mode}: the target does not match the source after the run: {got} vs {want}")


def decode_rate(src: str, slot: str) -> tuple[int, float]:
    with connect(src, autocommit=True) as c:
        t0 = time.perf_counter()
        row = c.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
            " 'proto_version', '1', 'publication_names', %s)",
            (slot, slot),
        ).fetchone()
        secs = time.perf_counter() - t0
    return int(row[0]) if row else 0, secs


def pending_changes(src: str, slot: str) -> int:
    """Row changes in the backlog (Insert/Update/Delete messages: first byte I/U/D)."""
    with connect(src, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68))"
            " FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
            " 'proto_version', '1', 'publication_names', %s)",
            (slot, slot),
        ).fetchone()
    return int(row[0]) if row else 0


def latency(
    src: str, tgt: str, path: Path, env: dict[str, str], seconds: float, rows: int
) -> tuple[float, float, float, int]:
    """p50/p95 (s) and achieved txn/s with a streaming runner and ~1k single-row txns/s."""
    with connect(tgt, autocommit=True) as c:
        c.execute("ALTER TABLE bench.t ADD COLUMN IF NOT EXISTS applied_at timestamptz")
        c.execute(
            "CREATE OR REPLACE FUNCTION bench.stamp() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN NEW.applied_at := clock_timestamp(); RETURN NEW; END$$"
        )
        c.execute(
            "CREATE OR REPLACE TRIGGER stamp BEFORE INSERT OR UPDATE ON bench.t"
            " FOR EACH ROW EXECUTE FUNCTION bench.stamp()"
        )
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "run", str(path), "--start-mode", "continue", "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # steady state: wait until the stream has caught up with what was committed before it
    with connect(src, autocommit=True) as c:
        mark = c.execute("SELECT pg_current_wal_flush_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = c.execute(
                "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
                (mark, "trempy_b_upsert"),
            ).fetchone()
            if row and row[0]:
                break
            c.execute("SELECT pg_logical_emit_message(false, 'trempy_bench', '')")  # moves an idle slot
            time.sleep(0.5)
    n = 0
    with connect(src, autocommit=True) as c:
        c.execute("SET synchronous_commit = on")
        start = c.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        t0 = time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            c.execute(
                "UPDATE bench.t SET ts = clock_timestamp(), v = v + 1 WHERE id = %s",
                (1 + n % rows,),
            )
            n += 1
            ahead = n / 1000.0 - elapsed
            if ahead > 0:
                time.sleep(ahead)
        rate = n / (time.perf_counter() - t0)
    time.sleep(3.0)  # drain
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    with connect(tgt, autocommit=True) as c:
        row = c.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - ts)),"
            " percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - ts)), count(*)"
            " FROM bench.t WHERE ts >= %s",
            (start,),
        ).fetchone()
    assert row is not None
    return float(row[0] or 0), float(row[1] or 0), rate, int(row[2])


def wide(changes: int, repeat: int) -> None:
    """Workload W: wide rows, one cluster, `trempy-nb run --until-caught-up` timed in rounds."""
    per = 100
    txns = max(1, changes // per)
    rows = txns * per
    cluster = start_cluster(conf={"shared_buffers": "512MB"})
    work = Path(tempfile.mkdtemp(prefix="trempy_bench_cdc_"))
    try:
        src = cluster.create_database("bench_src")
        tgt = cluster.create_database("bench_tgt")
        env = {**os.environ, "TREMPY_HOME": str(work / "home")}
        print(f"building bench.w with {rows:,} rows x 14 columns ...", flush=True)
        with connect(src, autocommit=True) as c:
            c.execute(WIDE_SQL.format(rows=rows))
        path = work / "w.json"
        doc = settings("b_wide", src, tgt, "upsert")
        doc["tables"] = [{"schema_name": "bench", "table_name": "w"}]
        path.write_text(json.dumps(doc))
        run_child(["run", str(path), "--until-caught-up", "-q"], env)  # full load, slot
        found: list[tuple[int, float, int]] = []
        for r in range(repeat):
            with connect(src, autocommit=True) as c:
                c.execute(WIDE_TXNS.format(txns=txns, per=per, rows=rows))
                c.execute("CHECKPOINT")
            n = pending_changes(src, "trempy_b_wide")
            print(f"round {r + 1} of {repeat}: {n:,} changes pending ...", flush=True)
            secs, rss = run_child(["run", str(path), "--until-caught-up", "--start-mode", "continue", "-q"], env)
            with connect(src, autocommit=True) as c:
                want = c.execute(WIDE_CHECK).fetchone()
            with connect(tgt, autocommit=True) as c:
                got = c.execute(WIDE_CHECK).fetchone()
            if got != want:
                sys.exit(f"wide: the target does not match the source after round {r + 1}")
            found.append((n, secs, rss))
        rates = [n / secs for n, secs, _ in found]
        print(f"\nW: CDC catch-up, {txns:,} txns x {per} row updates, 14 columns (jsonb, text[], bytea, uuid,"
              " timestamptz), source and target in one cluster, 2 cores")
        print(f"{'changes':>9} {'seconds':>8} {'changes/s':>10} {'vs 50k':>7} {'range':>13} {'peak RSS':>9}")
        spread = f"{min(rates) / TARGETS['upsert']:.2f}-{max(rates) / TARGETS['upsert']:.2f}x"
        print(f"{statistics.median(n for n, _, _ in found):9,.0f} {statistics.median(s for _, s, _ in found):8.2f}"
              f" {statistics.median(rates):10,.0f} {statistics.median(rates) / TARGETS['upsert']:6.2f}x {spread:>13}"
              f" {max(r for _, _, r in found) / 1024:7.0f} MB")
        print(f"(median of {repeat} rounds; rate = changes / wall time of the whole process, start to exit)")
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--one-cluster", action="store_true", help="targets in the source's cluster")
    ap.add_argument("--workloads", default="narrow", help="narrow (A, B and latency), wide (W), or narrow,wide")
    ap.add_argument("--wide-changes", type=int, default=300_000, help="W: changes in the backlog")
    ap.add_argument("--repeat", type=int, default=3, help="W: rounds")
    args = ap.parse_args()
    workloads = {w.strip() for w in args.workloads.split(",")}
    if "wide" in workloads:
        wide(args.wide_changes, args.repeat)
    if "narrow" not in workloads:
        return
    rows = int(args.rows)
    per = 100
    txns = rows // per
    cluster = start_cluster(conf={"shared_buffers": "512MB"})
    targets = cluster if args.one_cluster else start_cluster(conf={"shared_buffers": "256MB"})
    work = Path(tempfile.mkdtemp(prefix="trempy_bench_cdc_"))
    try:
        src = cluster.create_database("bench_src")
        env = {**os.environ, "TREMPY_HOME": str(work / "home")}
        print(f"building bench.t with {rows:,} rows ...", flush=True)
        with connect(src, autocommit=True) as c:
            c.execute(TABLE_SQL.format(rows=rows))
        paths: dict[str, Path] = {}
        for mode in ("upsert", "scd2"):
            tgt = targets.create_database(f"bench_tgt_{mode}")
            paths[mode] = work / f"{mode}.json"
            paths[mode].write_text(json.dumps(settings(f"b_{mode}", src, tgt, mode)))
            run_child(["run", str(paths[mode]), "--until-caught-up", "-q"], env)  # full load, slot
        results: list[tuple[str, str, int, float, float, int]] = []
        decode: dict[str, tuple[int, float]] = {}
        for label, sql_text in (
            (f"A: {rows:,} updates in {txns:,} txns", MANY_TXNS.format(txns=txns, per=per)),
            (f"B: one {rows:,}-row txn", ONE_TXN),
        ):
            print(f"{label}: writing the backlog ...", flush=True)
            with connect(src, autocommit=True) as c:
                c.execute(sql_text)
            changes = pending_changes(src, "trempy_b_upsert")
            decode[label] = decode_rate(src, "trempy_b_upsert")
            for mode in ("upsert", "scd2"):
                print(f"{label}: {mode} ...", flush=True)
                secs, rss = run_child(
                    [
                        "run",
                        str(paths[mode]),
                        "--until-caught-up",
                        "--start-mode",
                        "continue",
                        "-q",
                    ],
                    env,
                )
                results.append((label, mode, changes, secs, decode[label][1], rss))
                _check_caught_up(src, str(json.loads(paths[mode].read_text())["task"]["target"]), mode)
        print(
            f"{label.split(':')[0]} done; latency at ~1k txn/s for {args.latency_seconds:.0f} s ...",
            flush=True,
        )
        p50, p95, rate, n = latency(
            src,
            str(json.loads(paths["upsert"].read_text())["task"]["target"]),
            paths["upsert"],
            env,
            args.latency_seconds,
            rows,
        )

        print(
            f"\nCDC apply, {rows:,}-row table, 2 cores, targets in {'the source cluster' if args.one_cluster else 'a second cluster'}"
            " (rate = changes / wall time of `trempy-nb run --until-caught-up`)"
        )
        print(
            f"{'workload':34} {'mode':7} {'changes':>9} {'seconds':>8} {'changes/s':>10} {'target':>7}"
            f" {'decode/s':>10} {'vs decode':>9} {'peak RSS':>9}"
        )
        for label, mode, changes, secs, dsecs, rss in results:
            r = changes / secs
            d = changes / dsecs if dsecs else 0
            print(
                f"{label:34} {mode:7} {changes:9,} {secs:8.2f} {r:10,.0f} {r / TARGETS[mode]:6.2f}x"
                f" {d:10,.0f} {r / d if d else 0:8.2f}x {rss / 1024:7.0f} MB"
            )
        print(
            f"\nlatency (upsert, streaming): {rate:,.0f} txn/s offered, {n:,} applied,"
            f" p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
        )
        print(
            "targets: upsert >= 50,000 changes/s, SCD2 >= 30,000 changes/s, RSS < 400 MB, p50 < 1 s"
        )
    finally:
        cluster.destroy()
        if targets is not cluster:
            targets.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
