"""The safe-environment contract, the gymnax adapter, and the wrappers every learner composes.

A safe environment is a pair of pure functions::

    reset(key, params)                -> (state, TimeStep)
    step(key, state, action, params)  -> (state, TimeStep)

``TimeStep.cost`` has shape ``(n_costs,)`` and is non-negative. ``TimeStep.info`` has the same keys and shapes on
``reset`` and ``step`` so that auto-reset can select between them leaf by leaf.

Wrappers keep the same contract: ``AutoReset`` restarts finished episodes (keeping the pre-reset observation in
``info["final_obs"]`` so truncated episodes bootstrap), ``EpisodeStats`` accumulates episode return, cost return
and length, and ``VecEnv`` vmaps over a leading environment axis. ``wrap_for_training`` composes all three in the
order the learners expect.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces

from jaxsafe.types import TimeStep
from jaxsafe.validation import check_fields

__all__ = [
    "SafeEnv",
    "GymnaxSafeEnv",
    "AutoReset",
    "EpisodeStats",
    "EpisodeStatsState",
    "VecEnv",
    "VEC_AXIS",
    "Wrapper",
    "wrap_for_training",
    "check_action",
    "spaces",
]


class SafeEnv:
    """Base class of every safe environment. Subclasses implement ``reset``, ``step`` and the spaces.

    Environments are stateless objects: all state is in the returned ``state`` pytree, all configuration that may
    be traced (and vmapped) is in ``params``, and configuration that fixes shapes is a constructor argument.
    """

    #: Number of cost signals, i.e. ``TimeStep.cost.shape == (n_costs,)``.
    n_costs: int = 1

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def default_params(self) -> Any:
        raise NotImplementedError

    def reset(self, key: jax.Array, params: Any) -> tuple[Any, TimeStep]:
        raise NotImplementedError

    def step(self, key: jax.Array, state: Any, action: jax.Array, params: Any) -> tuple[Any, TimeStep]:
        raise NotImplementedError

    def observation_space(self, params: Any) -> spaces.Space:
        raise NotImplementedError

    def action_space(self, params: Any) -> spaces.Space:
        raise NotImplementedError

    #: ``{field: (predicate, allowed)}`` for :meth:`check_params` (predicates get a float64 array).
    param_rules: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {}

    def check_params(self, params: Any) -> None:
        """Raise ``ValueError`` naming the first out-of-range field of ``params`` (``param_rules``; concrete values
        only, traced ones pass). :func:`jaxsafe.envs.make` calls it, so bad overrides fail before any compilation;
        environments that also call it in ``reset`` catch params built by hand."""
        check_fields(params, self.param_rules, f"{self.name}: params")

    def __repr__(self) -> str:
        return f"{self.name}()"


def check_action(env: SafeEnv, action: Any, params: Any = None, batch_shape: tuple[int, ...] = ()) -> None:
    """Raise a ``ValueError`` if ``action`` does not fit ``env``'s action space (static shape/dtype check).

    Works on concrete arrays and on tracers (only shapes and dtypes are read), so it can run at trace time.
    """
    params = env.default_params if params is None else params
    space = env.action_space(params)
    action = jnp.asarray(action) if not hasattr(action, "shape") else action
    if isinstance(space, spaces.Discrete):
        want_shape = batch_shape
        if not jnp.issubdtype(action.dtype, jnp.integer):
            raise ValueError(
                f"{env.name}: action must be an integer array (Discrete({space.n})), got dtype {action.dtype}"
            )
    else:
        want_shape = batch_shape + tuple(space.shape)
        if not jnp.issubdtype(action.dtype, jnp.floating):
            raise ValueError(f"{env.name}: action must be a float array of shape {want_shape}, got {action.dtype}")
    if tuple(action.shape) != want_shape:
        raise ValueError(f"{env.name}: action must have shape {want_shape}, got {tuple(action.shape)}")


CostFn = Callable[[Any, jax.Array, Any, Any], jax.Array]


class GymnaxSafeEnv(SafeEnv):
    """Adapter: any gymnax 1.x environment plus a cost function becomes a :class:`SafeEnv`.

    The adapter is the only place that knows the gymnax API. It calls ``step_env`` (gymnax's transition without
    auto-reset) and ``is_truncated``; auto-reset is left to :class:`AutoReset` so that every environment, gymnax or
    not, resets the same way.

    Args:
      env: a gymnax ``Environment``.
      cost_fn: ``cost_fn(state, action, next_state, params) -> (n_costs,)`` non-negative costs.
      info_fn: optional ``info_fn(next_state, params) -> dict`` of extra arrays for ``TimeStep.info`` (the same
        keys on reset and step; reset uses the initial state).
      name: the registered name.
      n_costs: length of the cost vector.
      default_params: the params to use by default (e.g. gymnax params extended with cost fields).
      param_rules: extra ``{field: (predicate, allowed)}`` range rules for :meth:`~SafeEnv.check_params` (gymnax's
        ``max_steps_in_episode >= 1`` is always checked).
    """

    def __init__(
        self,
        env,
        cost_fn: CostFn,
        *,
        name: str,
        default_params: Any = None,
        n_costs: int = 1,
        info_fn: Callable[[Any, Any], dict] | None = None,
        param_rules: dict | None = None,
    ):
        self._env = env
        self._cost_fn = cost_fn
        self._info_fn = info_fn or (lambda state, params: {})
        self._name = name
        self._default_params = env.default_params if default_params is None else default_params
        self.n_costs = n_costs
        self.param_rules = {"max_steps_in_episode": (lambda v: v >= 1, "an integer >= 1"), **(param_rules or {})}

    @property
    def name(self) -> str:
        return self._name

    @property
    def gymnax_env(self):
        return self._env

    @property
    def default_params(self) -> Any:
        return self._default_params

    def reset(self, key, params):
        obs, state = self._env.reset_env(key, params)
        timestep = TimeStep(
            obs=obs,
            reward=jnp.zeros((), jnp.float32),
            cost=jnp.zeros((self.n_costs,), jnp.float32),
            terminated=jnp.zeros((), bool),
            truncated=jnp.zeros((), bool),
            info=self._info_fn(state, params),
        )
        return state, timestep

    def step(self, key, state, action, params):
        obs, next_state, reward, terminated, _ = self._env.step_env(key, state, action, params)
        truncated = jnp.logical_and(self._env.is_truncated(next_state, params), jnp.logical_not(terminated))
        cost = jnp.asarray(self._cost_fn(state, action, next_state, params), jnp.float32).reshape(self.n_costs)
        timestep = TimeStep(
            obs=obs,
            reward=jnp.asarray(reward, jnp.float32).reshape(()),
            cost=cost,
            terminated=jnp.asarray(terminated, bool).reshape(()),
            truncated=jnp.asarray(truncated, bool).reshape(()),
            info=self._info_fn(next_state, params),
        )
        return next_state, timestep

    def observation_space(self, params):
        return self._env.observation_space(params)

    def action_space(self, params):
        return self._env.action_space(params)


class Wrapper(SafeEnv):
    """Forwards everything to the wrapped environment; subclasses override ``reset``/``step``."""

    def __init__(self, env: SafeEnv):
        self.env = env
        self.n_costs = env.n_costs

    @property
    def name(self) -> str:
        return self.env.name

    @property
    def default_params(self):
        return self.env.default_params

    def observation_space(self, params):
        return self.env.observation_space(params)

    def action_space(self, params):
        return self.env.action_space(params)

    def check_params(self, params):
        self.env.check_params(params)

    @property
    def unwrapped(self) -> SafeEnv:
        env = self.env
        while isinstance(env, Wrapper):
            env = env.env
        return env

    def __getattr__(self, name):
        # Only reached for attributes not found normally: forward to the wrapped env (task-specific helpers).
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)


def _select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


#: The axis name :class:`VecEnv` vmaps over; :class:`AutoReset` reduces ``done`` over it (batch-level reset).
VEC_AXIS = "jaxsafe_vec_env"


def _any_done_in_batch(done):
    """``any(done)`` over the :class:`VecEnv` batch as an *unbatched* scalar, or ``None`` outside a VecEnv."""
    try:
        return jax.lax.psum(done.astype(jnp.int32), VEC_AXIS) > 0
    except NameError:  # not under VecEnv's vmap
        return None


class AutoReset(Wrapper):
    """Resets finished episodes inside ``step``.

    On a step that terminates or truncates, the returned ``obs`` and ``state`` are those of a fresh episode, while
    ``reward``, ``cost``, ``terminated`` and ``truncated`` describe the finished transition. The pre-reset
    observation is kept in ``info["final_obs"]`` (on every step; equal to ``obs`` when nothing ended) so that a
    learner can bootstrap a truncated episode from its true last observation.

    Batch-level reset: under :class:`VecEnv` the reset is computed (for the whole batch, with the same per-env keys)
    only on steps where some environment of the batch finished, behind a ``lax.cond`` on ``any(done)`` reduced over
    the VecEnv axis, instead of on every step. The results are identical to computing it every step (same keys, same
    selection), so the reset-layout distribution is unchanged; the saving is the reset's cost on the steps where
    nothing ends (all of them but one in ``max_steps`` for fixed-length navigation episodes). When the VecEnv itself
    runs under a further ``vmap`` (e.g. over seeds), that outer axis makes the predicate batched and ``cond``
    computes both branches again: correct, without the saving.
    """

    def reset(self, key, params):
        state, timestep = self.env.reset(key, params)
        return state, timestep._replace(info={**timestep.info, "final_obs": timestep.obs})

    def step(self, key, state, action, params):
        key_step, key_reset = jax.random.split(key)
        next_state, timestep = self.env.step(key_step, state, action, params)
        done = jnp.logical_or(timestep.terminated, timestep.truncated)

        def with_reset(_):
            reset_state, reset_timestep = self.env.reset(key_reset, params)
            return (
                _select(done, reset_state, next_state),
                _select(done, reset_timestep.obs, timestep.obs),
                _select(done, reset_timestep.info, timestep.info),
            )

        def without_reset(_):
            return next_state, timestep.obs, timestep.info

        any_done = _any_done_in_batch(done)
        if any_done is None:
            state_out, obs_out, info = with_reset(None)
        else:
            state_out, obs_out, info = jax.lax.cond(any_done, with_reset, without_reset, None)
        return state_out, timestep._replace(obs=obs_out, info={**info, "final_obs": timestep.obs})


class EpisodeStatsState(NamedTuple):
    env_state: Any
    episode_return: jax.Array  # running undiscounted return of the current episode
    episode_cost: jax.Array  # (n_costs,) running cost return
    episode_length: jax.Array  # int32 steps in the current episode
    last_return: jax.Array  # stats of the most recently finished episode
    last_cost: jax.Array
    last_length: jax.Array
    has_finished: jax.Array  # bool, at least one episode has finished


class EpisodeStats(Wrapper):
    """Keeps episode statistics (return, cost return, length) so learners never have to.

    Wrap *outside* :class:`AutoReset`. ``info`` gains ``episode_return``, ``episode_cost`` ``(n_costs,)``,
    ``episode_length`` (the values of the most recently finished episode), ``episode_done`` (an episode finished on
    this step) and ``episode_valid`` (at least one episode has finished since reset, so the values are real).
    """

    def reset(self, key, params):
        env_state, timestep = self.env.reset(key, params)
        zero_cost = jnp.zeros((self.n_costs,), jnp.float32)
        state = EpisodeStatsState(
            env_state=env_state,
            episode_return=jnp.zeros((), jnp.float32),
            episode_cost=zero_cost,
            episode_length=jnp.zeros((), jnp.int32),
            last_return=jnp.zeros((), jnp.float32),
            last_cost=zero_cost,
            last_length=jnp.zeros((), jnp.int32),
            has_finished=jnp.zeros((), bool),
        )
        return state, timestep._replace(info={**timestep.info, **self._stats_info(state, jnp.zeros((), bool))})

    @staticmethod
    def _stats_info(state: EpisodeStatsState, done) -> dict:
        return {
            "episode_return": state.last_return,
            "episode_cost": state.last_cost,
            "episode_length": state.last_length,
            "episode_done": done,
            "episode_valid": state.has_finished,
        }

    def step(self, key, state: EpisodeStatsState, action, params):
        env_state, timestep = self.env.step(key, state.env_state, action, params)
        done = jnp.logical_or(timestep.terminated, timestep.truncated)
        ep_return = state.episode_return + timestep.reward
        ep_cost = state.episode_cost + timestep.cost
        ep_length = state.episode_length + 1
        new_state = EpisodeStatsState(
            env_state=env_state,
            episode_return=jnp.where(done, 0.0, ep_return),
            episode_cost=jnp.where(done, 0.0, ep_cost),
            episode_length=jnp.where(done, 0, ep_length),
            last_return=jnp.where(done, ep_return, state.last_return),
            last_cost=jnp.where(done, ep_cost, state.last_cost),
            last_length=jnp.where(done, ep_length, state.last_length),
            has_finished=jnp.logical_or(state.has_finished, done),
        )
        return new_state, timestep._replace(info={**timestep.info, **self._stats_info(new_state, done)})


class VecEnv(Wrapper):
    """Runs ``num_envs`` copies in lock-step with ``vmap``: one key in, leading axis ``num_envs`` on everything."""

    def __init__(self, env: SafeEnv, num_envs: int):
        super().__init__(env)
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.num_envs = int(num_envs)

    def reset(self, key, params):
        keys = jax.random.split(key, self.num_envs)
        return jax.vmap(self.env.reset, in_axes=(0, None), axis_name=VEC_AXIS)(keys, params)

    def step(self, key, state, action, params):
        keys = jax.random.split(key, self.num_envs)
        return jax.vmap(self.env.step, in_axes=(0, 0, 0, None), axis_name=VEC_AXIS)(keys, state, action, params)


def wrap_for_training(env: SafeEnv, num_envs: int) -> VecEnv:
    """``VecEnv(EpisodeStats(AutoReset(env)), num_envs)``: what the on-policy learners roll out in."""
    return VecEnv(EpisodeStats(AutoReset(env)), num_envs)
