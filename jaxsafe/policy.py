"""The stateful policy interface every rollout uses: evaluation, flipping mixtures, decision transformers.

A :class:`Policy` is a pair of pure functions::

    state = policy.init(key)                          # once per episode (a coin, a context window, an RNN carry)
    state, action = policy.step(state, obs, key)      # one step, for one (unbatched) observation

``init`` is called at the start of every episode, so per-episode randomness (a flipping policy's coin) lives in the
state, and so does history (a decision transformer's context of past returns-to-go, observations and actions).
Both functions must be jit- and vmap-able; the state is any pytree of arrays.

A memoryless policy is :func:`stateless`; a trained learner's ``act(params, obs, key, deterministic)`` becomes a
policy with :func:`from_act`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Policy", "stateless", "from_act"]


class Policy(NamedTuple):
    """``init(key) -> state`` at every episode start; ``step(state, obs, key) -> (state, action)`` every step."""

    init: Callable[[jax.Array], Any]
    step: Callable[[Any, Any, jax.Array], tuple[Any, Any]]


def stateless(act: Callable[[Any, jax.Array], Any]) -> Policy:
    """A policy with no memory from ``act(obs, key) -> action`` (its state is an empty array)."""

    def init(key):
        del key
        return jnp.zeros((0,), jnp.float32)

    def step(state, obs, key):
        return state, act(obs, key)

    return Policy(init, step)


def from_act(act: Callable[..., Any], params: Any, deterministic: bool = False) -> Policy:
    """The policy of a trained learner: ``act(params, obs, key, deterministic) -> action`` (``make_act``'s form)."""
    return stateless(lambda obs, key: act(params, obs, key, deterministic))
