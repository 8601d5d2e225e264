"""Bulk rows into MariaDB: `LOAD DATA LOCAL INFILE` fed from memory through a private FIFO.

The driver reads LOCAL INFILE data from a path; a named pipe in a private
temporary directory lets a thread hand it the batch's CSV bytes straight from
memory (nothing is written to disk, any driver works). CSV: every field quoted
(`"` doubled inside), NULL unquoted, no escape character, so values travel
byte for byte. LOAD DATA LOCAL treats data errors as warnings (like IGNORE); any
warning is raised as `DataWarnings` (a row-level error: the caller's savepoint
rolls the batch back and the error policy splits it), so no value is ever
silently changed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import polars as pl

from trempy_nb.writer.mariadb.errors import DataWarnings
from trempy_nb.writer.mariadb.names import execute, quote
from trempy_nb.writer.mariadb.types import MariaType


def csv_bytes(frame: pl.DataFrame, columns: Sequence[str]) -> bytes:
    """The rows as LOAD DATA reads them below (strings quoted, NULL bare)."""
    df = frame.select([pl.col(c).cast(pl.String) for c in columns])
    return df.write_csv(include_header=False, null_value="NULL", quote_style="non_numeric").encode()


@contextlib.contextmanager
def _fifo(data: bytes | Iterable[bytes]) -> Iterator[str]:
    """A named pipe that yields `data` (bytes, or chunks of them) once to whoever opens it for reading."""
    folder = tempfile.mkdtemp(prefix="trempy-load-")
    path = os.path.join(folder, "rows.csv")
    os.mkfifo(path, 0o600)
    failed: list[BaseException] = []

    def feed() -> None:
        try:
            with open(path, "wb") as pipe:
                for chunk in [data] if isinstance(data, bytes) else data:
                    pipe.write(chunk)
        except BrokenPipeError:
            pass  # the reader stopped early (the statement failed): its error is the one to report
        except BaseException as exc:  # handed to the caller
            failed.append(exc)

    thread = threading.Thread(target=feed, daemon=True, name="trempy-load-feed")
    thread.start()
    try:
        yield path
    finally:
        if thread.is_alive():
            # the server never asked for the file: open the pipe ourselves so the feeder ends
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                thread.join(0.05)
                os.close(fd)
        thread.join(5)
        shutil.rmtree(folder, ignore_errors=True)
    if failed:
        raise failed[0]


def load_statement(
    table: str, columns: Sequence[str], types: Mapping[str, MariaType], extra: Mapping[str, str] | None = None
) -> str:
    """LOAD DATA into `table` (already quoted) for `columns`; `extra` {column: SQL expression} is SET too.

    One %s placeholder: the file name."""
    targets: list[str] = []
    sets: list[str] = []
    for i, c in enumerate(columns):
        mt = types.get(c)
        if mt is not None and mt.load == "hex":
            targets.append(f"@v{i}")
            sets.append(f"{quote(c)} = UNHEX(@v{i})")
        else:
            targets.append(quote(c))
    sets += [f"{quote(c)} = {expr}" for c, expr in (extra or {}).items()]
    set_clause = f" SET {', '.join(sets)}" if sets else ""
    return (
        f"LOAD DATA LOCAL INFILE %s INTO TABLE {table} CHARACTER SET utf8mb4"
        " FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY ''"
        f" LINES TERMINATED BY '\\n' ({', '.join(targets)}){set_clause}"
    )


def load_frame(
    cur: Any,
    table: str,
    columns: Sequence[str],
    frame: pl.DataFrame,
    types: Mapping[str, MariaType],
    *,
    extra: Mapping[str, str] | None = None,
    extra_params: Sequence[Any] = (),
    data: bytes | None = None,
) -> int:
    """Load `frame[columns]` (MariaDB input text, see types.to_load_text) into `table`; rows loaded.

    `data` is the frame already encoded by `csv_bytes` (made in another thread). Raises
    DataWarnings when the server warned about any value."""
    if frame.height == 0:
        return 0
    payload = data if data is not None else csv_bytes(frame, columns)
    with _fifo(payload) as path:
        loaded = execute(cur, load_statement(table, columns, types, extra), (path, *extra_params))
    execute(cur, "SHOW WARNINGS LIMIT 10")
    warnings = list(cur.fetchall())
    if warnings:
        raise DataWarnings(warnings)
    if loaded != frame.height:
        raise DataWarnings([("Error", 0, f"{frame.height} rows sent but {loaded} loaded")])
    return loaded


def load_stream(
    cur: Any,
    table: str,
    columns: Sequence[str],
    chunks: Iterable[bytes],
    types: Mapping[str, MariaType],
    *,
    extra: Mapping[str, str] | None = None,
    extra_params: Sequence[Any] = (),
) -> int:
    """LOAD DATA of CSV chunks as `csv_bytes` writes them, produced while the server reads (a
    source's COPY): no rows in Python. Rows loaded; DataWarnings when the server warned."""
    with _fifo(chunks) as path:
        loaded = execute(cur, load_statement(table, columns, types, extra), (path, *extra_params))
    execute(cur, "SHOW WARNINGS LIMIT 10")
    warnings = list(cur.fetchall())
    if warnings:
        raise DataWarnings(warnings)
    return loaded
