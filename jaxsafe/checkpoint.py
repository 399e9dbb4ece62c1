"""Orbax checkpoints of learner state, keyed by the number of completed chunks, with integrity digests.

``save`` writes a whole pytree (learner state of every grid lane) atomically (orbax writes into a temporary
directory and renames it when complete), so a run killed mid-save keeps its previous checkpoint, then records a
SHA-256 digest of every file of the new step in ``<step>.digest.json`` beside it. ``restore`` needs a template
pytree with the right structure, shapes and dtypes (build it with the same ``init`` function); it verifies the
digest before reading and, when the newest checkpoint is corrupt, truncated or unreadable, falls back to the
previous one with a warning (``max_to_keep`` is 2, so one older checkpoint is always there after the second save).
Checking the digest first also means orbax never reads a corrupt file, which is what used to leave reads in flight
after the manager closed (``RuntimeError: Event loop is closed`` tracebacks around the clean error).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the run it is restored into."""


class CheckpointWarning(UserWarning):
    """The newest checkpoint could not be used and an older one was restored."""


def _manager(directory: str | os.PathLike, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    # Readers keep everything (None): only a save prunes, with the run's own max_to_keep.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _digest_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"{step}.digest.json"


def _step_digest(directory: Path, step: int) -> dict[str, str]:
    root = Path(directory) / str(step)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def save(directory: str | os.PathLike, step: int, state: Any, max_to_keep: int | None = 2) -> None:
    """Save ``state`` as checkpoint ``step`` (older ones beyond ``max_to_keep`` are removed; None keeps all).

    Raises:
      CheckpointError: the write failed (a full disk, a file-size limit); the previous checkpoint is intact.
    """
    directory = Path(directory)
    # Host copies in one process; in a multi-process run each process hands orbax its shards of the global arrays.
    state = jax.tree.map(lambda x: np.asarray(x) if getattr(x, "is_fully_addressable", True) else x, state)
    primary = jax.process_index() == 0
    try:
        with _manager(directory, max_to_keep) as manager:
            manager.save(step, args=ocp.args.StandardSave(state))
            manager.wait_until_finished()
            kept = set(manager.all_steps())
        if primary:
            tmp = _digest_path(directory, step).with_suffix(".tmp")
            tmp.write_text(json.dumps(_step_digest(directory, step), sort_keys=True))
            os.replace(tmp, _digest_path(directory, step))
    except OSError as err:
        raise CheckpointError(f"could not write checkpoint {step} in {directory}: {err}; the previous checkpoint "
                              f"is kept") from None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxsafe-checkpoint-{step}")
    if not primary:
        return
    for stale in directory.glob("*.digest.json"):
        if stale.name.split(".")[0].isdigit() and int(stale.name.split(".")[0]) not in kept:
            stale.unlink(missing_ok=True)


def all_steps(directory: str | os.PathLike) -> list[int]:
    """Every complete checkpoint step in ``directory``, oldest first."""
    if not Path(directory).is_dir():
        return []
    with _manager(directory) as manager:
        return sorted(manager.all_steps())


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete checkpoint step in ``directory``, or ``None``."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def verify(directory: str | os.PathLike, step: int) -> str | None:
    """Why checkpoint ``step`` fails its digest (a sentence), or None when it matches or has no digest (older runs)."""
    path = _digest_path(Path(directory), step)
    if not path.is_file():
        return None
    try:
        expected = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return f"its digest file {path.name} is unreadable"
    actual = _step_digest(Path(directory), step)
    missing = sorted(set(expected) - set(actual))
    changed = sorted(name for name in expected if name in actual and actual[name] != expected[name])
    if missing:
        return f"{len(missing)} file(s) are missing (e.g. {missing[0]})"
    if changed:
        return f"{len(changed)} file(s) are corrupt (e.g. {changed[0]})"
    return None


def _restore_step(directory: Path, template: Any, step: int) -> Any:
    problem = verify(directory, step)
    if problem is not None:
        raise CheckpointError(f"checkpoint {step} in {directory} is damaged: {problem}")
    def abstract_leaf(x):
        if getattr(x, "is_fully_addressable", True):
            return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)  # restored straight into its shards

    abstract = jax.tree.map(abstract_leaf, template)
    try:
        with _manager(directory) as manager:
            state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax raises many types for corrupt or mismatched data
        raise CheckpointError(f"checkpoint {step} in {directory} is unreadable or does not match this run: "
                              f"{str(err)[:300]}") from None
    leaves = [x for x in jax.tree.leaves(state) if getattr(x, "is_fully_addressable", True)]
    if any(np.asarray(x).dtype.kind == "f" and not np.all(np.isfinite(np.asarray(x))) for x in leaves):
        raise CheckpointError(f"checkpoint {step} in {directory} contains non-finite values")
    return state


def restore(directory: str | os.PathLike, template: Any, step: int | None = None) -> tuple[int, Any]:
    """Restore checkpoint ``step`` (default: the newest usable one) into the structure of ``template``.

    With ``step=None`` a damaged newest checkpoint is skipped with a :class:`CheckpointWarning` and the next older
    one is restored; the returned step says which.

    Raises:
      CheckpointError: no checkpoint, or none that can be read into ``template`` (says which and why).
    """
    directory = Path(directory)
    steps = [step] if step is not None else all_steps(directory)[::-1]
    if not steps:
        raise CheckpointError(f"no checkpoint found in {directory}")
    errors = []
    for candidate in steps:
        try:
            state = _restore_step(directory, template, candidate)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        if errors:
            warnings.warn(f"{errors[-1]}; restored the older checkpoint {candidate} instead", CheckpointWarning,
                          stacklevel=2)
        return candidate, state
    raise CheckpointError("; ".join(errors))


def set_aside(directory: str | os.PathLike, step: int) -> Path:
    """Move checkpoint ``step`` (and its digest) to ``damaged-<step>`` beside the others, so a resumed run can write
    that step again; nothing is deleted. Returns the new path."""
    directory = Path(directory)
    target = directory / f"damaged-{step}"
    suffix = 0
    while target.exists():
        suffix += 1
        target = directory / f"damaged-{step}-{suffix}"
    os.replace(directory / str(step), target)
    digest = _digest_path(directory, step)
    if digest.exists():
        os.replace(digest, target / "jaxsafe.digest.json")
    return target
