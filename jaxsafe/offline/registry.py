"""The offline safe-RL learners in the algorithm registry (see :mod:`jaxsafe.algorithms`).

Their problem space is a dataset file: ``--problem PATH.npz`` names a file written by
:func:`jaxsafe.offline.dataset.save_npz` (``jaxsafe offline collect``), loaded with ``load_npz``, and the loaded
:class:`~jaxsafe.offline.dataset.TrajectoryDataset` is passed to ``make_train_parts(config, dataset)``, so
``jaxsafe train bc_safe --problem data.npz --set cost_limit=20`` goes through the generic chunked runner.
"""

from __future__ import annotations

from pathlib import Path

from jaxsafe.algorithms import Algorithm, ProblemSpace, register_algorithm
from jaxsafe.offline import baselines, bcq_lag, cdt, cql, mgdt, multigame
from jaxsafe.offline import ogsrl
from jaxsafe.offline.dataset import load_npz
from jaxsafe.rl import cpo

__all__ = ["DATASETS", "make_dataset", "describe_datasets"]


def make_dataset(path: str, **overrides):
    """The :class:`~jaxsafe.offline.dataset.TrajectoryDataset` stored at ``path`` (a ``.npz`` dataset file).

    Raises:
      ValueError: overrides were given (a dataset file has none), the file does not exist, or it is not a valid
        dataset (the message names the field).
    """
    if overrides:
        raise ValueError(f"a dataset file takes no overrides, got {sorted(overrides)}")
    if not Path(path).is_file():
        raise ValueError(f"problem: dataset file {path!r} does not exist (write one with `jaxsafe offline collect`)")
    return load_npz(path)


def describe_datasets() -> dict[str, str]:
    return {"PATH.npz": "a dataset file written by `jaxsafe offline collect` (DSRL fields)"}


DATASETS = ProblemSpace("offline dataset", make_dataset, describe_datasets)
#: Multi-game data (one dataset per game of a suite) for the Multi-Game Decision Transformer.
MULTIGAME = ProblemSpace("multi-game data", multigame.make_problem, multigame.describe_problems)

_LOSS = dict(curve_metrics=("loss",), chunk_means=("loss",), step_unit="samples", cost_limit_field=None)

for _algorithm in (
    Algorithm("bc_all", "behaviour cloning on every episode of an offline dataset (DSRL's BC-All)",
              baselines.BCConfig, {"safe_only": False}, baselines.make_train_parts, DATASETS, **_LOSS),
    Algorithm("bc_safe", "behaviour cloning on the episodes within cost_limit (DSRL's BC-Safe)",
              baselines.BCConfig, {"safe_only": True}, baselines.make_train_parts, DATASETS, **_LOSS),
    Algorithm("cdt", "Constrained Decision Transformer (Liu et al. 2023, OSRL's settings)", cdt.CDTConfig, {},
              cdt.make_train_parts, DATASETS, **_LOSS),
    Algorithm("bcq_lag", "BCQ-Lagrangian with a PID multiplier (OSRL's BCQ-L)", bcq_lag.BCQLagConfig, {},
              bcq_lag.make_train_parts, DATASETS, curve_metrics=("critic_loss", "cost_estimate"),
              chunk_means=("critic_loss", "cost_critic_loss", "cost_estimate"), step_unit="samples",
              cost_limit_field=None),
    Algorithm("mgdt", "Multi-Game Decision Transformer (Lee et al. 2022) on multi-game data (MTRO's base model)",
              mgdt.MGDTConfig, {}, mgdt.make_train_parts, MULTIGAME, **_LOSS),
):
    register_algorithm(_algorithm)

#: OGSRL's learned model of clinicians' data (a SafeEnv with costs [SpO2, urine, OOD]) for GMB-CPO / MB-CPO.
OGSRL_MODELS = ProblemSpace("OGSRL learned model", ogsrl.make_model_problem, ogsrl.describe_model_problems)
for _algorithm in (
    Algorithm("gmb_cpo", "guarded model-based CPO (OGSRL): CPO in a 1-NN model with the KDE guardian's OOD cost",
              cpo.CPOConfig, {"num_envs": 32, "num_steps": 20, "total_steps": 96_000, "cg_iters": 10,
                              "line_search_steps": 30, "critic_epochs": 2},
              ogsrl.make_multi_cpo_train_parts, OGSRL_MODELS, ogsrl.gmb_cpo_hparams, cpo.make_act),
    Algorithm("mb_cpo", "model-based CPO without the guardian constraint (OGSRL's MB-CPO baseline)",
              cpo.CPOConfig, {"num_envs": 32, "num_steps": 20, "total_steps": 96_000, "cg_iters": 10,
                              "line_search_steps": 30, "critic_epochs": 2},
              ogsrl.make_multi_cpo_train_parts, OGSRL_MODELS, ogsrl.mb_cpo_hparams, cpo.make_act),
):
    register_algorithm(_algorithm)

#: OGSRL's clinicians' data with the guardian as the OOD test, for the offline value baselines CQL / GCQL.
OGSRL_DATA = ProblemSpace("OGSRL clinicians' data", ogsrl.make_data_problem, ogsrl.describe_data_problems)
_CQL = dict(curve_metrics=("critic_loss", "q_data"), chunk_means=("critic_loss", "cql_penalty", "q_data"),
            step_unit="samples", cost_limit_field=None)
for _algorithm in (
    Algorithm("cql", "conservative Q-learning, DDPG-style (OGSRL's CQL baseline)", cql.CQLConfig, {},
              cql.make_train_parts, OGSRL_DATA, None, cql.make_act, **_CQL),
    Algorithm("gcql", "CQL with guarded bootstrap targets: flagged (s', a') get a large negative value (OGSRL's GCQL)",
              cql.CQLConfig, {"guarded": True}, cql.make_train_parts, OGSRL_DATA, None, cql.make_act, **_CQL),
):
    register_algorithm(_algorithm)
