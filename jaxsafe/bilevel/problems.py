"""Bilevel problems: configurable MDPs, Markov games and linear-quadratic tasks, each a frozen bundle of arrays
and pure functions of the leader parameters ``x``.

Three kinds (``problem.kind``):

* ``"mdp"`` — :class:`ConfigurableMDP`: the leader's ``x`` changes the follower reward (incentives) and/or the
  transitions (environment design). ``four_rooms`` (bchg.md 1.4), ``warehouse`` (a design task of ours with one
  parameter per cell) and ``random_configurable_mdp`` (tests).
* ``"game"`` — :class:`MarkovGame`: the leader plays a stochastic policy ``pi_x(a_L|s)``; the follower sees
  ``a_L`` and soft-best-responds. ``discrete_toy`` and ``random_markov_game``.
* ``"lq"`` — :class:`LQProblem`: continuous linear-quadratic dynamics with a maximum-entropy LQR follower.
  ``building_thermal`` (the leader designs insulation/airflow, i.e. the transitions) and ``lqr_game`` (the leader
  applies a linear feedback the follower must live with).

Conventions: states ``S``, follower actions ``A`` (``A_F`` in games), leader actions ``A_L``; tables are float32
numpy arrays; terminal states have all-zero transition rows and ``live = 0``. Each problem carries the default
temperature and discounts of its paper setting (``default_temperature``, ``default_follower_gamma``,
``default_leader_gamma``), used by ``BilevelConfig.default_hparams(problem)``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.envs.gridworld import LAYOUTS, MOVES, GridParams, GridWorld

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Problem types
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ConfigurableMDP:
    """A configurable MDP ``M_x`` (bchg.md 1.2a).

    Attributes:
      name: identifier.
      initial: ``[S]`` initial-state distribution.
      live: ``[S]`` 1.0 for non-terminal states.
      follower_base_reward: ``[S, A]`` the follower's own reward (the leader does not need it).
      incentive_fn: ``x [d] -> [S, A]`` what the leader adds to the follower reward (known to the leader).
      transition_fn: ``x [d] -> [S, A, S]`` (terminal rows all zero).
      leader_reward_fn: ``x [d] -> [S, A]``.
      initial_params: ``[d]`` leader parameters at iteration 0.
      transitions_depend_on_params: static flag; switches on the transition-score terms of the estimators.
      max_episode_steps: rollout time limit.
      default_temperature, default_follower_gamma, default_leader_gamma, default_leader_lr: paper defaults.
      description: one paragraph for docs and run directories.

    Rewards are expected rewards of ``(s, a)``; they may depend on ``x`` directly but not through ``P_x`` (a reward
    paid on arrival would need its own score term), so the estimators' transition-score terms carry only values.
    """

    name: str
    initial: np.ndarray
    live: np.ndarray
    follower_base_reward: np.ndarray
    incentive_fn: Callable[[Array], Array]
    transition_fn: Callable[[Array], Array]
    leader_reward_fn: Callable[[Array], Array]
    initial_params: np.ndarray
    transitions_depend_on_params: bool
    max_episode_steps: int = 100
    default_temperature: float = 0.1
    default_follower_gamma: float = 0.9
    default_leader_gamma: float = 0.9
    default_leader_lr: float = 0.1
    description: str = ""
    kind: str = "mdp"

    @property
    def num_states(self) -> int:
        return self.follower_base_reward.shape[0]

    @property
    def num_actions(self) -> int:
        return self.follower_base_reward.shape[1]

    @property
    def num_params(self) -> int:
        return self.initial_params.shape[0]

    def follower_reward(self, params: Array) -> Array:
        """``r_F(s, a; x) = base(s, a) + incentive(s, a; x)``, ``[S, A]``."""
        return jnp.asarray(self.follower_base_reward, params.dtype) + self.incentive_fn(params)


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovGame:
    """A two-player Markov game with a leader policy parameterised by ``x`` (bchg.md 1.2b).

    Attributes:
      transitions: ``[S, A_L, A_F, S]``; follower_reward, leader_reward: ``[S, A_L, A_F]``.
      leader_policy_fn: ``x [d] -> [S, A_L]`` the leader's stochastic policy.
      key_state, optimal_leader_action: where the "policy optimality gap" ``1 - pi_x(a*|key_state)`` is read
        (``-1`` when the game has none).
    """

    name: str
    initial: np.ndarray
    live: np.ndarray
    transitions: np.ndarray
    follower_reward: np.ndarray
    leader_reward: np.ndarray
    leader_policy_fn: Callable[[Array], Array]
    initial_params: np.ndarray
    max_episode_steps: int = 150
    key_state: int = -1
    optimal_leader_action: int = -1
    default_temperature: float = 0.05
    default_follower_gamma: float = 0.99
    default_leader_gamma: float = 0.99
    default_leader_lr: float = 0.1
    description: str = ""
    kind: str = "game"

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def num_leader_actions(self) -> int:
        return self.transitions.shape[1]

    @property
    def num_follower_actions(self) -> int:
        return self.transitions.shape[2]

    @property
    def num_params(self) -> int:
        return self.initial_params.shape[0]


class LQSystem(NamedTuple):
    """What the follower faces and what the leader pays, for one value of ``x`` (all float arrays).

    Dynamics ``z' = dynamics z + control a + w``, ``w ~ N(0, noise_cov)``; follower reward
    ``-(z' Qf z + a' Rf a)``; leader reward ``-(z' QL z + a' RL a + leader_constant_cost)``.
    """

    dynamics: Array
    control: Array
    noise_cov: Array
    follower_state_cost: Array
    follower_action_cost: Array
    leader_state_cost: Array
    leader_action_cost: Array
    leader_constant_cost: Array
    initial_state: Array


@dataclasses.dataclass(frozen=True, eq=False)
class LQProblem:
    """A linear-quadratic bilevel problem: ``system(x) -> LQSystem``; the follower is maximum-entropy LQR.

    Attributes:
      system: ``x [d] -> LQSystem``.
      noise_std_fn: ``x [d] -> [n]`` per-coordinate noise std of ``w`` (``noise_cov`` is its diagonal square;
        rollouts sample ``w`` with it, and the transition score is that of this Gaussian).
      state_dim: dimension of the simulated state (the augmented constant coordinate, if any, is the last one).
    """

    name: str
    system: Callable[[Array], LQSystem]
    initial_params: np.ndarray
    transitions_depend_on_params: bool
    max_episode_steps: int = 100
    riccati_iterations: int = 300
    default_temperature: float = 0.1
    default_follower_gamma: float = 0.9
    default_leader_gamma: float = 0.9
    default_leader_lr: float = 0.01
    description: str = ""
    kind: str = "lq"

    @property
    def num_params(self) -> int:
        return self.initial_params.shape[0]


# ---------------------------------------------------------------------------------------------------------------
# Random instances (tests)
# ---------------------------------------------------------------------------------------------------------------


def random_configurable_mdp(seed: int, num_states: int = 5, num_actions: int = 3, num_params: int = 4,
                            transition_dependent: bool = False, terminal_prob: float = 0.1) -> ConfigurableMDP:
    """A random small configurable MDP (tests): reward linear in ``x`` and, optionally, softmax transitions.

    ``r_F = base + Phi x``, ``r_L = leader_base + 0.1 tanh(Psi x)`` and, when ``transition_dependent``,
    ``P_x(.|s,a) = (1 - terminal_prob) softmax(logits + Xi x)`` with the remaining mass leaving to an absorbing
    terminal (the last state), so episodes end and discounted returns are well defined.
    """
    rng = np.random.default_rng(seed)
    n_live = num_states - 1
    base = rng.normal(size=(num_states, num_actions)).astype(np.float32)
    incentive_features = (rng.normal(size=(num_states, num_actions, num_params)) / np.sqrt(num_params))
    leader_base = rng.normal(size=(num_states, num_actions)).astype(np.float32)
    leader_features = rng.normal(size=(num_states, num_actions, num_params)) / np.sqrt(num_params)
    logits = rng.normal(size=(num_states, num_actions, n_live)).astype(np.float32)
    design_features = rng.normal(size=(num_states, num_actions, n_live, num_params)) / np.sqrt(num_params)
    if not transition_dependent:
        design_features = np.zeros_like(design_features)
        incentive_features_used = incentive_features
    else:
        incentive_features_used = incentive_features * 0.5
    live = np.ones(num_states, np.float32)
    live[-1] = 0.0
    base[-1] = 0.0
    leader_base[-1] = 0.0
    initial = np.zeros(num_states, np.float32)
    initial[:n_live] = rng.dirichlet(np.ones(n_live))
    mask = live[:, None]

    def incentive_fn(x):
        return jnp.einsum("sad,d->sa", jnp.asarray(incentive_features_used, x.dtype), x) * mask

    def transition_fn(x):
        to_live = jax.nn.softmax(jnp.asarray(logits, x.dtype)
                                 + jnp.einsum("santd,d->sant", jnp.asarray(design_features[None], x.dtype), x)[0],
                                 axis=-1)
        probs = jnp.concatenate([(1.0 - terminal_prob) * to_live,
                                 jnp.full(to_live.shape[:-1] + (1,), terminal_prob, x.dtype)], axis=-1)
        return probs * jnp.asarray(mask, x.dtype)[..., None]

    def leader_reward_fn(x):
        shaped = jnp.asarray(leader_base, x.dtype) + 0.5 * jnp.tanh(
            jnp.einsum("sad,d->sa", jnp.asarray(leader_features, x.dtype), x))
        return shaped * mask

    return ConfigurableMDP(
        name=f"random_mdp_{'transition' if transition_dependent else 'reward'}_{seed}",
        initial=initial, live=live, follower_base_reward=base, incentive_fn=incentive_fn,
        transition_fn=transition_fn, leader_reward_fn=leader_reward_fn,
        initial_params=(0.3 * rng.normal(size=num_params)).astype(np.float32),
        transitions_depend_on_params=transition_dependent, max_episode_steps=60,
        default_temperature=0.5, default_follower_gamma=0.8, default_leader_gamma=0.8,
        description="random configurable MDP for tests")


def tabular_leader_policy(num_states: int, num_leader_actions: int) -> Callable[[Array], Array]:
    """Softmax policy with one logit per (state, leader action): ``x [S * A_L] -> [S, A_L]``."""

    def policy(x):
        return jax.nn.softmax(x.reshape(num_states, num_leader_actions), axis=-1)

    return policy


def random_markov_game(seed: int, num_states: int = 4, num_leader_actions: int = 2, num_follower_actions: int = 3,
                       terminal_prob: float = 0.1) -> MarkovGame:
    """A random small Markov game with a tabular softmax leader (tests); the last state is terminal."""
    rng = np.random.default_rng(seed)
    shape = (num_states, num_leader_actions, num_follower_actions)
    n_live = num_states - 1
    to_live = rng.dirichlet(np.ones(n_live), size=shape)
    transitions = np.concatenate([(1 - terminal_prob) * to_live, np.full(shape + (1,), terminal_prob)], axis=-1)
    live = np.ones(num_states, np.float32)
    live[-1] = 0.0
    transitions[-1] = 0.0
    follower_reward = rng.normal(size=shape) * live[:, None, None]
    leader_reward = rng.normal(size=shape) * live[:, None, None]
    initial = np.zeros(num_states)
    initial[:n_live] = rng.dirichlet(np.ones(n_live))
    return MarkovGame(
        name=f"random_game_{seed}", initial=initial.astype(np.float32), live=live,
        transitions=transitions.astype(np.float32), follower_reward=follower_reward.astype(np.float32),
        leader_reward=leader_reward.astype(np.float32),
        leader_policy_fn=tabular_leader_policy(num_states, num_leader_actions),
        initial_params=(0.3 * rng.normal(size=num_states * num_leader_actions)).astype(np.float32),
        max_episode_steps=60, default_temperature=0.5, default_follower_gamma=0.8, default_leader_gamma=0.8,
        description="random Markov game for tests")


# ---------------------------------------------------------------------------------------------------------------
# FourRooms: budgeted incentives (bchg.md 1.4)
# ---------------------------------------------------------------------------------------------------------------


def _relabel_layout(layout: str, starts: list[tuple[int, int]], goals: list[tuple[int, int]]) -> str:
    rows = [list(r) for r in layout.strip("\n").split("\n")]
    for r, row in enumerate(rows):
        rows[r] = ["." if ch in "SG" else ch for ch in row]
    for r, c in starts:
        rows[r][c] = "S"
    for r, c in goals:
        rows[r][c] = "G"
    return "\n".join("".join(r) for r in rows)


def four_rooms(incentive_cost: float = 5.0, incentive_budget: float = 0.2, slip_prob: float = 0.33,
               start: tuple[int, int] = (4, 1), goal: tuple[int, int] = (11, 11),
               target: tuple[int, int] = (8, 4)) -> ConfigurableMDP:
    """FourRooms with budgeted per-cell incentives (the HPGD/BC-HG benchmark, bchg.md 1.4).

    The map is ``jaxsafe.envs.gridworld``'s ``four_rooms`` (the 13x13 gymnax map) with bchg.md's start and leader
    target: start (4, 1) in the top-left room, the leader's target cell (8, 4) in the bottom-left room, and the
    layout's own goal (11, 11) in the bottom-right room (not bchg.md's (1, 9): with that goal the target room lies
    on no route of a near-greedy follower; see docs/bilevel.md). The follower's two routes to the goal go through
    the top-right or the bottom-left room, so the target room is on one of them. Actions slip with probability
    0.33.

    * Leader parameters: one weight per non-goal cell plus one "unused" slot (``d = cells``). The incentive of
      cell ``c`` is ``-budget * softmax(x)[c]``: a penalty on the follower's reward in that cell, with total size
      at most ``budget`` (the unused slot absorbs what is not spent).
    * Follower reward: 1 on reaching the goal plus the incentive of the current cell.
    * Leader reward: +1 per step spent in the target cell, minus ``incentive_cost * ||incentive||_1`` paid on
      reaching the goal.
    """
    layout = _relabel_layout(LAYOUTS["four_rooms"], [start], [goal])
    world = GridWorld(layout)
    mdp = world.to_tabular(GridParams(step_reward=0.0, goal_reward=1.0, slip_prob=slip_prob))
    cells = [tuple(c) for c in world.cells.tolist()]
    target_index = cells.index(tuple(target))
    goal_mask = mdp.terminal.astype(np.float32)
    live = 1.0 - goal_mask
    arrive_goal = (mdp.transitions @ goal_mask).astype(np.float32)  # [S, A]
    num_states = mdp.num_states
    non_goal = np.flatnonzero(live > 0)
    # One weight per non-goal cell, plus the unused slot (the last parameter).
    scatter = np.zeros((len(non_goal), num_states), np.float32)
    scatter[np.arange(len(non_goal)), non_goal] = 1.0
    at_target = np.zeros((num_states, 4), np.float32)
    at_target[target_index] = 1.0

    def incentives(x):
        """Per-cell penalty ``[S]`` (0 at the goal), total size ``budget * (1 - softmax(x)[-1])``."""
        return -incentive_budget * (jax.nn.softmax(x)[:-1] @ jnp.asarray(scatter, x.dtype))

    def incentive_fn(x):
        return jnp.broadcast_to(incentives(x)[:, None], (num_states, 4))

    def transition_fn(x):
        return jnp.asarray(mdp.transitions, x.dtype)

    def leader_reward_fn(x):
        spent = jnp.sum(jnp.abs(incentives(x)))
        return jnp.asarray(at_target, x.dtype) - incentive_cost * spent * jnp.asarray(arrive_goal, x.dtype)

    return ConfigurableMDP(
        name="four_rooms", initial=mdp.initial.astype(np.float32), live=live,
        follower_base_reward=mdp.rewards.astype(np.float32), incentive_fn=incentive_fn,
        transition_fn=transition_fn, leader_reward_fn=leader_reward_fn,
        initial_params=np.zeros(len(non_goal) + 1, np.float32), transitions_depend_on_params=False,
        max_episode_steps=200, default_temperature=0.003, default_follower_gamma=0.99, default_leader_gamma=0.99,
        default_leader_lr=0.1,
        description=("FourRooms (13x13), start (4,1), goal (11,11), slip 0.33; leader pays budgeted per-cell "
                     f"penalties (budget {incentive_budget}) to route the follower through target (8,4); "
                     f"incentive cost {incentive_cost} per unit paid at the goal."))


# ---------------------------------------------------------------------------------------------------------------
# Warehouse layout design: one transition parameter per cell
# ---------------------------------------------------------------------------------------------------------------

WAREHOUSE_LAYOUT = """
###########
#.........#
#.##.H.##.#
#S##.H.##D#
#.##.H.##.#
#.........#
###########
"""


def warehouse(human_penalty: float = 1.0, step_cost: float = 0.05, min_speed: float = 0.2, slip_prob: float = 0.1,
              initial_logit: float = 2.0, layout: str = WAREHOUSE_LAYOUT) -> ConfigurableMDP:
    """Warehouse floor design: the leader sets a per-cell "floor speed", a robot (the follower) delivers.

    The robot starts at ``S`` (a shelf bay) and must reach the dock ``D`` (terminal); shelving (``#``) blocks it.
    The short route runs through a central picking aisle where people work (``H`` cells); longer aisles go
    around it. The leader (the facility designer) picks one parameter per cell: the probability that a move out of
    that cell succeeds, ``speed(c) = min_speed + (1 - min_speed) sigmoid(x_c)`` (speed bumps, floor markings,
    gates); a failed move leaves the robot where it is. Actions also slip with ``slip_prob``.

    * Follower (robot): ``-step_cost`` per step until the dock (it wants to deliver fast); discount 0.95,
      temperature 0.02.
    * Leader: ``-step_cost`` per step too (throughput) and ``-human_penalty`` per step the robot spends in a human
      cell. Slowing the aisle makes the robot detour but also slows any robot that still uses it.

    Rewards depend on ``(s, a)`` only, so ``x`` acts purely through the transitions and every hypergradient flows
    through transition-score terms; ``d`` is the number of free cells (about 40), a high-dimensional design.
    """
    grid_text = layout.replace("D", "G").replace("H", ".")
    world = GridWorld(grid_text)
    grid = np.array([list(r) for r in layout.strip("\n").split("\n")])
    cells = world.cells
    num_states = world.num_cells
    is_human = np.array([grid[r, c] == "H" for r, c in cells], np.float32)
    is_dock = world._is_goal.astype(np.float32)
    live = 1.0 - is_dock
    next_cell = world._next_cell  # [S, 4]
    # Distribution of the executed action given the chosen one, and where each executed action lands.
    executed = (1 - slip_prob) * np.eye(4) + slip_prob / 4.0  # [A, A']
    moved = np.zeros((num_states, 4, num_states), np.float32)
    for s in range(num_states):
        for a in range(4):
            for a2 in range(4):
                moved[s, a, next_cell[s, a2]] += executed[a, a2]
    stay = np.broadcast_to(np.eye(num_states, dtype=np.float32)[:, None, :], moved.shape)
    follower_reward = np.broadcast_to((-step_cost * live)[:, None], (num_states, 4)).astype(np.float32)
    leader_reward = (follower_reward
                     - human_penalty * np.broadcast_to((is_human * live)[:, None], (num_states, 4))).astype(np.float32)
    initial = np.zeros(num_states, np.float32)
    initial[world._starts] = 1.0 / len(world._starts)

    def transition_fn(x):
        p_move = (min_speed + (1.0 - min_speed) * jax.nn.sigmoid(x))[:, None, None]
        probs = p_move * jnp.asarray(moved, x.dtype) + (1.0 - p_move) * jnp.asarray(stay, x.dtype)
        return probs * jnp.asarray(live, x.dtype)[:, None, None]

    def incentive_fn(x):
        return jnp.zeros((num_states, 4), x.dtype)  # the designer pays no incentives

    def leader_reward_fn(x):
        return jnp.asarray(leader_reward, x.dtype)

    return ConfigurableMDP(
        name="warehouse", initial=initial, live=live, follower_base_reward=follower_reward,
        incentive_fn=incentive_fn, transition_fn=transition_fn, leader_reward_fn=leader_reward_fn,
        initial_params=np.full(num_states, initial_logit, np.float32), transitions_depend_on_params=True,
        max_episode_steps=100, default_temperature=0.02, default_follower_gamma=0.95, default_leader_gamma=0.95,
        default_leader_lr=5.0,
        description=("Warehouse design: one floor-speed parameter per cell (transition design); the robot delivers "
                     "to the dock, the designer also pays per robot step in the human aisle."))


# ---------------------------------------------------------------------------------------------------------------
# DiscreteToy Markov game
# ---------------------------------------------------------------------------------------------------------------


def discrete_toy(follower_payoff: float = 1.0, temperature: float = 0.05) -> MarkovGame:
    """DiscreteToy: a 3-state game where the leader must *anticipate* the follower (R1: payoff 1, R2: payoff 2).

    Our reconstruction of bchg.md's DiscreteToy4 (the paper's tables were not available): states ``S`` (0),
    ``A`` (1), ``B`` (2); 2 leader actions, 3 follower actions. In ``S`` the follower chooses where to go
    (0 -> A, 1 -> B, 2 -> stay); from ``A`` and ``B`` play returns to ``S``.

    * In ``A`` the leader either accommodates (``aL = 0``: the follower earns ``0.1 R``, the leader 0.1) or
      withholds (``aL = 1``: both earn 0). In ``B`` the follower earns 0.05 and the leader 1.
    * Myopically the leader prefers to accommodate in ``A`` (0.1 > 0), and a gradient that ignores the follower's
      response ("no guidance") drives ``pi_x(aL=0|A) -> 1``, which keeps the follower coming to ``A``.
    * The bilevel optimum withholds in ``A`` (``aL = 1``): the follower's value of ``A`` drops below ``B``'s,
      it goes to ``B``, and the leader earns 1 per visit. The key state is ``A``, the optimal action 1.

    The follower reward is scaled (0.1 R, 0.05) so that ``temperature = 0.05`` gives a responsive follower; with
    ``R = 2`` the follower starts firmly committed to ``A`` (harder).
    """
    num_states, num_leader, num_follower = 3, 2, 3
    transitions = np.zeros((num_states, num_leader, num_follower, num_states), np.float32)
    transitions[0, :, 0, 1] = 1.0
    transitions[0, :, 1, 2] = 1.0
    transitions[0, :, 2, 0] = 1.0
    transitions[1, :, :, 0] = 1.0
    transitions[2, :, :, 0] = 1.0
    follower_reward = np.zeros((num_states, num_leader, num_follower), np.float32)
    follower_reward[1, 0, :] = 0.1 * follower_payoff
    follower_reward[2, :, :] = 0.05
    leader_reward = np.zeros_like(follower_reward)
    leader_reward[1, 0, :] = 0.1
    leader_reward[2, :, :] = 1.0
    initial = np.array([1.0, 0.0, 0.0], np.float32)
    return MarkovGame(
        name=f"discrete_toy_r{follower_payoff:g}", initial=initial, live=np.ones(num_states, np.float32),
        transitions=transitions, follower_reward=follower_reward, leader_reward=leader_reward,
        leader_policy_fn=tabular_leader_policy(num_states, num_leader),
        initial_params=np.zeros(num_states * num_leader, np.float32), max_episode_steps=150,
        key_state=1, optimal_leader_action=1, default_temperature=temperature, default_follower_gamma=0.99,
        default_leader_gamma=0.99, default_leader_lr=0.5,
        description=f"DiscreteToy (our reconstruction), follower payoff R={follower_payoff:g}")


# ---------------------------------------------------------------------------------------------------------------
# Linear-quadratic tasks
# ---------------------------------------------------------------------------------------------------------------


def _augment(matrix_a, vector_b):
    """Affine dynamics ``s' = A s + b`` as linear ones on ``z = [s; 1]``."""
    n = matrix_a.shape[0]
    top = jnp.concatenate([matrix_a, vector_b[:, None]], axis=1)
    bottom = jnp.concatenate([jnp.zeros((1, n), matrix_a.dtype), jnp.ones((1, 1), matrix_a.dtype)], axis=1)
    return jnp.concatenate([top, bottom], axis=0)


def _tracking_cost(weight, target):
    """``(s - t)' W (s - t)`` as ``z' M z`` on ``z = [s; 1]``."""
    wt = weight @ target
    top = jnp.concatenate([weight, -wt[:, None]], axis=1)
    bottom = jnp.concatenate([-wt[None, :], (target @ wt)[None, None]], axis=1)
    return jnp.concatenate([top, bottom], axis=0)


def building_thermal(noise_std: float = 0.02) -> LQProblem:
    """BuildingThermalControl ("bilevel LQR", bchg.md 1.4): 4 zones, 2 HVAC inputs, leader designs the building.

    Zone temperatures (deviations from the set point) follow ``s' = A(x) s + B a + w``. The leader's two
    parameters, mapped by a sigmoid to ``insulation in [0, 1]`` and ``airflow in [0, 1]``, change ``A``: insulation
    shrinks the leak to the outside (the diagonal decay toward the set point is slower, so disturbances persist
    less... and HVAC effort is kept), airflow increases coupling between neighbouring zones. The follower (HVAC
    controller) is maximum-entropy LQR with ``lambda = 0.1``, ``gamma = 0.9``; its cost is ``|s|^2 + 0.1 |a|^2``.

    Leader reward: ``-(1.0 stability + 0.5 energy + 0.1 insulation^2 + 0.1 airflow^2)`` with stability ``|s|^2``
    and energy ``|a|^2``. Our own numbers (bchg.md gives the structure and weights, not the matrices); initial
    state ``(1, -0.5, 0.5, -1)``, noise std 0.02.
    """
    n, m = 4, 2
    base_drift = 0.9
    neighbours = np.zeros((n, n), np.float32)
    for i in range(n - 1):
        neighbours[i, i + 1] = neighbours[i + 1, i] = 1.0
    laplacian = neighbours - np.diag(neighbours.sum(1))
    control = np.array([[1.0, 0.0], [0.5, 0.0], [0.0, 0.5], [0.0, 1.0]], np.float32) * 0.3
    initial_state = np.array([1.0, -0.5, 0.5, -1.0], np.float32)

    def system(x):
        insulation, airflow = jax.nn.sigmoid(x[0]), jax.nn.sigmoid(x[1])
        # Poor insulation lets outside disturbances drive the zones (growth toward 1.05); good insulation keeps
        # the passive decay; airflow mixes zones, which averages out the alternating initial deviations.
        diagonal = base_drift + 0.15 * (1.0 - insulation)
        dynamics = diagonal * jnp.eye(n, dtype=x.dtype) + 0.2 * airflow * jnp.asarray(laplacian, x.dtype)
        eye_n, eye_m = jnp.eye(n, dtype=x.dtype), jnp.eye(m, dtype=x.dtype)
        return LQSystem(
            dynamics=dynamics, control=jnp.asarray(control, x.dtype),
            noise_cov=(noise_std ** 2) * eye_n, follower_state_cost=eye_n, follower_action_cost=0.1 * eye_m,
            leader_state_cost=1.0 * eye_n, leader_action_cost=0.5 * eye_m,
            leader_constant_cost=0.1 * insulation ** 2 + 0.1 * airflow ** 2,
            initial_state=jnp.asarray(initial_state, x.dtype))

    return LQProblem(
        name="building_thermal", system=system, initial_params=np.zeros(2, np.float32),
        transitions_depend_on_params=True, max_episode_steps=50, default_temperature=0.1,
        default_follower_gamma=0.9, default_leader_gamma=0.9, default_leader_lr=0.5,
        description="4-zone building, leader sets insulation and airflow (transition design), MaxEnt-LQR HVAC")


def lqr_game(target=(-0.8, 0.0), leader_action_cost: float = 0.1, dt: float = 0.1) -> LQProblem:
    """The LQR game (bchg.md 1.5, LQREnv): the leader applies an affine feedback the follower must regulate.

    State ``s in R^2`` with ``s' = (I + dt A) s + B aF + C aL`` (A = [[0,1],[0,0]], B = [[0],[0.1]],
    C = [[0.1],[0]]). The leader plays ``aL = K [s; 1]`` (``x = K``, three numbers: a linear-Gaussian leader with
    fixed exploration 1e-3 in the paper; deterministic here so the follower's problem stays LQ). The follower
    (MaxEnt-LQR, ``beta = 0.1``, ``gamma = 0.95``) regulates ``s`` to the origin with cost ``|s|^2 + aF^2``; the
    leader wants ``s`` at ``target = (-0.8, 0)`` and pays ``leader_action_cost aL^2``. Initial state ``(1, 0)``.
    Discretisation with ``dt`` is ours (the paper's env file was not available).
    """
    dynamics_c = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    control_f = np.array([[0.0], [0.1]], np.float32)
    control_l = np.array([[0.1], [0.0]], np.float32)
    target_arr = np.asarray(target, np.float32)

    def system(x):
        gain = x.reshape(1, 3)  # aL = gain @ [s; 1]
        a = jnp.eye(2, dtype=x.dtype) + dt * jnp.asarray(dynamics_c, x.dtype)
        a_aug = _augment(a, jnp.zeros(2, x.dtype)) + jnp.concatenate(
            [jnp.asarray(control_l, x.dtype) @ gain, jnp.zeros((1, 3), x.dtype)], axis=0)
        b_aug = jnp.concatenate([jnp.asarray(control_f, x.dtype), jnp.zeros((1, 1), x.dtype)], axis=0)
        noise = jnp.diag(jnp.asarray([1e-4, 1e-4, 0.0], x.dtype))
        follower_state = _tracking_cost(jnp.eye(2, dtype=x.dtype), jnp.zeros(2, x.dtype))
        leader_state = (_tracking_cost(jnp.eye(2, dtype=x.dtype), jnp.asarray(target_arr, x.dtype))
                        + leader_action_cost * gain.T @ gain)
        return LQSystem(
            dynamics=a_aug, control=b_aug, noise_cov=noise, follower_state_cost=follower_state,
            follower_action_cost=jnp.eye(1, dtype=x.dtype), leader_state_cost=leader_state,
            leader_action_cost=jnp.zeros((1, 1), x.dtype), leader_constant_cost=jnp.zeros((), x.dtype),
            initial_state=jnp.asarray([1.0, 0.0, 1.0], x.dtype))

    return LQProblem(
        name="lqr_game", system=system, initial_params=np.zeros(3, np.float32), transitions_depend_on_params=True,
        max_episode_steps=100, default_temperature=0.1, default_follower_gamma=0.95, default_leader_gamma=0.95,
        default_leader_lr=0.1, description="LQR game: leader affine feedback, MaxEnt-LQR follower")


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

PROBLEMS: dict[str, Callable[..., object]] = {
    "four_rooms": four_rooms,
    "warehouse": warehouse,
    "discrete_toy_r1": functools.partial(discrete_toy, 1.0),
    "discrete_toy_r2": functools.partial(discrete_toy, 2.0),
    "building_thermal": building_thermal,
    "lqr_game": lqr_game,
}


def problem_overrides(name: str) -> list[str]:
    """The constructor arguments of problem ``name`` that ``make_problem(name, **overrides)`` accepts."""
    return list(inspect.signature(PROBLEMS[name]).parameters)


def make_problem(name: str, **overrides):
    """Build a named problem (``sorted(PROBLEMS)``); ``overrides`` go to its constructor.

    Raises:
      ValueError: an unknown name (listing the problems) or an override the constructor does not take (listing
        the allowed overrides).
    """
    if name not in PROBLEMS:
        raise ValueError(f"unknown bi-level problem {name!r}; choose one of {sorted(PROBLEMS)}")
    unknown = sorted(set(overrides) - set(problem_overrides(name)))
    if unknown:
        raise ValueError(f"bi-level problem {name!r}: unknown override(s) {unknown}; allowed overrides: "
                         f"{problem_overrides(name) or 'none'}")
    return PROBLEMS[name](**overrides)


@functools.lru_cache(maxsize=None)
def _descriptions() -> tuple[tuple[str, str], ...]:
    return tuple((name, make_problem(name).description) for name in sorted(PROBLEMS))


def describe_problems() -> dict[str, str]:
    """``{name: one-line description}`` of every named problem (built once, then cached)."""
    return dict(_descriptions())
