"""Head kinds by name. featx.heads registers its built-in classes (its BUILTIN list) when imported;
code elsewhere (a plugin, a test) registers its own class with @register_head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import FeatxError

if TYPE_CHECKING:
    from .base import Head

_CLASSES: dict[str, type["Head"]] = {}


def register_head(cls: type["Head"]) -> type["Head"]:
    """Class decorator: make `cls` available as `cls.kind` to make_head, train-head and load_head."""
    kind = getattr(cls, "kind", "")
    if not kind:
        raise ValueError(f"{cls.__name__} needs a class attribute `kind` to be registered")
    old = _CLASSES.get(kind)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"head kind {kind!r} is already registered by {old.__module__}.{old.__qualname__}")
    _CLASSES[kind] = cls
    return cls


def unregister_head(kind: str) -> None:
    _CLASSES.pop(kind, None)


def head_classes() -> dict[str, type["Head"]]:
    return dict(_CLASSES)


def get_head_class(kind: str) -> type["Head"]:
    if kind not in _CLASSES:
        raise FeatxError(f"unknown head {kind!r}; use one of {', '.join(_CLASSES)}")
    return _CLASSES[kind]


class _Kinds(Sequence):
    """The registered head names, in registration order; reads the registry each time."""

    def _names(self) -> list[str]:
        return list(_CLASSES)

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, kind) -> bool:
        return kind in self._names()

    def __repr__(self) -> str:
        return repr(tuple(self._names()))


HEADS: Sequence[str] = _Kinds()


def make_head(kind: str, **params) -> "Head":
    """A new, unfitted head. params: seed, class_weight, grid, n_classes and the kind's own settings."""
    cls = get_head_class(kind)
    unknown = set(params) - set(cls._get_param_names())
    if unknown:
        raise FeatxError(f"{kind} head has no parameter {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(cls.settings())) or 'none'}")
    if params.get("class_weight") == "none":
        params["class_weight"] = None
    head = cls(**params)
    head.check_params()
    return head
