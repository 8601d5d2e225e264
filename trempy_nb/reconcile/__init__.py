"""Reconciliation: prove a target equals its source through the task's plan (diff), and fix it (repair).

`sqlgen` builds the SQL (pure), `chunks` holds the chunk logic and the result rows (pure),
`run` talks to both databases, through `side.TargetSide` on the target (`run._PgTarget`, or
`mariadb.MariaTarget` with `mariadb_sql` for a MariaDB/MySQL target). docs/reconcile.md
describes the design.
"""
