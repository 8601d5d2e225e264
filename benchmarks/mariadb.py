"""MariaDB target throughput and memory against LOAD DATA LOCAL INFILE of a ready CSV file, in one run.

    python -m benchmarks.mariadb [--rows 2000000] [--repeat 3] [--changes 200000] [--cdc-changes 200000]
                                 [--mariadb mysql://root@127.0.0.1:3306/test]

(a) reference: `LOAD DATA LOCAL INFILE` of bench.t's rows from a CSV file made beforehand (the
    source rows already in MariaDB's input form), into the table the writer would create
(b) full load of bench.t (PostgreSQL, throwaway cluster) into MariaDB, a `trempy-nb`-equivalent
    child process (peak RSS): no filter, so the source's COPY csv streams into LOAD DATA
(b') the same with one filter (qty >= 0): COPY text -> Polars plan -> LOAD DATA from memory
(c) CDC upsert apply: batches of 50,000 changes (updates of existing keys and new keys, as the
    stream hands them to the writer) applied with the MariaDB `apply_batch`: changes/s of the
    writer alone (decoding is the PostgreSQL side's, measured by benchmarks/cdc.py)
(d) CDC end to end: a backlog of `--cdc-changes` row updates (transactions of 100 rows) committed
    on the source before the run, caught up by a `trempy-nb run --until-caught-up` process into
    MariaDB (upsert; process start, validation and catch-up included): changes/s and its peak RSS;
    the target must equal the source afterwards
Each round runs the cases in turn from the same state (target database dropped); printed are
medians over `--repeat` rounds and the median of the per-round ratios to (a). The machine is
shared: only ratios measured in the same run mean anything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.fullload import TABLE_SQL
from trempy_nb.catalog import describe_table
from trempy_nb.changes import LSN, META_SCHEMA, OP, SEQ, TS, UNCHANGED
from trempy_nb.db import connect
from trempy_nb.embedded import start_cluster
from trempy_nb.fullload import target_spec
from trempy_nb.pipeline.plan import compile_plans
from trempy_nb.settings import ErrorHandling, parse_settings
from trempy_nb.writer.apply import TableApply
from trempy_nb.writer.mariadb import uri as maria_uri
from trempy_nb.writer.mariadb.apply import apply_batch
from trempy_nb.writer.mariadb.ddl import column_types, create_database_sql, create_table_sql
from trempy_nb.writer.mariadb.names import execute, qualified, quote

CHILD = """
import json, resource, sys
from trempy_nb.catalog import describe_table
from trempy_nb.db import connect
from trempy_nb.fullload.mariadb import run_full_load_mariadb
from trempy_nb.pipeline.plan import compile_plans
from trempy_nb.settings import parse_settings
settings = parse_settings(json.loads(sys.argv[1]))
with connect(settings.task.source) as c:
    info = describe_table(c, "bench", "t")
plans = compile_plans(settings, {("bench", "t"): info})
run_full_load_mariadb(settings, plans, settings.task.source, settings.task.target, max_workers=1)
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""

#: bench.t's rows as MariaDB reads them (booleans 1/0, timestamptz in UTC): the reference CSV
CSV_QUERY = """COPY (SELECT id, name, amount, qty, to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'),
 day, CASE WHEN active THEN 1 ELSE 0 END, note FROM bench.t) TO STDOUT (FORMAT csv, NULL 'NULL', FORCE_QUOTE *)"""

BATCH = 50_000

#: `trempy-nb` in a child process, its peak RSS on stderr (benchmarks/cdc.py's)
CLI_CHILD = """
import resource, sys
from trempy_nb.cli import main
code = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""

#: (d)'s backlog: `txns` transactions, each updating `per` consecutive rows (wrapping around the table)
BACKLOG_SQL = """
DO $$
BEGIN
  FOR k IN 0..{txns} - 1 LOOP
    UPDATE bench.t SET qty = qty + 1, name = 'changed ' || id
     WHERE id > (k * {per}) % {rows} AND id <= (k * {per}) % {rows} + {per};
    COMMIT;
  END LOOP;
END $$;
"""
CHECK_SQL = "SELECT COUNT(*), SUM(qty), SUM(CASE WHEN name LIKE 'changed %%' THEN 1 ELSE 0 END) FROM {}"


def doc(src: str, target: str, db: str, filtered: bool = False) -> dict:
    t = {"schema_name": "bench", "table_name": "t"}
    filters = [{**t, "column_name": "qty", "filter_type": "greater_than_or_equal", "value": 0}] if filtered else []
    return {"filters": filters, "task": {"task_name": "maria_bench", "source": src, "target": target, "replication_type": "full_load",
                     "full_load_settings": {"recreate_table_if_exists": True}},
            "tables": [t],
            "transformations": [{**t, "priority": 0, "transformation_type": "modify_schema_name",
                                 "contract": {"target_schema_name": db}}]}


def cdc_doc(src: str, target: str, db: str) -> dict:
    """(d)'s task: full load and CDC of bench.t into database `db`, upsert."""
    d = doc(src, target, db)
    d["task"].update({"task_name": "maria_bench_cdc", "replication_type": "full_load_and_cdc",
                      "start_mode": "reload", "interval_seconds": 0.05, "cdc_settings": {"mode": "upsert"}})
    return d


def run_cli_child(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(seconds, peak RSS in kB) of one `trempy-nb` process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CLI_CHILD, *args], env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"trempy-nb {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")
    rss = max([0, *(int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB"))])
    return secs, rss


def cdc_end_to_end(src: str, target: str, db: str, path: Path, env: dict[str, str], rows: int, changes: int,
                   admin: Any) -> tuple[float, int]:
    """(d): write the backlog, time the catch-up run, check the target equals the source."""
    per = 100
    with connect(src, autocommit=True) as c:
        c.execute(BACKLOG_SQL.format(txns=max(1, changes // per), per=per, rows=rows))
        want = c.execute(CHECK_SQL.replace("%%", "%").format("bench.t")).fetchone()
    secs, rss = run_cli_child(["run", str(path), "--until-caught-up", "--start-mode", "continue", "-q"], env)
    with admin.cursor() as cur:
        execute(cur, CHECK_SQL.format(qualified(db, "t")))
        got = cur.fetchone()
    admin.commit()
    if want is None or got is None or tuple(int(v) for v in got) != tuple(int(v) for v in want):
        sys.exit(f"(d): the MariaDB target does not match the source after the run: {got} vs {want}")
    return secs, rss


def change_batches(n_rows: int, n_changes: int, lsn0: int) -> list[tuple[pl.DataFrame, int]]:
    """Upsert changes as benchmarks/cdc.py's backlog A makes them: row updates in key order, 100 per
    source transaction (its own LSN); every tenth change inserts a new key instead."""
    out = []
    when = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
    for start in range(0, n_changes, BATCH):
        n = min(BATCH, n_changes - start)
        lsn = lsn0 + (start + n - 1) // 100  # the batch ends with its last transaction
        i = pl.col("i")
        key = pl.when(i % 10 == 9).then(n_rows + 1 + i).otherwise(i % n_rows + 1).cast(pl.String)
        df = pl.DataFrame({"i": pl.int_range(start, start + n, eager=True)}).select(
            key.alias("id"),
            (pl.lit("changed ") + key).alias("name"),
            pl.lit("12.50").alias("amount"), pl.lit("7").alias("qty"),
            pl.lit("2024-06-01 10:00:00+00").alias("created"), pl.lit("2024-06-01").alias("day"),
            pl.lit("t").alias("active"), pl.lit(None, pl.String).alias("note"),
            pl.when(i % 10 == 9).then(pl.lit("I")).otherwise(pl.lit("U")).alias(OP),
            (lsn0 + i // 100).cast(pl.Int64).alias(LSN), pl.lit(when, META_SCHEMA[TS]).alias(TS),
            i.cast(pl.Int64).alias(SEQ), pl.lit(None, META_SCHEMA[UNCHANGED]).alias(UNCHANGED))
        out.append((df, lsn))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--changes", type=int, default=200_000, help="(c): changes applied")
    ap.add_argument("--cdc-changes", type=int, default=200_000, help="(d): changes in the backlog")
    ap.add_argument("--mariadb", default="mysql://root@127.0.0.1:3306/test", help="server (its database holds state)")
    args = ap.parse_args()
    cluster = start_cluster(conf={"shared_buffers": "256MB", "autovacuum": "off"})
    work = Path(tempfile.mkdtemp(prefix="trempy_maria_bench_"))
    server = maria_uri.target_of(args.mariadb)
    db = f"bench_{uuid.uuid4().hex[:8]}"
    cdc_db = f"bench_cdc_{uuid.uuid4().hex[:8]}"
    admin = maria_uri.connect(server)
    try:
        src = cluster.create_database("bench_src")
        print(f"building bench.t with {args.rows:,} rows and its CSV file ...", flush=True)
        with connect(src, autocommit=True) as c:
            c.execute(TABLE_SQL.format(rows=int(args.rows)))
            csv_path = work / "bench_t.csv"
            with open(csv_path, "wb") as f, c.cursor().copy(CSV_QUERY) as copy:
                for chunk in copy:
                    f.write(chunk)
            info = describe_table(c, "bench", "t")
        settings_doc = doc(src, args.mariadb, db)
        settings = parse_settings(settings_doc)
        spec = target_spec(compile_plans(settings, {("bench", "t"): info})[("bench", "t")], settings)
        env = {**os.environ, "TREMPY_HOME": str(work / "home")}
        rounds: list[dict[str, float]] = []
        rss = cdc_rss = 0
        cdc_path = work / "cdc.json"
        cdc_path.write_text(json.dumps(cdc_doc(src, args.mariadb, cdc_db)))
        print("(d): full load of the CDC task and its slot ...", flush=True)
        run_cli_child(["run", str(cdc_path), "--until-caught-up", "-q"], env)
        for r in range(args.repeat):
            print(f"round {r + 1} of {args.repeat} ...", flush=True)
            res: dict[str, float] = {}
            with admin.cursor() as cur:  # (a) reference
                execute(cur, f"DROP DATABASE IF EXISTS {quote(db)}")
                execute(cur, create_database_sql(db))
                execute(cur, create_table_sql(spec, column_types(spec)))
                t0 = time.perf_counter()
                execute(cur, f"LOAD DATA LOCAL INFILE %s INTO TABLE {qualified(db, 't')} CHARACTER SET utf8mb4"
                        " FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY ''"
                        " LINES TERMINATED BY '\\n'", (str(csv_path),))
                admin.commit()
                res["a_load_data_csv_file"] = time.perf_counter() - t0
                execute(cur, f"DROP DATABASE {quote(db)}")
            for label, filtered in (("b'_trempy_polars_path", True), ("b_trempy_full_load", False)):
                t0 = time.perf_counter()  # (b') then (b): (b) leaves the table (c) updates
                proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(doc(src, args.mariadb, db, filtered))],
                                      env=env, capture_output=True, text=True)
                res[label] = time.perf_counter() - t0
                if proc.returncode:
                    sys.exit(f"full load failed:\n{proc.stderr[-2000:]}")
                rss = max(rss, *(int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB")))
            conn = maria_uri.connect(server)  # (c) CDC upsert apply onto the loaded table
            batches = change_batches(args.rows, args.changes, 10_000_000 * (r + 1))
            task = f"bench_cdc_{uuid.uuid4().hex[:6]}"
            t0 = time.perf_counter()
            for frame, lsn in batches:
                apply_batch(conn, task, [TableApply(spec, frame)], lsn, error_handling=ErrorHandling())
            res["c_cdc_upsert_apply"] = time.perf_counter() - t0
            with conn.cursor() as cur:
                execute(cur, f"DELETE FROM {qualified(server.database, 'trempy_checkpoints')} WHERE task = %s", (task,))
            conn.commit()
            conn.close()
            print(f"round {r + 1}: (d) backlog of {args.cdc_changes:,} changes, then the catch-up run ...", flush=True)
            res["d_cdc_end_to_end"], used = cdc_end_to_end(src, args.mariadb, cdc_db, cdc_path, env, args.rows,
                                                           args.cdc_changes, admin)
            cdc_rss = max(cdc_rss, used)
            rounds.append(res)
        ref = "a_load_data_csv_file"
        print(f"\nMariaDB full load of {args.rows:,} rows x 8 columns, median of {args.repeat} rounds")
        for label in ("a_load_data_csv_file", "b_trempy_full_load", "b'_trempy_polars_path"):
            secs = statistics.median(x[label] for x in rounds)
            ratio = statistics.median(x[ref] / x[label] for x in rounds)
            print(f"{label:24} {secs:8.2f}s {args.rows / secs:12,.0f} rows/s  {ratio:5.2f}x of (a)")
        cdc = statistics.median(x["c_cdc_upsert_apply"] for x in rounds)
        print(f"{'c_cdc_upsert_apply':24} {cdc:8.2f}s {args.changes / cdc:12,.0f} changes/s"
              f" ({args.changes:,} changes in batches of {BATCH:,})")
        e2e = statistics.median(x["d_cdc_end_to_end"] for x in rounds)
        print(f"{'d_cdc_end_to_end':24} {e2e:8.2f}s {args.cdc_changes / e2e:12,.0f} changes/s"
              f" ({args.cdc_changes:,} changes in transactions of 100, `trempy-nb run --until-caught-up`)")
        print(f"peak RSS of the full loads: {rss / 1024:.0f} MB; of the CDC run: {cdc_rss / 1024:.0f} MB")
        print("targets: (b) >= 0.7x of (a); (c), (d) >= 20k changes/s; peak RSS < 400 MB")
    finally:
        with admin.cursor() as cur:
            execute(cur, f"DROP DATABASE IF EXISTS {quote(db)}")
            execute(cur, f"DROP DATABASE IF EXISTS {quote(cdc_db)}")
        admin.close()
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
