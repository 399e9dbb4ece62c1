"""Trajectory datasets for offline safe RL: DSRL's field names, built from rollouts, saved as ``.npz`` (never pickle).

A :class:`TrajectoryDataset` is a flat batch of ``N`` environment steps, episode after episode, with the fields of
DSRL (Liu et al. 2023) plus what offline learners derive from them once::

    observations [N, ...]   next_observations [N, ...]   actions [N, ...]
    rewards [N]             costs [N, n_costs]           terminals [N] bool   timeouts [N] bool
    episode_ids [N] int32   returns_to_go [N]            costs_to_go [N, n_costs]   mask [N] bool

Every episode ends with a terminal or a timeout step (DSRL's convention: ``timeouts`` marks an episode cut by a time
limit, here also one cut by the collection's ``max_steps``). ``returns_to_go`` and ``costs_to_go`` are undiscounted
sums to the end of the step's episode (:func:`jaxsafe.rl.gae.returns_to_go`), the conditioning targets of a
decision transformer; ``mask`` marks valid steps (all of them after :func:`collect_dataset`'s compaction; padded
batches cut from a dataset set it to ``False`` on padding).

* :func:`from_transitions`: a dataset from the seven DSRL fields (validated; the derived fields computed).
* :func:`collect_dataset`: episodes of any :class:`~jaxsafe.policy.Policy` on any safe environment.
* :func:`save_npz` / :func:`load_npz`: ``np.savez`` with a ``format_version`` field; loading uses
  ``allow_pickle=False`` and refuses a file with a missing or ill-shaped field, naming it. Saving never overwrites.
* :func:`episode_returns`: each episode's return and cost returns (for return/cost ranges and normalised scores).
* :func:`concatenate`: several datasets as one (episodes in order).
* :func:`from_dsrl_fields` / :func:`load_hdf5`: DSRL's own files (HDF5, read with the optional ``h5py``).

Arrays are host (numpy) arrays; jitted learners take them as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.evaluate import rollout_trajectories
from jaxsafe.policy import Policy
from jaxsafe.rl.gae import returns_to_go
from jaxsafe.validation import is_int, require

__all__ = ["FORMAT_VERSION", "DSRL_FIELDS", "DERIVED_FIELDS", "TrajectoryDataset", "from_transitions",
           "collect_dataset", "trajectories_to_dataset", "save_npz", "load_npz", "episode_returns", "concatenate",
           "from_dsrl_fields", "load_hdf5"]

#: Version of the ``.npz`` layout written by :func:`save_npz` (stored in the file as ``format_version``).
FORMAT_VERSION = 1
#: The fields a dataset is made from (DSRL's names).
DSRL_FIELDS = ("observations", "next_observations", "actions", "rewards", "costs", "terminals", "timeouts")
#: The fields :func:`from_transitions` derives from them.
DERIVED_FIELDS = ("episode_ids", "returns_to_go", "costs_to_go", "mask")


class TrajectoryDataset(NamedTuple):
    """``N`` steps of complete episodes (see the module docstring for the fields and their shapes)."""

    observations: Any
    next_observations: Any
    actions: Any
    rewards: np.ndarray
    costs: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_ids: np.ndarray
    returns_to_go: np.ndarray
    costs_to_go: np.ndarray
    mask: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def n_costs(self) -> int:
        return int(self.costs.shape[1])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ids[-1]) + 1 if self.num_steps else 0


# ---------------------------------------------------------------------------------------------------- validation

_FLOAT, _BOOL, _INT = "f", "b", "i"


def _spec(n: int, n_costs: int, obs_shape: tuple, action_shape: tuple) -> dict[str, tuple[str, tuple, str]]:
    """Per field: (required dtype kind, "" for any; the shape; the shape as the message describes it)."""
    return {
        "observations": ("", (n, *obs_shape), "[N, *obs_shape]"),
        "next_observations": ("", (n, *obs_shape), "[N, *obs_shape] (the shape of observations)"),
        "actions": ("", (n, *action_shape), "[N, *action_shape]"),
        "rewards": (_FLOAT, (n,), "[N]"),
        "costs": (_FLOAT, (n, n_costs), "[N, n_costs]"),
        "terminals": (_BOOL, (n,), "[N] bool"),
        "timeouts": (_BOOL, (n,), "[N] bool"),
        "episode_ids": (_INT, (n,), "[N] int"),
        "returns_to_go": (_FLOAT, (n,), "[N]"),
        "costs_to_go": (_FLOAT, (n, n_costs), "[N, n_costs] (the shape of costs)"),
        "mask": (_BOOL, (n,), "[N] bool"),
    }


def _check_fields(fields: dict[str, np.ndarray], names, source: str) -> None:
    """Raise ``ValueError`` naming the first missing, ill-typed, ill-shaped or non-finite field of ``fields``."""
    for name in names:
        if name not in fields:
            raise ValueError(f"{source}: dataset field {name!r} is missing (found: {sorted(fields)})")
    rewards = np.asarray(fields["rewards"])
    if rewards.ndim != 1 or rewards.shape[0] == 0:
        raise ValueError(f"{source}: dataset field 'rewards' must have shape [N] with N >= 1, got {rewards.shape}")
    n = rewards.shape[0]
    costs = np.asarray(fields["costs"])
    if costs.ndim != 2 or costs.shape[1] < 1:
        raise ValueError(f"{source}: dataset field 'costs' must have shape [N, n_costs] = [{n}, K], got {costs.shape}")
    obs_shape = np.shape(fields["observations"])[1:]
    action_shape = np.shape(fields["actions"])[1:]
    spec = _spec(n, costs.shape[1], obs_shape, action_shape)
    for name in names:
        kind, shape, described = spec[name]
        value = np.asarray(fields[name])
        if value.shape != shape:
            raise ValueError(f"{source}: dataset field {name!r} must have shape {described} = {list(shape)}, "
                             f"got {list(value.shape)}")
        if kind == _FLOAT and value.dtype.kind != "f":
            raise ValueError(f"{source}: dataset field {name!r} must be a float array, got dtype {value.dtype}")
        if kind == _BOOL and value.dtype != np.bool_:
            raise ValueError(f"{source}: dataset field {name!r} must be a bool array, got dtype {value.dtype}")
        if kind == _INT and value.dtype.kind not in "iu":
            raise ValueError(f"{source}: dataset field {name!r} must be an integer array, got dtype {value.dtype}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"{source}: dataset field {name!r} has non-finite values (NaN or inf)")
    ends = np.asarray(fields["terminals"]) | np.asarray(fields["timeouts"])
    if not ends[-1]:
        raise ValueError(f"{source}: the last episode has no end: 'terminals' or 'timeouts' must be true at the "
                         f"last step (every episode ends with one of them)")


# ---------------------------------------------------------------------------------------------------- building


def from_transitions(observations, next_observations, actions, rewards, costs, terminals, timeouts,
                     source: str = "dataset") -> TrajectoryDataset:
    """A :class:`TrajectoryDataset` from the seven DSRL fields (steps of complete episodes, in order).

    ``costs`` may be ``[N]`` (one cost, as DSRL stores it) or ``[N, n_costs]``. Computes ``episode_ids`` (episodes
    are delimited by ``terminals | timeouts``), the undiscounted ``returns_to_go`` / ``costs_to_go`` within
    episodes and an all-true ``mask``.

    Raises:
      ValueError: a field with the wrong shape or dtype, non-finite values, or a last episode without an end.
    """
    fields = dict(observations=np.asarray(observations), next_observations=np.asarray(next_observations),
                  actions=np.asarray(actions), rewards=np.asarray(rewards), costs=np.asarray(costs),
                  terminals=np.asarray(terminals), timeouts=np.asarray(timeouts))
    if fields["costs"].ndim == 1:
        fields["costs"] = fields["costs"][:, None]
    _check_fields(fields, DSRL_FIELDS, source)
    done = fields["terminals"] | fields["timeouts"]
    episode_ids = np.concatenate([[0], np.cumsum(done)[:-1]]).astype(np.int32)
    to_go = jax.jit(returns_to_go)
    returns = np.asarray(to_go(jnp.asarray(fields["rewards"]), jnp.asarray(done), jnp.float32(1.0)))
    costs_to_go = np.asarray(to_go(jnp.asarray(fields["costs"]), jnp.asarray(done), jnp.float32(1.0)))
    return TrajectoryDataset(**fields, episode_ids=episode_ids, returns_to_go=returns.astype(fields["rewards"].dtype),
                             costs_to_go=costs_to_go.astype(fields["costs"].dtype),
                             mask=np.ones(done.shape, bool))


def collect_dataset(env, env_params, policy: Policy, key, num_episodes: int, max_steps: int) -> TrajectoryDataset:
    """``num_episodes`` episodes of at most ``max_steps`` steps of ``policy`` as a :class:`TrajectoryDataset`.

    The episodes are :func:`jaxsafe.evaluate.rollout_trajectories` (one vmapped program; the same episodes as
    :func:`~jaxsafe.evaluate.rollout_episodes` with the same key), flattened episode after episode with the steps
    after each episode's end dropped. An episode that neither terminated nor was truncated within ``max_steps``
    gets ``timeouts = True`` at its last step. ``actions`` are what the policy returned (a policy that samples
    outside an action box records the unclipped sample).
    """
    require(is_int(num_episodes), "num_episodes", "a positive integer", num_episodes)
    require(is_int(max_steps), "max_steps", "a positive integer", max_steps)
    steps = jax.jit(lambda k: rollout_trajectories(env, env_params, policy, k, num_episodes, max_steps))(key)
    return trajectories_to_dataset(steps, f"collect_dataset({getattr(env, 'name', env)})")


def trajectories_to_dataset(steps, source: str = "rollout_trajectories") -> TrajectoryDataset:
    """The :class:`TrajectoryDataset` of :func:`jaxsafe.evaluate.rollout_trajectories`' output ``[episodes, T, ...]``
    (what :func:`collect_dataset` returns for it): the episodes one after another, the steps after each episode's end
    dropped, and ``timeouts = True`` at the last step of an episode that ran out of steps."""
    steps = jax.tree.map(np.asarray, steps)
    valid = steps.valid
    last = valid & ~np.concatenate([valid[:, 1:], np.zeros_like(valid[:, :1])], axis=1)
    cut = last & ~steps.terminated & ~steps.truncated  # ran out of max_steps: an episode end all the same
    keep = valid.reshape(-1)

    def flat(x):
        return x.reshape((-1,) + x.shape[2:])[keep]

    return from_transitions(flat(steps.observations), flat(steps.next_observations), flat(steps.actions),
                            flat(steps.rewards), flat(steps.costs), flat(steps.terminated),
                            flat(steps.truncated | cut), source=source)


def episode_returns(dataset: TrajectoryDataset) -> tuple[np.ndarray, np.ndarray]:
    """Each episode's return ``[E]`` and cost returns ``[E, n_costs]`` (the to-go values at its first step)."""
    first = np.concatenate([[True], dataset.episode_ids[1:] != dataset.episode_ids[:-1]])
    return dataset.returns_to_go[first], dataset.costs_to_go[first]


# ---------------------------------------------------------------------------------------------------- files


def save_npz(dataset: TrajectoryDataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` to ``path`` (``.npz`` is appended if missing) with ``np.savez`` and a ``format_version``.

    Raises:
      FileExistsError: ``path`` exists (a dataset file is never overwritten).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    fields = {name: np.asarray(value) for name, value in dataset._asdict().items()}
    _check_fields(fields, DSRL_FIELDS + DERIVED_FIELDS, str(path))
    with open(path, "xb") as handle:  # exclusive creation: refuses an existing file
        np.savez(handle, format_version=np.int32(FORMAT_VERSION), **fields)
    return path


def load_npz(path: str | os.PathLike) -> TrajectoryDataset:
    """Read a dataset written by :func:`save_npz` (``np.load(allow_pickle=False)``).

    Raises:
      ValueError: the file is not a dataset of this format version, or a field is missing, has the wrong shape or
        dtype, or non-finite values (the message names the field).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {name: data[name] for name in data.files}
    except ValueError as err:  # e.g. an object array, which would need pickle
        raise ValueError(f"{path}: not a jaxsafe dataset file ({err})") from None
    if "format_version" not in fields:
        raise ValueError(f"{path}: dataset field 'format_version' is missing (not written by "
                         f"jaxsafe.offline.save_npz?)")
    version = fields.pop("format_version")
    if version.shape != () or int(version) != FORMAT_VERSION:
        raise ValueError(f"{path}: dataset field 'format_version' must be {FORMAT_VERSION}, got {version.tolist()}")
    _check_fields(fields, DSRL_FIELDS + DERIVED_FIELDS, str(path))
    unknown = sorted(set(fields) - set(TrajectoryDataset._fields))
    if unknown:
        raise ValueError(f"{path}: unknown dataset fields {unknown}; a dataset has {list(TrajectoryDataset._fields)}")
    return TrajectoryDataset(**fields)


def concatenate(datasets) -> TrajectoryDataset:
    """The episodes of ``datasets`` (a non-empty sequence, same observation/action/cost shapes) one after another."""
    datasets = list(datasets)
    require(len(datasets) > 0, "datasets", "a non-empty sequence of TrajectoryDataset", datasets)
    fields = {name: np.concatenate([np.asarray(getattr(d, name)) for d in datasets]) for name in DSRL_FIELDS}
    return from_transitions(**fields, source="concatenate")


def from_dsrl_fields(fields, source: str = "DSRL dataset") -> TrajectoryDataset:
    """A dataset from a mapping holding DSRL's seven keys (an open HDF5 file, a dict of arrays).

    As DSRL does, arrays of shape ``[N, 1]`` for rewards, costs, terminals and timeouts are squeezed, floats are
    cast to float32 and the end markers to bool; other keys are ignored.

    Raises:
      ValueError: a missing key, or a field with the wrong shape, non-finite values or episodes without an end
        (the message names the field).
    """
    missing = [name for name in DSRL_FIELDS if name not in fields]
    if missing:
        raise ValueError(f"{source}: dataset field {missing[0]!r} is missing (a DSRL file has {list(DSRL_FIELDS)})")
    arrays = {}
    for name in DSRL_FIELDS:
        value = np.asarray(fields[name])
        if name in ("rewards", "costs", "terminals", "timeouts") and value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]
        if name in ("terminals", "timeouts"):
            if value.dtype != np.bool_ and not np.all((value == 0) | (value == 1)):
                raise ValueError(f"{source}: dataset field {name!r} must hold booleans or 0/1, got other values")
            value = value.astype(bool)
        elif value.dtype.kind == "f":
            value = value.astype(np.float32)
        arrays[name] = value
    return from_transitions(**arrays, source=source)


def load_hdf5(path: str | os.PathLike) -> TrajectoryDataset:
    """Read a DSRL HDF5 dataset file (needs ``h5py``: ``pip install h5py``) with :func:`from_dsrl_fields`.

    Raises:
      ImportError: ``h5py`` is not installed. ValueError: as :func:`from_dsrl_fields`.
    """
    try:
        import h5py
    except ImportError as err:
        raise ImportError("reading DSRL .hdf5 files needs the optional h5py package (pip install h5py)") from err
    with h5py.File(path, "r") as handle:
        fields = {name: handle[name][()] for name in DSRL_FIELDS if name in handle}
    return from_dsrl_fields(fields, source=str(path))
