"""Name -> class registries whose classes are imported only when asked for (an editor's or a component's module
pulls in its heavy libraries only when that one is used)."""

from __future__ import annotations

import importlib


def lookup(registry: dict[str, tuple[str, str]], name: str, package: str, what: str) -> type:
    """The class registered as ``name``: ``registry[name]`` is (module of ``package``, class name)."""
    if name not in registry:
        raise ValueError(f"Got {name!r} for {what}; expected one of {tuple(registry)}")
    module, cls = registry[name]
    return getattr(importlib.import_module(f"{package}.{module}"), cls)
