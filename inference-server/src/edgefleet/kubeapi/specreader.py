"""One reader for custom-resource specs (SmallModel, RoutingPolicy).

It walks a nested mapping and collects every problem with its field path
instead of stopping at the first, so a user sees all of them in one admission
message or status condition.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class SpecReader:
    """Reads values out of a spec, recording a problem (and using the default) for each bad one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def mapping(self, value: Any, path: str, known: Iterable[str] = ()) -> dict[str, Any]:
        """`value` as a mapping ({} when absent); with `known`, other keys are problems."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{path}: must be a mapping, got {type(value).__name__}")
            return {}
        if known:
            self.unknown(value, path, known)
        return dict(value)

    def section(
        self, data: Mapping[str, Any], key: str, path: str, known: Iterable[str]
    ) -> dict[str, Any]:
        """The mapping under `data[key]`, checked for unknown fields."""
        return self.mapping(data.get(key), f"{path}.{key}", known)

    def unknown(self, data: Mapping[str, Any], path: str, known: Iterable[str]) -> None:
        allowed = sorted(known)
        for key in data:
            if key not in allowed:
                self.problems.append(
                    f"{path}.{key}: unknown field; known fields: {', '.join(allowed)}"
                )

    def number(
        self,
        data: Mapping[str, Any],
        key: str,
        path: str,
        default: float | None,
        check: Callable[[float], bool],
        rule: str,
        integer: bool = False,
    ) -> Any:
        if data.get(key) is None:
            return default
        value = data[key]
        kind_ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not kind_ok or not math.isfinite(value) or not check(value):
            kind = "an integer" if integer else "a number"
            self.problems.append(f"{path}.{key}: must be {kind} {rule}, got {value!r}")
            return default
        return int(value) if integer else float(value)

    def integer(
        self, data: Mapping[str, Any], key: str, path: str, default: int | None, minimum: int
    ) -> Any:
        return self.number(
            data, key, path, default, lambda v: v >= minimum, f">= {minimum}", integer=True
        )

    def flag(self, data: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.problems.append(f"{path}.{key}: must be true or false, got {value!r}")
            return default
        return value

    def text(self, data: Mapping[str, Any], key: str, path: str, default: str) -> str:
        value = data.get(key, default)
        if not isinstance(value, str):
            self.problems.append(f"{path}.{key}: must be a string, got {value!r}")
            return default
        return value

    def choice(
        self, data: Mapping[str, Any], key: str, path: str, default: str, options: tuple[str, ...]
    ) -> str:
        value = data.get(key, default)
        if value not in options:
            allowed = ", ".join(options)
            self.problems.append(f"{path}.{key}: must be one of {allowed}, got {value!r}")
            return default
        return value

    def items(self, data: Mapping[str, Any], key: str, path: str, kind: type) -> tuple[Any, ...]:
        """A list of `kind` items, deep-copied so the spec cannot be edited through it."""
        value = data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(item, kind) for item in value):
            self.problems.append(f"{path}.{key}: must be a list of {kind.__name__}, got {value!r}")
            return ()
        return tuple(copy.deepcopy(value))
