"""Range checks at the boundary: one rule format shared by learner hparams, environment params and configs.

A rule is ``(predicate, allowed)``: ``predicate`` takes the value as a float64 array and returns a bool array,
``allowed`` is the human-readable range that goes into the error message::

    RULES = {"learning_rate": positive(), "gamma": unit_interval(), "cost_limit": non_negative("episode-cost units")}
    check_fields(hparams, RULES, "PPOHParams")   # ValueError: PPOHParams.gamma must be in [0, 1], got [1.5]

Checks run on concrete values before anything is compiled; traced values are skipped, so the same call is safe
inside ``jit``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

Rule = tuple[Callable[[np.ndarray], np.ndarray], str]

__all__ = ["Rule", "check_fields", "require", "positive", "non_negative", "unit_interval", "open_unit_interval",
           "in_range", "finite"]


def _suffix(note: str) -> str:
    return f" ({note})" if note else ""


def positive(note: str = "") -> Rule:
    return (lambda v: v > 0, "> 0" + _suffix(note))


def non_negative(note: str = "") -> Rule:
    return (lambda v: v >= 0, ">= 0" + _suffix(note))


def unit_interval(note: str = "") -> Rule:
    return (lambda v: (v >= 0) & (v <= 1), "in [0, 1]" + _suffix(note))


def open_unit_interval(note: str = "") -> Rule:
    return (lambda v: (v > 0) & (v < 1), "in (0, 1)" + _suffix(note))


def in_range(low: float, high: float, note: str = "") -> Rule:
    """Closed interval ``[low, high]``."""
    return (lambda v: (v >= low) & (v <= high), f"in [{low:g}, {high:g}]" + _suffix(note))


def finite(note: str = "") -> Rule:
    return (lambda v: np.ones_like(v, bool), "finite" + _suffix(note))


def check_fields(obj: Any, rules: dict[str, Rule], prefix: str) -> None:
    """Raise ``ValueError("{prefix}.{field} must be {allowed}, got ...")`` for the first field of ``obj`` that is
    not finite or fails its predicate. Traced values and fields ``obj`` lacks are skipped."""
    for field, (predicate, allowed) in rules.items():
        value = getattr(obj, field, None)
        if value is None or isinstance(value, jax.core.Tracer):
            continue
        array = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(array)) or not np.all(predicate(array)):
            raise ValueError(f"{prefix}.{field} must be {allowed}, got {array.tolist()}")


def require(condition: bool, field: str, allowed: str, value: Any) -> None:
    """Raise ``ValueError("{field} must be {allowed}, got {value!r}")`` unless ``condition`` (static config checks)."""
    if not condition:
        raise ValueError(f"{field} must be {allowed}, got {value!r}")


def is_int(value: Any, low: int = 1) -> bool:
    """``value`` is an integer (not a bool) ``>= low``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
