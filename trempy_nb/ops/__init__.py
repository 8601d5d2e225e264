"""Operating trempy: the slot cockpit, orphan cleanup, log search and retention, Prometheus metrics.

Everything here reads what the engine and the workers leave behind (the metadata store, the
source's catalog); nothing here runs a task. Surfaces (the CLI, the magics, the dashboard) and
the fleet's workers call it.
"""

#: `table_stats.operation` of the applier's per-operation CDC rows (`cdc:insert`, `cdc:update`,
#: `cdc:delete`, `cdc:scd2 open`...): rows_written = rows applied, rows_failed = rows rejected.
#: The metrics read them; the `cdc` row of a table keeps counting the changes read.
CDC_OP_PREFIX = "cdc:"

#: The message every applied CDC batch's summary record starts with (its fields: first_lsn,
#: end_lsn, changes, rows per table and operation, ms, lag_s, lag_bytes); the plots read them.
BATCH_MESSAGE = "batch applied"
