"""The offline safe-RL learners in the algorithm registry (see :mod:`jaxsafe.algorithms`).

Their problem space is a dataset file: ``--problem PATH.npz`` names a file written by
:func:`jaxsafe.offline.dataset.save_npz` (``jaxsafe offline collect``), loaded with ``load_npz``, and the loaded
:class:`~jaxsafe.offline.dataset.TrajectoryDataset` is passed to ``make_train_parts(config, dataset)``, so
``jaxsafe train bc_safe --problem data.npz --set cost_limit=20`` goes through the generic chunked runner.
"""

from __future__ import annotations

from pathlib import Path

from jaxsafe.algorithms import Algorithm, ProblemSpace, register_algorithm
from jaxsafe.offline import baselines, bcq_lag, cdt
from jaxsafe.offline.dataset import load_npz

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
):
    register_algorithm(_algorithm)
