"""Constraint handlers: one small protocol that RL, offline and LLM learners share.

A :class:`ConstraintHandler` is a pair of pure functions (optax style)::

    state = handler.init(hparams, shape)                       # shape: () for one cost, (n_costs,) for several
    state = handler.update(state, measured_cost, cost_limit, hparams)
    penalty_weight = state.multiplier                          # >= 0, the shape of measured_cost

``measured_cost`` and ``cost_limit`` are in the same units (PPO-Lagrangian: expected episode cost; CPO's learned
margin: episode cost; the alignment code: expected cost score) and may be vectors, one entry per cost: every rule
is elementwise, so an environment with ``n_costs`` costs gets one multiplier per cost. The learner then maximises
``objective - sum_i multiplier_i * cost_i`` (:func:`jaxsafe.losses.mix_advantages`).

Handlers (:data:`HANDLERS`, built by :func:`make_handler`):

* ``"none"``: no constraint; the multiplier is always 0 (the unconstrained learner).
* ``"lagrangian"``: projected gradient ascent on the dual, ``m <- max(0, m + multiplier_lr (J_c - limit))``.
* ``"lagrangian_adam"``: OmniSafe's rule (``omnisafe/common/lagrange.py``, ``lambda_optimizer: Adam`` in its
  PPO-Lag / TRPO-Lag configurations): one step of Adam (torch's defaults: betas 0.9 / 0.999, eps 1e-8, bias
  correction) on the loss ``-m (J_c - limit)`` with learning rate ``multiplier_lr``, then ``m <- max(0, m)``.
  Each step moves the multiplier by about ``multiplier_lr`` whatever the size of the excess, where the plain rule
  moves it by ``multiplier_lr`` per unit of excess cost: with OmniSafe's ``multiplier_lr = 0.035`` one episode
  at cost 160 against a limit of 25 adds 4.7 to the plain rule's multiplier and about 0.035 to Adam's.
* ``"pid"``: Stooke, Achiam & Abbeel (2020), ``m = max(0, K_P e + I + K_D max(0, J_c - J_c_prev))`` with
  ``I <- max(0, I + K_I e)`` and ``e = J_c - limit``.
* ``"fixed"``: a constant multiplier (``initial_multiplier``).
* ``"margin"``: a learned safety margin (Safety Starter Agents' ``learn_margin``, used by CPO): the Lagrangian rule
  on ``margin_lr``, starting at 0, ``m <- max(0, m + margin_lr (J_c - limit))``.

The hparams read are ``multiplier_lr``, ``initial_multiplier``, ``pid_kp``, ``pid_ki``, ``pid_kd`` and
``margin_lr`` (any pytree with those attributes; a handler reads only the ones it needs).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["MultiplierState", "AdamMultiplierState", "ConstraintHandler", "HANDLERS", "make_handler", "none",
           "lagrangian", "lagrangian_adam", "pid_lagrangian", "fixed_penalty", "learned_margin", "measured_or_limit"]


class MultiplierState(NamedTuple):
    multiplier: jax.Array  # the current penalty weight (>= 0), one per cost
    integral: jax.Array  # PID integral term (>= 0); unused by the other handlers
    previous_cost: jax.Array  # the last measured cost (for the PID derivative term)


class AdamMultiplierState(NamedTuple):
    """The ``lagrangian_adam`` handler's state: :class:`MultiplierState`'s fields plus Adam's moments (a separate
    type, so the other handlers' states, and the checkpoints that hold them, keep their three fields)."""

    multiplier: jax.Array
    integral: jax.Array
    previous_cost: jax.Array
    moments: Any  # optax.scale_by_adam's state (step count, first and second moments)


class ConstraintHandler(NamedTuple):
    init: Callable[..., MultiplierState]
    update: Callable[[MultiplierState, jax.Array, jax.Array, Any], MultiplierState]


def _state(multiplier, shape) -> MultiplierState:
    multiplier = jnp.broadcast_to(jnp.maximum(jnp.asarray(multiplier, jnp.float32), 0.0), shape)
    return MultiplierState(multiplier, multiplier, jnp.zeros(shape, jnp.float32))


def _init_from_hparams(hparams, shape=()) -> MultiplierState:
    return _state(hparams.initial_multiplier, shape)


def _init_zero(hparams, shape=()) -> MultiplierState:
    del hparams
    return _state(0.0, shape)


def _ascent(lr_field: str):
    def update(state, measured_cost, cost_limit, hparams):
        step = getattr(hparams, lr_field) * (measured_cost - cost_limit)
        multiplier = jnp.maximum(state.multiplier + step, 0.0)
        return MultiplierState(multiplier, state.integral, jnp.asarray(measured_cost, jnp.float32))

    return update


def none() -> ConstraintHandler:
    def update(state, measured_cost, cost_limit, hparams):
        return state._replace(previous_cost=jnp.broadcast_to(jnp.asarray(measured_cost, jnp.float32),
                                                             state.multiplier.shape))

    return ConstraintHandler(_init_zero, update)


def lagrangian() -> ConstraintHandler:
    return ConstraintHandler(_init_from_hparams, _ascent("multiplier_lr"))


def learned_margin() -> ConstraintHandler:
    return ConstraintHandler(_init_zero, _ascent("margin_lr"))


#: Adam's constants in the ``lagrangian_adam`` rule (torch.optim.Adam's defaults, which OmniSafe uses).
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def lagrangian_adam() -> ConstraintHandler:
    adam = optax.scale_by_adam(b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=ADAM_EPS)

    def init(hparams, shape=()):
        state = _init_from_hparams(hparams, shape)
        return AdamMultiplierState(*state, adam.init(state.multiplier))

    def update(state, measured_cost, cost_limit, hparams):
        gradient = -(jnp.asarray(measured_cost, jnp.float32) - cost_limit)  # d/dm of the loss -m (J_c - limit)
        direction, moments = adam.update(gradient, state.moments)
        multiplier = jnp.maximum(state.multiplier - hparams.multiplier_lr * direction, 0.0)
        return AdamMultiplierState(multiplier, state.integral, jnp.asarray(measured_cost, jnp.float32), moments)

    return ConstraintHandler(init, update)


def pid_lagrangian() -> ConstraintHandler:
    def update(state, measured_cost, cost_limit, hparams):
        error = measured_cost - cost_limit
        integral = jnp.maximum(state.integral + hparams.pid_ki * error, 0.0)
        derivative = jnp.maximum(measured_cost - state.previous_cost, 0.0)
        multiplier = jnp.maximum(hparams.pid_kp * error + integral + hparams.pid_kd * derivative, 0.0)
        return MultiplierState(multiplier, integral, jnp.asarray(measured_cost, jnp.float32))

    return ConstraintHandler(_init_from_hparams, update)


def fixed_penalty() -> ConstraintHandler:
    def update(state, measured_cost, cost_limit, hparams):
        return state._replace(previous_cost=jnp.asarray(measured_cost, jnp.float32))

    return ConstraintHandler(_init_from_hparams, update)


HANDLERS: dict[str, Callable[[], ConstraintHandler]] = {
    "none": none,
    "lagrangian": lagrangian,
    "lagrangian_adam": lagrangian_adam,
    "pid": pid_lagrangian,
    "fixed": fixed_penalty,
    "margin": learned_margin,
}


def make_handler(name: str) -> ConstraintHandler:
    if name not in HANDLERS:
        raise ValueError(f"unknown constraint handler {name!r}; choose one of {sorted(HANDLERS)}")
    return HANDLERS[name]()


def measured_or_limit(measured_cost: jax.Array, cost_limit: jax.Array) -> jax.Array:
    """``measured_cost`` where it is known, else ``cost_limit`` (no episode finished yet: leave the multiplier be)."""
    return jnp.where(jnp.isnan(measured_cost), cost_limit, measured_cost)
