"""Writer: apply change batches to the target (upsert or SCD2) with the checkpoint, exactly once.

Public names are imported lazily so that importing `trempy_nb.writer.ddl` (as
the pipeline and capture do) does not pull in the apply machinery or risk an
import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trempy_nb.writer.apply import ApplyResult, TableApply, TableCounts, apply_batch
    from trempy_nb.writer.state import read_checkpoint, reset_checkpoint, write_checkpoint

_EXPORTS = {
    "ApplyResult": "trempy_nb.writer.apply",
    "TableApply": "trempy_nb.writer.apply",
    "TableCounts": "trempy_nb.writer.apply",
    "apply_batch": "trempy_nb.writer.apply",
    "read_checkpoint": "trempy_nb.writer.state",
    "write_checkpoint": "trempy_nb.writer.state",
    "reset_checkpoint": "trempy_nb.writer.state",
}

__all__ = [
    "ApplyResult",
    "TableApply",
    "TableCounts",
    "apply_batch",
    "read_checkpoint",
    "reset_checkpoint",
    "write_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trempy_nb.writer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
