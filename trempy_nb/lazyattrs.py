"""Package attributes loaded on first use (PEP 562), for start-up speed.

A package lists which submodule defines each public name; importing the package
then costs nothing, and a run that never touches, say, the change reader never
loads numpy. Static tools still see the names through `if TYPE_CHECKING` imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: `names` maps an attribute to its submodule."""

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
