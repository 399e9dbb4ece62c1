"""Hyperparameter grids compiled as one program, sharded across devices.

A grid is the product of seeds and any hparams fields::

    grid = make_grid(config.default_hparams(), seeds=4, cost_limit=[5.0, 10.0, 25.0])
    result = run_grid(train, grid)          # jit(vmap(train)) with the grid axis sharded over jax.devices()
    result = run_grid(train, grid, max_lanes="auto")   # a grid larger than memory, in batches that fit
    result.metrics["episode_cost"]          # [grid.size, num_updates]

``grid.points`` describes each lane (``{"seed": 0, "cost_limit": 5.0}``), so results can be labelled, tabulated
and written to ``metrics.jsonl``. The grid axis is padded to a multiple of the device count and the padding is
dropped from the result, so any grid runs on any number of devices.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsafe.learner import field_names


class Grid(NamedTuple):
    """A flattened grid of ``size`` lanes.

    Attributes:
      keys: ``[size, 2]`` PRNG keys (one per lane; lanes sharing a seed share a key, so they differ only in hparams).
      hparams: the hparams pytree with a leading ``[size]`` axis on every leaf.
      points: per lane, ``{"seed": int, field: value, ...}`` for the swept fields.
      swept: the names of the swept hparams fields (in grid order).
    """

    keys: jax.Array
    hparams: Any
    points: list[dict]
    swept: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.points)


def _replace(hparams, **values):
    return hparams.replace(**values) if hasattr(hparams, "replace") else hparams._replace(**values)


def make_grid(base_hparams: Any, seeds: int | Sequence[int] = 1, base_seed: int = 0, **fields: Sequence[float]) -> Grid:
    """The product grid ``seeds x fields[0] x fields[1] x ...`` (seed varies slowest).

    Args:
      base_hparams: default values for every field not swept.
      seeds: a number of seeds (``0..seeds-1``) or an explicit list of seed integers.
      base_seed: added to every seed before ``jax.random.PRNGKey``.
      **fields: hparams field name -> list of scalar values (on a vector field a value fills every entry).

    Raises:
      ValueError: an unknown field (lists the valid ones), an empty value list, or no seeds.
    """
    names = field_names(base_hparams)
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise ValueError(f"unknown hparams field(s) {unknown}; valid fields: {names}")
    for name, values in fields.items():
        if len(np.atleast_1d(values)) == 0:
            raise ValueError(f"grid field {name!r} has no values")
    seed_list = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must be a positive count or a non-empty list")
    swept = tuple(fields)
    # Points keep the values as given (float64), the traced hparams are float32.
    value_lists = [list(np.atleast_1d(np.asarray(fields[name], np.float64)).tolist()) for name in swept]
    points = [
        {"seed": seed, **dict(zip(swept, combo))}
        for seed, *combo in itertools.product(seed_list, *value_lists)
    ]
    keys = jnp.stack([jax.random.PRNGKey(base_seed + p["seed"]) for p in points])
    base = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), base_hparams)
    stacked = jax.tree.map(lambda v: jnp.broadcast_to(v, (len(points),) + jnp.shape(v)), base)
    # A swept value is a scalar; on a vector field (one entry per cost or constraint) it fills every entry.
    stacked = _replace(stacked, **{
        name: jnp.broadcast_to(jnp.asarray([p[name] for p in points], jnp.float32).reshape(
            (len(points),) + (1,) * jnp.ndim(getattr(base, name))), jnp.shape(getattr(stacked, name)))
        for name in swept})
    return Grid(keys=keys, hparams=stacked, points=points, swept=swept)


def grid_sharding(devices: Sequence[jax.Device] | None = None) -> NamedSharding:
    """A sharding that splits a leading grid axis over ``devices`` (default: all of ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    return NamedSharding(Mesh(np.asarray(devices), ("grid",)), PartitionSpec("grid"))


def pad_to_multiple(tree: Any, size: int, multiple: int) -> Any:
    """Pad the leading axis of every leaf to a multiple of ``multiple`` by repeating the last lane."""
    padded = -(-size // multiple) * multiple
    if padded == size:
        return tree
    return jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padded - size, axis=0)]), tree)


def shard_grid(tree: Any, size: int, devices: Sequence[jax.Device] | None = None) -> Any:
    """Pad ``tree``'s leading grid axis to the device count and place it sharded across devices."""
    sharding = grid_sharding(devices)
    num_devices = sharding.mesh.devices.size
    return jax.device_put(pad_to_multiple(tree, size, num_devices), sharding)


def _device_count(devices) -> int:
    return len(list(jax.devices() if devices is None else devices))


def lane_memory_bytes(train: Callable[[jax.Array, Any], Any], grid: Grid,
                      devices: Sequence[jax.Device] | None = None) -> int:
    """Bytes one lane of ``jit(vmap(train))`` needs on a device: arguments, outputs and temporaries of the program
    compiled for one lane per device, from XLA's memory analysis."""
    count = _device_count(devices)
    keys, hparams = shard_grid(lane_slice((grid.keys, grid.hparams), 0, count), count, devices)
    analysis = jax.jit(jax.vmap(train)).lower(keys, hparams).compile().memory_analysis()
    if analysis is None:
        raise RuntimeError("this backend reports no memory analysis; pass max_lanes as an integer")
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes)


def available_device_bytes(devices: Sequence[jax.Device] | None = None) -> int:
    """Free memory of the first device (accelerators report it; on CPU: half the physical memory per device)."""
    devices = list(jax.devices() if devices is None else devices)
    stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    import os

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(physical // 2 // len(devices))


def lanes_that_fit(train: Callable[[jax.Array, Any], Any], grid: Grid,
                   devices: Sequence[jax.Device] | None = None, headroom: float = 0.8) -> int:
    """How many lanes run at once within ``headroom`` of the free device memory (a multiple of the device count)."""
    count = _device_count(devices)
    per_lane = max(lane_memory_bytes(train, grid, devices), 1)
    per_device = int(headroom * available_device_bytes(devices) // per_lane)
    return max(per_device, 1) * count


def lane_slice(tree: Any, start: int, stop: int) -> Any:
    """Lanes ``start:stop`` of a grid-batched pytree."""
    return jax.tree.map(lambda x: x[start:stop], tree)


def run_grid(
    train: Callable[[jax.Array, Any], Any],
    grid: Grid,
    devices: Sequence[jax.Device] | None = None,
    max_lanes: int | str | None = None,
) -> Any:
    """``jit(vmap(train))`` over the whole grid, lanes sharded over ``devices``.

    With ``max_lanes`` (an integer, or ``"auto"`` for :func:`lanes_that_fit`) a grid larger than memory runs in
    batches of at most that many lanes (rounded down to a multiple of the device count), one compiled program
    reused for every batch; each lane's result is the same as in one batch, and the result is gathered on the host
    (numpy arrays). Without it the whole grid is one program and the result stays on the devices.

    Returns ``train``'s output with a leading ``[grid.size]`` axis (padding removed).
    """
    if max_lanes == "auto":
        max_lanes = lanes_that_fit(train, grid, devices)
    if max_lanes is not None and (not isinstance(max_lanes, (int, np.integer)) or isinstance(max_lanes, bool)
                                  or max_lanes < 1):
        raise ValueError(f"max_lanes must be a positive integer or 'auto', got {max_lanes!r}")
    program = jax.jit(jax.vmap(train))
    if max_lanes is None or max_lanes >= grid.size:
        keys, hparams = shard_grid((grid.keys, grid.hparams), grid.size, devices)
        return jax.tree.map(lambda x: x[: grid.size], program(keys, hparams))
    count = _device_count(devices)
    batch = max(count, max_lanes // count * count)
    outputs = []
    for start in range(0, grid.size, batch):
        stop = min(start + batch, grid.size)
        part = lane_slice((grid.keys, grid.hparams), start, stop)
        keys, hparams = shard_grid(pad_to_multiple(part, stop - start, batch), batch, devices)
        outputs.append(jax.tree.map(lambda x, n=stop - start: np.asarray(x[:n]), program(keys, hparams)))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def lane(tree: Any, index: int) -> Any:
    """Lane ``index`` of a grid-batched pytree."""
    return jax.tree.map(lambda x: x[index], tree)
