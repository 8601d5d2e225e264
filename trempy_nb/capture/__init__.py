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

from typing import TYPE_CHECKING

from trempy_nb.lazyattrs import lazy_getattr

if TYPE_CHECKING:
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

# lazy: start-up speed. A full-load-only run needs `slot` (drop) and nothing of the change
# reader, whose vectorised tuples pull in numpy and pyarrow; those load when a stream starts.
_LAZY = {
    "UNCHANGED_TOAST": "pgoutput",
    "DecodeError": "pgoutput",
    "decode": "pgoutput",
    "decode_many": "pgoutput",
    "ChangeReader": "reader",
    "HEARTBEAT_PREFIX": "slot",
    "SlotStatus": "slot",
    "advance_slot": "slot",
    "check_prerequisites": "slot",
    "create_slot": "slot",
    "drop_task_objects": "slot",
    "emit_heartbeat": "slot",
    "ensure_publication": "slot",
    "publication_name": "slot",
    "slot_name": "slot",
    "slot_status": "slot",
    "create_slot_with_snapshot": "snapshot",
    "snapshot_transaction": "snapshot",
    "ChangeSource": "source",
    "Checkpoint": "source",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


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
    "ChangeSource",
    "Checkpoint",
]
