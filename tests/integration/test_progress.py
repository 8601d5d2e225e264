"""Progress of a non-interactive `trempy-nb run` (cron, CI, a pipe): plain lines, no carriage returns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg

LINE = re.compile(r"^(src\.\w+): ([\d,]+)/([\d,]+) rows \((\d+)%\), ([\d,]+) rows/s( done)?$")


def test_non_tty_run_prints_progress_lines_per_table(source_uri: str, target_uri: str, trempy_home: Path,
                                                     tmp_path: Path) -> None:
    with psycopg.connect(source_uri, autocommit=True) as c:
        c.execute("CREATE SCHEMA src")
        c.execute("CREATE TABLE src.plain (id bigint PRIMARY KEY, v text)")
        c.execute("INSERT INTO src.plain SELECT i, md5(i::text) FROM generate_series(1, 20000) i")
        c.execute("CREATE TABLE src.filtered (id bigint PRIMARY KEY, n integer)")
        c.execute("INSERT INTO src.filtered SELECT i, i % 10 FROM generate_series(1, 5000) i")
        c.execute("ANALYZE src.plain, src.filtered")
    doc = {
        "task": {"task_name": "t_progress", "source": source_uri, "target": target_uri, "replication_type": "full_load"},
        "tables": [{"schema_name": "src", "table_name": "plain"}, {"schema_name": "src", "table_name": "filtered"}],
        "filters": [{"schema_name": "src", "table_name": "filtered", "column_name": "n",
                     "filter_type": "greater_than_or_equal", "value": 5}],
    }
    path = tmp_path / "task.json"
    path.write_text(json.dumps(doc))
    # stdout and stderr are pipes, as under cron or CI; a line at every update, not every 5 s
    env = {**os.environ, "TREMPY_HOME": str(trempy_home), "TREMPY_PROGRESS_S": "0"}
    res = subprocess.run([sys.executable, "-m", "trempy_nb.cli", "run", str(path)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stdout + res.stderr
    lines = [m for m in (LINE.match(line) for line in res.stderr.splitlines()) if m]
    finals = {m.group(1): m for m in lines if m.group(6)}
    assert set(finals) == {"src.plain", "src.filtered"}, res.stderr
    assert finals["src.plain"].group(2) == finals["src.plain"].group(3) == "20,000"
    assert finals["src.filtered"].group(2) == "5,000" and finals["src.filtered"].group(4) == "100"
    with psycopg.connect(target_uri) as c:
        assert c.execute("SELECT count(*) FROM src.plain").fetchone() == (20000,)
        assert c.execute("SELECT count(*) FROM src.filtered").fetchone() == (2500,)

    quiet = subprocess.run([sys.executable, "-m", "trempy_nb.cli", "run", str(path), "-q"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert not any(LINE.match(line) for line in quiet.stderr.splitlines())
