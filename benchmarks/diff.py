"""Diff of an equal N-row table against COPY of both sides into /dev/null, in the same run.

    python -m benchmarks.diff [--rows 2000000] [--repeat 3]

(a) psql `COPY (SELECT <source columns> FROM bench.t [WHERE <filter>]) TO STDOUT` > /dev/null, then
    the same of the target table's columns: both sides read once, one after the other
(b) `trempy-nb diff` of a task with no filter and no transformation (its target loaded and equal)
(c) `trempy-nb diff` of a task with a filter and three transformations with a SQL form (renamed
    table, uppercase, concat), its target loaded and equal
Each diff is compared with its own (a). The cases run in turn `--repeat` times (the shared 2-core
VM drifts between minutes); printed are the median seconds, the median of the per-round ratios to
(a) and the peak RSS of the trempy-nb process. Target: at most 1.5x, peak RSS under 300 MB.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import trempy_nb
from benchmarks.common import CHILD, TABLE_SQL, timed
from trempy_nb.db import connect
from trempy_nb.embedded import find_bindir, start_cluster

COLUMNS = "id, name, amount, qty, created, day, active, note"


def settings(name: str, src: str, tgt: str, transformed: bool) -> dict:
    t = {"schema_name": "bench", "table_name": "t"}
    doc: dict = {
        "task": {"task_name": name, "source": src, "target": tgt, "replication_type": "full_load",
                 "full_load_settings": {"recreate_table_if_exists": True}},
        "tables": [t],
    }
    if transformed:
        doc["filters"] = [{**t, "column_name": "qty", "filter_type": "greater_than_or_equal", "value": 10}]
        doc["transformations"] = [
            {**t, "priority": 0, "transformation_type": "modify_table_name", "contract": {"target_table_name": "t_x"}},
            {**t, "priority": 1, "transformation_type": "modify_column_value",
             "contract": {"operation": "uppercase", "column_name": "name"}},
            {**t, "priority": 2, "transformation_type": "create_column",
             "contract": {"operation": "concat", "new_column_name": "label", "depends_on": ["name", "qty"],
                          "separator": "-"}},
        ]
    return doc


CASES = (  # label, transformed, the two baseline queries (source, target)
    ("b_diff_plain", False, (f"SELECT {COLUMNS} FROM bench.t", f"SELECT {COLUMNS} FROM bench.t")),
    ("c_diff_filter_3_transforms", True, (f"SELECT {COLUMNS} FROM bench.t WHERE qty >= 10",
                                          f"SELECT {COLUMNS}, label FROM bench.t_x")),
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    compileall.compile_dir(str(Path(trempy_nb.__file__).parent), quiet=1)  # as an installed package has it
    cluster = start_cluster(conf={"shared_buffers": "512MB", "autovacuum": "off", "max_wal_size": "8GB",
                                  "checkpoint_timeout": "30min"})
    work = Path(tempfile.mkdtemp(prefix="trempy_bench_diff_"))
    try:
        src = cluster.create_database("bench_src")
        tgt = cluster.create_database("bench_tgt")
        print(f"building bench.t with {args.rows:,} rows ...", flush=True)
        with connect(src, autocommit=True) as c:
            c.execute(TABLE_SQL.format(rows=int(args.rows)))
        env = {**os.environ, "PGPASSWORD": cluster.password, "TREMPY_HOME": str(work / "home")}
        paths = {}
        for label, transformed, _ in CASES:
            path = work / f"{label[:1]}.json"
            path.write_text(json.dumps(settings(label[:1] + "_bench", src, tgt, transformed)))
            paths[label] = path
            print(f"loading the target of {label} ...", flush=True)
            timed([sys.executable, "-m", "trempy_nb.cli", "run", str(path), "-q"], env)
        with connect(tgt, autocommit=True) as c:
            c.execute("VACUUM ANALYZE")
            c.execute("CHECKPOINT")
        psql = str(find_bindir() / "psql") if (find_bindir() / "psql").exists() else shutil.which("psql") or "psql"
        host = f"-h 127.0.0.1 -p {cluster.port} -U postgres -X -q"

        def copy_both(queries: tuple[str, str]) -> str:
            s, t = queries
            return (f"{psql} {host} -d {src.rsplit('/', 1)[1]} -c \"COPY ({s}) TO STDOUT\" > /dev/null && "
                    f"{psql} {host} -d {tgt.rsplit('/', 1)[1]} -c \"COPY ({t}) TO STDOUT\" > /dev/null")

        rounds: list[dict[str, tuple[float, int]]] = []
        for r in range(args.repeat):
            print(f"round {r + 1} of {args.repeat} ...", flush=True)
            results: dict[str, tuple[float, int]] = {}
            for label, _, queries in CASES:
                secs, _, _ = timed(copy_both(queries), env, shell=True)
                results["a_copy_both_sides/" + label[:1]] = (secs, 0)
                secs, rss, _ = timed([sys.executable, "-c", CHILD, "diff", str(paths[label])], env)
                results[label] = (secs, rss)
            rounds.append(results)
        print(f"\ndiff of an equal {args.rows:,}-row table x 8 columns (2 cores), median of {args.repeat} rounds")
        print(f"{'case':36} {'seconds':>8} {'vs COPY':>8} {'range':>13} {'peak RSS':>9}")
        for label, _, _ in CASES:
            base = "a_copy_both_sides/" + label[:1]
            print(f"{base:36} {statistics.median(r[base][0] for r in rounds):8.2f}")
            secs = statistics.median(r[label][0] for r in rounds)
            ratios = [r[label][0] / r[base][0] for r in rounds]
            rss = max(r[label][1] for r in rounds)
            print(f"{label:36} {secs:8.2f} {statistics.median(ratios):7.2f}x"
                  f" {min(ratios):.2f}-{max(ratios):.2f}x {rss / 1024:7.0f} MB")
        print("target: at most 1.5x the COPY of both sides, peak RSS under 300 MB")
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
