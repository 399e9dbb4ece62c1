"""Constrained gymnax classics: the gymnax dynamics are untouched, a cost function is added by the adapter.

* ``SafeCartPole``: CartPole-v1 (discrete). Cost 1 on a step that ends with the cart outside the central band
  ``|x| <= cost_x_limit`` (the track ends at 2.4). Balancing alone does not keep the cart centred, so an
  unconstrained policy drifts and pays; a safe one must also hold its position.
* ``SafePendulum``: Pendulum-v1 (continuous torque in [-2, 2]). Cost 1 on a step whose angular speed exceeds
  ``cost_speed_limit`` rad/s. Swinging up fast is cheapest in reward; a safe policy pumps energy more slowly.

``info`` carries the quantity compared against its threshold (``cart_position``, ``angular_speed``).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct
from gymnax.environments.classic_control import cartpole, pendulum

from jaxsafe.envs.core import GymnaxSafeEnv


@struct.dataclass
class SafeCartPoleParams(cartpole.EnvParams):
    cost_x_limit: float = 0.4


@struct.dataclass
class SafePendulumParams(pendulum.EnvParams):
    cost_speed_limit: float = 4.0


def _cartpole_cost(state, action, next_state, params):
    return (jnp.abs(next_state.x) > params.cost_x_limit).astype(jnp.float32)[None]


def _pendulum_cost(state, action, next_state, params):
    return (jnp.abs(next_state.theta_dot) > params.cost_speed_limit).astype(jnp.float32)[None]


def safe_cartpole() -> GymnaxSafeEnv:
    return GymnaxSafeEnv(
        cartpole.CartPole(),
        _cartpole_cost,
        name="SafeCartPole",
        default_params=SafeCartPoleParams(),
        param_rules={"cost_x_limit": (lambda v: v >= 0, "a finite distance >= 0 (m)")},
        info_fn=lambda state, params: {"cart_position": jnp.asarray(state.x, jnp.float32)},
    )


def safe_pendulum() -> GymnaxSafeEnv:
    return GymnaxSafeEnv(
        pendulum.Pendulum(),
        _pendulum_cost,
        name="SafePendulum",
        default_params=SafePendulumParams(),
        param_rules={"cost_speed_limit": (lambda v: v >= 0, "a finite angular speed >= 0 (rad/s)")},
        info_fn=lambda state, params: {"angular_speed": jnp.abs(jnp.asarray(state.theta_dot, jnp.float32))},
    )
