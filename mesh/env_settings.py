"""Typed settings read from environment variables: one rule for every settings dataclass in mesh (the router's
MESH_*, the controller's MESH_CONTROLLER_*)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")

_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def from_env(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """cls's defaults, then PREFIX<FIELD> variables (the field's name in upper case), then explicit overrides that
    are not None. A value that does not parse as the field's type is a ValueError naming the variable."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        variable = f"{prefix}{f.name.upper()}"
        raw = env.get(variable)
        if raw is not None:
            values[f.name] = _parse(raw, type(getattr(cls, f.name)), variable)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def _parse(raw: str, kind: type, variable: str) -> Any:
    try:
        if kind is bool:
            return _BOOLEANS[raw.strip().lower()]  # bool("false") would be True
        return kind(raw)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{variable}={raw!r} is not a valid {kind.__name__}") from exc
