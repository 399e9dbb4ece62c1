"""Offline safe RL: trajectory datasets in DSRL's fields, learners on them, DSRL's metrics.

* ``dataset``: ``TrajectoryDataset``, ``collect_dataset``, ``from_transitions``, ``save_npz`` / ``load_npz``
  (``.npz``, never pickle), ``episode_returns``, ``concatenate``, ``from_dsrl_fields`` / ``load_hdf5`` (DSRL files).
* ``collect``: behaviour-policy ladders and their JSON cards (``jaxsafe offline collect``).
* ``baselines`` (BC-All, BC-Safe), ``bcq_lag`` (BCQ-Lagrangian, PID multiplier), ``cdt`` (Constrained Decision
  Transformer), registered by ``registry`` on dataset files; ``feedback`` lets return-conditioned policies read
  their realised reward and cost.
* ``metrics``: normalised reward and cost, "safe"; ``evaluation``: policies of trained runs, scored.
"""

from jaxsafe.offline.dataset import (DERIVED_FIELDS, DSRL_FIELDS, FORMAT_VERSION, TrajectoryDataset,
                                     collect_dataset, concatenate, episode_returns, from_dsrl_fields,
                                     from_transitions, load_hdf5, load_npz, save_npz)

__all__ = ["DERIVED_FIELDS", "DSRL_FIELDS", "FORMAT_VERSION", "TrajectoryDataset", "collect_dataset",
           "concatenate", "episode_returns", "from_dsrl_fields", "from_transitions", "load_hdf5", "load_npz",
           "save_npz"]
