"""The 2-D point example of the flipping-policy paper (Shen et al. 2024, appendix K), and its planned policies.

Dynamics (Euler-Maruyama of ``ds = a dt + sigma dW``)::

    s_{k+1} = s_k + dt * clip(a_k, -max_action, max_action) + sigma * sqrt(dt) * N(0, I)

from ``s_0 = (0, 0)`` towards the goal ``(15, 15)``, with two circular hazards of radius 2.5 centred at
``(7.5, 10)`` and ``(10, 5)``. Reward ``1 / (|s_{k+1} - goal|^2 + 0.1)`` per step; cost 1 on a step that ends inside
a hazard. Episodes last ``max_steps`` steps (truncation); the chance constraint is "no hazard in the whole
episode", i.e. ``T = max_steps``.

Choices the paper leaves open (stated here and in docs/flipping.md): ``dt = 0.1``, ``T = max_steps = 100``
(10 time units), actions bounded by ``max_action = 3`` per axis, and the disturbance scaled by ``sqrt(dt)`` so that
the position spread after ``k`` steps is ``sigma * sqrt(k dt)`` -- exactly the term the paper inflates the hazard
radius by (``2.5 + sigma * beta * sqrt(k dt)``); the paper's literal ``dt * d_k`` with ``d_k ~ N(0, 0.6^2)`` would
make that inflation 30 times too large at ``dt = 0.1``.

The observation is ``(x, y, k / max_steps)``: the time is observed so that a policy tracking a time-indexed plan is
a stationary state-feedback policy.

Policies: :func:`plan_inflated` solves the paper's deterministic chance-constrained trajectory problem with
inflation ``beta`` (penalty method with Adam, from several initial routes, vmapped over ``beta``), and
:func:`tracking_policy` turns a plan into a deterministic feedback policy ``a = u_k + gain (p_k - s)`` (a
memoryless :class:`~jaxsafe.policy.Policy`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxsafe.envs.core import SafeEnv, spaces
from jaxsafe.policy import stateless
from jaxsafe.types import TimeStep

__all__ = ["Point2DParams", "Point2DState", "ChancePoint2D", "Plan", "plan_inflated", "tracking_policy"]


@struct.dataclass
class Point2DParams:
    dt: float = 0.1
    sigma: float = 0.6  # diffusion of the disturbance (position spread sigma * sqrt(time))
    max_action: float = 3.0
    goal: tuple = (15.0, 15.0)
    hazard_centres: tuple = ((7.5, 10.0), (10.0, 5.0))
    hazard_radius: float = 2.5
    max_steps: int = struct.field(pytree_node=False, default=100)


class Point2DState(NamedTuple):
    position: jax.Array
    time: jax.Array


class ChancePoint2D(SafeEnv):
    """The appendix-K point robot (see the module docstring). ``info``: ``hazard_distance`` (signed distance from
    the nearest hazard boundary, negative inside), ``unsafe`` (the cost indicator)."""

    @property
    def name(self) -> str:
        return "ChancePoint2D"

    param_rules = {"dt": (lambda v: v > 0, "> 0"), "sigma": (lambda v: v >= 0, ">= 0"),
                   "max_action": (lambda v: v > 0, "> 0"), "hazard_radius": (lambda v: v > 0, "> 0"),
                   "max_steps": (lambda v: v >= 1, ">= 1")}

    @property
    def default_params(self) -> Point2DParams:
        return Point2DParams()

    def _obs(self, position, time, params):
        return jnp.concatenate([position, (time / params.max_steps)[None]]).astype(jnp.float32)

    def _hazard_distance(self, position, params):
        centres = jnp.asarray(params.hazard_centres, jnp.float32)
        return (jnp.linalg.norm(position[None] - centres, axis=-1) - params.hazard_radius).min()

    def reset(self, key, params):
        self.check_params(params)
        position = jnp.zeros((2,), jnp.float32)
        time = jnp.zeros((), jnp.int32)
        zero = jnp.zeros((), jnp.float32)
        info = {"hazard_distance": self._hazard_distance(position, params), "unsafe": zero}
        return Point2DState(position, time), TimeStep(
            self._obs(position, time, params), zero, zero[None], jnp.zeros((), bool), jnp.zeros((), bool), info)

    def step(self, key, state: Point2DState, action, params):
        action = jnp.clip(jnp.asarray(action, jnp.float32), -params.max_action, params.max_action)
        noise = params.sigma * jnp.sqrt(params.dt) * jax.random.normal(key, (2,))
        position = state.position + params.dt * action + noise
        time = state.time + 1
        distance = self._hazard_distance(position, params)
        unsafe = (distance < 0).astype(jnp.float32)
        reward = 1.0 / (jnp.sum((position - jnp.asarray(params.goal, jnp.float32)) ** 2) + 0.1)
        info = {"hazard_distance": distance, "unsafe": unsafe}
        return Point2DState(position, time), TimeStep(
            self._obs(position, time, params), reward.astype(jnp.float32), unsafe[None], jnp.zeros((), bool),
            time >= params.max_steps, info)

    def observation_space(self, params):
        return spaces.Box(-jnp.inf, jnp.inf, (3,), jnp.float32)

    def action_space(self, params):
        return spaces.Box(-params.max_action, params.max_action, (2,), jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# Inflated-radius planning (the paper's family of deterministic policies)
# ----------------------------------------------------------------------------------------------------------------


class Plan(NamedTuple):
    """A nominal trajectory: controls ``[K, 2]``, positions ``[K + 1, 2]`` (from ``s_0``), the planning objective
    (nominal return) and the worst violation of the inflated hazards (``<= ~0`` when the plan is feasible)."""

    controls: jax.Array
    positions: jax.Array
    nominal_return: jax.Array
    inflated_violation: jax.Array


#: Waypoints of the initial routes the planner starts from: between the hazards, above-left of the upper one,
#: below-right of the lower one.
ROUTES = ((8.75, 7.5), (4.0, 13.5), (14.0, 2.0), (0.0, 17.0), (17.0, 0.0))


def _route_controls(waypoint, params: Point2DParams, speed_fraction=0.8):
    """Controls that fly straight to ``waypoint`` then to the goal at a constant speed (a planner initialisation)."""
    goal = np.asarray(params.goal, np.float64)
    points = [np.zeros(2), np.asarray(waypoint, np.float64), goal]
    speed = speed_fraction * float(params.max_action)
    position, controls = np.zeros(2), []
    leg = 1
    for _ in range(params.max_steps):
        target = points[leg]
        delta = target - position
        if leg == 1 and np.linalg.norm(delta) < speed * params.dt:
            leg = 2
            target, delta = points[2], points[2] - position
        u = delta / max(np.linalg.norm(delta), 1e-9) * min(speed, np.linalg.norm(delta) / params.dt)
        controls.append(u)
        position = position + params.dt * u
    return np.asarray(controls, np.float32)


def plan_inflated(params: Point2DParams, betas, *, steps: int = 4000, learning_rate: float = 0.02,
                  penalty: float = 300.0, routes=ROUTES) -> Plan:
    """Plan one nominal trajectory per ``beta`` (vectorised): maximise the nominal return subject to staying
    ``2.5 + sigma * beta * sqrt(k dt)`` away from both hazard centres at every step ``k`` (the paper's
    chance-constrained trajectory optimisation by inflation), by Adam on a quadratic penalty, from every route in
    ``routes``; returns the best feasible plan per ``beta`` (leading axis = betas).
    """
    betas = jnp.atleast_1d(jnp.asarray(betas, jnp.float32))
    K = params.max_steps
    centres = jnp.asarray(params.hazard_centres, jnp.float32)
    goal = jnp.asarray(params.goal, jnp.float32)
    time = params.dt * jnp.arange(1, K + 1, dtype=jnp.float32)
    inits = jnp.stack([jnp.arctanh(jnp.clip(_route_controls(w, params) / params.max_action, -0.999, 0.999))
                       for w in routes])

    def rollout(raw):
        controls = params.max_action * jnp.tanh(raw)
        positions = jnp.concatenate([jnp.zeros((1, 2)), jnp.cumsum(params.dt * controls, 0)])
        return controls, positions

    def violation(positions, beta):
        radius = params.hazard_radius + params.sigma * beta * jnp.sqrt(time)
        distance = jnp.linalg.norm(positions[1:, None] - centres[None], axis=-1)
        return jnp.maximum(radius[:, None] - distance, 0.0)

    def nominal_return(positions):
        return (1.0 / (jnp.sum((positions[1:] - goal) ** 2, -1) + 0.1)).sum()

    def loss(raw, beta):
        _, positions = rollout(raw)
        # a weak pull towards the goal gives the optimiser a gradient far from it, where the reward is flat
        pull = 1e-3 * jnp.sqrt(jnp.sum((positions[1:] - goal) ** 2, -1) + 1e-6).mean()
        return -nominal_return(positions) + pull + penalty * (violation(positions, beta) ** 2).sum()

    optimizer = optax.adam(learning_rate)

    def solve(raw, beta):
        def body(carry, _):
            raw, opt_state = carry
            grads = jax.grad(loss)(raw, beta)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (optax.apply_updates(raw, updates), opt_state), None

        (raw, _), _ = jax.lax.scan(body, (raw, optimizer.init(raw)), None, length=steps)
        controls, positions = rollout(raw)
        return Plan(controls, positions, nominal_return(positions), violation(positions, beta).max())

    plans = jax.jit(jax.vmap(jax.vmap(solve, (None, 0)), (0, None)))(inits, betas)  # [routes, betas]
    # best plan per beta: feasible first (tolerance 0.05 of a unit), then highest nominal return
    score = jnp.where(plans.inflated_violation <= 0.05, plans.nominal_return, -jnp.inf)
    score = jnp.where(jnp.isfinite(score).any(0, keepdims=True), score, -plans.inflated_violation)
    best = jnp.argmax(score, axis=0)
    return jax.tree.map(lambda x: jnp.take_along_axis(x, best.reshape((1, -1) + (1,) * (x.ndim - 2)), 0)[0], plans)


def tracking_policy(plan: Plan, params: Point2DParams, gain: float = 1.0):
    """The deterministic feedback policy ``a = u_k + gain * (p_k - s)`` that tracks ``plan`` (one plan, no batch
    axis), as a memoryless :class:`~jaxsafe.policy.Policy`; the step ``k`` is read from the observed time
    fraction."""

    def act(obs, key):
        k = jnp.clip(jnp.round(obs[2] * params.max_steps).astype(jnp.int32), 0, params.max_steps - 1)
        action = plan.controls[k] + gain * (plan.positions[k] - obs[:2])
        return jnp.clip(action, -params.max_action, params.max_action)

    return stateless(act)
