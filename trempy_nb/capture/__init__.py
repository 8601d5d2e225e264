"""Capture: the source side of a task (slot + publication, snapshot hand-over, change reader).

Pure, unit-tested on bytes: `pgoutput` (the decoder), `walproto` (the
replication sub-protocol's frames), `inbox` (streamed messages cut into whole
units), `tuples` (vectorised TupleData), `batching` (whole transactions for a
batch), `rowframes` (their rows as Polars frames), `positions` (where a
confirm may move the slot). Talking to PostgreSQL: `slot`, `snapshot`,
`slotconn`, `stream` (the main path), `peek`, and `reader`, the one
`ChangeSource` (`source` holds the protocols).
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
from trempy_nb.capture.source import ChangeSource, Checkpoint

__all__ = [
    "UNCHANGED_TOAST",
    "DecodeError",
    "decode",
    "decode_many",
    "ChangeReader",
    "ChangeSource",
    "Checkpoint",
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
