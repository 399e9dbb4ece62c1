"""The registry of on-policy learners reachable by name (CLI, runner, benchmarks).

Every entry shares the learner contract: a frozen config class (static fields, validated on construction) with
``default_hparams()``, ``make_train_parts(config, env, env_params) -> TrainParts(init, update, num_updates,
steps_per_update)`` and ``make_act(config, env, env_params) -> act(params, obs, key, deterministic)``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from jaxsafe.rl import cpo, ppo


class Algorithm(NamedTuple):
    name: str
    description: str
    config_cls: type
    config_defaults: dict
    make_train_parts: Callable[..., Any]
    make_act: Callable[..., Any]

    def make_config(self, **overrides):
        return self.config_cls(**{**self.config_defaults, **overrides})


_ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(algorithm: Algorithm) -> None:
    _ALGORITHMS[algorithm.name] = algorithm


register_algorithm(Algorithm("ppo", "unconstrained PPO (ignores cost)", ppo.PPOConfig, {"multiplier": "none"},
                             ppo.make_train_parts, ppo.make_act))
register_algorithm(Algorithm("ppo_lag", "PPO-Lagrangian (gradient ascent on the multiplier)", ppo.PPOConfig,
                             {"multiplier": "lagrangian"}, ppo.make_train_parts, ppo.make_act))
register_algorithm(Algorithm("ppo_pid", "PPO with a PID-Lagrangian multiplier (CPPO-PID)", ppo.PPOConfig,
                             {"multiplier": "pid"}, ppo.make_train_parts, ppo.make_act))
register_algorithm(Algorithm("cpo", "Constrained Policy Optimization (trust-region step with a cost constraint)",
                             cpo.CPOConfig, {"method": "cpo"}, cpo.make_train_parts, cpo.make_act))
register_algorithm(Algorithm("trpo_lag", "TRPO-Lagrangian (natural-gradient step on the Lagrangian advantage)",
                             cpo.CPOConfig, {"method": "trpo_lag"}, cpo.make_train_parts, cpo.make_act))


def list_algorithms() -> list[str]:
    return sorted(_ALGORITHMS)


def describe_algorithms() -> dict[str, str]:
    return {name: _ALGORITHMS[name].description for name in list_algorithms()}


def get_algorithm(name: str) -> Algorithm:
    if name not in _ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; available algorithms: {', '.join(list_algorithms())}")
    return _ALGORITHMS[name]
