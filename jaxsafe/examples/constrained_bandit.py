"""The worked example of ``docs/adding_a_method.md``: a Lagrangian policy-gradient learner on a constrained bandit.

The problem: ``K`` arms with known rewards ``r`` and costs ``c``; maximise ``E_pi[r]`` subject to ``E_pi[c] <= limit``
over softmax policies ``pi = softmax(logits)``. The learner takes exact gradient steps on the Lagrangian
``E_pi[r] - m E_pi[c]`` and updates ``m`` by a :mod:`jaxsafe.constraints` handler. Its optimum is known in closed
form (a mixture of at most two arms, the LP solution), so a test can check that it gets there.

Everything a user gets for free once :func:`register` has run: ``jaxsafe train bandit_lag --problem three_arms``,
sweeps over seeds and hparams (``--grid cost_limit=0.2,0.5``), checkpoints, bit-identical resume, the progress bar,
``metrics.jsonl``, ``summary.json`` and the figure.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from jaxsafe import constraints
from jaxsafe.algorithms import Algorithm, ProblemSpace, register_algorithm
from jaxsafe.learner import Config, HParams, TrainParts
from jaxsafe.validation import is_int, non_negative, positive, require


class Bandit(NamedTuple):
    """The problem: per-arm rewards and costs, ``[K]`` each."""

    rewards: jax.Array
    costs: jax.Array


#: name -> (rewards, costs, description); plain numbers, so importing this module starts no JAX backend.
BANDITS = {"three_arms": ([1.0, 0.6, 0.1], [1.0, 0.3, 0.0], "3 arms, safest is worst")}


def make_bandit(name: str) -> Bandit:
    if name not in BANDITS:
        raise ValueError(f"unknown bandit {name!r}; choose one of {sorted(BANDITS)}")
    rewards, costs, _ = BANDITS[name]
    return Bandit(jnp.asarray(rewards), jnp.asarray(costs))


@struct.dataclass
class BanditHParams(HParams):
    """Traceable hyperparameters (sweepable with ``jaxsafe sweep --grid``)."""

    learning_rate: float = 0.5
    cost_limit: float = 0.5
    multiplier_lr: float = 0.5
    initial_multiplier: float = 0.0

    rules = {"learning_rate": positive(), "cost_limit": non_negative(), "multiplier_lr": non_negative(),
             "initial_multiplier": non_negative()}


@dataclasses.dataclass(frozen=True)
class BanditConfig(Config):
    """Static settings: loop counts and the constraint handler."""

    num_updates: int = 500
    multiplier: str = "lagrangian"

    def __post_init__(self):
        require(is_int(self.num_updates), "num_updates", "an integer >= 1", self.num_updates)
        require(self.multiplier in constraints.HANDLERS, "multiplier", f"one of {sorted(constraints.HANDLERS)}",
                self.multiplier)

    def default_hparams(self) -> BanditHParams:
        return BanditHParams().as_arrays()


class BanditState(NamedTuple):
    params: jax.Array  # the policy's logits [K]
    constraint: constraints.MultiplierState


def make_train_parts(config: BanditConfig, bandit: Bandit) -> TrainParts:
    handler = constraints.make_handler(config.multiplier)

    def init(key, hparams):
        del key  # deterministic: uniform policy
        return BanditState(jnp.zeros_like(bandit.rewards), handler.init(hparams))

    def update(state, hparams):
        multiplier = state.constraint.multiplier

        def lagrangian(logits):
            policy = jax.nn.softmax(logits)
            return policy @ bandit.rewards - multiplier * (policy @ bandit.costs)

        logits = state.params + hparams.learning_rate * jax.grad(lagrangian)(state.params)
        policy = jax.nn.softmax(logits)
        expected_cost = policy @ bandit.costs
        constraint = handler.update(state.constraint, expected_cost, hparams.cost_limit, hparams)
        metrics = {"episode_return": policy @ bandit.rewards, "episode_cost": expected_cost,
                   "multiplier": constraint.multiplier, "nonfinite": ~jnp.all(jnp.isfinite(logits))}
        return BanditState(logits, constraint), metrics

    return TrainParts(init, update, config.num_updates, steps_per_update=1)


ALGORITHM = Algorithm(
    name="bandit_lag",
    description="exact-gradient Lagrangian policy gradient on a constrained bandit (docs/adding_a_method.md)",
    config_cls=BanditConfig,
    config_defaults={},
    make_train_parts=make_train_parts,
    problems=ProblemSpace("bandit", make_bandit, lambda: {name: text for name, (*_, text) in BANDITS.items()}),
    step_unit="updates",
)


def register() -> None:
    register_algorithm(ALGORITHM)
