"""Flipping-based policies for chance-constrained MDPs (Shen et al., NeurIPS 2024).

A chance-constrained MDP asks that, from any safe state, the next ``T`` states all stay safe with probability at
least ``1 - alpha``. The paper shows that an optimal policy needs at most *two* actions per state and a coin
(Thm 2), and, for policies given by parameters, at most two parameter vectors mixed by a constant weight (Thm 6);
the weight solves a linear program over the (return, cost) points of trained policies (Thm 7), i.e. a point on the
upper concave hull. This module provides the pieces:

* **The constraint.** :func:`discounted_unsafe_count` (the surrogate ``H = sum_{i>=1} gamma_u^i 1[s_i unsafe]`` of
  Thm 5), the wrapper :class:`ChanceConstraintCost` that makes any :class:`~jaxsafe.envs.core.SafeEnv` emit that
  surrogate as its cost (so PPO-Lagrangian, CPO, ... constrain it with ``cost_limit = alpha``), and
  :func:`window_violation_probability`, the Monte-Carlo estimate of the joint chance constraint's violation over
  windows of ``T`` steps.
* **Mixing.** :func:`upper_concave_hull`, :func:`mix_for_budget` (the closed form of the LP: the two hull
  vertices around the budget), :func:`best_deterministic` (the best single policy within the budget) and
  :func:`solve_mixture_lp` (the same LP by the one HiGHS wrapper :func:`jaxsafe.exact.lp.solve_lp`, with any
  number of constraints).
* **Acting.** :func:`mixture_policy` is a :class:`~jaxsafe.policy.Policy` that flips between two policies either
  once per episode (``mode="episode"``: the coin is drawn by the policy's ``init`` and kept in its state, the mode
  for which the LP's convex combination of (return, cost) is guaranteed) or at every step (``mode="step"``, the
  paper's Algorithm 2, which in general does *not* reproduce the convex combination).
* **Evaluation.** :func:`~jaxsafe.evaluate.rollout_episodes` (re-exported here) runs ``N`` independent
  fixed-length episodes of any :class:`~jaxsafe.policy.Policy` as one vmapped program and returns per-episode
  return and cost and the per-step unsafe indicators, from which :func:`summarize_rollouts` computes (expected
  return, expected cost, violation probability).

The state-dependent flipping policy (two action candidates and a coin from one network, Section 4.2) is
``policy="flipping"`` in :class:`~jaxsafe.rl.ppo.PPOConfig` / :class:`~jaxsafe.rl.cpo.CPOConfig`
(:class:`~jaxsafe.rl.networks.FlippingActor`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.envs.core import Wrapper
from jaxsafe.evaluate import EpisodeRollouts, rollout_episodes
from jaxsafe.exact.lp import solve_lp
from jaxsafe.policy import Policy, from_act
from jaxsafe.types import TimeStep

__all__ = [
    "FLIP_MODES",
    "discounted_unsafe_count",
    "ChanceConstraintCost",
    "window_violation_probability",
    "upper_concave_hull",
    "Mixture",
    "mix_for_budget",
    "best_deterministic",
    "solve_mixture_lp",
    "MixtureState",
    "mixture_policy",
    "EpisodeRollouts",
    "rollout_episodes",
    "summarize_rollouts",
    "mix_run",
]

FLIP_MODES = ("episode", "step")


# ----------------------------------------------------------------------------------------------------------------
# The chance constraint and its surrogate
# ----------------------------------------------------------------------------------------------------------------


def discounted_unsafe_count(unsafe: jax.Array, gamma_unsafe, valid: jax.Array | None = None) -> jax.Array:
    """``H = sum_{i>=1} gamma_u^i 1[s_i unsafe]`` along the leading (time) axis.

    ``unsafe[t]`` is the indicator that the state reached by step ``t`` (that is ``s_{t+1}``) is unsafe, so it is
    weighted by ``gamma_u^(t+1)`` as in the paper's Thm 4/5. ``valid[t]`` (optional, same shape) masks steps after
    the episode ended. Batch by ``vmap`` over trailing axes or pass ``[T, ...]`` arrays (weights broadcast).
    """
    unsafe = jnp.asarray(unsafe, jnp.float32)
    if unsafe.ndim < 1:
        raise ValueError(f"unsafe must have a leading time axis, got shape {unsafe.shape}")
    steps = jnp.arange(1, unsafe.shape[0] + 1, dtype=jnp.float32).reshape((-1,) + (1,) * (unsafe.ndim - 1))
    weights = jnp.asarray(gamma_unsafe, jnp.float32) ** steps
    if valid is not None:
        unsafe = unsafe * jnp.asarray(valid, jnp.float32)
    return (weights * unsafe).sum(0)


class ChanceConstraintState(NamedTuple):
    inner: Any
    time: jax.Array


class ChanceConstraintCost(Wrapper):
    """Replace an environment's cost by the discounted unsafe indicator ``gamma_u^(t+1) 1[cost_t > threshold]``.

    The episode's cost return is then the surrogate ``H_unsafe(s_0)`` of the paper's Thm 5, so a safe learner with
    ``cost_limit = alpha`` enforces the expected-cumulative safety constraint (ECSC) that conservatively implies the
    joint chance constraint when ``gamma_u`` is close to 1. ``info["unsafe"]`` keeps the undiscounted indicator
    (for :func:`window_violation_probability`). The discount is a constructor argument (``gamma_unsafe`` in
    ``(0, 1]``); ``gamma_unsafe = 1`` counts unsafe steps.
    """

    def __init__(self, env, gamma_unsafe: float = 0.99, threshold: float = 0.0):
        super().__init__(env)
        gamma_unsafe = float(gamma_unsafe)
        if not 0.0 < gamma_unsafe <= 1.0:
            raise ValueError(f"gamma_unsafe must be in (0, 1], got {gamma_unsafe!r}")
        self.gamma_unsafe = gamma_unsafe
        self.threshold = float(threshold)
        self.n_costs = 1

    @property
    def name(self) -> str:
        return f"{self.env.name}+ChanceConstraintCost"

    def _emit(self, timestep: TimeStep, time) -> TimeStep:
        unsafe = (timestep.cost.max(-1) > self.threshold).astype(jnp.float32)
        weight = jnp.asarray(self.gamma_unsafe, jnp.float32) ** time.astype(jnp.float32)
        info = dict(timestep.info, unsafe=unsafe)
        return timestep._replace(cost=(weight * unsafe)[None], info=info)

    def reset(self, key, params):
        state, timestep = self.env.reset(key, params)
        zero = jnp.zeros((), jnp.float32)
        timestep = timestep._replace(cost=zero[None], info=dict(timestep.info, unsafe=zero))
        return ChanceConstraintState(state, jnp.zeros((), jnp.int32)), timestep

    def step(self, key, state: ChanceConstraintState, action, params):
        inner, timestep = self.env.step(key, state.inner, action, params)
        time = state.time + 1
        return ChanceConstraintState(inner, time), self._emit(timestep, time)


def window_violation_probability(unsafe, horizon: int, valid=None, start: str = "all") -> jax.Array:
    """Monte-Carlo estimate of the joint chance constraint's violation probability over ``horizon`` steps.

    ``unsafe`` is ``[N, K]``: ``unsafe[n, t] = 1`` when episode ``n``'s state after step ``t`` (``s_{t+1}``) is
    unsafe; ``valid`` (``[N, K]``, optional) marks steps inside the episode. A window starting at ``s_k`` violates
    when any of ``s_{k+1}, ..., s_{k+horizon}`` is unsafe. With ``start="all"`` every ``k`` whose window lies inside
    the episode and whose ``s_k`` is safe counts (the paper's conditional definition, ``s_0`` taken as safe); with
    ``start="initial"`` only ``k = 0`` counts, i.e. the probability that an episode is unsafe somewhere in its first
    ``horizon`` steps. Returns the fraction of violating windows (NaN if there are none).
    """
    unsafe = jnp.asarray(unsafe, jnp.float32)
    if unsafe.ndim != 2:
        raise ValueError(f"unsafe must be [episodes, steps], got shape {unsafe.shape}")
    horizon = int(horizon)
    num_steps = unsafe.shape[1]
    if not 1 <= horizon <= num_steps:
        raise ValueError(f"horizon must be an integer in [1, {num_steps}] (the rollout length), got {horizon}")
    if start not in ("all", "initial"):
        raise ValueError(f"start must be 'all' or 'initial', got {start!r}")
    valid = jnp.ones_like(unsafe) if valid is None else jnp.asarray(valid, jnp.float32)
    unsafe = unsafe * valid
    # cumulative count with a leading zero: windows (k, k+horizon] have count c[k+horizon] - c[k]
    counts = jnp.concatenate([jnp.zeros_like(unsafe[:, :1]), jnp.cumsum(unsafe, 1)], 1)
    valid_counts = jnp.concatenate([jnp.zeros_like(valid[:, :1]), jnp.cumsum(valid, 1)], 1)
    starts = 1 if start == "initial" else num_steps - horizon + 1
    window_unsafe = counts[:, horizon:horizon + starts] - counts[:, :starts] > 0
    window_inside = valid_counts[:, horizon:horizon + starts] - valid_counts[:, :starts] >= horizon
    # s_k safe: s_0 is (the initial state); s_k for k >= 1 is unsafe[k - 1]
    start_safe = jnp.concatenate([jnp.ones_like(unsafe[:, :1]), 1.0 - unsafe[:, :-1]], 1)[:, :starts] > 0
    counted = window_inside & start_safe
    return jnp.where(counted.sum() > 0, (window_unsafe & counted).sum() / jnp.maximum(counted.sum(), 1), jnp.nan)


# ----------------------------------------------------------------------------------------------------------------
# Mixing: the upper concave hull and the linear program of Thm 7
# ----------------------------------------------------------------------------------------------------------------


def _as_points(costs, values) -> tuple[np.ndarray, np.ndarray]:
    costs, values = np.asarray(costs, np.float64).ravel(), np.asarray(values, np.float64).ravel()
    if costs.shape != values.shape or costs.size == 0:
        raise ValueError(f"costs and values must be non-empty and of equal length, got {costs.size} and {values.size}")
    if not (np.isfinite(costs).all() and np.isfinite(values).all()):
        raise ValueError("costs and values must be finite (evaluate every policy before mixing)")
    return costs, values


def upper_concave_hull(costs, values) -> np.ndarray:
    """Indices of the vertices of the efficient upper concave hull of the points ``(costs[i], values[i])``.

    This is the graph of ``J*(d) = max {sum nu_i values_i : sum nu_i costs_i <= d, nu in simplex}`` for ``d``
    between the cheapest point and the best point: it starts at the highest-value point among the cheapest ones,
    ends at the highest-value point (cheapest among ties), and is concave; vertices are returned by increasing cost.
    """
    costs, values = _as_points(costs, values)
    order = np.lexsort((-values, costs))  # by cost, then best value first
    best = int(np.lexsort((costs, -values))[0])  # highest value, cheapest among ties
    hull: list[int] = []
    for i in order:
        if costs[i] > costs[best] or (hull and costs[i] == costs[hull[-1]]):
            continue
        if hull and values[i] <= values[hull[-1]]:
            continue  # more cost for no more value is never on the efficient hull
        while len(hull) >= 2:
            (c0, v0), (c1, v1) = (costs[hull[-2]], values[hull[-2]]), (costs[hull[-1]], values[hull[-1]])
            # drop the middle point unless it lies strictly above the chord from hull[-2] to i
            if (v1 - v0) * (costs[i] - c0) <= (values[i] - v0) * (c1 - c0):
                hull.pop()
            else:
                break
        hull.append(int(i))
    if hull[-1] != best:
        hull.append(best)
    return np.asarray(hull, np.int64)


class Mixture(NamedTuple):
    """An LP solution: ``weights`` over the policies (at most two non-zero), its value and cost, and the pair.

    ``low``/``high`` index the cheaper/dearer policy of the pair (equal for a pure policy) and ``weight_low`` is the
    probability of playing ``low``. ``feasible`` is False when the budget is below every policy's cost (then the
    cheapest policy is returned with its cost and value, which exceed / miss the budget).
    """

    weights: np.ndarray
    value: float
    cost: float
    low: int
    high: int
    weight_low: float
    feasible: bool


def mix_for_budget(costs, values, budget: float) -> Mixture:
    """The closed-form solution of ``max nu.values s.t. nu.costs <= budget, nu in simplex`` (the paper's Thm 7).

    Between adjacent hull vertices ``c_1 < budget < c_2`` the optimum plays vertex 1 with probability
    ``(c_2 - budget) / (c_2 - c_1)``; beyond the best point it plays the best point alone.
    """
    costs, values = _as_points(costs, values)
    budget = float(budget)
    hull = upper_concave_hull(costs, values)
    weights = np.zeros(costs.size)

    def pure(i, feasible=True):
        weights[i] = 1.0
        return Mixture(weights, float(values[i]), float(costs[i]), int(i), int(i), 1.0, feasible)

    if budget < costs[hull[0]]:
        return pure(hull[0], feasible=False)
    if budget >= costs[hull[-1]]:
        return pure(hull[-1])
    k = int(np.searchsorted(costs[hull], budget, side="right"))  # costs[hull[k-1]] <= budget < costs[hull[k]]
    lo, hi = hull[k - 1], hull[k]
    if costs[lo] == budget:
        return pure(lo)
    w = (costs[hi] - budget) / (costs[hi] - costs[lo])
    weights[lo], weights[hi] = w, 1.0 - w
    return Mixture(weights, float(w * values[lo] + (1 - w) * values[hi]), budget, int(lo), int(hi), float(w), True)


def best_deterministic(costs, values, budget: float) -> tuple[int, float]:
    """The best single policy within the budget: ``(index, value)``, or ``(-1, nan)`` if none is feasible."""
    costs, values = _as_points(costs, values)
    feasible = costs <= float(budget)
    if not feasible.any():
        return -1, float("nan")
    i = int(np.argmax(np.where(feasible, values, -np.inf)))
    return i, float(values[i])


def solve_mixture_lp(values, constraint_rows, bounds) -> tuple[np.ndarray, float]:
    """``max nu.values s.t. constraint_rows @ nu <= bounds, nu in simplex`` by the HiGHS dual simplex
    (:func:`jaxsafe.exact.lp.solve_lp`), which returns a vertex: at most ``m + 1`` non-zero weights for ``m``
    constraints.

    ``constraint_rows`` is ``[m, S]`` (e.g. expected costs, or ``-F_i`` with bound ``-(1 - alpha)`` for safety
    probabilities). Returns ``(nu, value)``; raises ``ValueError`` (:class:`~jaxsafe.exact.lp.LPError`) if the LP
    is infeasible. The reference for :func:`mix_for_budget` and the general form with several constraints (Thm 7
    has one; App. J's affine chance constraints give several).
    """
    values = np.asarray(values, np.float64).ravel()
    rows = np.atleast_2d(np.asarray(constraint_rows, np.float64))
    bounds = np.atleast_1d(np.asarray(bounds, np.float64))
    if rows.shape != (bounds.size, values.size):
        raise ValueError(f"constraint_rows must be [{bounds.size}, {values.size}], got {rows.shape}")
    solution = solve_lp(values, A_ub=rows, b_ub=bounds, A_eq=np.ones((1, values.size)), b_eq=[1.0],
                        maximize=True, method="highs-ds", name="mixture LP")
    return solution.x, solution.value


# ----------------------------------------------------------------------------------------------------------------
# Acting and evaluating
# ----------------------------------------------------------------------------------------------------------------

class MixtureState(NamedTuple):
    """A mixture's per-episode state: the coin (``True``: play ``low``) and both policies' own states."""

    play_low: jax.Array
    low: Any
    high: Any


def _coin(key, weight_low) -> jax.Array:
    return jax.random.uniform(jax.random.fold_in(key, 0x5EED)) < weight_low


def mixture_policy(policy_low: Policy, policy_high: Policy, weight_low, mode: str = "episode") -> Policy:
    """The :class:`~jaxsafe.policy.Policy` that plays ``policy_low`` with probability ``weight_low``, else
    ``policy_high``.

    ``mode="episode"`` draws the coin once, in ``init`` (at every episode start), and keeps it in the policy state,
    so each episode is played entirely by one policy and the mixture's expected (return, cost) is exactly the convex
    combination the LP promises. ``mode="step"`` redraws it at every step (Algorithm 2 of the paper); the states
    then depend on both policies and the combination is not guaranteed. Both policies step every step (the one not
    played too, so a stateful policy's history stays that of the episode). ``weight_low`` may be traced (vmap a
    sweep over weights). Memoryless policies come from :func:`jaxsafe.policy.stateless` / ``from_act``.
    """
    if mode not in FLIP_MODES:
        raise ValueError(f"mode must be one of {FLIP_MODES}, got {mode!r}")
    for name, policy in (("policy_low", policy_low), ("policy_high", policy_high)):
        if not isinstance(policy, Policy):
            raise TypeError(f"{name} must be a jaxsafe.policy.Policy (wrap an act(obs, key) function with "
                            f"jaxsafe.policy.stateless), got {type(policy).__name__}")

    def init(key):
        key_low, key_high = jax.random.split(key)
        return MixtureState(_coin(key, weight_low), policy_low.init(key_low), policy_high.init(key_high))

    def step(state: MixtureState, obs, key):
        play_low = state.play_low if mode == "episode" else _coin(key, weight_low)
        key_low, key_high = jax.random.split(key)
        low_state, low_action = policy_low.step(state.low, obs, key_low)
        high_state, high_action = policy_high.step(state.high, obs, key_high)
        return MixtureState(state.play_low, low_state, high_state), jnp.where(play_low, low_action, high_action)

    return Policy(init, step)


def summarize_rollouts(rollouts: EpisodeRollouts, horizon: int | None = None, start: str = "initial") -> dict:
    """Expected return and cost (mean and standard error) and the violation probability over ``horizon`` steps
    (default: the whole rollout, from the initial state), as Python floats."""
    n = rollouts.returns.shape[0]
    horizon = rollouts.unsafe.shape[1] if horizon is None else horizon
    returns, costs = np.asarray(rollouts.returns, np.float64), np.asarray(rollouts.costs, np.float64)
    violation = float(window_violation_probability(rollouts.unsafe, horizon, rollouts.valid, start=start))
    return dict(
        expected_return=float(returns.mean()),
        return_se=float(returns.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        expected_cost=float(costs.mean()),
        cost_se=float(costs.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        violation=violation,
        violation_se=float(np.sqrt(max(violation * (1 - violation), 0.0) / n)),
        episodes=int(n),
    )


def mix_run(run, budgets, episodes: int = 64, max_steps: int = 1000, modes=FLIP_MODES, window: int = 10,
            seed: int = 0) -> list[dict]:
    """Evaluate every lane of a loaded run (:func:`jaxsafe.runner.load_run`), solve the mixing LP at each budget on
    the measured (cost, return), and play each mixture in each flip mode on fresh episodes (``jaxsafe flip``).

    Returns one row per lane (``kind="policy"``) and one per (budget, mode) (``kind="mixture"``), each with the
    measured expected return and cost, their standard errors over the ``episodes`` and the violation probability
    over ``window`` steps.
    """
    for mode in modes:
        if mode not in FLIP_MODES:
            raise ValueError(f"mode must be among {FLIP_MODES}, got {mode!r}")
    if run.grid.size < 2:
        raise ValueError(f"mixing needs a run with at least two lanes (a sweep), {run.spec.env} has {run.grid.size}")
    env, env_params, act = run.env, run.env_params, run.act

    def evaluate(params_low, params_high, weight, key, mode):
        policy = mixture_policy(from_act(act, params_low), from_act(act, params_high), weight, mode)
        r = rollout_episodes(env, env_params, policy, key, episodes, max_steps)
        se = lambda x: jnp.std(x, ddof=1) / jnp.sqrt(episodes)  # noqa: E731
        return (r.returns.mean(), r.costs.mean(), window_violation_probability(r.unsafe, window, r.valid),
                se(r.returns), se(r.costs))

    evaluate_mixture = jax.jit(evaluate, static_argnums=4)  # compiled once per mode, reused for every budget
    key_policies, key_mixtures = jax.random.split(jax.random.PRNGKey(seed))
    J, C, V, J_se, C_se = jax.jit(jax.vmap(lambda p, k: evaluate(p, p, 1.0, k, "episode")))(
        run.params, jax.random.split(key_policies, run.grid.size))
    J, C = np.asarray(J, np.float64), np.asarray(C, np.float64)
    rows = [dict(kind="policy", lane=i, **run.grid.points[i], expected_return=float(J[i]), expected_cost=float(C[i]),
                 violation=float(V[i]), return_se=float(J_se[i]), cost_se=float(C_se[i]))
            for i in range(run.grid.size)]
    lane = lambda i: jax.tree.map(lambda x: x[i], run.params)  # noqa: E731
    for budget in budgets:
        mix = mix_for_budget(C, J, budget)
        d_index, d_value = best_deterministic(C, J, budget)
        for mode in modes:
            j, c, v, j_se, c_se = evaluate_mixture(lane(mix.low), lane(mix.high), mix.weight_low, key_mixtures, mode)
            rows.append(dict(kind="mixture", budget=float(budget), mode=mode, low_lane=mix.low, high_lane=mix.high,
                             weight_low=mix.weight_low, feasible=mix.feasible, lp_return=mix.value,
                             lp_cost=mix.cost, best_deterministic_lane=d_index, best_deterministic_return=d_value,
                             expected_return=float(j), expected_cost=float(c), violation=float(v),
                             return_se=float(j_se), cost_se=float(c_se)))
    return rows
