"""Full load: one consistent snapshot of the source, streamed in batches into the target.

Each table loads in one target transaction (load.py). A table with no filter
and no value transformation streams COPY binary from source to target with no
Python rows. The others go COPY binary -> Polars plan -> COPY binary: the
columns the plan reads or writes come as text and are encoded for the target,
the rest pass through as the source's bytes (pipeline/copylayout.py); a table
with a type binarycodec has no encoder for goes COPY text -> plan -> COPY text
(TREMPY_COPY_FORMAT=text forces that route). Which of the two a table takes is
decided once, by `routes.choose_route`; the table writer (writer.py) and the
pump only use the `CopyRoute` it returns. A batch the target refuses goes
through the one error policy (writer/errorpolicy.py).

- `tables.py`: the table loop every target database shares (`run_tables`: prepare
  once, then parallel tables), with a `LoadTarget` as the target's hook.
- `load.py`: `run_full_load` (the loop with `POSTGRES_LOAD`), `load_table` (one
  table = one target transaction: pass-through pump, or the three-stage pipeline),
  `target_spec`, `begin_snapshot`, `prefetch`.
- `mariadb.py`: `run_full_load_mariadb` (the loop with `MARIADB_LOAD`: LOAD DATA
  LOCAL INFILE into a MariaDB/MySQL target). Not imported here: its driver is the
  optional extra `trempy_nb[mariadb]`.
- `routes.py`: the `CopyRoute` protocol, `TextRoute`, `BinaryRoute`, `choose_route`.
- `writer.py`: `TableWriter` (direct COPY, or staging + `writer/sql.merge_sql`;
  retries and bisection through the error policy).
- `result.py`: `TableLoadResult`, `RowErrorHook`.
"""

from trempy_nb.fullload.load import (
    CHUNK_BYTES,
    begin_snapshot,
    load_table,
    prefetch,
    run_full_load,
    target_spec,
)
from trempy_nb.fullload.result import RowErrorHook, TableLoadResult
from trempy_nb.fullload.routes import COPY_FORMAT, BinaryRoute, CopyRoute, TextRoute, choose_route
from trempy_nb.fullload.writer import TableWriter

__all__ = [
    "CHUNK_BYTES",
    "COPY_FORMAT",
    "BinaryRoute",
    "CopyRoute",
    "RowErrorHook",
    "TableLoadResult",
    "TableWriter",
    "TextRoute",
    "begin_snapshot",
    "choose_route",
    "load_table",
    "prefetch",
    "run_full_load",
    "target_spec",
]
