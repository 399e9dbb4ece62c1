"""The alignment learners in the algorithm registry (see :mod:`jaxsafe.algorithms`).

Their problem space is "alignment task": ``make("safety_language", seed=0, pairs=16384, model="small",
sft_steps=300, ...)`` builds the synthetic safety language's SFT policy and preference data (deterministic in
``seed``; :mod:`jaxsafe.llm.sacpo_experiment`), so::

    jaxsafe train sacpo --problem safety_language --set beta=0.5
    jaxsafe sweep sacpo --problem safety_language --grid lagrange_multipliers=0.5,1,2
    jaxsafe sweep safe_rlhf --problem safety_language --grid cost_limit=-1,-2
    jaxsafe train grpo --problem first_guess --set max_new_tokens=6 --problem-set reward=solve_early

run through the generic chunked runner (checkpoints, resume, progress in examples or samples, metrics,
figure).
"""

from __future__ import annotations

from jaxsafe.algorithms import Algorithm, ProblemSpace, register_algorithm
from jaxsafe.llm import grpo, grpo_experiment, sacpo, safe_rlhf, sacpo_experiment

SACPO_TASKS = ProblemSpace("alignment task", sacpo_experiment.make_problem,
                           sacpo_experiment.describe_problems)
SAFE_RLHF_TASKS = ProblemSpace("alignment task", sacpo_experiment.make_safe_rlhf_problem,
                               sacpo_experiment.describe_problems)

SACPO = Algorithm(
    name="sacpo",
    description="SACPO: stepwise DPO/KTO alignment, reward stage then constraint stages with beta / lambda",
    config_cls=sacpo.SACPOConfig,
    config_defaults={},
    make_train_parts=sacpo.make_train_parts,
    problems=SACPO_TASKS,
    curve_metrics=("loss", "grad_norm"),
    chunk_means=("loss", "grad_norm", "accuracy", "margin", "kl", "reward"),
    step_unit="examples",
    cost_limit_field=None,
)

SAFE_RLHF = Algorithm(
    name="safe_rlhf",
    description="Safe-RLHF baseline: PPO-Lagrangian on sampled responses, learned reward and cost models",
    config_cls=safe_rlhf.SafeRLHFConfig,
    config_defaults={},
    make_train_parts=safe_rlhf.make_train_parts,
    problems=SAFE_RLHF_TASKS,
    curve_metrics=("measured_reward", "measured_cost"),
    chunk_means=("measured_reward", "measured_cost", "kl"),
    step_unit="samples",
    cost_limit_field="cost_limit",
)

VERIFIABLE_TASKS = ProblemSpace("verifiable task", grpo_experiment.make_problem, grpo_experiment.describe_problems)

GRPO = Algorithm(
    name="grpo",
    description="GRPO on verifiable rewards (TRL's loss types and reward scalings), token budget max_new_tokens",
    config_cls=grpo.GRPOConfig,
    config_defaults={},
    make_train_parts=grpo.make_train_parts,
    problems=VERIFIABLE_TASKS,
    curve_metrics=("pass_at_1", "mean_reward"),
    chunk_means=("pass_at_1", "mean_reward", "zero_variance_fraction", "group_reward_std", "tokens_generated", "kl"),
    step_unit="samples",
    cost_limit_field=None,
)

for _algorithm in (SACPO, SAFE_RLHF, GRPO):
    register_algorithm(_algorithm)
