"""Orbax checkpoints of learner state, keyed by the number of completed chunks.

``save`` writes a whole pytree (learner state of every grid lane) atomically (orbax writes into a temporary
directory and renames it when complete), so a run killed mid-save keeps its previous checkpoint. ``restore``
needs a template pytree with the right structure, shapes and dtypes (build it with the same ``init`` function).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the run it is restored into."""


def _manager(directory: str | os.PathLike, max_to_keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(directory: str | os.PathLike, step: int, state: Any, max_to_keep: int = 2) -> None:
    """Save ``state`` as checkpoint ``step`` (older ones beyond ``max_to_keep`` are removed)."""
    state = jax.tree.map(np.asarray, state)
    with _manager(directory, max_to_keep) as manager:
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete checkpoint step in ``directory``, or ``None``."""
    if not Path(directory).is_dir():
        return None
    with _manager(directory) as manager:
        return manager.latest_step()


def restore(directory: str | os.PathLike, template: Any, step: int | None = None) -> tuple[int, Any]:
    """Restore checkpoint ``step`` (default: the latest) into the structure of ``template``.

    Raises:
      CheckpointError: no checkpoint, or one that cannot be read into ``template`` (says which and why).
    """
    step = latest_step(directory) if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint found in {directory}")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), template)
    try:
        with _manager(directory) as manager:
            state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax raises many types for corrupt or mismatched data
        raise CheckpointError(f"checkpoint {step} in {directory} is unreadable or does not match this run: {err}")
    leaves = jax.tree.leaves(state)
    if any(isinstance(x, np.ndarray) and x.dtype.kind == "f" and not np.all(np.isfinite(x)) for x in leaves):
        raise CheckpointError(f"checkpoint {step} in {directory} contains non-finite values")
    return step, state
