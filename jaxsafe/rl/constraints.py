"""Multiplier updaters for constrained optimisation behind one small protocol.

A :class:`ConstraintHandler` is a pair of pure functions (optax style)::

    state = handler.init(hparams)
    state = handler.update(state, episode_cost, cost_limit, hparams)
    lagrange_multiplier = state.multiplier

``episode_cost`` and ``cost_limit`` are in the same units (PPO-Lagrangian: expected episode cost; the alignment
code: expected cost score). The learner then maximises ``objective - multiplier * cost`` (PPO normalises the mixed
advantage by ``1 + multiplier``, as OmniSafe does).

Implementations:
  * ``lagrangian()``: projected gradient ascent on the dual, ``m <- max(0, m + lr * (J_c - limit))``.
  * ``pid_lagrangian()``: Stooke, Achiam & Abbeel (2020), ``m = max(0, K_P e + I + K_D max(0, J_c - J_c_prev))``
    with ``I <- max(0, I + K_I e)`` and ``e = J_c - limit``.
  * ``fixed_penalty()``: a constant multiplier (``initial_multiplier``); with 0 this is the unconstrained learner.

The hparams read are ``multiplier_lr``, ``initial_multiplier``, ``pid_kp``, ``pid_ki``, ``pid_kd`` (any pytree with
those attributes; absent ones are not read by the handlers that do not need them).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class MultiplierState(NamedTuple):
    multiplier: jax.Array  # the current Lagrange multiplier (>= 0)
    integral: jax.Array  # PID integral term (>= 0); unused by plain ascent
    previous_cost: jax.Array  # the last episode cost seen (for the PID derivative term)


class ConstraintHandler(NamedTuple):
    init: Callable[[Any], MultiplierState]
    update: Callable[[MultiplierState, jax.Array, jax.Array, Any], MultiplierState]


def _init(hparams) -> MultiplierState:
    multiplier = jnp.maximum(jnp.asarray(hparams.initial_multiplier, jnp.float32), 0.0)
    return MultiplierState(multiplier, multiplier, jnp.zeros((), jnp.float32))


def lagrangian() -> ConstraintHandler:
    def update(state, episode_cost, cost_limit, hparams):
        multiplier = jnp.maximum(state.multiplier + hparams.multiplier_lr * (episode_cost - cost_limit), 0.0)
        return MultiplierState(multiplier, state.integral, jnp.asarray(episode_cost, jnp.float32))

    return ConstraintHandler(_init, update)


def pid_lagrangian() -> ConstraintHandler:
    def update(state, episode_cost, cost_limit, hparams):
        error = episode_cost - cost_limit
        integral = jnp.maximum(state.integral + hparams.pid_ki * error, 0.0)
        derivative = jnp.maximum(episode_cost - state.previous_cost, 0.0)
        multiplier = jnp.maximum(hparams.pid_kp * error + integral + hparams.pid_kd * derivative, 0.0)
        return MultiplierState(multiplier, integral, jnp.asarray(episode_cost, jnp.float32))

    return ConstraintHandler(_init, update)


def fixed_penalty() -> ConstraintHandler:
    def update(state, episode_cost, cost_limit, hparams):
        return state._replace(previous_cost=jnp.asarray(episode_cost, jnp.float32))

    return ConstraintHandler(_init, update)


HANDLERS: dict[str, Callable[[], ConstraintHandler]] = {
    "lagrangian": lagrangian,
    "pid": pid_lagrangian,
    "fixed": fixed_penalty,
}


def make_handler(name: str) -> ConstraintHandler:
    if name not in HANDLERS:
        raise ValueError(f"unknown multiplier updater {name!r}; choose one of {sorted(HANDLERS)}")
    return HANDLERS[name]()
