"""Configurable constrained gridworlds (pure JAX) with an exact tabular model.

A layout is a string, one character a cell::

    #  wall          .  free          S  start (one or more; uniform over them)
    G  goal (terminal, pays goal_reward)                H  hazard (entering it costs hazard_cost)
    W  hazard of a second kind (entering it costs hazard_cost in a second cost signal: a layout with any W
       has n_costs = 2, TimeStep.cost = (H cost, W cost))

Actions are 0 up, 1 right, 2 down, 3 left. With probability ``slip_prob`` the action is replaced by a uniformly
random one. Moving into a wall leaves the agent in place. Each step pays ``step_reward``; entering a goal pays
``goal_reward`` as well and terminates; episodes are truncated after ``max_steps`` steps. Observations are the
one-hot index of the agent's cell among the non-wall cells.

``GridWorld.to_tabular(params)`` exports the exact model as a :class:`~jaxsafe.exact.tabular.TabularMDP`, so the
optimal constrained policy can be computed with :func:`~jaxsafe.exact.tabular.solve_constrained_mdp`.

Two layouts have closed-form constrained optima (:func:`route_optimum`), used in the tests. ``routes`` (the default)
offers three undominated routes: 6 steps through 3 hazards, 8 steps through 1 hazard, and a 12-step safe detour::

    #########
    #.......#
    #.#####.#
    #...H...#
    #S.HHH.G#
    #########

With the default rewards their (cost, return) points are (3, 0.7), (1, 0.6) and (0, 0.4). The middle route is a
vertex of the upper concave hull, so for an episode-cost limit of exactly 1 the optimal policy is deterministic:
a Lagrangian learner has a stable target. ``corridor`` has two routes::

    #######
    #.....#
    #SHHHG#
    #.....#
    #######

The straight route crosses three hazards in 4 steps; the detour around them is 6 steps and safe. Every other
route is dominated, so the optimal policy under an episode-cost limit ``d in [0, 3]`` takes the straight route
with probability ``d / 3`` and the detour otherwise: every limit between the vertices needs a stochastic policy.

``two_costs`` has two cost signals (``n_costs = 2``, ``TimeStep.cost = (H cost, W cost)``): ``routes`` with H
hazards, a one-cell junction, then ``routes`` again with W hazards::

    #################
    #.......#.......#
    #.#####.#.#####.#
    #...H...#...W...#
    #S.HHH.....WWW.G#
    #################

Each half is chosen independently (6 steps through 3 hazards, 8 through 1, or a safe 12-step detour), and an
episode takes ``steps_H + 2 + steps_W`` steps, so the exact optimum is :func:`two_costs_optimum`. With the
default rewards (no slip, undiscounted): unconstrained, both shortcuts, return 0.3 and costs (3, 3); minimum
cost, both detours, return -0.3 and costs (0, 0). Between them, for the PPO-Lagrangian test against
:func:`~jaxsafe.exact.tabular.solve_constrained_mdp`:

* ``cost_limits = (1, 1)``: the deterministic optimum takes both single-hazard middle rows; return 0.1, costs
  (1, 1). It sits on a kink of both halves, so each optimal multiplier is any value in ``[0.05, 0.2]``.
* ``cost_limits = (2, 0.5)``: the H half mixes the 3- and 1-hazard rows 50/50 and the W half the 1-hazard row
  and the detour 50/50; return 0.05, costs (2, 0.5), unique multipliers (0.05, 0.2) (the price of a hazard:
  1 step per hazard on the H side, 4 steps on the W side, at 0.05 per step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsafe.envs.core import SafeEnv, spaces
from jaxsafe.exact.tabular import TabularMDP
from jaxsafe.types import TimeStep

LAYOUTS: dict[str, str] = {
    "routes": """
#########
#.......#
#.#####.#
#...H...#
#S.HHH.G#
#########
""",
    "corridor": """
#######
#.....#
#SHHHG#
#.....#
#######
""",
    # The 13x13 FourRooms map of Sutton, Precup & Singh (1999), as in gymnax; start and goal opposite corners.
    "four_rooms": """
#############
#S    #     #
#     #     #
#           #
#     #     #
#     #     #
## ####     #
#     ### ###
#     #     #
#     #     #
#           #
#     #    G#
#############
""",
    # Two kinds of hazard: ``routes`` for H cells, a one-cell junction, then ``routes`` again for W cells.
    "two_costs": """
#################
#.......#.......#
#.#####.#.#####.#
#...H...#...W...#
#S.HHH.....WWW.G#
#################
""",
    # Two hazard patches guard the short way to the goal of an open room.
    "hazard_room": """
#########
#S......#
#..HHH..#
#..HHH..#
#.......#
#...HH..#
#......G#
#########
""",
}

MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], np.int32)  # up, right, down, left


def parse_layout(layout: str) -> np.ndarray:
    """Turn a layout string into a ``[H, W]`` array of single characters (spaces count as free cells)."""
    rows = [row for row in layout.strip("\n").split("\n")]
    width = max(len(r) for r in rows)
    grid = np.array([list(r.ljust(width, "#")) for r in rows])
    grid[grid == " "] = "."
    allowed = set("#.SGHW")
    bad = set(grid.ravel()) - allowed
    if bad:
        raise ValueError(f"layout has unknown characters {sorted(bad)}; allowed are {sorted(allowed)}")
    if not (grid == "S").any():
        raise ValueError("layout needs at least one start cell 'S'")
    if not (grid == "G").any():
        raise ValueError("layout needs at least one goal cell 'G'")
    return grid


@struct.dataclass
class GridParams:
    step_reward: float = -0.05
    goal_reward: float = 1.0
    hazard_cost: float = 1.0
    slip_prob: float = 0.0
    max_steps: int = struct.field(pytree_node=False, default=50)


class GridState(NamedTuple):
    cell: jax.Array  # int32 index into the non-wall cells
    time: jax.Array  # int32 steps taken


class GridWorld(SafeEnv):
    """A constrained gridworld built from a layout (see the module docstring)."""

    param_rules = {"slip_prob": (lambda v: (v >= 0) & (v <= 1), "a probability in [0, 1]"),
                   "hazard_cost": (lambda v: v >= 0, "a finite cost >= 0"),
                   "max_steps": (lambda v: v >= 1, "an integer >= 1")}

    def __init__(self, layout: str = "routes"):
        text = LAYOUTS.get(layout, layout)
        if layout not in LAYOUTS and "\n" not in layout:
            raise ValueError(f"unknown layout {layout!r}; named layouts are {sorted(LAYOUTS)} (or pass a map string)")
        self.layout_name = layout if layout in LAYOUTS else "custom"
        grid = parse_layout(text)
        self.grid = grid
        free = np.argwhere(grid != "#")
        self.cells = free  # [N, 2] (row, col) of each non-wall cell
        index = -np.ones(grid.shape, np.int32)
        index[tuple(free.T)] = np.arange(len(free))
        # next_cell[c, a] for deterministic moves
        next_cell = np.zeros((len(free), 4), np.int32)
        for c, (r, col) in enumerate(free):
            for a, (dr, dc) in enumerate(MOVES):
                nr, nc = r + dr, col + dc
                inside = 0 <= nr < grid.shape[0] and 0 <= nc < grid.shape[1]
                next_cell[c, a] = index[nr, nc] if inside and grid[nr, nc] != "#" else c
        kinds = grid[tuple(free.T)]
        self.num_cells = len(free)
        self._next_cell = next_cell
        self._is_goal = kinds == "G"
        # [N, n_costs]: which cells pay each cost; W cells add a second cost signal.
        hazard_kinds = "HW" if (kinds == "W").any() else "H"
        self._is_hazard = np.stack([kinds == kind for kind in hazard_kinds], axis=-1)
        self.n_costs = len(hazard_kinds)
        self._starts = np.flatnonzero(kinds == "S").astype(np.int32)

    @property
    def name(self) -> str:
        return "SafeGridWorld" if self.layout_name == "routes" else f"SafeGridWorld[{self.layout_name}]"

    @property
    def default_params(self) -> GridParams:
        return GridParams()

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (self.num_cells,), jnp.float32)

    def action_space(self, params):
        return spaces.Discrete(4)

    def _obs(self, cell):
        return jax.nn.one_hot(cell, self.num_cells, dtype=jnp.float32)

    def reset(self, key, params):
        cell = jax.random.choice(key, jnp.asarray(self._starts))
        state = GridState(cell=cell.astype(jnp.int32), time=jnp.zeros((), jnp.int32))
        timestep = TimeStep(
            obs=self._obs(state.cell),
            reward=jnp.zeros((), jnp.float32),
            cost=jnp.zeros((self.n_costs,), jnp.float32),
            terminated=jnp.zeros((), bool),
            truncated=jnp.zeros((), bool),
            info={},
        )
        return state, timestep

    def step(self, key, state, action, params):
        slip_key, random_key = jax.random.split(key)
        random_action = jax.random.randint(random_key, (), 0, 4)
        action = jnp.where(jax.random.uniform(slip_key) < params.slip_prob, random_action, action)
        cell = jnp.asarray(self._next_cell)[state.cell, action]
        at_goal = jnp.asarray(self._is_goal)[cell]
        in_hazard = jnp.asarray(self._is_hazard)[cell]
        time = state.time + 1
        reward = params.step_reward + jnp.where(at_goal, params.goal_reward, 0.0)
        cost = jnp.where(in_hazard, params.hazard_cost, 0.0)  # [n_costs]
        truncated = jnp.logical_and(time >= params.max_steps, ~at_goal)
        timestep = TimeStep(
            obs=self._obs(cell),
            reward=jnp.asarray(reward, jnp.float32),
            cost=cost.astype(jnp.float32),
            terminated=at_goal,
            truncated=truncated,
            info={},
        )
        return GridState(cell=cell, time=time), timestep

    def to_tabular(self, params: GridParams | None = None) -> TabularMDP:
        """The exact model (time limit ignored): goal cells are terminal."""
        params = self.default_params if params is None else params
        n, num_actions = self.num_cells, 4
        transitions = np.zeros((n, num_actions, n))
        for c in range(n):
            if self._is_goal[c]:
                continue
            for a in range(num_actions):
                for actual in range(num_actions):
                    prob = (1 - params.slip_prob) * (actual == a) + params.slip_prob / num_actions
                    transitions[c, a, self._next_cell[c, actual]] += prob
        arrive_goal = transitions @ self._is_goal.astype(float)  # [S, A]
        arrive_hazard = transitions @ self._is_hazard.astype(float)  # [S, A, n_costs]
        live = ~self._is_goal
        rewards = (params.step_reward + params.goal_reward * arrive_goal) * live[:, None]
        costs = params.hazard_cost * arrive_hazard * live[:, None, None]
        initial = np.zeros(n)
        initial[self._starts] = 1.0 / len(self._starts)
        return TabularMDP(transitions, rewards, costs, initial, self._is_goal.copy())


#: (steps, hazards entered) of the undominated routes of the layouts with a closed-form optimum.
ROUTES: dict[str, tuple[tuple[int, int], ...]] = {
    "routes": ((6, 3), (8, 1), (12, 0)),
    "corridor": ((4, 3), (6, 0)),
}


def route_optimum(cost_limit: float, layout: str = "routes", params: GridParams | None = None):
    """Closed-form constrained optimum of a layout in :data:`ROUTES` (no slip, undiscounted).

    The achievable (episode cost, episode return) set is the convex hull of the routes' points; the optimum under
    ``cost_limit`` lies on its upper concave hull. Returns ``(episode_return, episode_cost, route_probs)`` with
    ``route_probs`` the probability of each route of ``ROUTES[layout]`` (at most two non-zero).
    """
    params = GridParams() if params is None else params
    routes = ROUTES[layout]
    points = [(hazards * params.hazard_cost, steps * params.step_reward + params.goal_reward)
              for steps, hazards in routes]
    order = sorted(range(len(points)), key=lambda i: points[i])
    hull: list[int] = []  # upper concave hull, by increasing cost
    for i in order:
        if hull and points[i][1] <= points[hull[-1]][1]:
            continue  # dominated: costs at least as much and pays no more
        while len(hull) >= 2:
            (c0, r0), (c1, r1), (c2, r2) = points[hull[-2]], points[hull[-1]], points[i]
            if (r1 - r0) * (c2 - c0) <= (r2 - r0) * (c1 - c0):
                hull.pop()  # not a vertex of the concave hull
            else:
                break
        hull.append(i)
    probs = np.zeros(len(routes))
    if cost_limit <= points[hull[0]][0]:
        probs[hull[0]] = 1.0
    elif cost_limit >= points[hull[-1]][0]:
        probs[hull[-1]] = 1.0
    else:
        for a, b in zip(hull, hull[1:]):
            if points[a][0] <= cost_limit <= points[b][0]:
                weight = (cost_limit - points[a][0]) / (points[b][0] - points[a][0])
                probs[a], probs[b] = 1.0 - weight, weight
                break
    episode_return = float(sum(p * r for p, (_, r) in zip(probs, points)))
    episode_cost = float(sum(p * c for p, (c, _) in zip(probs, points)))
    return episode_return, episode_cost, probs


def two_costs_optimum(cost_limits, params: GridParams | None = None):
    """Closed-form constrained optimum of the ``two_costs`` layout (no slip, undiscounted).

    Its halves are independent copies of ``routes`` (H hazards, then W hazards) joined by a 2-step junction,
    so each cost limit is met by :func:`route_optimum` of its own half. Returns
    ``(episode_return, episode_costs [2])``.
    """
    params = GridParams() if params is None else params
    limits = np.broadcast_to(np.asarray(cost_limits, np.float64), (2,))
    halves = [route_optimum(float(limit), "routes", params) for limit in limits]
    # route_optimum's return is goal_reward + steps * step_reward for a half; the goal is paid once overall.
    steps = sum(p @ np.array([s for s, _ in ROUTES["routes"]], np.float64) for _, _, p in halves) + 2
    return float(params.goal_reward + steps * params.step_reward), np.array([cost for _, cost, _ in halves])
