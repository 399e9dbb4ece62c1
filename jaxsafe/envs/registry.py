"""Name -> environment registry: ``make(name, **overrides) -> (env, params)`` and ``list_envs()``.

Overrides go to the environment's constructor when they name one of its arguments (these fix shapes, e.g. a
layout or a backend), and otherwise replace fields of its default params (these may be traced, e.g. a cost
threshold). Anything else is an error that lists what is allowed.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from jaxsafe.envs.core import SafeEnv

_REGISTRY: dict[str, tuple[Callable[..., SafeEnv], dict[str, Any], str]] = {}


def register(name: str, factory: Callable[..., SafeEnv], description: str = "", **fixed_kwargs) -> None:
    """Register ``factory(**fixed_kwargs, **ctor_overrides) -> SafeEnv`` under ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = (factory, fixed_kwargs, description)


def list_envs() -> list[str]:
    return sorted(_REGISTRY)


def describe_envs() -> dict[str, str]:
    return {name: _REGISTRY[name][2] for name in list_envs()}


def _param_fields(params) -> list[str]:
    if dataclasses.is_dataclass(params):
        return [f.name for f in dataclasses.fields(params)]
    return []


def make(name: str, **overrides) -> tuple[SafeEnv, Any]:
    """Build a registered environment and its params.

    Raises:
      ValueError: unknown name (lists the registered names), unknown override (lists the allowed fields), or an
        override out of its range (``env.check_params``: names the field and what is allowed).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; registered environments: {', '.join(list_envs())}")
    factory, fixed, _ = _REGISTRY[name]
    ctor_names = [p for p in inspect.signature(factory).parameters if p not in fixed]
    ctor_kwargs = {k: v for k, v in overrides.items() if k in ctor_names}
    env = factory(**fixed, **ctor_kwargs)
    params = env.default_params
    fields = _param_fields(params)
    param_overrides = {k: v for k, v in overrides.items() if k not in ctor_kwargs}
    unknown = sorted(set(param_overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"{name}: unknown override(s) {unknown}; constructor options: {ctor_names or 'none'}; "
            f"params fields: {fields}"
        )
    if param_overrides:
        params = params.replace(**param_overrides)
        env.check_params(params)
    return env, params
