"""A one-step chance-constrained bandit whose optimum is a flip between two actions.

The smallest problem on which the flipping-based CCMDP paper's Thm 2 bites: every episode is one step from the same
observation (``[1.0]``); the action is ``a in [-1, 1]`` (one-dimensional ``Box``; the environment clips it); the
reward is two bumps of width 1::

    r(a) = safe_reward   * (1 - (2|a| - 1)^2)   for a <= 0      peak safe_reward   at a = -1/2
    r(a) = unsafe_reward * (1 - (2|a| - 1)^2)   for a >  0      peak unsafe_reward at a = +1/2

and the cost is the unsafe indicator ``u(a) = 1[a > 0]``, so an episode's cost is the probability of an unsafe
action and a cost limit ``alpha`` is the chance constraint ``Pr{a unsafe} <= alpha``. With the default heights
(``0.5`` and ``1``) the unconstrained best action ``+1/2`` is unsafe and the best safe action ``-1/2`` earns half.

For ``0 < alpha < 1`` the optimal action distribution (:func:`flip_optimum`) plays ``+1/2`` with probability
``alpha`` and ``-1/2`` otherwise, for a value ``(1 - alpha) safe_reward + alpha unsafe_reward``: the upper concave
hull of the achievable (cost, reward) points ``{(0, <= safe_reward), (1, <= unsafe_reward)}``. No deterministic
policy reaches it (they earn ``safe_reward``), and neither does a Gaussian policy: its mass above 0 is ``alpha``
only if it is spread over the valley between the bumps. :func:`solve_by_enumeration` solves the same problem as a
linear program over distributions on a grid of actions, independently of the closed form.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsafe.envs.core import SafeEnv, spaces
from jaxsafe.exact.lp import solve_lp
from jaxsafe.types import TimeStep

#: The peaks of the safe and the unsafe bump, and the safety threshold (unsafe iff ``a > UNSAFE_ABOVE``).
SAFE_ACTION = -0.5
UNSAFE_ACTION = 0.5
UNSAFE_ABOVE = 0.0


@struct.dataclass
class ChanceBanditParams:
    """Bump heights (traceable): the best safe and the best unsafe reward."""

    safe_reward: float = 0.5
    unsafe_reward: float = 1.0


def bandit_reward(action, params: ChanceBanditParams, xp=jnp):
    """``r(a)`` of the module docstring for an action (any shape, clipped to ``[-1, 1]``); ``xp`` is jnp or np."""
    a = xp.clip(action, -1.0, 1.0)
    height = xp.where(a > UNSAFE_ABOVE, params.unsafe_reward, params.safe_reward)
    return height * (1.0 - (2.0 * xp.abs(a) - 1.0) ** 2)


def bandit_unsafe(action, xp=jnp):
    """``u(a) = 1[a > 0]`` (after clipping to ``[-1, 1]``), as a float of the action's shape."""
    return (xp.clip(action, -1.0, 1.0) > UNSAFE_ABOVE).astype(xp.float32 if xp is jnp else np.float64)


class ChanceBandit(SafeEnv):
    """One-step episodes: constant observation ``[1.0]``, action ``[a]``, reward ``r(a)``, cost ``[u(a)]``."""

    n_costs = 1

    @property
    def name(self) -> str:
        return "ChanceBandit"

    @property
    def default_params(self) -> ChanceBanditParams:
        return ChanceBanditParams()

    def observation_space(self, params):
        return spaces.Box(1.0, 1.0, (1,), jnp.float32)

    def action_space(self, params):
        return spaces.Box(-1.0, 1.0, (1,), jnp.float32)

    def reset(self, key, params):
        timestep = TimeStep(
            obs=jnp.ones((1,), jnp.float32),
            reward=jnp.zeros((), jnp.float32),
            cost=jnp.zeros((1,), jnp.float32),
            terminated=jnp.zeros((), bool),
            truncated=jnp.zeros((), bool),
            info={},
        )
        return jnp.zeros((), jnp.int32), timestep

    def step(self, key, state, action, params):
        action = jnp.asarray(action, jnp.float32).reshape(())
        timestep = TimeStep(
            obs=jnp.ones((1,), jnp.float32),
            reward=jnp.asarray(bandit_reward(action, params), jnp.float32),
            cost=bandit_unsafe(action)[None],
            terminated=jnp.ones((), bool),
            truncated=jnp.zeros((), bool),
            info={},
        )
        return state + 1, timestep


class FlipOptimum(NamedTuple):
    """The optimal action distribution under ``Pr{unsafe} <= alpha``: ``unsafe_action`` w.p. ``unsafe_prob``."""

    safe_action: float
    unsafe_action: float
    unsafe_prob: float
    value: float  # expected reward
    cost: float  # expected cost = Pr{unsafe}


def flip_optimum(alpha: float, params: ChanceBanditParams | None = None) -> FlipOptimum:
    """Closed-form optimum: ``+1/2`` with probability ``min(alpha, 1)`` (if the unsafe bump is higher), else ``-1/2``.

    The value is ``(1 - p) safe_reward + p unsafe_reward`` with ``p`` that probability.
    """
    params = ChanceBanditParams() if params is None else params
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    safe, unsafe = float(params.safe_reward), float(params.unsafe_reward)
    unsafe_prob = min(float(alpha), 1.0) if unsafe > max(safe, 0.0) else 0.0
    value = (1.0 - unsafe_prob) * max(safe, 0.0) + unsafe_prob * unsafe
    return FlipOptimum(SAFE_ACTION, UNSAFE_ACTION, unsafe_prob, value, unsafe_prob)


class EnumerationSolution(NamedTuple):
    actions: np.ndarray  # [G] the action grid
    probs: np.ndarray  # [G] the optimal distribution over it
    value: float  # its expected reward
    cost: float  # its expected cost, Pr{unsafe}

    @property
    def support(self) -> np.ndarray:
        """The actions with probability above 1e-9."""
        return self.actions[self.probs > 1e-9]


def solve_by_enumeration(alpha: float, grid: int | np.ndarray = 201,
                         params: ChanceBanditParams | None = None) -> EnumerationSolution:
    """``max_mu sum_a mu(a) r(a)  s.t.  sum_a mu(a) u(a) <= alpha`` over distributions ``mu`` on an action grid.

    ``grid`` is a number of evenly spaced actions in ``[-1, 1]`` (201 puts points on the bump peaks) or the actions
    themselves. Solved by the HiGHS dual simplex (:func:`jaxsafe.exact.lp.solve_lp`), which returns a vertex of
    the feasible set; with two constraints (the budget and ``sum mu = 1``) a vertex has at most two atoms, the
    finite-dimensional form of the paper's Thm 2.
    """
    params = ChanceBanditParams() if params is None else params
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    actions = np.linspace(-1.0, 1.0, int(grid)) if np.ndim(grid) == 0 else np.asarray(grid, np.float64).ravel()
    if actions.size < 2:
        raise ValueError(f"grid must have at least 2 actions, got {actions.size}")
    reward = bandit_reward(actions, params, xp=np).astype(np.float64)
    unsafe = bandit_unsafe(actions, xp=np)
    solution = solve_lp(reward, A_ub=unsafe[None], b_ub=[float(alpha)], A_eq=np.ones((1, actions.size)),
                        b_eq=[1.0], maximize=True, method="highs-ds", name="enumeration LP over action distributions")
    probs = np.clip(solution.x, 0.0, None)
    return EnumerationSolution(actions, probs, float(probs @ reward), float(probs @ unsafe))


def expected_reward_and_cost(actions, params: ChanceBanditParams | None = None) -> tuple[jax.Array, jax.Array]:
    """Monte-Carlo (expected reward, Pr{unsafe}) of a policy from its sampled actions ``[N, 1]`` or ``[N]``."""
    params = ChanceBanditParams() if params is None else params
    actions = jnp.asarray(actions).reshape(-1)
    return bandit_reward(actions, params).mean(), bandit_unsafe(actions).mean()
