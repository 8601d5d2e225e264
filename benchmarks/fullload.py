"""Full-load throughput and memory against the raw COPY pipe, on the same data in one run.

    python -m benchmarks.fullload [--rows 2000000] [--repeat 3] [--cases a,k,b,c,t,n]

(a) psql COPY ... TO STDOUT (FORMAT binary) | psql COPY ... FROM STDIN (FORMAT binary), into an
    existing table with its primary key
(k) trempy-nb run into an existing target table with its primary key, no transformation: what a
    user times (the whole process, start to exit, against (a) on the same data)
(b) trempy-nb run, no filter and no transformation (COPY pass-through), target table recreated
(c) trempy-nb run, one filter and five transformations (COPY binary -> Polars -> COPY binary:
    the columns the plan does not write pass through as the source's bytes)
(c') the same as (c) through COPY text both ways (TREMPY_COPY_FORMAT=text), for comparison
(n) trempy-nb run --until-caught-up --start-mode continue of a CDC task with nothing to catch up:
    the fixed cost of a scheduled run (seconds only; target < 0.5 s)
The cases run in turn `--repeat` times (a shared 2-core VM drifts by tens of percent between
minutes, so each round compares cases measured seconds apart), each from the same state (its
target table absent, no dirty buffers left by the case before); printed are the median seconds,
the median of the per-round ratios to (a), and the peak RSS of the trempy-nb process.
The package's bytecode is compiled first, as an installed package has it.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trempy_nb
from benchmarks.common import TABLE_SQL, run_child, run_child_cpu
from trempy_nb.db import connect
from trempy_nb.embedded import find_bindir, start_cluster

TARGET_TABLE_SQL = """CREATE TABLE IF NOT EXISTS bench.{name} (id bigint PRIMARY KEY, name text, amount numeric(12,2),
qty integer, created timestamptz, day date, active boolean, note text)"""

SMALL_SQL = """
CREATE TABLE bench.small (id bigint PRIMARY KEY, v text);
INSERT INTO bench.small SELECT i, md5(i::text) FROM generate_series(1, 1000) i;
"""


def settings(name: str, src: str, tgt: str, transformed: bool, existing: bool = False) -> dict:
    doc: dict = {
        "task": {"task_name": name, "source": src, "target": tgt, "replication_type": "full_load",
                 "full_load_settings": {"recreate_table_if_exists": not existing}},
        "tables": [{"schema_name": "bench", "table_name": "t"}],
    }
    if transformed:
        t = {"schema_name": "bench", "table_name": "t"}
        doc["filters"] = [{**t, "column_name": "qty", "filter_type": "greater_than_or_equal", "value": 0}]
        doc["transformations"] = [
            {**t, "priority": 0, "transformation_type": "modify_table_name", "contract": {"target_table_name": "t_x"}},
            {**t, "priority": 1, "transformation_type": "modify_column_value",
             "contract": {"operation": "uppercase", "column_name": "name"}},
            {**t, "priority": 2, "transformation_type": "modify_column_value",
             "contract": {"operation": "trim", "column_name": "note"}},
            {**t, "priority": 2, "transformation_type": "create_column",
             "contract": {"operation": "concat", "new_column_name": "label", "depends_on": ["name", "qty"], "separator": "-"}},
            {**t, "priority": 3, "transformation_type": "create_column",
             "contract": {"operation": "math_expression", "new_column_name": "total", "expression": "amount * qty + 1"}},
        ]
    return doc


CASES = (  # option letter, label, transformed, existing keyed target, extra environment
    ("k", "k_trempy_into_existing_keyed", False, True, {}),
    ("b", "b_trempy_passthrough", False, False, {}),
    ("c", "c_trempy_1_filter_5_transforms", True, False, {}),
    ("t", "c'_same_through_copy_text", True, False, {"TREMPY_COPY_FORMAT": "text"}),
)
NOOP = "n_until_caught_up_nothing_to_do"
NOOP_CPU = "n_... its own CPU time (user+sys)"


def noop_settings(src: str, tgt: str) -> dict:
    """A CDC task on a small table: once loaded, `--until-caught-up` has nothing to do."""
    return {"task": {"task_name": "n_bench", "source": src, "target": tgt,
                     "replication_type": "full_load_and_cdc", "start_mode": "continue"},
            "tables": [{"schema_name": "bench", "table_name": "small"}]}


def fresh_target(tgt: str, existing: bool = False) -> None:
    """Every case starts from the same state, outside its timing: its target table absent, or
    present with its key and empty (as the raw pipe's), and no dirty buffers, which the case
    before would otherwise leave it to write."""
    with connect(tgt, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS bench.t, bench.t_x")
        c.execute("TRUNCATE bench.raw")
        if existing:
            c.execute(TARGET_TABLE_SQL.format(name="t"))
        c.execute("CHECKPOINT")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default="a,k,b,c,t,n",
                    help="comma-separated: a raw pipe, k existing keyed target, b pass-through,"
                         " c transformed, t transformed through COPY text, n nothing to catch up")
    args = ap.parse_args()
    chosen = {c.strip() for c in args.cases.split(",") if c.strip()} | {"a"}  # ratios need (a)
    # no autovacuum and no checkpoint during the runs: the vacuum of one case's 2M fresh rows, or a
    # checkpoint its WAL triggered, would otherwise land in the timing of whichever case came next
    # as an installed package has it: its bytecode compiled (this environment may set
    # PYTHONDONTWRITEBYTECODE, and every run would then compile the package from source)
    compileall.compile_dir(str(Path(trempy_nb.__file__).parent), quiet=1)
    cluster = start_cluster(conf={"shared_buffers": "512MB", "autovacuum": "off", "max_wal_size": "8GB",
                                  "checkpoint_timeout": "30min"})
    work = Path(tempfile.mkdtemp(prefix="trempy_bench_"))
    try:
        src = cluster.create_database("bench_src")
        tgt = cluster.create_database("bench_tgt")
        print(f"building bench.t with {args.rows:,} rows ...", flush=True)
        with connect(src, autocommit=True) as c:
            c.execute(TABLE_SQL.format(rows=int(args.rows)))
            c.execute(SMALL_SQL)
        with connect(tgt, autocommit=True) as c:
            c.execute("CREATE SCHEMA bench")
            c.execute(TARGET_TABLE_SQL.format(name="raw"))
        env = {**os.environ, "PGPASSWORD": cluster.password, "TREMPY_HOME": str(work / "home")}
        noop = work / "n.json"
        if "n" in chosen:  # the slot and the first load, outside any timing
            noop.write_text(json.dumps(noop_settings(src, tgt)))
            run_child(["run", str(noop), "--until-caught-up", "--start-mode",
                       "reload", "-q"], env)
        psql = str(find_bindir() / "psql") if (find_bindir() / "psql").exists() else shutil.which("psql") or "psql"
        host = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-X", "-q"]
        pipe = (f"{psql} {' '.join(host)} -d {src.rsplit('/', 1)[1]} -c 'COPY bench.t TO STDOUT (FORMAT binary)' | "
                f"{psql} {' '.join(host)} -d {tgt.rsplit('/', 1)[1]} -c 'COPY bench.raw FROM STDIN (FORMAT binary)'")
        rounds: list[dict[str, tuple[float, int]]] = []
        for r in range(args.repeat):
            print(f"round {r + 1} of {args.repeat} ...", flush=True)
            fresh_target(tgt)
            t0 = time.perf_counter()
            subprocess.run(pipe, shell=True, check=True, env=env)  # noqa: S602 - our own fixed command
            results = {"a_raw_copy_pipe": (time.perf_counter() - t0, 0)}
            for letter, label, transformed, existing, extra in CASES:
                if letter not in chosen:
                    continue
                path = work / f"{letter}.json"
                path.write_text(json.dumps(settings(letter + "_bench", src, tgt, transformed, existing)))
                fresh_target(tgt, existing)
                results[label] = run_child(["run", str(path), "-q"], {**env, **extra})
            if "n" in chosen:
                # The target databases share the source's cluster, so the slot's WAL holds every
                # load above, and a walsender decodes from the slot's restart point, which moves
                # up one logged snapshot of running transactions per run. A CHECKPOINT logs one
                # (the server does by itself every 15 s of activity), and untimed runs follow until
                # the restart point has caught up: the steady state of a scheduled run, timed next.
                with connect(tgt, autocommit=True) as c:
                    c.execute("CHECKPOINT")
                for _ in range(4):
                    run_child(["run", str(noop), "--until-caught-up", "-q"], env)
                    with connect(src, autocommit=True) as c:
                        row = c.execute("SELECT pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn) < 16 * 1024 * 1024"
                                        " FROM pg_replication_slots WHERE slot_name = 'trempy_n_bench'").fetchone()
                    if row and row[0]:
                        break
                wall, cpu = run_child_cpu(["run", str(noop), "--until-caught-up", "--start-mode", "continue", "-q"],
                                          env)
                results[NOOP] = (wall, 0)
                results[NOOP_CPU] = (cpu, 0)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            results["python_start_alone"] = (time.perf_counter() - t0, 0)
            rounds.append(results)
        print(f"\nfull load of {args.rows:,} rows x 8 columns (2 cores), median of {args.repeat} rounds")
        print(f"{'case':36} {'seconds':>8} {'rows/s':>12} {'vs raw':>7} {'range':>13} {'peak RSS':>9}")
        for label in rounds[0]:
            secs = statistics.median(r[label][0] for r in rounds)
            if label in (NOOP, NOOP_CPU, "python_start_alone"):
                print(f"{label:36} {secs:8.2f} {'-':>12} {'-':>7} {'-':>13} {'-':>9}")
                continue
            ratios = [r["a_raw_copy_pipe"][0] / r[label][0] for r in rounds]
            rss = max(r[label][1] for r in rounds)
            rss_s = f"{rss / 1024:.0f} MB" if rss else "-"
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}x"
            print(f"{label:36} {secs:8.2f} {args.rows / secs:12,.0f} {statistics.median(ratios):6.2f}x"
                  f" {spread:>13} {rss_s:>9}")
        print("targets: (k) and (b) >= 0.9x, (c) >= 0.7x, peak RSS < 400 MB, (n) < 0.5 s of its own time")
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
