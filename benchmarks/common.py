"""What the benchmarks share: the 8-column table, the measured child process and its timing.

Each benchmark runs `trempy-nb` as a user does, a whole process (`CHILD`), and reads the
child's own peak RSS from the line it prints last.
"""

from __future__ import annotations

import subprocess
import sys
import time

#: The full-load and diff benchmarks' table: 8 columns of the common types, a NULL in one row of 10.
TABLE_SQL = """
CREATE SCHEMA bench;
CREATE TABLE bench.t (
  id bigint PRIMARY KEY, name text, amount numeric(12,2), qty integer,
  created timestamptz, day date, active boolean, note text
);
INSERT INTO bench.t
SELECT i, 'name ' || i, (i % 100000) / 7.0, i % 1000,
       TIMESTAMPTZ '2020-01-01 00:00+00' + i * INTERVAL '1 second', DATE '2000-01-01' + i % 9000,
       i % 3 = 0, CASE WHEN i % 10 = 0 THEN NULL ELSE 'note with some text ' || md5(i::text) END
FROM generate_series(1, {rows}) i;
ANALYZE bench.t;
"""

#: `trempy-nb ARGS...` in a child process that reports its peak RSS on stderr
CHILD = """
import resource, sys
from trempy_nb.cli import main
code = main(sys.argv[1:])
use = resource.getrusage(resource.RUSAGE_SELF)
print("MAXRSS_KB", use.ru_maxrss, file=sys.stderr)
print("CPU_S", use.ru_utime + use.ru_stime, file=sys.stderr)
sys.exit(code)
"""


def timed(cmd: list[str] | str, env: dict[str, str], shell: bool = False,
          ok: tuple[int, ...] = (0,)) -> tuple[float, int, int]:
    """Run a command; (seconds, peak RSS in KB from a `CHILD`, exit code). Exits on a code not in `ok`."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, shell=shell)  # noqa: S602 - our own command
    secs = time.perf_counter() - t0
    if res.returncode not in ok:
        sys.exit(f"command failed ({res.returncode}): {str(cmd)[:200]}\n{res.stdout[-1000:]}{res.stderr[-3000:]}")
    rss = next((int(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("MAXRSS_KB")), 0)
    return secs, rss, res.returncode


def run_child(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """`trempy-nb ARGS` as a whole process: (seconds, peak RSS in KB)."""
    secs, rss, _ = timed([sys.executable, "-c", CHILD, *args], env)
    return secs, rss


def run_child_cpu(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """`trempy-nb ARGS` as a whole process: (wall seconds, CPU seconds of the process itself:
    its own time, without the servers' work it waits for)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {args[:2]}\n{res.stderr[-3000:]}")
    cpu = next((float(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("CPU_S")), 0.0)
    return secs, cpu
