"""Transports carry change batches from capture to apply.

`base` defines what one is (protocols only: a change source, a sink, a
checkpoint, the hooks a transport may call, `Role`); `registry` looks one up by
the settings' name. `local` hands batches from the slot to the sink in one
process; `rabbitmq` decouples capture (producer) and apply (consumer) through a
durable broker queue. Transports never import the engine that runs them.
"""

from __future__ import annotations
