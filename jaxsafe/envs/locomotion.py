"""Velocity-constrained brax locomotion with Safety-Gymnasium's (v1) velocity costs.

``BraxSafeEnv`` adapts any brax ``PipelineEnv`` to the :class:`~jaxsafe.envs.core.SafeEnv` contract: it calls the
raw ``reset``/``step`` of the brax environment (never brax's ``EpisodeWrapper``/``AutoResetWrapper``; jaxsafe's
``AutoReset`` and ``EpisodeStats`` do that job), keeps the step count in its own state for truncation at
``params.max_steps``, and takes ``terminated`` from brax's ``done`` (the healthy checks of Hopper, Walker2d, Ant
and Humanoid; HalfCheetah and Swimmer never terminate).

The velocity tasks (cost 1 on a step whose velocity exceeds the threshold, else 0):

========================  ===========  ===================================================================
task                      threshold    velocity compared (m/s)
========================  ===========  ===================================================================
SafeHalfCheetahVelocity   3.2096       signed x-velocity of the torso
SafeHopperVelocity        0.7402       signed x-velocity of the torso
SafeWalker2dVelocity      2.3415       signed x-velocity of the torso
SafeSwimmerVelocity       0.2282       signed x-velocity of the tip (root slide joint)
SafeAntVelocity           2.6222       planar speed ``sqrt(vx^2 + vy^2)`` of the torso
SafeHumanoidVelocity      1.4149       planar speed ``sqrt(vx^2 + vy^2)`` of the centre of mass
========================  ===========  ===================================================================

This follows Safety-Gymnasium's *code* (``safety_gymnasium/tasks/safe_velocity/*_velocity_v1.py``), not its
documentation (which speaks of a speed for every body): the 1-D bodies compare the signed x-velocity, so running
backwards is never penalised, and Ant and Humanoid compare the planar speed.

The velocity is the position change over the control step divided by ``dt`` -- exactly what Safety-Gymnasium
computes (``(x_after - x_before) / dt``) and also what brax's own environments already report in
``metrics['x_velocity']`` / ``metrics['y_velocity']`` (torso body position for HalfCheetah/Hopper/Walker2d/Ant, the
root joint for Swimmer, the centre of mass for Humanoid). We read those metrics rather than ``qd``: an
instantaneous joint velocity at the end of the step differs from the step-averaged one that Safety-Gymnasium and the
reward use, and reading the metrics keeps the adapter independent of the backend's state layout. ``info`` carries
``velocity`` (the compared quantity), ``x_velocity`` and, for Ant and Humanoid, ``y_velocity``.

The thresholds are Safety-Gymnasium's (50% of the speed PPO reaches on the MuJoCo tasks). brax's bodies, gears and
time steps differ slightly from Gymnasium's MuJoCo models, so the same threshold is not exactly the same difficulty.

Backends: every task takes ``backend=`` (brax's ``generalized``, ``positional``, ``spring`` or ``mjx``; Swimmer only
supports ``generalized``). The default, ``generalized``, was chosen by measuring CPU throughput
(``benchmarks/env_throughput.py``, ``docs/safety_suite.md``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsafe.envs.core import SafeEnv, check_action, spaces
from jaxsafe.types import TimeStep

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "VELOCITY_THRESHOLDS",
    "LOCOMOTION_TASKS",
    "BraxState",
    "BraxSafeEnv",
    "VelocityParams",
    "velocity_env",
    "register_locomotion",
]

BACKENDS = ("generalized", "positional", "spring", "mjx")
DEFAULT_BACKEND = "generalized"

#: Safety-Gymnasium v1 velocity thresholds (m/s), keyed by brax environment name.
VELOCITY_THRESHOLDS: dict[str, float] = {
    "halfcheetah": 3.2096,
    "hopper": 0.7402,
    "walker2d": 2.3415,
    "ant": 2.6222,
    "humanoid": 1.4149,
    "swimmer": 0.2282,
}
_PLANAR_SPEED = ("ant", "humanoid")
#: brax environments that only implement some backends.
_SUPPORTED_BACKENDS = {"swimmer": ("generalized",)}

#: Registered name -> brax environment name.
LOCOMOTION_TASKS: dict[str, str] = {
    "SafeHalfCheetahVelocity": "halfcheetah",
    "SafeHopperVelocity": "hopper",
    "SafeWalker2dVelocity": "walker2d",
    "SafeAntVelocity": "ant",
    "SafeHumanoidVelocity": "humanoid",
    "SafeSwimmerVelocity": "swimmer",
}


@struct.dataclass
class VelocityParams:
    """Traced settings of a velocity task.

    Attributes:
      velocity_threshold: m/s; cost 1 on a step whose compared velocity exceeds it. Must be finite and > 0.
      max_steps: episode length before truncation (steps of ``dt`` seconds).
    """

    velocity_threshold: float = 1.0
    max_steps: int = 1000


class BraxState(NamedTuple):
    brax_state: Any  # brax.envs.State: pipeline_state, obs, reward, done, metrics, info
    time: jax.Array  # () int32 steps taken in this episode


InfoFn = Callable[[Any, Any], dict]
CostFn = Callable[[Any, Any, Any], jax.Array]


class BraxSafeEnv(SafeEnv):
    """Adapter: a brax ``PipelineEnv`` plus a cost function becomes a :class:`SafeEnv`.

    Args:
      brax_env: the raw brax environment (no brax training wrappers).
      cost_fn: ``cost_fn(next_brax_state, params) -> (n_costs,)`` non-negative costs of the step that produced
        ``next_brax_state``.
      info_fn: ``info_fn(brax_state, params) -> dict`` of arrays for ``TimeStep.info``; called on the reset state
        too, so it must give the same keys and shapes there.
      name: the registered name.
      default_params: a flax dataclass with at least ``max_steps``.
      validate_params: optional ``validate_params(params)`` raising ``ValueError``; run on concrete params in
        ``reset`` and ``step`` (skipped for traced params).
      n_costs: length of the cost vector.
    """

    def __init__(
        self,
        brax_env,
        cost_fn: CostFn,
        info_fn: InfoFn,
        *,
        name: str,
        default_params: Any,
        validate_params: Callable[[Any], None] | None = None,
        n_costs: int = 1,
    ):
        self._brax_env = brax_env
        self._cost_fn = cost_fn
        self._info_fn = info_fn
        self._name = name
        self._default_params = default_params
        self._validate_params = validate_params or (lambda params: None)
        self.n_costs = n_costs
        self._observation_size: int | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def brax_env(self):
        return self._brax_env

    @property
    def backend(self) -> str:
        return self._brax_env.backend

    @property
    def dt(self) -> float:
        return float(self._brax_env.dt)

    @property
    def default_params(self):
        return self._default_params

    @property
    def observation_size(self) -> int:
        """Length of the observation vector, from the shapes of a traced reset (brax's own property runs a reset)."""
        if self._observation_size is None:
            shapes = jax.eval_shape(self._brax_env.reset, jax.random.key(0))
            self._observation_size = int(shapes.obs.shape[-1])
        return self._observation_size

    def observation_space(self, params):
        return spaces.Box(-jnp.inf, jnp.inf, (self.observation_size,), jnp.float32)

    def action_space(self, params):
        return spaces.Box(-1.0, 1.0, (self._brax_env.action_size,), jnp.float32)

    param_rules = {"max_steps": (lambda v: v >= 1, "an integer >= 1")}

    def check_params(self, params):
        super().check_params(params)
        self._validate_params(params)

    def reset(self, key, params):
        self.check_params(params)
        brax_state = self._brax_env.reset(key)
        timestep = TimeStep(
            obs=brax_state.obs.astype(jnp.float32),
            reward=jnp.zeros((), jnp.float32),
            cost=jnp.zeros((self.n_costs,), jnp.float32),
            terminated=jnp.zeros((), bool),
            truncated=jnp.zeros((), bool),
            info=self._info_fn(brax_state, params),
        )
        return BraxState(brax_state, jnp.zeros((), jnp.int32)), timestep

    def step(self, key, state: BraxState, action, params):
        # brax's step is deterministic given the state; the key is unused (kept for the contract).
        self.check_params(params)
        check_action(self, action, params)
        brax_state = self._brax_env.step(state.brax_state, action)
        time = state.time + 1
        terminated = brax_state.done > 0.5
        truncated = jnp.logical_and(time >= params.max_steps, jnp.logical_not(terminated))
        cost = jnp.asarray(self._cost_fn(brax_state, params), jnp.float32).reshape(self.n_costs)
        timestep = TimeStep(
            obs=brax_state.obs.astype(jnp.float32),
            reward=jnp.asarray(brax_state.reward, jnp.float32).reshape(()),
            cost=cost,
            terminated=terminated,
            truncated=truncated,
            info=self._info_fn(brax_state, params),
        )
        return BraxState(brax_state, time), timestep


# ----------------------------------------------------------------------------------------------------------------
# Velocity tasks
# ----------------------------------------------------------------------------------------------------------------


def _compared_velocity(robot: str, metrics: dict) -> jax.Array:
    """The velocity Safety-Gymnasium compares (m/s): planar speed for Ant/Humanoid, signed x-velocity otherwise."""
    x_velocity = jnp.asarray(metrics["x_velocity"], jnp.float32)
    if robot in _PLANAR_SPEED:
        return jnp.hypot(x_velocity, jnp.asarray(metrics["y_velocity"], jnp.float32))
    return x_velocity


def _velocity_info_fn(robot: str) -> InfoFn:
    def info_fn(brax_state, params):
        metrics = brax_state.metrics
        info = {
            "velocity": _compared_velocity(robot, metrics),
            "x_velocity": jnp.asarray(metrics["x_velocity"], jnp.float32),
        }
        if robot in _PLANAR_SPEED:
            info["y_velocity"] = jnp.asarray(metrics["y_velocity"], jnp.float32)
        return info

    return info_fn


def _velocity_cost_fn(robot: str) -> CostFn:
    def cost_fn(brax_state, params):
        return (_compared_velocity(robot, brax_state.metrics) > params.velocity_threshold).astype(jnp.float32)[None]

    return cost_fn


def _validate_velocity_params(name: str) -> Callable[[VelocityParams], None]:
    def validate(params):
        threshold = params.velocity_threshold
        if isinstance(threshold, jax.core.Tracer):
            return
        values = np.asarray(threshold, np.float64)
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"{name}: params.velocity_threshold must be a finite speed > 0 m/s, got {threshold!r}")

    return validate


def _import_brax_envs():
    try:
        return importlib.import_module("brax.envs")
    except ImportError as error:  # pragma: no cover - brax is a dependency, but may be missing in slim installs
        raise ImportError("the locomotion tasks need brax: pip install 'brax>=0.12'") from error


def _check_backend(robot: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    supported = _SUPPORTED_BACKENDS.get(robot, BACKENDS)
    if backend not in supported:
        raise ValueError(f"brax's {robot} supports backend {supported} only, got {backend!r}")
    if backend == "mjx":
        for module, package in (("mujoco", "mujoco"), ("mujoco.mjx", "mujoco-mjx")):
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ImportError(f"backend='mjx' needs the {package} package: pip install {package}") from error


class _ClipCompatNumpy:
    """``jax.numpy`` with a ``clip`` that still accepts the ``a_min``/``a_max`` keywords (removed from jax)."""

    def __getattr__(self, name):
        return getattr(jnp, name)

    @staticmethod
    def clip(x, min=None, max=None, *, a_min=None, a_max=None):  # noqa: A002 - jnp.clip's own names
        return jnp.clip(x, a_min if min is None else min, a_max if max is None else max)


def _patch_brax_fluid() -> None:
    """brax 0.14.2's fluid model (used only by Swimmer) calls ``jnp.clip(..., a_min=...)``, which newer jax
    rejects. Give the ``brax.fluid`` module (and nothing else) a numpy namespace that accepts the old keywords."""
    fluid = importlib.import_module("brax.fluid")
    try:
        jnp.clip(jnp.ones(()), a_min=0.0)
        return  # this jax still accepts a_min: nothing to do
    except TypeError:
        pass
    if not isinstance(fluid.jp, _ClipCompatNumpy):
        fluid.jp = _ClipCompatNumpy()


def velocity_env(robot: str = "halfcheetah", backend: str = DEFAULT_BACKEND, **brax_kwargs) -> BraxSafeEnv:
    """A Safety-Gymnasium velocity task on brax's ``robot`` (a key of :data:`VELOCITY_THRESHOLDS`).

    Args:
      robot: brax environment name: halfcheetah, hopper, walker2d, ant, humanoid, swimmer.
      backend: brax physics pipeline (:data:`BACKENDS`).
      **brax_kwargs: passed to the brax environment's constructor (e.g. ``reset_noise_scale``).

    Raises:
      ValueError: unknown robot or backend (naming the allowed ones).
      ImportError: brax, or mujoco/mujoco-mjx for ``backend='mjx'``, is not installed (naming the package).
    """
    if robot not in VELOCITY_THRESHOLDS:
        raise ValueError(f"robot must be one of {sorted(VELOCITY_THRESHOLDS)}, got {robot!r}")
    _check_backend(robot, backend)
    envs = _import_brax_envs()
    if robot == "swimmer":
        _patch_brax_fluid()
    brax_env = envs.get_environment(robot, backend=backend, **brax_kwargs)
    name = next(task for task, body in LOCOMOTION_TASKS.items() if body == robot)
    return BraxSafeEnv(
        brax_env,
        _velocity_cost_fn(robot),
        _velocity_info_fn(robot),
        name=name,
        default_params=VelocityParams(velocity_threshold=VELOCITY_THRESHOLDS[robot]),
        validate_params=_validate_velocity_params(name),
    )


def register_locomotion() -> list[str]:
    """Register every task of :data:`LOCOMOTION_TASKS` (idempotent: names already registered are skipped)."""
    from jaxsafe.envs import registry

    existing = set(registry.list_envs())
    for name, robot in LOCOMOTION_TASKS.items():
        if name not in existing:
            description = (
                f"brax {robot}; cost 1 when the "
                f"{'planar speed' if robot in _PLANAR_SPEED else 'signed x-velocity'} exceeds "
                f"{VELOCITY_THRESHOLDS[robot]} m/s (Safety-Gymnasium v1)"
            )
            registry.register(name, velocity_env, description, robot=robot)
    return list(LOCOMOTION_TASKS)


