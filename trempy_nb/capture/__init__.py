"""Capture: the source side of a task (slot + publication, snapshot hand-over, change reader).

`pgoutput` is the pure decoder; `slot`, `snapshot` and `reader` are the only
modules here that talk to PostgreSQL.
"""

from __future__ import annotations

from trempy_nb.capture.pgoutput import UNCHANGED_TOAST, DecodeError, decode, decode_many
from trempy_nb.capture.reader import ChangeReader
from trempy_nb.capture.slot import (
    HEARTBEAT_PREFIX,
    SlotStatus,
    advance_slot,
    check_prerequisites,
    create_slot,
    drop_task_objects,
    emit_heartbeat,
    ensure_publication,
    publication_name,
    slot_name,
    slot_status,
)
from trempy_nb.capture.snapshot import create_slot_with_snapshot, snapshot_transaction

__all__ = [
    "UNCHANGED_TOAST",
    "DecodeError",
    "decode",
    "decode_many",
    "ChangeReader",
    "HEARTBEAT_PREFIX",
    "SlotStatus",
    "advance_slot",
    "check_prerequisites",
    "create_slot",
    "drop_task_objects",
    "emit_heartbeat",
    "ensure_publication",
    "publication_name",
    "slot_name",
    "slot_status",
    "create_slot_with_snapshot",
    "snapshot_transaction",
]
