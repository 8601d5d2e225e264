"""The full load's table loop, one for every target database: prepare the target once, then load
each table in its own target transaction, in parallel where the machine allows; the first failure
stops the rest.

A `LoadTarget` is a target database's side of it (the hook): what to check and create before any
table (`prepare`), how to load one table (`load_table`), and which driver errors become one masked
line. PostgreSQL's is `load.POSTGRES_LOAD`; MariaDB/MySQL's is `mariadb.MARIADB_LOAD`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from trempy_nb.errors import TrempyError
from trempy_nb.fullload.result import RowErrorHook, TableLoadResult
from trempy_nb.pipeline.plan import TablePlan
from trempy_nb.redact import mask
from trempy_nb.settings import TaskSettings
from trempy_nb.writer.fence import Fence

Plans = Mapping[tuple[str, str], TablePlan]


@dataclass(frozen=True)
class LoadTarget:
    """A target database's side of a full load."""

    name: str
    #: (settings, plans, target_uri): checks and objects needed before any table loads
    prepare: Callable[[TaskSettings, Plans, str], None]
    #: (settings, plan, source_uri, target_uri, *, snapshot, snapshot_lsn, load_ts, on_progress,
    #: on_row_error, fence) -> the table's counters; one target transaction
    load_table: Callable[..., TableLoadResult]
    #: driver errors that escaped the error policy: reported as one masked line
    errors: tuple[type[BaseException], ...]


def run_tables(
    target: LoadTarget,
    settings: TaskSettings,
    plans: Plans,
    source_uri: str,
    target_uri: str,
    *,
    snapshot: str | None = None,
    snapshot_lsn: int | None = None,
    load_ts: Any = None,
    progress: Callable[[tuple[str, str], int], None] | None = None,
    on_row_error: RowErrorHook | None = None,
    on_table_done: Callable[[TableLoadResult], None] | None = None,
    max_workers: int = 2,
    fence: Fence | None = None,
) -> list[TableLoadResult]:
    """Prepare the target, then load every planned table (the settings' order); results in that order.
    With a `fence`, each table's transaction checks it before its commit."""
    target.prepare(settings, plans, target_uri)

    def one(key: tuple[str, str]) -> TableLoadResult:
        cb = (lambda n: progress(key, n)) if progress else None
        r = target.load_table(settings, plans[key], source_uri, target_uri, snapshot=snapshot,
                              snapshot_lsn=snapshot_lsn, load_ts=load_ts, on_progress=cb, on_row_error=on_row_error,
                              fence=fence)
        if on_table_done:
            on_table_done(r)
        return r

    keys = [t.key for t in settings.tables if t.key in plans]
    if len(keys) <= 1 or max_workers <= 1:
        return [one(k) for k in keys]
    results: list[TableLoadResult] = []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(keys)), thread_name_prefix="trempy-load") as pool:
        futures = [pool.submit(one, k) for k in keys]
        first_error: BaseException | None = None
        for f in futures:
            try:
                results.append(f.result())
            except TrempyError as exc:
                first_error = first_error or exc
            except target.errors as exc:
                first_error = first_error or TrempyError(mask(str(exc)))
        if first_error:
            raise first_error
    return results
