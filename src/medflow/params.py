"""Config blocks -> typed objects: ``from_config(ModelParams, config["rsna"]["train"])``.

The schema validates the workflow's config; this catches library callers that pass a block by hand:
an unknown or missing key is a ``ValueError`` that names it (with its dotted path in nested blocks).
Values are not coerced beyond what YAML cannot express: a list becomes a tuple where the field's type
is a tuple, and a mapping becomes the nested dataclass its field names.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_config(cls: type[T], mapping: Mapping[str, Any]) -> T:
    """An instance of dataclass ``cls`` built from ``mapping`` (nested dataclasses from nested mappings).

    Fields with defaults may be left out; a key that is not a field, or a field without a default that
    is missing, raises ``ValueError`` naming the key.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"{cls!r} is not a dataclass")
    return _build(cls, mapping, cls.__name__)


def _build(cls, mapping, where: str):
    if not isinstance(mapping, Mapping):
        # A config block of the wrong shape is a config error like a wrong key: ValueError for both.
        raise ValueError(f"{where}: expected a mapping of keys, got {type(mapping).__name__}")  # noqa: TRY004
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ValueError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(expected some of {', '.join(fields)})"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in mapping and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    hints = typing.get_type_hints(cls)  # resolves string annotations (``from __future__ import annotations``)
    kwargs = {name: _convert(hints.get(name, Any), value, f"{where}.{name}") for name, value in mapping.items()}
    return cls(**kwargs)


def _convert(tp, value, path: str):
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X], X | None: the first arm that fits
        for arm in typing.get_args(tp):
            if arm is type(None):
                continue
            if (dataclasses.is_dataclass(arm) and isinstance(value, Mapping)) or (
                _is_tuple(arm) and isinstance(value, list)
            ):
                return _convert(arm, value, path)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return value if isinstance(value, tp) else _build(tp, value, path)
    if _is_tuple(tp) and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if args and args != ((),):  # tuple[X, Y]: one type per position
            if len(args) != len(value):
                raise ValueError(f"{path}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return tuple(value)
    if origin is list and isinstance(value, list):
        (arg,) = typing.get_args(tp) or (Any,)
        return [_convert(arg, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict and isinstance(value, Mapping):
        args = typing.get_args(tp)
        arg = args[1] if len(args) == 2 else Any
        return {k: _convert(arg, v, f"{path}.{k}") for k, v in value.items()}
    return value


def _is_tuple(tp) -> bool:
    return tp is tuple or typing.get_origin(tp) is tuple
