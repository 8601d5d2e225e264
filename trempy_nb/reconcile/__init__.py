"""Reconciliation: prove a target equals its source through the task's plan (diff), and fix it (repair).

`sqlgen` builds the SQL (pure), `chunks` holds the chunk logic and the result rows (pure),
`run` talks to both databases. docs/reconcile.md describes the design.
"""
