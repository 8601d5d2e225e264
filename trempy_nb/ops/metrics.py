"""Prometheus metrics read from the metadata store on each scrape (`prometheus_client`).

A custom collector, not counters kept in memory: every figure comes from the store at scrape
time, so `trempy-nb metrics --port P` serves the same numbers as a worker's `--metrics-port`,
from any process that can open the store, and a restart loses nothing. Counters are sums over
every run the store remembers:

- trempy_changes_applied_total{task,table,op}: CDC rows applied (insert, update, delete, scd2
  open/close, truncate), from the per-operation stats rows (`cdc:<op>`) the applier records;
- trempy_rows_loaded_total{task,table}: full-load rows written;
- trempy_errors_total{task}: rows that failed (recorded row errors of full loads and CDC);
- trempy_dead_letters{task}: dead-lettered batches recorded;
- trempy_takeovers_total: lease takeovers (fleet);
- trempy_lag_bytes{task}, trempy_lag_seconds{task}: as the task's worker last reported them;
- trempy_slot_retained_bytes{slot}: WAL each trempy slot retains, read from the tasks' sources
  (one query per distinct source, cached `slot_cache_s`, `connect_timeout` short): the store
  does not hold it and a stale figure would hide a growing slot.

Store reads run on one thread of their own: the HTTP server answers each scrape on a new
thread, and a per-thread store connection per scrape would pile up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import polars as pl
from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from trempy_nb.capture.slot import slot_name
from trempy_nb.connections import resolve
from trempy_nb.db import connect
from trempy_nb.errors import TrempyError
from trempy_nb.logs import get_logger
from trempy_nb.ops import CDC_OP_PREFIX
from trempy_nb.ops.slotwatch import warn_threshold

__all__ = ["MetricsPortInUse", "StoreCollector", "registry_for", "serve"]

_LOG = get_logger("ops.metrics")


class MetricsPortInUse(TrempyError):
    """The metrics port cannot be bound (exit 1, naming the port)."""


class StoreCollector(Collector):
    """Reads the store (and the tasks' slots) on each scrape."""

    def __init__(self, store: Any, *, slot_cache_s: float = 15.0, connect_timeout: int = 3) -> None:
        self.store = store
        self.slot_cache_s = slot_cache_s
        self.connect_timeout = connect_timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trempy-metrics")
        self._slots: tuple[float, dict[str, int]] = (0.0, {})
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Any]:
        with self._lock:
            families = self._pool.submit(self._families).result(timeout=60)
        yield from families

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------ figures
    def _families(self) -> list[Any]:
        store = self.store
        applied = CounterMetricFamily("trempy_changes_applied", "CDC rows applied to the target",
                                      labels=["task", "table", "op"])
        loaded = CounterMetricFamily("trempy_rows_loaded", "full-load rows written to the target",
                                     labels=["task", "table"])
        errors = CounterMetricFamily("trempy_errors", "rows that failed and were recorded", labels=["task"])
        stats = store.stats()
        if stats.height:
            named = stats.with_columns((pl.col("schema") + "." + pl.col("table")).alias("qualified"))
            cdc = (named.filter(pl.col("operation").str.starts_with(CDC_OP_PREFIX))
                   .group_by("task", "qualified", "operation").agg(pl.col("rows_written").sum())
                   .sort("task", "qualified", "operation"))
            for task, table, op, n in cdc.iter_rows():
                applied.add_metric([task, table, op[len(CDC_OP_PREFIX):]], float(n))
            full = (named.filter(pl.col("operation") == "full_load")
                    .group_by("task", "qualified").agg(pl.col("rows_written").sum()).sort("task", "qualified"))
            for task, table, n in full.iter_rows():
                loaded.add_metric([task, table], float(n))
            failed = named.group_by("task").agg(pl.col("rows_failed").sum()).sort("task")
            for task, n in failed.iter_rows():
                errors.add_metric([task], float(n))
        dead = GaugeMetricFamily("trempy_dead_letters", "dead-lettered batches recorded", labels=["task"])
        letters = store.dead_letters()
        if letters.height:
            for task, n in letters.group_by("task").len().sort("task").iter_rows():
                dead.add_metric([task], float(n))
        lag_b = GaugeMetricFamily("trempy_lag_bytes", "WAL bytes behind the source (worker report)", labels=["task"])
        lag_s = GaugeMetricFamily("trempy_lag_seconds", "seconds behind the source (worker report)", labels=["task"])
        lags: dict[str, tuple[float | None, float | None]] = {}
        for row in store.fleet_status():  # one row per task role: a split task's worst side counts
            b0, s0 = lags.get(row["task"], (None, None))
            lags[row["task"]] = (_max(b0, row.get("lag_bytes")), _max(s0, row.get("lag_s")))
        for task, (nbytes, secs) in sorted(lags.items()):
            if nbytes is not None:
                lag_b.add_metric([task], nbytes)
            if secs is not None:
                lag_s.add_metric([task], secs)
        takeovers = CounterMetricFamily("trempy_takeovers", "lease takeovers between workers")
        takeovers.add_metric([], float(store.takeovers().height))
        retained = GaugeMetricFamily("trempy_slot_retained_bytes", "WAL a trempy slot retains on its source",
                                     labels=["slot"])
        for slot, n in sorted(self._retained().items()):
            retained.add_metric([slot], float(n))
        threshold = GaugeMetricFamily("trempy_slot_warn_threshold_bytes",
                                      "retained WAL above which workers warn (TREMPY_SLOT_WARN_BYTES)")
        threshold.add_metric([], float(warn_threshold()))
        return [applied, loaded, errors, dead, lag_b, lag_s, takeovers, retained, threshold]

    def _retained(self) -> dict[str, int]:
        """Retained bytes of each known task's slot, by source (cached; unreachable sources skipped)."""
        at, cached = self._slots
        if time.monotonic() - at < self.slot_cache_s:
            return cached
        wanted: dict[str, set[str]] = {}
        for name in self.store.task_names():
            try:
                settings = self.store.load_task(name)
            except TrempyError:
                continue  # run but never saved: its source is not recorded
            holder = settings.get("task", settings)
            ref = holder.get("source") if isinstance(holder, dict) else None
            if isinstance(ref, str):
                wanted.setdefault(ref, set()).add(slot_name(name))
        out: dict[str, int] = {}
        for ref, slots in wanted.items():
            try:
                with connect(resolve(ref), autocommit=True, application_name="trempy_nb:ops:metrics",
                             connect_timeout=self.connect_timeout) as conn:
                    rows = conn.execute(
                        "SELECT slot_name::text, (pg_current_wal_lsn() - restart_lsn)::bigint"
                        " FROM pg_replication_slots WHERE slot_name = ANY(%s) AND restart_lsn IS NOT NULL",
                        (sorted(slots),),
                    ).fetchall()
                out.update({r[0]: int(r[1]) for r in rows})
            except Exception as exc:  # one unreachable source must not fail the scrape
                _LOG.debug("metrics: slots of a source not read: %s", exc)
        self._slots = (time.monotonic(), out)
        return out


def _max(a: float | None, b: Any) -> float | None:
    if b is None:
        return a
    return float(b) if a is None else max(a, float(b))


def registry_for(store: Any) -> tuple[CollectorRegistry, StoreCollector]:
    """A registry holding only the store collector (no process metrics: several workers on one
    host would repeat them under the same labels)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = StoreCollector(store)
    registry.register(collector)
    return registry, collector


def serve(store: Any, port: int, host: str = "0.0.0.0") -> Any:  # noqa: S104  (a metrics endpoint listens on every interface by default)
    """Serve /metrics from `store` on a daemon thread; returns the HTTP server (`.shutdown()`).
    A port that cannot be bound raises MetricsPortInUse naming it."""
    registry, collector = registry_for(store)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        collector.close()
        raise MetricsPortInUse(f"metrics port {port} on {host} cannot be bound: {exc.strerror or exc}") from None
    server.trempy_collector = collector  # type: ignore[attr-defined]
    return server
