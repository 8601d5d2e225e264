"""Package attributes loaded on first use (PEP 562), for start-up speed.

A package lists which submodule defines each public name; importing the package
then costs nothing, and a run that never touches, say, the change reader never
loads numpy. Static tools still see the names through `if TYPE_CHECKING` imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: `names` maps an attribute to its submodule."""

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def lazy_module(name: str) -> ModuleType:
    """A stand-in for module `name` that imports it at the first attribute used (then keeps each
    attribute it looked up): for a heavy module that only some runs reach, e.g. the numpy-backed
    row framing in a run that receives no row. Type checkers see the real module through an
    `if TYPE_CHECKING` import."""

    class _Deferred(ModuleType):
        def __getattr__(self, attr: str) -> object:
            value = getattr(importlib.import_module(name), attr)
            setattr(self, attr, value)
            return value

    return _Deferred(name)
