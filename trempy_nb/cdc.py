"""Kept for imports that predate `trempy_nb.engine` (`from trempy_nb.cdc import CdcSession`).

The slot session lives in `engine/session.py`, the applier in `engine/applier.py`,
the local apply loop in `transport/local.py`.
"""

from __future__ import annotations

from trempy_nb.engine.applier import ChangeApplier
from trempy_nb.engine.pending import frame_of_pending
from trempy_nb.engine.session import CdcSession, Handoff
from trempy_nb.transport.base import HEARTBEAT_EVERY_S, STATS_EVERY_S

__all__ = ["HEARTBEAT_EVERY_S", "STATS_EVERY_S", "CdcSession", "ChangeApplier", "Handoff", "frame_of_pending"]
