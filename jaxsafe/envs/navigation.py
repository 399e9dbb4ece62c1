"""Safety-Gym-style navigation in pure JAX: a point robot or a differential-drive car on a plane.

Everything (physics, layout sampling, pseudo-lidar) is a few dozen array operations, so a vmapped batch steps at
hundreds of thousands of environment steps per second on one CPU core (see ``docs/safety_suite.md``).

Robots (actions in ``[-1, 1]^2``, clipped; one step lasts ``params.dt`` seconds):

* ``point``: ``action = (thrust, turn)``. Thrust accelerates along the heading (``thrust_accel`` m/s^2 at full
  throttle), turn applies an angular acceleration (``turn_accel`` rad/s^2); linear and angular velocity are damped
  (``linear_damping``, ``angular_damping`` 1/s), so the top speed is ``thrust_accel / linear_damping`` m/s.
* ``car``: ``action = (left wheel, right wheel)``. The mean wheel command drives forwards, the difference turns;
  sideways slip decays at ``lateral_damping`` 1/s (wheels grip), so the car cannot move sideways like the point.

Tasks (the level sets the number and density of hazards, as in Safety-Gym; see ``LEVELS``):

* ``goal``: reach a goal disc (radius ``goal_size``). Reward per step is the distance progress towards the goal
  (m, times ``reward_distance``) plus ``reward_goal`` on reaching it, after which a new goal is sampled away from
  hazards, vases and the robot. Cost 1 on a step that ends inside a hazard (``hazard_distance <= hazard_size``).
  Level 1: 8 hazards and 1 vase in ``[-1.5, 1.5]^2``. Level 2: 10 hazards and 10 vases in ``[-2, 2]^2`` (Safety-Gym's
  Goal2): more hazards to route around and vases that block paths. Vases are static obstacles (the robot collides
  with them), observed by their own lidar, and cost nothing (as in Safety-Gym's Goal tasks).
* ``button``: press the goal button (one of 4) by touching it. Reward: progress towards the goal button plus
  ``reward_goal`` on pressing it; then another button becomes the goal and all buttons rest for
  ``button_resample_delay`` steps. Cost 1 on a step inside a hazard or touching a wrong button while buttons are
  active. Level 1: 4 hazards in ``[-1.5, 1.5]^2``; level 2: 8 hazards.
* ``circle``: run counter-clockwise around a circle of radius ``circle_radius`` centred at the origin. Reward
  ``(-u y + v x) / r / (1 + |r - circle_radius|)`` (Safety-Gymnasium's loop reward, ``(u, v)`` velocity, ``r``
  distance to the origin). Cost 1 on a step ending with ``|x| > wall_limit`` (level 1), or ``|x|`` or ``|y|``
  beyond it (level 2).
* ``run`` (Bullet-Safety-Gym): run towards +x along a corridor. Reward: x-progress / dt (m/s). Cost 1 on a step
  ending with ``|y| > corridor_half_width`` or speed above ``speed_limit`` m/s.

Observation (float32 vector), in this order:

====================  =====  ================================================================================
block                 size   meaning
====================  =====  ================================================================================
accelerometer         2      body-frame acceleration over the last step (m/s^2)
velocimeter           2      body-frame velocity (m/s)
gyro                  1      angular velocity (rad/s)
magnetometer          2      (cos heading, sin heading)
lidars                16 ea  per object group, pseudo-lidar as Safety-Gym: bin by ego-frame angle, value
                             ``max(0, lidar_max_dist - distance) / lidar_max_dist``, split into neighbouring bins
                             by the angle's position in the bin (aliasing)
task extras           ...    ``run``: lateral position y (m)
====================  =====  ================================================================================

Lidar groups: goal ``[goal, hazards, vases]``; button ``[goal button, buttons, hazards]``; circle ``[circle centre]``
(with ``lidar_max_dist = circle_lidar_max_dist``); run: none. ``env.observation_layout()`` returns the slices.

``TimeStep.info`` carries the quantities the costs compare, on reset and step alike (goal/button:
``hazard_distance`` (m, to the nearest hazard centre), ``in_hazard``; button also ``wrong_button_distance``,
``buttons_active``; circle: ``wall_distance`` = max(|x|[, |y|]); run: ``lateral_distance`` = |y|, ``speed``),
together with ``robot_position`` (2,) and task progress (``goal_distance``, ``goal_reached``).

Layouts are sampled from the reset key by sequential rejection sampling with a fixed number of candidates per
object (``PLACEMENT_CANDIDATES`` = 16; ``GOAL_CANDIDATES`` = 32 for a goal resampled mid-episode): each object takes
the first candidate that keeps ``keepout_a + keepout_b`` metres from every object already placed, or the candidate
with the largest clearance if none does (then a keepout may be violated; rare in the dense level 2 and never seen
in the tests' 512 layouts per level). The robot and the goal are placed first, and the robot keepout (0.4) or goal
keepout (0.305) plus the hazard keepout (0.18) exceed the hazard radius (0.2), so they start outside every hazard.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsafe.envs.core import SafeEnv, check_action, spaces
from jaxsafe.types import TimeStep

__all__ = [
    "ROBOTS",
    "TASKS",
    "LEVELS",
    "NavigationParams",
    "GoalParams",
    "ButtonParams",
    "CircleParams",
    "RunParams",
    "Body",
    "GoalEnv",
    "ButtonEnv",
    "CircleEnv",
    "RunEnv",
    "navigation_env",
    "pseudo_lidar",
    "robot_step",
    "sample_placements",
    "register_navigation",
    "NAVIGATION_TASKS",
]

ROBOTS = ("point", "car")
TASKS = ("goal", "button", "circle", "run")
PLACEMENT_CANDIDATES = 16  # per object at reset (the robot and the goal are placed first)
GOAL_CANDIDATES = 32  # for a goal resampled mid-episode among all the hazards and vases

#: Per task and level: the static counts that fix shapes, and the placement half-extent (m).
LEVELS: dict[str, dict[int, dict[str, Any]]] = {
    "goal": {1: dict(num_hazards=8, num_vases=1, extent=1.5), 2: dict(num_hazards=10, num_vases=10, extent=2.0)},
    "button": {1: dict(num_hazards=4, num_buttons=4, extent=1.5), 2: dict(num_hazards=8, num_buttons=4, extent=1.5)},
    "circle": {1: dict(walls_on_y=False), 2: dict(walls_on_y=True)},
    "run": {1: dict()},
}

#: Registered name -> (task, robot, level, description).
NAVIGATION_TASKS: dict[str, tuple[str, str, int, str]] = {
    "SafePointGoal1": ("goal", "point", 1, "point robot to goals; 8 hazards, 1 vase in 3x3 m; cost in hazard"),
    "SafePointGoal2": ("goal", "point", 2, "point robot to goals; 10 hazards, 10 vases in 4x4 m; cost in hazard"),
    "SafeCarGoal1": ("goal", "car", 1, "differential-drive car to goals; 8 hazards, 1 vase; cost in hazard"),
    "SafeCarGoal2": ("goal", "car", 2, "differential-drive car to goals; 10 hazards, 10 vases; cost in hazard"),
    "SafePointButton1": ("button", "point", 1, "press the goal button of 4; cost in hazard or on a wrong button"),
    "SafePointCircle": ("circle", "point", 1, "run around a circle; cost beyond the walls |x| > wall_limit"),
    "SafePointRun": ("run", "point", 1, "run along +x; cost outside the corridor or above the speed limit"),
}


# ----------------------------------------------------------------------------------------------------------------
# Params
# ----------------------------------------------------------------------------------------------------------------


@struct.dataclass
class NavigationParams:
    """Robot and episode settings shared by every navigation task (all may be traced and vmapped).

    Units: metres, seconds, radians. Defaults are the point robot's; the car's differ (see ``_ROBOT_DEFAULTS``).
    """

    max_steps: int = 1000  # episode length before truncation (steps)
    dt: float = 0.02  # seconds per step (Safety-Gym: 0.002 s x 10 frames)
    thrust_accel: float = 4.0  # m/s^2 at full forward command
    turn_accel: float = 30.0  # rad/s^2 at full turn command
    linear_damping: float = 4.0  # 1/s; top speed = thrust_accel / linear_damping
    angular_damping: float = 10.0  # 1/s; top turn rate = turn_accel / angular_damping
    lateral_damping: float = 0.0  # 1/s, decay of sideways slip (car only)
    robot_radius: float = 0.1  # m, for contacts with vases and buttons
    lidar_max_dist: float = 3.0  # m, lidar reads 0 beyond this distance


@struct.dataclass
class GoalParams(NavigationParams):
    goal_size: float = 0.3  # m, the goal is reached when the robot centre is this close
    hazard_size: float = 0.2  # m, cost when the robot centre is this close to a hazard centre
    vase_size: float = 0.1  # m, radius of a (static) vase
    reward_distance: float = 1.0  # reward per metre of progress towards the goal
    reward_goal: float = 1.0  # bonus on reaching the goal
    robot_keepout: float = 0.4  # m, placement clearance radii (Safety-Gym's keepouts)
    goal_keepout: float = 0.305
    hazard_keepout: float = 0.18
    vase_keepout: float = 0.15


@struct.dataclass
class ButtonParams(NavigationParams):
    button_size: float = 0.1  # m, radius of a button; pressed when touched
    hazard_size: float = 0.2
    reward_distance: float = 1.0
    reward_goal: float = 1.0
    button_resample_delay: int = 10  # steps during which buttons neither pay nor cost after a press
    robot_keepout: float = 0.4
    button_keepout: float = 0.2
    hazard_keepout: float = 0.18


@struct.dataclass
class CircleParams(NavigationParams):
    max_steps: int = 500  # Safety-Gymnasium's Circle episodes last 500 steps
    circle_radius: float = 1.5  # m
    wall_limit: float = 1.125  # m, cost when |x| (level 2: or |y|) exceeds it
    circle_lidar_max_dist: float = 6.0  # m
    start_extent: float = 0.8  # m, the robot starts uniformly in [-start_extent, start_extent]^2


@struct.dataclass
class RunParams(NavigationParams):
    max_steps: int = 500
    corridor_half_width: float = 1.0  # m, cost when |y| exceeds it
    speed_limit: float = 0.75  # m/s, cost when the planar speed exceeds it (top speed is 1 m/s)
    start_extent: float = 0.2  # m and rad: initial |y| and |heading| are uniform below this


_ROBOT_DEFAULTS = {
    "point": dict(),
    # Two wheels: less turn authority at speed, sideways slip killed quickly.
    "car": dict(thrust_accel=4.0, turn_accel=40.0, linear_damping=4.0, angular_damping=10.0, lateral_damping=20.0),
}

_POSITIVE_FIELDS = (
    "dt", "robot_radius", "lidar_max_dist", "goal_size", "hazard_size", "vase_size", "button_size",
    "circle_radius", "wall_limit", "circle_lidar_max_dist", "corridor_half_width", "speed_limit",
)
_NONNEGATIVE_FIELDS = (
    "thrust_accel", "turn_accel", "linear_damping", "angular_damping", "lateral_damping", "robot_keepout",
    "goal_keepout", "hazard_keepout", "vase_keepout", "button_keepout", "button_resample_delay", "start_extent",
)


#: Range rules of every navigation task's params (a task checks the fields its params have).
PARAM_RULES = {
    "max_steps": (lambda v: v >= 1, "an integer >= 1"),
    **{field: (lambda v: v > 0, "a finite number > 0") for field in _POSITIVE_FIELDS},
    **{field: (lambda v: v >= 0, "a finite number >= 0") for field in _NONNEGATIVE_FIELDS},
}


# ----------------------------------------------------------------------------------------------------------------
# Robot physics
# ----------------------------------------------------------------------------------------------------------------


class Body(NamedTuple):
    """Planar rigid body. Shapes for one environment."""

    position: jax.Array  # (2,) m, world frame
    heading: jax.Array  # () rad in [-pi, pi)
    velocity: jax.Array  # (2,) m/s, world frame
    angular_velocity: jax.Array  # () rad/s
    acceleration: jax.Array  # (2,) m/s^2, body frame, over the last step (accelerometer)


def _rotation(angle):
    """``(2, 2)`` matrix rotating body-frame vectors into the world frame."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.array([[c, -s], [s, c]])


def _wrap_angle(angle):
    return (angle + jnp.pi) % (2 * jnp.pi) - jnp.pi


def initial_body(position, heading) -> Body:
    zeros2 = jnp.zeros((2,), jnp.float32)
    return Body(
        position=jnp.asarray(position, jnp.float32),
        heading=jnp.asarray(heading, jnp.float32),
        velocity=zeros2,
        angular_velocity=jnp.zeros((), jnp.float32),
        acceleration=zeros2,
    )


def robot_step(robot: str, body: Body, action: jax.Array, params: NavigationParams) -> Body:
    """Advance ``body`` by one step of ``params.dt`` seconds under ``action`` (2,) in [-1, 1] (semi-implicit Euler).

    ``robot`` is static: ``"point"`` (thrust, turn) or ``"car"`` (left wheel, right wheel).
    """
    action = jnp.clip(action, -1.0, 1.0)
    dt = params.dt
    to_world = _rotation(body.heading)
    if robot == "point":
        thrust, turn = action[0], action[1]
        forward = to_world[:, 0]
        accel_world = params.thrust_accel * thrust * forward - params.linear_damping * body.velocity
        velocity = body.velocity + dt * accel_world
        angular_accel = params.turn_accel * turn - params.angular_damping * body.angular_velocity
    elif robot == "car":
        left, right = action[0], action[1]
        body_velocity = to_world.T @ body.velocity  # (forward, sideways)
        forward_speed = body_velocity[0] + dt * (
            params.thrust_accel * 0.5 * (left + right) - params.linear_damping * body_velocity[0]
        )
        sideways_speed = body_velocity[1] * (1.0 - dt * params.lateral_damping)
        velocity = to_world @ jnp.stack([forward_speed, sideways_speed])
        angular_accel = params.turn_accel * 0.5 * (right - left) - params.angular_damping * body.angular_velocity
    else:
        raise ValueError(f"robot must be one of {ROBOTS}, got {robot!r}")
    angular_velocity = body.angular_velocity + dt * angular_accel
    heading = _wrap_angle(body.heading + dt * angular_velocity)
    position = body.position + dt * velocity
    acceleration = _rotation(heading).T @ ((velocity - body.velocity) / dt)
    return Body(position, heading, velocity, angular_velocity, acceleration)


def resolve_collisions(body: Body, centres: jax.Array, radius, robot_radius) -> Body:
    """Push the robot out of static discs ``centres`` (K, 2) of ``radius`` m and remove the inward velocity."""
    offset = body.position[None, :] - centres  # (K, 2)
    distance = jnp.linalg.norm(offset, axis=-1)
    normal = offset / jnp.maximum(distance, 1e-6)[:, None]
    penetration = jnp.maximum(radius + robot_radius - distance, 0.0)  # (K,)
    touching = penetration > 0
    position = body.position + jnp.sum(normal * penetration[:, None], axis=0)
    inward = jnp.minimum(normal @ body.velocity, 0.0) * touching  # (K,) negative when moving into a disc
    velocity = body.velocity - jnp.sum(normal * inward[:, None], axis=0)
    return body._replace(position=position, velocity=velocity)


def proprioception(body: Body) -> jax.Array:
    """``(7,)``: accelerometer (2, body frame), velocimeter (2, body frame), gyro (1), magnetometer (cos, sin)."""
    body_velocity = _rotation(body.heading).T @ body.velocity
    return jnp.concatenate(
        [
            body.acceleration,
            body_velocity,
            body.angular_velocity[None],
            jnp.stack([jnp.cos(body.heading), jnp.sin(body.heading)]),
        ]
    ).astype(jnp.float32)


def pseudo_lidar(body: Body, objects: jax.Array, num_bins: int, max_dist) -> jax.Array:
    """Safety-Gym's pseudo-lidar of ``objects`` (K, 2) seen from ``body``: ``(num_bins,)`` in [0, 1].

    Bin ``i`` covers ego-frame angles ``[i, i + 1) * 2 pi / num_bins`` (0 = straight ahead, counter-clockwise). An
    object at distance ``d`` reads ``max(0, max_dist - d) / max_dist`` in its bin, and that value times the angle's
    fractional position in the bin (``alias``) in the next bin and times ``1 - alias`` in the previous one. Each bin
    keeps the maximum over objects.
    """
    ego = (objects - body.position[None, :]) @ _rotation(body.heading)  # (K, 2) = R^T (p - x) row-wise
    distance = jnp.linalg.norm(ego, axis=-1)
    angle = jnp.arctan2(ego[:, 1], ego[:, 0]) % (2 * jnp.pi)
    bin_size = 2 * jnp.pi / num_bins
    position_in_bins = angle / bin_size
    bin_index = jnp.clip(jnp.floor(position_in_bins).astype(jnp.int32), 0, num_bins - 1)
    alias = jnp.clip(position_in_bins - bin_index, 0.0, 1.0)
    sensor = jnp.maximum(max_dist - distance, 0.0) / max_dist  # (K,)
    bins = jnp.arange(num_bins)

    def spread(index, value):  # (K,) -> (K, num_bins)
        return jnp.where(bins[None, :] == (index % num_bins)[:, None], value[:, None], 0.0)

    readings = jnp.maximum(
        spread(bin_index, sensor),
        jnp.maximum(spread(bin_index + 1, alias * sensor), spread(bin_index - 1, (1.0 - alias) * sensor)),
    )
    return jnp.max(readings, axis=0).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------------------------


def _hash32(x: jax.Array) -> jax.Array:
    """A cheap, well-mixed 32-bit integer hash ("lowbias32": xor-shift-multiply), uint32 -> uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def uniform_points(key: jax.Array, shape: tuple[int, ...], extent) -> tuple[jax.Array, jax.Array]:
    """``(x, y)``, each of ``shape``, uniform in ``[-extent, extent]`` on a 2^16 grid (a 61 um step at 2 m).

    Layout sampling runs inside every auto-reset, and threefry costs ~15 ns a word on CPU; so one threefry word
    seeds a counter-based integer hash that makes the rest, and each 32-bit word gives both coordinates.
    """
    seed = jax.random.bits(key, (), jnp.uint32)
    counter = jnp.arange(int(np.prod(shape)), dtype=jnp.uint32).reshape(shape)
    bits = _hash32(_hash32(seed) ^ (counter * jnp.uint32(0x9E3779B9)))
    scale = 2.0 * extent / 65536.0
    x = ((bits >> 16).astype(jnp.float32) + 0.5) * scale - extent
    y = ((bits & jnp.uint32(0xFFFF)).astype(jnp.float32) + 0.5) * scale - extent
    return x, y


def _choose_candidate(x, y, squared_clearance):
    """The first candidate with non-negative clearance, else the one with the largest clearance: ``(x, y)``.

    Written as a max-reduce and a masked sum (no argmax, no gather): both are slow under vmap on CPU.
    """
    num_candidates = x.shape[-1]
    score = jnp.where(
        squared_clearance >= 0.0, 1e6 - jnp.arange(num_candidates, dtype=jnp.float32), squared_clearance
    )
    selected = (score == jnp.max(score)).astype(jnp.float32)
    selected = selected / jnp.sum(selected)  # ties have probability zero; this keeps the result a point anyway
    return jnp.sum(selected * x), jnp.sum(selected * y)


def sample_placements(
    key: jax.Array,
    keepouts: jax.Array,
    extent,
    num_candidates: int = PLACEMENT_CANDIDATES,
) -> jax.Array:
    """Sequentially place ``N`` objects in ``[-extent, extent]^2``: ``(N, 2)`` positions (m).

    Object ``i`` needs ``|p_i - p_j| >= keepouts[i] + keepouts[j]`` for every ``j < i``; it takes the first of
    ``num_candidates`` uniform candidates that satisfies this, or the one with the largest (squared) clearance if
    none does. Each of the ``N`` loop iterations measures ``num_candidates x N`` distances with the not-yet-placed
    objects masked out (a rolled loop compiles in a fraction of the time of an unrolled one, and runs faster).
    """
    num_objects = keepouts.shape[0]
    candidates_x, candidates_y = uniform_points(key, (num_objects, num_candidates), extent)
    object_index = jnp.arange(num_objects)

    def place(i, placed):
        placed_x, placed_y = placed
        squared_distance = jnp.square(candidates_x[i][:, None] - placed_x[None, :]) + jnp.square(
            candidates_y[i][:, None] - placed_y[None, :]
        )  # (C, N)
        squared_clearance = squared_distance - jnp.square(keepouts[i] + keepouts)[None, :]
        squared_clearance = jnp.min(jnp.where(object_index[None, :] < i, squared_clearance, jnp.inf), axis=1)
        x, y = _choose_candidate(candidates_x[i], candidates_y[i], squared_clearance)
        return placed_x.at[i].set(x), placed_y.at[i].set(y)

    zeros = jnp.zeros((num_objects,), jnp.float32)
    placed_x, placed_y = jax.lax.fori_loop(0, num_objects, place, (zeros, zeros))
    return jnp.stack([placed_x, placed_y], axis=-1)


def sample_free_position(key, obstacles, obstacle_keepouts, keepout, extent, num_candidates=GOAL_CANDIDATES):
    """One position (2,) in ``[-extent, extent]^2`` at least ``keepout + obstacle_keepouts[j]`` from every
    obstacle ``obstacles[j]`` (K, 2), by the same capped rejection sampling as :func:`sample_placements`."""
    x, y = uniform_points(key, (num_candidates,), extent)
    squared_distance = jnp.square(x[:, None] - obstacles[None, :, 0]) + jnp.square(y[:, None] - obstacles[None, :, 1])
    squared_clearance = jnp.min(squared_distance - jnp.square(keepout + obstacle_keepouts)[None, :], axis=1)
    return jnp.stack(_choose_candidate(x, y, squared_clearance))


def _min_distance(position, centres):
    return jnp.min(jnp.linalg.norm(centres - position[None, :], axis=-1))


# ----------------------------------------------------------------------------------------------------------------
# Environments
# ----------------------------------------------------------------------------------------------------------------


class _NavigationEnv(SafeEnv):
    """Shared plumbing: robot choice, level lookup, spaces, validation."""

    task: str = ""
    params_cls: type = NavigationParams

    def __init__(self, robot: str = "point", level: int = 1, num_lidar_bins: int = 16):
        if robot not in ROBOTS:
            raise ValueError(f"robot must be one of {ROBOTS}, got {robot!r}")
        levels = LEVELS[self.task]
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or int(level) not in levels:
            raise ValueError(f"{self.task}: level must be one of {sorted(levels)}, got {level!r}")
        if not isinstance(num_lidar_bins, (int, np.integer)) or num_lidar_bins < 3:
            raise ValueError(f"num_lidar_bins must be an integer >= 3, got {num_lidar_bins!r}")
        self.robot = robot
        self.level = int(level)
        self.layout = dict(levels[self.level])
        self.num_lidar_bins = int(num_lidar_bins)

    @property
    def name(self) -> str:
        suffix = "" if self.task in ("circle", "run") and self.level == 1 else str(self.level)
        return f"Safe{self.robot.capitalize()}{self.task.capitalize()}{suffix}"

    @property
    def default_params(self):
        return self.params_cls(**_ROBOT_DEFAULTS[self.robot])

    def observation_layout(self) -> dict[str, slice]:
        """Name -> slice of the observation vector."""
        layout, start = {}, 0
        for block, size in [("accelerometer", 2), ("velocimeter", 2), ("gyro", 1), ("magnetometer", 2)]:
            layout[block] = slice(start, start + size)
            start += size
        for group in self._lidar_groups():
            layout[f"{group}_lidar"] = slice(start, start + self.num_lidar_bins)
            start += self.num_lidar_bins
        for extra, size in self._extras():
            layout[extra] = slice(start, start + size)
            start += size
        return layout

    def _lidar_groups(self) -> list[str]:
        return []

    def _extras(self) -> list[tuple[str, int]]:
        return []

    @property
    def observation_size(self) -> int:
        return max(s.stop for s in self.observation_layout().values())

    def observation_space(self, params):
        return spaces.Box(-jnp.inf, jnp.inf, (self.observation_size,), jnp.float32)

    def action_space(self, params):
        return spaces.Box(-1.0, 1.0, (2,), jnp.float32)

    param_rules = PARAM_RULES

    def check_params(self, params):
        """The field ranges of :data:`PARAM_RULES`, and ``dt * damping < 1`` (explicit integration is stable)."""
        super().check_params(params)
        damping = [params.linear_damping, params.angular_damping, params.lateral_damping]
        if not any(isinstance(v, jax.core.Tracer) for v in [params.dt, *damping]):
            if np.any(np.asarray(params.dt) * np.max(np.stack([np.asarray(d) for d in damping]), axis=0) >= 1.0):
                raise ValueError(f"{self.name}: params.dt * damping must be < 1 for stable integration, "
                                 f"got dt={params.dt!r}")

    def _check(self, params, action=None):
        self.check_params(params)
        if action is not None:
            check_action(self, action, params)

    def _timestep(self, obs, reward, cost, time, params, info, terminated=None):
        return TimeStep(
            obs=obs,
            reward=jnp.asarray(reward, jnp.float32).reshape(()),
            cost=jnp.asarray(cost, jnp.float32).reshape((1,)),
            terminated=jnp.zeros((), bool) if terminated is None else terminated,
            truncated=time >= params.max_steps,
            info=info,
        )

    def __repr__(self):
        return f"{type(self).__name__}(robot={self.robot!r}, level={self.level})"


class GoalState(NamedTuple):
    body: Body
    goal: jax.Array  # (2,) m
    hazards: jax.Array  # (H, 2) m
    vases: jax.Array  # (V, 2) m
    last_goal_distance: jax.Array  # () m
    time: jax.Array  # () int32 steps taken


class GoalEnv(_NavigationEnv):
    """Safety-Gym Goal: reach goals, avoid hazards (cost), vases block the way. See the module docstring."""

    task = "goal"
    params_cls = GoalParams

    def _lidar_groups(self):
        return ["goal", "hazards", "vases"]

    def _obstacles(self, state: GoalState, params: GoalParams):
        """Objects a new goal must keep clear of, and their keepouts."""
        num_h, num_v = self.layout["num_hazards"], self.layout["num_vases"]
        centres = jnp.concatenate([state.body.position[None], state.hazards, state.vases])
        keepouts = jnp.concatenate(
            [
                jnp.full((1,), params.robot_keepout),
                jnp.full((num_h,), params.hazard_keepout),
                jnp.full((num_v,), params.vase_keepout),
            ]
        )
        return centres, keepouts

    def _observe(self, state: GoalState, params: GoalParams):
        lidar = lambda objects: pseudo_lidar(state.body, objects, self.num_lidar_bins, params.lidar_max_dist)
        return jnp.concatenate(
            [proprioception(state.body), lidar(state.goal[None]), lidar(state.hazards), lidar(state.vases)]
        )

    def _info(self, state: GoalState, params: GoalParams, goal_reached):
        hazard_distance = _min_distance(state.body.position, state.hazards)
        return {
            "hazard_distance": hazard_distance,
            "in_hazard": hazard_distance <= params.hazard_size,
            "goal_distance": state.last_goal_distance,
            "goal_reached": goal_reached,
            "robot_position": state.body.position,
        }

    def reset(self, key, params):
        self._check(params)
        num_h, num_v = self.layout["num_hazards"], self.layout["num_vases"]
        key_layout, key_heading = jax.random.split(key)
        keepouts = jnp.concatenate(
            [
                jnp.stack([params.robot_keepout, params.goal_keepout]).astype(jnp.float32),
                jnp.full((num_h,), params.hazard_keepout, jnp.float32),
                jnp.full((num_v,), params.vase_keepout, jnp.float32),
            ]
        )
        positions = sample_placements(key_layout, keepouts, self.layout["extent"])
        heading = jax.random.uniform(key_heading, (), jnp.float32, -jnp.pi, jnp.pi)
        body = initial_body(positions[0], heading)
        goal = positions[1]
        state = GoalState(
            body=body,
            goal=goal,
            hazards=positions[2 : 2 + num_h],
            vases=positions[2 + num_h :],
            last_goal_distance=jnp.linalg.norm(goal - body.position),
            time=jnp.zeros((), jnp.int32),
        )
        info = self._info(state, params, jnp.zeros((), bool))
        return state, self._timestep(self._observe(state, params), 0.0, 0.0, state.time, params, info)

    def step(self, key, state: GoalState, action, params):
        self._check(params, action)
        body = robot_step(self.robot, state.body, action, params)
        body = resolve_collisions(body, state.vases, params.vase_size, params.robot_radius)
        goal_distance = jnp.linalg.norm(state.goal - body.position)
        goal_reached = goal_distance <= params.goal_size
        reward = (state.last_goal_distance - goal_distance) * params.reward_distance + jnp.where(
            goal_reached, params.reward_goal, 0.0
        )
        moved = state._replace(body=body)
        centres, keepouts = self._obstacles(moved, params)
        new_goal = sample_free_position(key, centres, keepouts, params.goal_keepout, self.layout["extent"])
        goal = jnp.where(goal_reached, new_goal, state.goal)
        next_state = GoalState(
            body=body,
            goal=goal,
            hazards=state.hazards,
            vases=state.vases,
            last_goal_distance=jnp.linalg.norm(goal - body.position),
            time=state.time + 1,
        )
        info = self._info(next_state, params, goal_reached)
        cost = info["in_hazard"].astype(jnp.float32)
        obs = self._observe(next_state, params)
        return next_state, self._timestep(obs, reward, cost, next_state.time, params, info)


class ButtonState(NamedTuple):
    body: Body
    buttons: jax.Array  # (B, 2) m
    goal_button: jax.Array  # () int32 index into buttons
    hazards: jax.Array  # (H, 2) m
    button_timer: jax.Array  # () int32 steps until buttons are active again (0 = active)
    last_goal_distance: jax.Array  # () m
    time: jax.Array  # () int32


class ButtonEnv(_NavigationEnv):
    """Safety-Gym Button: touch the goal button; hazards and wrong buttons cost. See the module docstring."""

    task = "button"
    params_cls = ButtonParams

    def _lidar_groups(self):
        return ["goal", "buttons", "hazards"]

    def _observe(self, state: ButtonState, params):
        lidar = lambda objects: pseudo_lidar(state.body, objects, self.num_lidar_bins, params.lidar_max_dist)
        goal = state.buttons[state.goal_button]
        return jnp.concatenate(
            [proprioception(state.body), lidar(goal[None]), lidar(state.buttons), lidar(state.hazards)]
        )

    def _button_distances(self, state: ButtonState):
        """(goal button distance, nearest wrong button distance), m."""
        distance = jnp.linalg.norm(state.buttons - state.body.position[None, :], axis=-1)
        is_goal = jnp.arange(distance.shape[0]) == state.goal_button
        return distance[state.goal_button], jnp.min(jnp.where(is_goal, jnp.inf, distance))

    def _info(self, state: ButtonState, params, goal_reached, wrong_button_distance, buttons_active):
        hazard_distance = _min_distance(state.body.position, state.hazards)
        return {
            "hazard_distance": hazard_distance,
            "in_hazard": hazard_distance <= params.hazard_size,
            "wrong_button_distance": wrong_button_distance,
            "buttons_active": buttons_active,
            "goal_distance": state.last_goal_distance,
            "goal_reached": goal_reached,
            "robot_position": state.body.position,
        }

    def reset(self, key, params):
        self._check(params)
        num_b, num_h = self.layout["num_buttons"], self.layout["num_hazards"]
        key_layout, key_heading, key_goal = jax.random.split(key, 3)
        keepouts = jnp.concatenate(
            [
                jnp.full((1,), params.robot_keepout, jnp.float32),
                jnp.full((num_b,), params.button_keepout, jnp.float32),
                jnp.full((num_h,), params.hazard_keepout, jnp.float32),
            ]
        )
        positions = sample_placements(key_layout, keepouts, self.layout["extent"])
        heading = jax.random.uniform(key_heading, (), jnp.float32, -jnp.pi, jnp.pi)
        body = initial_body(positions[0], heading)
        goal_button = jax.random.randint(key_goal, (), 0, num_b, jnp.int32)
        buttons = positions[1 : 1 + num_b]
        state = ButtonState(
            body=body,
            buttons=buttons,
            goal_button=goal_button,
            hazards=positions[1 + num_b :],
            button_timer=jnp.zeros((), jnp.int32),
            last_goal_distance=jnp.linalg.norm(buttons[goal_button] - body.position),
            time=jnp.zeros((), jnp.int32),
        )
        _, wrong_distance = self._button_distances(state)
        info = self._info(state, params, jnp.zeros((), bool), wrong_distance, jnp.ones((), bool))
        return state, self._timestep(self._observe(state, params), 0.0, 0.0, state.time, params, info)

    def step(self, key, state: ButtonState, action, params):
        self._check(params, action)
        num_b = self.layout["num_buttons"]
        body = robot_step(self.robot, state.body, action, params)
        moved = state._replace(body=body)
        goal_distance, wrong_distance = self._button_distances(moved)
        touch = params.robot_radius + params.button_size
        buttons_active = state.button_timer == 0
        goal_reached = jnp.logical_and(buttons_active, goal_distance <= touch)
        wrong_pressed = jnp.logical_and(buttons_active, wrong_distance <= touch)
        reward = (state.last_goal_distance - goal_distance) * params.reward_distance + jnp.where(
            goal_reached, params.reward_goal, 0.0
        )
        # A new goal button, uniform over the others: shift the index by 1..B-1.
        shift = jax.random.randint(key, (), 1, num_b, jnp.int32)
        goal_button = jnp.where(goal_reached, (state.goal_button + shift) % num_b, state.goal_button)
        timer = jnp.where(goal_reached, params.button_resample_delay, jnp.maximum(state.button_timer - 1, 0))
        next_state = ButtonState(
            body=body,
            buttons=state.buttons,
            goal_button=goal_button,
            hazards=state.hazards,
            button_timer=jnp.asarray(timer, jnp.int32),
            last_goal_distance=jnp.linalg.norm(state.buttons[goal_button] - body.position),
            time=state.time + 1,
        )
        info = self._info(next_state, params, goal_reached, wrong_distance, buttons_active)
        cost = jnp.logical_or(info["in_hazard"], wrong_pressed).astype(jnp.float32)
        obs = self._observe(next_state, params)
        return next_state, self._timestep(obs, reward, cost, next_state.time, params, info)


class PlanarState(NamedTuple):
    body: Body
    time: jax.Array  # () int32


class CircleEnv(_NavigationEnv):
    """Safety-Gymnasium Circle: loop around the origin, stay between the walls. See the module docstring."""

    task = "circle"
    params_cls = CircleParams

    def _lidar_groups(self):
        return ["circle"]

    def _observe(self, state: PlanarState, params):
        centre = jnp.zeros((1, 2), jnp.float32)
        lidar = pseudo_lidar(state.body, centre, self.num_lidar_bins, params.circle_lidar_max_dist)
        return jnp.concatenate([proprioception(state.body), lidar])

    def _info(self, state: PlanarState, params):
        position = state.body.position
        wall_distance = jnp.abs(position[0])
        if self.layout["walls_on_y"]:
            wall_distance = jnp.maximum(wall_distance, jnp.abs(position[1]))
        return {
            "wall_distance": wall_distance,
            "outside_walls": wall_distance > params.wall_limit,
            "robot_position": position,
        }

    def reset(self, key, params):
        self._check(params)
        key_position, key_heading = jax.random.split(key)
        position = jax.random.uniform(
            key_position, (2,), jnp.float32, -params.start_extent, params.start_extent
        )
        heading = jax.random.uniform(key_heading, (), jnp.float32, -jnp.pi, jnp.pi)
        state = PlanarState(initial_body(position, heading), jnp.zeros((), jnp.int32))
        return state, self._timestep(
            self._observe(state, params), 0.0, 0.0, state.time, params, self._info(state, params)
        )

    def step(self, key, state: PlanarState, action, params):
        self._check(params, action)
        body = robot_step(self.robot, state.body, action, params)
        x, y = body.position[0], body.position[1]
        u, v = body.velocity[0], body.velocity[1]
        radius = jnp.linalg.norm(body.position)
        reward = (-u * y + v * x) / jnp.maximum(radius, 1e-6) / (1.0 + jnp.abs(radius - params.circle_radius))
        next_state = PlanarState(body, state.time + 1)
        info = self._info(next_state, params)
        cost = info["outside_walls"].astype(jnp.float32)
        return next_state, self._timestep(
            self._observe(next_state, params), reward, cost, next_state.time, params, info
        )


class RunEnv(_NavigationEnv):
    """Bullet-Safety-Gym Run: go fast along +x, inside the corridor and under the speed limit."""

    task = "run"
    params_cls = RunParams

    def _extras(self):
        return [("lateral_position", 1)]

    def _observe(self, state: PlanarState, params):
        return jnp.concatenate([proprioception(state.body), state.body.position[1:2]])

    def _info(self, state: PlanarState, params):
        lateral = jnp.abs(state.body.position[1])
        speed = jnp.linalg.norm(state.body.velocity)
        return {
            "lateral_distance": lateral,
            "speed": speed,
            "outside_corridor": lateral > params.corridor_half_width,
            "over_speed_limit": speed > params.speed_limit,
            "robot_position": state.body.position,
        }

    def reset(self, key, params):
        self._check(params)
        key_y, key_heading = jax.random.split(key)
        y = jax.random.uniform(key_y, (), jnp.float32, -params.start_extent, params.start_extent)
        heading = jax.random.uniform(key_heading, (), jnp.float32, -params.start_extent, params.start_extent)
        state = PlanarState(initial_body(jnp.stack([jnp.zeros_like(y), y]), heading), jnp.zeros((), jnp.int32))
        return state, self._timestep(
            self._observe(state, params), 0.0, 0.0, state.time, params, self._info(state, params)
        )

    def step(self, key, state: PlanarState, action, params):
        self._check(params, action)
        body = robot_step(self.robot, state.body, action, params)
        reward = (body.position[0] - state.body.position[0]) / params.dt
        next_state = PlanarState(body, state.time + 1)
        info = self._info(next_state, params)
        cost = jnp.logical_or(info["outside_corridor"], info["over_speed_limit"]).astype(jnp.float32)
        return next_state, self._timestep(
            self._observe(next_state, params), reward, cost, next_state.time, params, info
        )


_TASK_CLASSES = {"goal": GoalEnv, "button": ButtonEnv, "circle": CircleEnv, "run": RunEnv}


def navigation_env(task: str = "goal", robot: str = "point", level: int = 1, num_lidar_bins: int = 16):
    """Build a navigation task. Raises ``ValueError`` naming the allowed tasks, robots or levels."""
    if task not in _TASK_CLASSES:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return _TASK_CLASSES[task](robot=robot, level=level, num_lidar_bins=num_lidar_bins)


def register_navigation() -> list[str]:
    """Register every task of ``NAVIGATION_TASKS`` (idempotent: names already registered are skipped)."""
    from jaxsafe.envs import registry

    existing = set(registry.list_envs())
    for name, (task, robot, level, description) in NAVIGATION_TASKS.items():
        if name not in existing:
            registry.register(name, navigation_env, description, task=task, robot=robot, level=level)
    return list(NAVIGATION_TASKS)
