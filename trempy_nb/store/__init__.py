"""The state store: tasks, runs, stats, logs, errors, dead letters, and the fleet's desired state and leases.

SQLite under $TREMPY_HOME by default, PostgreSQL (schema `trempy_metadata`) for a fleet
on several hosts: same API and same tables on both (`schema.py`), created and migrated on
open. `MetadataStore` (`facade.py`) is the one entry point; `fleet.py` holds the workers,
leases and actual-state half of its API.
"""

from trempy_nb.store.facade import MetadataStore, mask_value
from trempy_nb.store.fleet import (
    LEASE_TTL_S,
    ROLES,
    STATUS_COLUMNS,
    Desired,
    Lease,
    Role,
    roles_of,
    status_frame,
)
from trempy_nb.store.location import ENV_VAR, Location, resolve_location
from trempy_nb.store.schema import (
    ACTIVE_STATES,
    COUNTERS,
    LOG_LEVELS,
    SCHEMA_VERSION,
    STATES,
    TARGET_FIELDS,
    RunKind,
    RunStatus,
    TaskState,
)

__all__ = [
    "ACTIVE_STATES",
    "COUNTERS",
    "ENV_VAR",
    "LEASE_TTL_S",
    "LOG_LEVELS",
    "ROLES",
    "SCHEMA_VERSION",
    "STATES",
    "STATUS_COLUMNS",
    "TARGET_FIELDS",
    "Desired",
    "Lease",
    "Location",
    "MetadataStore",
    "Role",
    "RunKind",
    "RunStatus",
    "TaskState",
    "mask_value",
    "resolve_location",
    "roles_of",
    "status_frame",
]
