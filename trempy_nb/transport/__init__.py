"""Transports carry change batches from capture to apply.

`local` is the in-process loop of `cdc.CdcSession.stream`; `rabbitmq` decouples
capture (producer) and apply (consumer) through a durable broker queue. The
wire format (`codec`) and the publisher-confirm bookkeeping (`confirms`) are
pure and know nothing of sockets.
"""

from __future__ import annotations

__all__ = ["codec", "confirms"]
