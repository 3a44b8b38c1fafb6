"""Megatron functions replaced in place by faster ones (FAST_OPS, FAST_OPTIMIZER, COMPILE), each
remembered so that it can be called as a fallback and put back.

Keys are `owner:name`, the owner a module's name or a class's `module.QualName`.
"""
from __future__ import annotations

import os
from typing import Any, Callable

OFF_WORDS = ("0", "false", "no", "off")


class StandIns:
    """The stand-ins one knob controls (the knob is read on the rank under its own name)."""

    def __init__(self, knob: str, default: str) -> None:
        self.knob = knob
        self.default = default  # an empty value counts as unset
        self._originals: dict[str, tuple[Any, Any]] = {}  # key -> (owner, original)

    def enabled(self) -> bool:
        return (os.environ.get(self.knob) or self.default) not in OFF_WORDS

    def installed(self) -> list[str]:
        """The patched names, `owner:name` (empty when nothing is installed)."""
        return sorted(self._originals)

    def patch(self, owner: Any, name: str, replacement: Any) -> None:
        # a class keeps the function itself (its __dict__ entry), not a bound or static wrapper
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        self._originals[f"{owner_key(owner)}:{name}"] = (owner, original)
        setattr(owner, name, replacement)

    def original(self, owner: str, name: str) -> Callable[..., Any]:
        """Megatron's own `owner:name`, installed or not (the fallback for what a stand-in does not cover)."""
        found = self._originals.get(f"{owner}:{name}")
        if found is not None:
            return found[1]
        import importlib

        try:
            return getattr(importlib.import_module(owner), name)
        except ModuleNotFoundError:  # `module.Class`: the class's own attribute
            module, _, cls = owner.rpartition(".")
            return getattr(getattr(importlib.import_module(module), cls), name)

    def restore(self) -> None:
        """Put every original back (tests)."""
        for key, (owner, original) in list(self._originals.items()):
            setattr(owner, key.rsplit(":", 1)[1], original)
            del self._originals[key]


def owner_key(owner: Any) -> str:
    return f"{owner.__module__}.{owner.__qualname__}" if isinstance(owner, type) else owner.__name__
