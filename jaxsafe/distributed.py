"""Sweeps over several processes and hosts on JAX's own multi-controller runtime (``jax.distributed``).

Every process runs the same program: it builds the same grid, and :func:`jaxsafe.sweep.shard_grid` places the grid
axis over the *global* devices (``jax.devices()`` spans every process), so each process computes the lanes on its
own devices. Between chunks the runner writes each process's lanes to its own metrics file and one process (the
primary, ``process_index() == 0``) writes ``config.json``, the summary and the figure; orbax writes each process's
shards of the checkpoint. Only a tiny flag crosses processes per chunk (did any lane diverge?), so the lanes never
wait for each other.

Start it with the flags of ``jaxsafe train|sweep``::

    jaxsafe sweep ppo_lag --env SafeCartPole --grid cost_limit=10,25 --seeds 8 --out runs/big \\
        --coordinator HOST:PORT --num-processes P --process-id I        # once per process, I = 0..P-1

or with ``--distributed`` alone where the cluster tells JAX who is who (SLURM's ``SLURM_*`` variables, Cloud TPU
VMs, Kubernetes): ``jax.distributed.initialize()`` reads them. ``docs/distributed.md`` has a SLURM script and a TPU
VM command.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["initialize", "process_index", "process_count", "is_primary", "barrier", "any_process",
           "addressable_lanes"]

_initialized = False


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               auto: bool = False) -> bool:
    """Join a multi-process run (before any JAX computation). Returns whether more than one process takes part.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordination service.
      num_processes, process_id: this run's process count and this process's index in ``0..num_processes-1``.
      auto: no explicit settings; let ``jax.distributed.initialize()`` read the cluster's environment.

    Raises:
      ValueError: an incomplete or inconsistent set of settings (names the flag).
    """
    global _initialized
    explicit = (coordinator, num_processes, process_id)
    if not auto and all(v is None for v in explicit):
        return False
    if not auto and any(v is None for v in explicit):
        raise ValueError("--coordinator, --num-processes and --process-id go together (or use --distributed to read "
                         "them from the cluster's environment)")
    if not auto:
        if not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(f"--num-processes must be a positive integer, got {num_processes!r}")
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id!r}")
        if ":" not in coordinator:
            raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if _initialized:
        return jax.process_count() > 1
    # CPU processes exchange their small per-chunk flags through gloo; accelerators use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    _initialized = True
    return jax.process_count() > 1


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_primary() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (a no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(value: int) -> np.ndarray:
    """Every process's ``value`` (an int), as an array indexed by process (the value itself in one process)."""
    if jax.process_count() == 1:
        return np.asarray([value])
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray([value], np.int64))).reshape(-1)


def addressable_lanes(tree: Any, size: int) -> tuple[list[int], Any]:
    """The grid lanes (below ``size``) held by this process's devices and their values as host arrays.

    Returns ``(lanes, host_tree)`` where every leaf of ``host_tree`` has a leading ``[len(lanes)]`` axis. In one
    process this is every lane. Leaves must be sharded along their leading (grid) axis.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        return list(range(size)), tree
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in leaves):
        return list(range(size)), jax.tree.unflatten(treedef, [np.asarray(leaf)[:size] for leaf in leaves])
    lanes = sorted({i for shard in leaves[0].addressable_shards
                    for i in range(*shard.index[0].indices(leaves[0].shape[0])) if i < size})
    host = []
    for leaf in leaves:
        values = {}
        for shard in leaf.addressable_shards:
            start, stop, _ = shard.index[0].indices(leaf.shape[0])
            data = np.asarray(shard.data)
            for offset, index in enumerate(range(start, stop)):
                values[index] = data[offset]
        host.append(np.stack([values[i] for i in lanes]) if lanes else np.zeros((0,) + leaf.shape[1:], leaf.dtype))
    return lanes, jax.tree.unflatten(treedef, host)
