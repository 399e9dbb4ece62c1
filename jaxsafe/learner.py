"""The one learner contract: static config, traceable hparams with rules, ``init``/``update`` parts, one ``train``.

Every trainable method in jaxsafe (PPO, CPO, the bi-level leader loop, SACPO, Safe-RLHF, ...) is built the same
way::

    config  = SomeConfig(...)                      # frozen dataclass: shapes and loop counts, validated on construction
    hparams = config.default_hparams()             # an HParams pytree of jnp scalars (or small vectors)
    hparams = hparams.replace(learning_rate=1e-3).validate()   # ValueError naming the field and the allowed range
    parts   = make_train_parts(config, problem)    # TrainParts(init, update, num_updates, steps_per_update)
    train   = train_from_parts(parts)              # train(key, hparams) -> TrainResult(params, metrics)
    result  = jax.jit(train)(key, hparams)
    grid    = jaxsafe.sweep.run_grid(train, jaxsafe.sweep.make_grid(hparams, seeds=4, cost_limit=[10, 25]))

``problem`` is what the method learns on: an environment (``envs.make(name)`` returns an ``(env, env_params)``
pair), a bi-level problem, or a dataset / synthetic task. ``init(key, hparams) -> state`` builds the learner state
(any pytree with a ``params`` field); ``update(state, hparams) -> (state, metrics)`` is one update. ``train`` is
``init`` followed by a ``lax.scan`` of ``num_updates`` updates, and the chunked runner (:mod:`jaxsafe.runner`)
scans the same ``update`` in chunks, so a checkpointed and resumed run is bit-identical to ``train``.

Metrics are a dict of scalars per update (``train`` stacks them to ``[num_updates]``). A learner should report
``nonfinite`` (a bool: the update produced a NaN/inf loss or parameter) so the runner can stop a diverged run; if
it does not, the runner checks the parameters itself.

Static fields fix shapes and loop counts; everything a user sweeps lives in hparams and may be traced, learning
rates included (they scale the optimiser's update, or go through ``optax.inject_hyperparams``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jaxsafe.types import TrainResult
from jaxsafe.validation import Rule, check_fields

__all__ = ["HParams", "Config", "TrainParts", "TrainResult", "train_from_parts", "make_train_from_parts",
           "field_names"]


class HParams:
    """Base of every hparams class (use with ``@flax.struct.dataclass``).

    Subclasses declare their range rules once, as the class attribute ``rules = {field: (predicate, allowed)}``
    (helpers in :mod:`jaxsafe.validation`). ``replace`` comes from ``struct.dataclass``.
    """

    rules: ClassVar[dict[str, Rule]] = {}

    def as_arrays(self):
        """Every field as one float32 array (scalars stay 0-d; a list or vector field becomes a 1-d array)."""
        return self.replace(**{f.name: jnp.asarray(getattr(self, f.name), jnp.float32)
                               for f in dataclasses.fields(self)})

    def validate(self):
        """Raise ``ValueError`` naming the first out-of-range field (concrete values only; tracers pass)."""
        check_fields(self, type(self).rules, type(self).__name__)
        return self


class Config:
    """Base of every static config (use with ``@dataclasses.dataclass(frozen=True)``): hashable, validated in
    ``__post_init__``, with ``default_hparams()``."""

    def default_hparams(self) -> HParams:  # pragma: no cover - every config defines it
        raise NotImplementedError

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


class TrainParts(NamedTuple):
    """A learner as two pure functions and its loop counts.

    Attributes:
      init: ``init(key, hparams) -> state``; ``state.params`` are the learner's parameters.
      update: ``update(state, hparams) -> (state, metrics)``, one update.
      num_updates: updates in a whole run.
      steps_per_update: progress units (environment steps, samples, examples) one update consumes, per lane.
    """

    init: Callable[[jax.Array, Any], Any]
    update: Callable[[Any, Any], tuple[Any, dict]]
    num_updates: int
    steps_per_update: int


def train_from_parts(parts: TrainParts) -> Callable[[jax.Array, Any], TrainResult]:
    """``train(key, hparams) -> TrainResult(params, metrics)``: ``init`` then ``num_updates`` scanned updates."""

    def train(key, hparams):
        state = parts.init(key, hparams)
        state, metrics = jax.lax.scan(lambda s, _: parts.update(s, hparams), state, None, length=parts.num_updates)
        return TrainResult(state.params, metrics)

    return train


def make_train_from_parts(make_train_parts: Callable[..., TrainParts]) -> Callable[..., Callable]:
    """``make_train(config, *problem) -> train`` from a ``make_train_parts`` (each learner module's one-liner)."""

    def make_train(config, *problem):
        return train_from_parts(make_train_parts(config, *problem))

    make_train.__doc__ = (f"A pure ``train(key, hparams) -> TrainResult(params, metrics)`` built from "
                          f":func:`{make_train_parts.__module__}.{make_train_parts.__name__}`; jit, vmap, shard it.")
    return make_train


def field_names(hparams: Any) -> list[str]:
    """The field names of an hparams dataclass (or NamedTuple)."""
    if dataclasses.is_dataclass(hparams):
        return [f.name for f in dataclasses.fields(hparams)]
    if hasattr(hparams, "_fields"):
        return list(hparams._fields)
    raise TypeError(f"hparams must be a dataclass or NamedTuple, got {type(hparams).__name__}")
