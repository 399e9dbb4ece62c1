"""Long runs: a Python loop over jitted chunks of a learner, with checkpoints, progress, metrics and resume.

``run_training`` trains a whole grid (seeds x swept hparams) as one vmapped, sharded program, ``num_chunks`` chunks
at a time. Between chunks it checks for non-finite losses, saves an orbax checkpoint of every lane's learner state,
appends one metrics row per lane to ``metrics.jsonl`` and updates the progress bar. ``resume_training`` rebuilds
the run from its ``config.json``, restores the newest checkpoint and continues; the result is bit-identical to a run
that was never interrupted, because the same compiled chunks are applied to the same states.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

import jaxsafe
from jaxsafe import checkpoint, envs
from jaxsafe.algorithms import get_algorithm
from jaxsafe.evaluate import rollout_episodes
from jaxsafe.logging import Progress, RunDir, summarize
from jaxsafe.sweep import Grid, make_grid, shard_grid

#: Metrics averaged over a chunk's updates (NaN-aware) rather than taken at its last update.
_CHUNK_MEANS = ("episode_return", "episode_cost", "step_cost")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf; the run directory keeps the last good checkpoint."""


class RunResult(NamedTuple):
    run_dir: RunDir
    grid: Grid
    state: Any  # learner state with a leading [grid.size] axis
    rows: list[dict]  # every metrics row of the run (including those logged before a resume)
    summary: dict


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; stored as ``config.json`` and enough to rebuild it on resume."""

    algorithm: str
    env: str
    env_overrides: dict
    config: dict
    hparams: dict
    grid: dict
    seeds: list
    num_chunks: int

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "jaxsafe_version": jaxsafe.__version__}

    @classmethod
    def from_json(cls, data: dict) -> "RunSpec":
        try:
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
        except KeyError as err:
            raise ValueError(f"config.json is missing the field {err}") from None


def _parse_value(field: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(default, tuple):
            return tuple(int(v) for v in text.replace("x", ",").split(",") if v)
        if isinstance(default, (int, np.integer)):
            return int(float(text)) if float(text).is_integer() else int(text)
        if isinstance(default, str):
            return text
        return float(text)
    except ValueError:
        raise ValueError(f"--set {field}={text}: expected a {type(default).__name__}") from None


def split_overrides(algorithm: str, overrides: dict[str, Any]) -> tuple[dict, dict]:
    """Split ``{field: value}`` into (config overrides, hparams overrides); strings are parsed by field type.

    Raises:
      ValueError: a field that is neither (lists both sets of valid names).
    """
    algo = get_algorithm(algorithm)
    config_defaults = {f.name: f.default for f in dataclasses.fields(algo.config_cls)}
    hparam_defaults = {f.name: f.default for f in dataclasses.fields(algo.make_config().default_hparams())}
    config_overrides, hparam_overrides = {}, {}
    for field, value in overrides.items():
        if field in config_defaults:
            default = config_defaults[field]
            config_overrides[field] = _parse_value(field, value, default) if isinstance(value, str) else value
        elif field in hparam_defaults:
            hparam_overrides[field] = _parse_value(field, value, 0.0) if isinstance(value, str) else float(value)
        else:
            raise ValueError(
                f"unknown field {field!r} for {algorithm}; config fields: {sorted(config_defaults)}; "
                f"hparams fields: {sorted(hparam_defaults)}"
            )
    return config_overrides, hparam_overrides


def _build(spec: RunSpec):
    algo = get_algorithm(spec.algorithm)
    env, env_params = envs.make(spec.env, **spec.env_overrides)
    config_fields = {**spec.config}
    if "hidden" in config_fields:
        config_fields["hidden"] = tuple(config_fields["hidden"])
    config = algo.make_config(**config_fields)
    hparams = config.default_hparams().replace(**spec.hparams).as_arrays().validate()
    grid = make_grid(hparams, seeds=spec.seeds, **spec.grid)
    grid.hparams.validate()
    parts = algo.make_train_parts(config, (env, env_params))
    return algo, env, env_params, config, grid, parts


def make_spec(
    algorithm: str,
    env: str,
    *,
    seeds: int | list[int] = 1,
    grid: dict | None = None,
    overrides: dict | None = None,
    env_overrides: dict | None = None,
    num_chunks: int = 10,
) -> RunSpec:
    """Validate a run description (no compilation) and return its :class:`RunSpec`."""
    config_overrides, hparam_overrides = split_overrides(algorithm, overrides or {})
    algo = get_algorithm(algorithm)
    config = algo.make_config(**config_overrides)  # validates static fields
    hparams = config.default_hparams().replace(**hparam_overrides)
    hparams.as_arrays().validate()
    grid = dict(grid or {})
    make_grid(hparams, seeds=1, **grid).hparams.validate()  # validates swept fields and values
    envs.make(env, **(env_overrides or {}))  # validates the environment name and overrides
    if not isinstance(num_chunks, int) or num_chunks < 1:
        raise ValueError(f"num_chunks must be a positive integer, got {num_chunks!r}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must be a positive count or a non-empty list")
    return RunSpec(
        algorithm=algorithm,
        env=env,
        env_overrides=dict(env_overrides or {}),
        config=dataclasses.asdict(config),
        hparams={k: float(v) for k, v in dataclasses.asdict(hparams).items()},
        grid={k: [float(v) for v in np.atleast_1d(vals)] for k, vals in grid.items()},
        seeds=seed_list,
        num_chunks=min(num_chunks, config.num_updates),
    )


def chunk_lengths(num_updates: int, num_chunks: int) -> list[int]:
    """Split ``num_updates`` into ``num_chunks`` chunks (equal, the last one possibly shorter)."""
    size = math.ceil(num_updates / num_chunks)
    lengths = [size] * (num_updates // size)
    if num_updates % size:
        lengths.append(num_updates % size)
    return lengths


def _chunk_rows(grid: Grid, metrics: dict, chunk_index: int) -> list[dict]:
    rows = []
    host = {k: np.asarray(v) for k, v in metrics.items()}
    for lane, point in enumerate(grid.points):
        row = {"run": lane, "chunk": chunk_index, **point}
        for name, values in host.items():
            series = values[lane]
            if name in _CHUNK_MEANS:
                finite = series[np.isfinite(series)]
                row[name] = float(finite.mean()) if finite.size else None
            else:
                row[name] = series[-1]
        rows.append(row)
    return rows


def summarize_rows(grid: Grid, rows: list[dict]) -> dict:
    """Final mean and spread over seeds of each grid point (one entry per distinct swept setting)."""
    final: dict[int, dict] = {}
    for row in rows:
        final[row["run"]] = row  # rows are in time order: the last one per lane wins
    groups: dict[tuple, list[dict]] = {}
    for lane, point in enumerate(grid.points):
        setting = tuple((k, point[k]) for k in grid.swept)
        if lane in final:
            groups.setdefault(setting, []).append(final[lane])
    points = []
    for setting, lane_rows in groups.items():
        entry = {"setting": dict(setting), "seeds": [r["seed"] for r in lane_rows]}
        for metric in ("episode_return", "episode_cost", "multiplier", "env_steps"):
            values = np.asarray([np.nan if r.get(metric) is None else r[metric] for r in lane_rows], float)
            entry[metric] = summarize(values)
        points.append(entry)
    return {"points": points}


def run_training(
    spec: RunSpec,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    plot: bool = True,
) -> RunResult:
    """Train ``spec`` in ``out_dir`` (a new run, or a resumed one with ``resume=True``).

    Args:
      stop_after_chunks: stop (as if killed) after this many chunks of *this call*; for tests and time-boxed jobs.

    Raises:
      RunDirExists: a new run into a directory that is not empty (nothing is written).
      TrainingDiverged: a non-finite loss; the newest checkpoint is the last good state.
    """
    run_dir = RunDir(out_dir, must_exist=resume)
    algo, env, env_params, config, grid, parts = _build(spec)
    lengths = chunk_lengths(parts.num_updates, spec.num_chunks)

    def run_chunk(state, hparams, length):
        return jax.lax.scan(lambda s, _: parts.update(s, hparams), state, None, length=length)

    chunk_fns = {n: jax.jit(jax.vmap(lambda s, h, n=n: run_chunk(s, h, n))) for n in sorted(set(lengths))}
    keys, hparams = shard_grid((grid.keys, grid.hparams), grid.size)
    state = jax.jit(jax.vmap(parts.init))(keys, hparams)

    start_chunk, rows = 0, []
    if resume:
        step, restored = checkpoint.restore(run_dir.checkpoint_dir, jax.tree.map(lambda x: x[: grid.size], state))
        state = shard_grid(restored, grid.size)
        start_chunk = step
        steps_done = sum(lengths[:step]) * parts.steps_per_update
        run_dir.truncate_metrics(steps_done)
        rows = run_dir.read_metrics()
    else:
        run_dir.write_config(spec.to_json())

    bar = Progress(parts.num_updates * parts.steps_per_update, desc=f"{spec.algorithm} {spec.env}", enabled=progress)
    bar.update(sum(lengths[:start_chunk]) * parts.steps_per_update)
    try:
        for chunk_index in range(start_chunk, len(lengths)):
            if stop_after_chunks is not None and chunk_index - start_chunk >= stop_after_chunks:
                break
            state, metrics = chunk_fns[lengths[chunk_index]](state, hparams)
            metrics = jax.tree.map(lambda x: np.asarray(x)[: grid.size], metrics)
            bad = np.argwhere(metrics["nonfinite"])
            if bad.size:
                lane, update = bad[0]
                first_update = sum(lengths[:chunk_index]) + int(update)
                raise TrainingDiverged(
                    f"non-finite loss at update {first_update} (chunk {chunk_index}) of grid lane {int(lane)} "
                    f"{grid.points[int(lane)]}; the last good checkpoint (chunk {chunk_index}) is kept in "
                    f"{run_dir.checkpoint_dir}"
                )
            checkpoint.save(run_dir.checkpoint_dir, chunk_index + 1, jax.tree.map(lambda x: x[: grid.size], state))
            new_rows = _chunk_rows(grid, metrics, chunk_index)
            run_dir.append_metrics(new_rows)
            rows.extend(new_rows)
            last = {k: np.nanmean([r[k] for r in new_rows if r.get(k) is not None] or [np.nan])
                    for k in ("episode_return", "episode_cost", "multiplier")}
            bar.update(int(new_rows[0]["env_steps"]), ret=last["episode_return"], cost=last["episode_cost"],
                       mult=last["multiplier"])
    finally:
        bar.close()

    summary = summarize_rows(grid, rows)
    summary.update(algorithm=spec.algorithm, env=spec.env, swept=list(grid.swept),
                   complete=bool(rows) and rows[-1]["chunk"] == len(lengths) - 1)
    run_dir.write_summary(summary)
    if plot and rows:
        from jaxsafe.plotting import plot_curves

        plot_curves(rows, grid.swept, run_dir.figure_path, cost_limits=_cost_limits(spec, grid),
                    title=f"{spec.algorithm} on {spec.env}")
    return RunResult(run_dir, grid, jax.tree.map(lambda x: x[: grid.size], state), rows, summary)


def _cost_limits(spec: RunSpec, grid: Grid) -> dict:
    if spec.algorithm == "ppo":
        return {}
    if "cost_limit" in grid.swept:
        return {"cost_limit": sorted(set(p["cost_limit"] for p in grid.points))}
    return {"cost_limit": [spec.hparams.get("cost_limit")]} if "cost_limit" in spec.hparams else {}


def resume_training(out_dir: str | Path, **kwargs) -> RunResult:
    """Continue the run in ``out_dir`` from its newest checkpoint (errors if missing or corrupt; writes nothing)."""
    run_dir = RunDir(out_dir, must_exist=True)
    spec = RunSpec.from_json(run_dir.read_config())
    if checkpoint.latest_step(run_dir.checkpoint_dir) is None:
        raise checkpoint.CheckpointError(f"{run_dir.path} has no checkpoint to resume from")
    return run_training(spec, out_dir, resume=True, **kwargs)


class LoadedRun(NamedTuple):
    """A run directory's newest policies: ``params`` has a leading grid axis; ``act(params, obs, key,
    deterministic)`` acts for one lane and one observation."""

    spec: RunSpec
    env: Any
    env_params: Any
    config: Any
    grid: Grid
    act: Any
    params: Any
    checkpoint_step: int


def load_run(out_dir: str | Path) -> LoadedRun:
    """Rebuild a run directory's learner and restore the newest checkpoint's parameters of every lane."""
    run_dir = RunDir(out_dir, must_exist=True)
    spec = RunSpec.from_json(run_dir.read_config())
    algo, env, env_params, config, grid, parts = _build(spec)
    template = jax.vmap(parts.init)(grid.keys, grid.hparams)
    step, state = checkpoint.restore(run_dir.checkpoint_dir, template)
    return LoadedRun(spec, env, env_params, config, grid, algo.make_act(config, (env, env_params)), state.params, step)


def evaluate_run(out_dir: str | Path, episodes: int = 16, max_steps: int = 1000, deterministic: bool = False,
                 seed: int = 0) -> list[dict]:
    """Roll out the newest checkpoint's policy of every lane for ``episodes`` episodes; one result row per lane."""
    run = load_run(out_dir)
    env, env_params, act, grid, step = run.env, run.env_params, run.act, run.grid, run.checkpoint_step
    stats = jax.jit(jax.vmap(lambda p, k: rollout_returns(env, env_params, act, p, k, episodes, max_steps,
                                                          deterministic)))
    returns, costs, finished = stats(run.params, jax.random.split(jax.random.PRNGKey(seed), grid.size))
    rows = []
    for lane, point in enumerate(grid.points):
        done = np.asarray(finished[lane])
        rows.append({**point, "checkpoint": step, "episodes": int(done.sum()),
                     "episode_return": float(np.asarray(returns[lane])[done].mean()) if done.any() else None,
                     "episode_cost": float(np.asarray(costs[lane])[done].mean()) if done.any() else None})
    return rows


def rollout_returns(env, env_params, act, params, key, episodes: int, max_steps: int, deterministic: bool):
    """Return and cost of ``episodes`` independent episodes (``[episodes]`` each, by
    :func:`jaxsafe.evaluate.rollout_episodes`); ``finished`` marks those that ended within ``max_steps`` steps."""
    rollouts = rollout_episodes(env, env_params, lambda obs, k, _: act(params, obs, k, deterministic), key, episodes,
                                max_steps)
    return rollouts.returns, rollouts.costs, rollouts.finished
