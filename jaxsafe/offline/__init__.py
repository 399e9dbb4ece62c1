"""Offline safe RL: trajectory datasets in DSRL's fields (``dataset``); learners build on them.

``TrajectoryDataset``, ``collect_dataset(env, env_params, policy, key, num_episodes, max_steps)``,
``from_transitions(...)``, ``save_npz`` / ``load_npz`` (``.npz``, never pickle) and ``episode_returns``.
"""

from jaxsafe.offline.dataset import (DERIVED_FIELDS, DSRL_FIELDS, FORMAT_VERSION, TrajectoryDataset,
                                     collect_dataset, episode_returns, from_transitions, load_npz, save_npz)

__all__ = ["DERIVED_FIELDS", "DSRL_FIELDS", "FORMAT_VERSION", "TrajectoryDataset", "collect_dataset",
           "episode_returns", "from_transitions", "load_npz", "save_npz"]
