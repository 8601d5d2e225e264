"""What a full load reports per table, and the hook that hears of each bad row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trempy_nb.writer import errorpolicy as policy

RowErrorHook = Callable[[policy.BadRow], None]


@dataclass
class TableLoadResult:
    schema: str
    table: str
    target: str
    path: str = "pipeline"  # 'passthrough' or 'pipeline'
    copy_format: str = "binary"  # how rows reached the target: 'binary' or 'text'
    rows_read: int = 0
    rows_written: int = 0
    rows_filtered: int = 0
    rows_failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
