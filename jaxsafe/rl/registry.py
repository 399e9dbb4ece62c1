"""The online safe-RL learners in the algorithm registry (see :mod:`jaxsafe.algorithms`).

Their problem space is the environment registry: a problem is the ``(env, env_params)`` pair ``envs.make`` returns,
passed straight to ``make_train_parts(config, problem)`` / ``make_act(config, problem)``. Default hparams have one
``cost_limit`` per cost of the environment; navigation and velocity tasks start from their preset
(:mod:`jaxsafe.rl.presets`).
"""

from __future__ import annotations

from jaxsafe import envs
from jaxsafe.algorithms import Algorithm, ProblemSpace, register_algorithm
from jaxsafe.rl import cpo, ppo, presets

ENVIRONMENTS = ProblemSpace("environment", envs.make, envs.describe_envs)


def _default_hparams(config, problem):
    """The config's defaults with one ``cost_limit`` per cost of the environment (a scalar for one cost)."""
    env, _ = problem
    return config.default_hparams(env.n_costs)


def _entry(name, description, module, config_cls, defaults):
    unconstrained = defaults.get("multiplier") == "none"
    return Algorithm(
        name=name, description=description, config_cls=config_cls, config_defaults=defaults,
        make_train_parts=module.make_train_parts,
        problems=ENVIRONMENTS,
        make_act=module.make_act,
        default_hparams=_default_hparams,
        cost_limit_field=None if unconstrained else "cost_limit",
        presets=lambda task: presets.preset_overrides(config_cls, task),
    )


for _algorithm in (
    _entry("ppo", "unconstrained PPO (ignores cost)", ppo, ppo.PPOConfig, {"multiplier": "none"}),
    _entry("ppo_lag", "PPO-Lagrangian (gradient ascent on the multiplier)", ppo, ppo.PPOConfig,
           {"multiplier": "lagrangian"}),
    _entry("ppo_pid", "PPO with a PID-Lagrangian multiplier (CPPO-PID)", ppo, ppo.PPOConfig, {"multiplier": "pid"}),
    _entry("cpo", "Constrained Policy Optimization (trust-region step with a cost constraint)", cpo, cpo.CPOConfig,
           {"method": "cpo"}),
    _entry("trpo_lag", "TRPO-Lagrangian (natural-gradient step on the Lagrangian advantage)", cpo, cpo.CPOConfig,
           {"method": "trpo_lag"}),
):
    register_algorithm(_algorithm)
