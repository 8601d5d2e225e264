"""Transports by name (`task.cdc_settings.transport` in the settings): the engine looks one up per run.

A third transport is a module here implementing `base.Transport`, plus one line
in `_FACTORIES` (and its name in `settings.TransportName`).
"""

from __future__ import annotations

from collections.abc import Callable

from trempy_nb.errors import TerminalError
from trempy_nb.transport.base import Transport
from trempy_nb.transport.local import LocalTransport


def _rabbitmq() -> Transport:
    # lazy: start-up speed (pika and the broker modules load only for tasks that use them)
    from trempy_nb.transport.rabbitmq import RabbitMqTransport

    return RabbitMqTransport()


_FACTORIES: dict[str, Callable[[], Transport]] = {"local": LocalTransport, "rabbitmq": _rabbitmq}


def lookup(name: str) -> Transport:
    """The transport called `name` (a new instance with default options)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise TerminalError(f"unknown transport {name!r} (one of {', '.join(sorted(_FACTORIES))})") from None
    return factory()


def names() -> list[str]:
    return sorted(_FACTORIES)
