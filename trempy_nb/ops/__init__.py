"""Operating trempy: the slot cockpit, orphan cleanup, log search and retention, Prometheus metrics.

Everything here reads what the engine and the workers leave behind (the metadata store, the
source's catalog); nothing here runs a task. Surfaces (the CLI, the magics, the dashboard) and
the fleet's workers call it.
"""
