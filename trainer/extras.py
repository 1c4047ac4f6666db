"""Optional dependencies (pyproject's extras): import one where its feature is used, or say which
extra to install. A bare ImportError names a module; this names the pip command."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(RuntimeError):
    """A feature needs an optional dependency that is not installed."""


def require_extra(module: str, extra: str, feature: str) -> ModuleType:
    """`module`, imported; MissingExtra naming `pip install 'monosemantic[extra]'` if it is not
    installed (`feature` says what needed it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{feature} needs the {module} package, which is not installed: "
            f"pip install 'monosemantic[{extra}]' (make install has every extra)"
        ) from exc
