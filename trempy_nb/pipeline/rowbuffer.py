"""Moved to `trempy_nb.pgcopy.rowbuffer`.

Kept only because capture/tuples.py still imports it from here: capture is being
split in another change, which imports `trempy_nb.pgcopy.rowbuffer`; then this goes.
"""

from trempy_nb.pgcopy.rowbuffer import RowBuffer, large_binary

__all__ = ["RowBuffer", "large_binary"]
