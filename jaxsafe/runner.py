"""Long runs of any registered learner: a Python loop over jitted chunks, with checkpoints, progress and resume.

``run_training`` trains a whole grid (seeds x swept hparams) of one algorithm (:mod:`jaxsafe.algorithms`: PPO and
CPO on environments, the bi-level estimators on bi-level problems, SACPO on alignment tasks, ...) as one vmapped,
sharded program, ``num_chunks`` chunks at a time. Between chunks it checks for non-finite losses, saves an orbax
checkpoint of every lane's learner state, appends one metrics row per lane to ``metrics.jsonl`` and updates the
progress bar. ``resume_training`` rebuilds the run from its ``config.json``, restores the newest checkpoint and
continues; the result is bit-identical to a run that was never interrupted, because the same compiled chunks are
applied to the same states.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

import jaxsafe
from jaxsafe import checkpoint, distributed
from jaxsafe.algorithms import Algorithm, get_algorithm
from jaxsafe.evaluate import rollout_episodes
from jaxsafe.logging import Progress, RunDir, check_new_run_dir, summarize
from jaxsafe.policy import from_act
from jaxsafe.sweep import Grid, make_grid, shard_grid


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf; the run directory keeps the last good checkpoint."""


class RunWriteError(RuntimeError):
    """Writing the run directory failed (a full disk, a file-size limit); the last good checkpoint is kept."""


class RunResult(NamedTuple):
    run_dir: RunDir
    grid: Grid
    state: Any  # learner state with a leading [grid.size] axis
    rows: list[dict]  # every metrics row of the run (including those logged before a resume)
    summary: dict


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; stored as ``config.json`` and enough to rebuild it on resume.

    ``problem`` names what the algorithm trains on (an environment, a bi-level problem, an alignment task) and
    ``problem_overrides`` its options. Run directories written before the registry knew other problems stored
    these as ``env`` / ``env_overrides``; they are read the same way.
    """

    algorithm: str
    problem: str
    problem_overrides: dict
    config: dict
    hparams: dict
    grid: dict
    seeds: list
    num_chunks: int
    keep_checkpoints: int = 2

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "jaxsafe_version": jaxsafe.__version__}

    @classmethod
    def from_json(cls, data: dict) -> "RunSpec":
        data = dict(data)
        for old, new in (("env", "problem"), ("env_overrides", "problem_overrides")):
            if new not in data and old in data:
                data[new] = data[old]
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        try:
            spec = cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)
                          if f.name in data or f.name not in optional})
        except KeyError as err:
            raise ValueError(f"config.json is missing the field {err}") from None
        types = {"algorithm": str, "problem": str, "problem_overrides": dict, "config": dict, "hparams": dict,
                 "grid": dict, "seeds": list, "num_chunks": int, "keep_checkpoints": int}
        for field, kind in types.items():
            value = getattr(spec, field)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"config.json field {field!r} must be a {kind.__name__}, got {value!r:.80}")
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in spec.seeds) or spec.num_chunks < 1:
            raise ValueError("config.json: seeds must be a list of integers and num_chunks a positive integer")
        if spec.keep_checkpoints < 0:
            raise ValueError(f"config.json: keep_checkpoints must be >= 0 (0 keeps all), got {spec.keep_checkpoints}")
        return spec


def _parse_value(field: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(default, tuple):
            if default and isinstance(default[0], str):
                return tuple(v.strip() for v in text.split(",") if v.strip())
            return tuple(int(v) for v in text.replace("x", ",").split(",") if v)
        if isinstance(default, (int, np.integer)):
            return int(float(text)) if float(text).is_integer() else int(text)
        if isinstance(default, str):
            return text
        return float(text)
    except ValueError:
        raise ValueError(f"--set {field}={text}: expected a {type(default).__name__}") from None


def _parse_hparam(field: str, text: str, default: Any) -> float | list[float]:
    """A scalar hparam, or a comma-separated vector for a vector field (one value per cost or constraint)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--set {field}={text}: expected a number (or comma-separated numbers)") from None
    if not values:
        raise ValueError(f"--set {field}={text}: expected a number")
    # One value, or one per entry of a vector field (e.g. a cost_limit per cost); the learner checks the shape
    # against its problem when it is built, before anything compiles.
    return values[0] if len(values) == 1 and np.ndim(default) == 0 else values


def _hparam_value(field: str, value: Any, default: Any) -> float | list[float]:
    if isinstance(value, str):
        return _parse_hparam(field, value, default)
    array = np.asarray(value, np.float64)
    return float(array) if array.ndim == 0 else array.tolist()


def split_overrides(algorithm: str, overrides: dict[str, Any]) -> tuple[dict, dict]:
    """Split ``{field: value}`` into (config overrides, hparams overrides); strings are parsed by field type.

    Raises:
      ValueError: a field that is neither (lists both sets of valid names).
    """
    algo = get_algorithm(algorithm)
    config_defaults = {f.name: f.default for f in dataclasses.fields(algo.config_cls)
                       if f.default is not dataclasses.MISSING}
    hparam_defaults = {f.name: getattr(algo.make_config().default_hparams(), f.name)
                       for f in dataclasses.fields(algo.make_config().default_hparams())}
    config_overrides, hparam_overrides = {}, {}
    for field, value in overrides.items():
        if field in config_defaults:
            default = config_defaults[field]
            config_overrides[field] = _parse_value(field, value, default) if isinstance(value, str) else value
        elif field in hparam_defaults:
            hparam_overrides[field] = _hparam_value(field, value, hparam_defaults[field])
        else:
            raise ValueError(
                f"unknown field {field!r} for {algorithm}; config fields: {sorted(config_defaults)}; "
                f"hparams fields: {sorted(hparam_defaults)}"
            )
    return config_overrides, hparam_overrides


_PROBLEMS: dict[str, Any] = {}


def make_problem(algo: Algorithm, name: str, overrides: dict | None = None) -> Any:
    """``algo.problems.make(name, **overrides)``, memoised for this process (building a task can cost seconds)."""
    key = json.dumps([algo.problems.kind, name, overrides or {}], sort_keys=True, default=str)
    if key not in _PROBLEMS:
        if len(_PROBLEMS) >= 4:
            _PROBLEMS.pop(next(iter(_PROBLEMS)))
        _PROBLEMS[key] = algo.problems.make(name, **(overrides or {}))
    return _PROBLEMS[key]


def _config_fields(algo: Algorithm, stored: dict) -> dict:
    """Config fields from JSON: lists back to the tuples the config class declares."""
    defaults = {f.name: f.default for f in dataclasses.fields(algo.config_cls)}
    return {k: tuple(v) if isinstance(v, list) and isinstance(defaults.get(k), tuple) else v
            for k, v in stored.items()}


class Built(NamedTuple):
    algo: Algorithm
    problem: Any
    config: Any
    grid: Grid
    parts: Any


def _build(spec: RunSpec) -> Built:
    algo = get_algorithm(spec.algorithm)
    problem = make_problem(algo, spec.problem, spec.problem_overrides)
    try:
        config = algo.make_config(**_config_fields(algo, spec.config))
        hparams = algo.hparams_for(config, problem).replace(**spec.hparams).as_arrays().validate()
    except TypeError as err:  # a field the config or hparams class does not have
        raise ValueError(f"the run's config does not fit {spec.algorithm}: {err}") from None
    grid = make_grid(hparams, seeds=spec.seeds, **spec.grid)
    grid.hparams.validate()
    parts = algo.make_train_parts(config, problem)
    return Built(algo, problem, config, grid, parts)


def make_spec(
    algorithm: str,
    problem: str,
    *,
    seeds: int | list[int] = 1,
    grid: dict | None = None,
    overrides: dict | None = None,
    problem_overrides: dict | None = None,
    num_chunks: int = 10,
    env_overrides: dict | None = None,
    keep_checkpoints: int = 2,
    preset: bool = True,
) -> RunSpec:
    """Validate a run description (no compilation) and return its :class:`RunSpec`.

    ``problem`` is an environment name for the RL learners (``env_overrides`` is the old name of
    ``problem_overrides``). ``keep_checkpoints`` is how many chunk checkpoints stay on disk (the newest; 0 keeps
    every chunk's, e.g. for best-checkpoint selection by online rollouts; at least 2 keeps a fallback when the
    newest is damaged). ``preset`` applies the algorithm's per-problem preset (:mod:`jaxsafe.rl.presets`) under
    ``overrides``; ``False`` starts from the config's own defaults.
    """
    if env_overrides is not None:
        if problem_overrides is not None:
            raise ValueError("give problem_overrides or env_overrides, not both")
        problem_overrides = env_overrides
    algo = get_algorithm(algorithm)
    preset_fields = algo.preset(problem)[1] if preset else {}
    config_overrides, hparam_overrides = split_overrides(algorithm, {**preset_fields, **(overrides or {})})
    config = algo.make_config(**config_overrides)  # validates static fields
    built_problem = make_problem(algo, problem, problem_overrides)  # validates the problem name and overrides
    hparams = algo.hparams_for(config, built_problem).replace(**hparam_overrides)
    hparams.as_arrays().validate()
    grid = dict(grid or {})
    make_grid(hparams, seeds=1, **grid).hparams.validate()  # validates swept fields and values
    if not isinstance(num_chunks, int) or num_chunks < 1:
        raise ValueError(f"num_chunks must be a positive integer, got {num_chunks!r}")
    if not isinstance(keep_checkpoints, int) or isinstance(keep_checkpoints, bool) or keep_checkpoints < 0:
        raise ValueError(f"keep_checkpoints must be an integer >= 0 (0 keeps all), got {keep_checkpoints!r}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must be a positive count or a non-empty list")
    num_updates = algo.make_train_parts(config, built_problem).num_updates
    return RunSpec(
        algorithm=algorithm,
        problem=problem,
        problem_overrides=dict(problem_overrides or {}),
        config=dataclasses.asdict(config),
        hparams={f.name: _hparam_value(f.name, getattr(hparams, f.name), getattr(hparams, f.name))
                 for f in dataclasses.fields(hparams)},
        grid={k: [float(v) for v in np.atleast_1d(vals)] for k, vals in grid.items()},
        seeds=seed_list,
        num_chunks=min(num_chunks, num_updates),
        keep_checkpoints=keep_checkpoints,
    )


def chunk_lengths(num_updates: int, num_chunks: int) -> list[int]:
    """Split ``num_updates`` into ``num_chunks`` chunks (equal, the last one possibly shorter)."""
    size = math.ceil(num_updates / num_chunks)
    lengths = [size] * (num_updates // size)
    if num_updates % size:
        lengths.append(num_updates % size)
    return lengths


def _chunk_rows(grid: Grid, metrics: dict, chunk_index: int, first_update: int, steps_per_update: int,
                chunk_means: tuple[str, ...], lanes: list[int] | None = None) -> list[dict]:
    """One row per lane for a chunk: ``run``, ``chunk``, ``update`` and ``steps`` (progress at the chunk's end), the
    lane's grid point, and each metric (``chunk_means`` averaged NaN-aware over the chunk, the rest at its end)."""
    rows = []
    host = {k: np.asarray(v) for k, v in metrics.items()}
    length = next(iter(host.values())).shape[1] if host else 0
    update = first_update + length
    lanes = list(range(grid.size)) if lanes is None else lanes
    for position, lane in enumerate(lanes):
        row = {"run": lane, "chunk": chunk_index, "update": update, "steps": update * steps_per_update,
               **grid.points[lane]}
        for name, values in host.items():
            series = values[position]
            if name in chunk_means:
                finite = np.where(np.isfinite(series), series, 0.0).sum(0)
                count = np.isfinite(series).sum(0)
                with np.errstate(all="ignore"):
                    mean = np.where(count > 0, finite / np.maximum(count, 1), np.nan)
                row[name] = float(mean) if mean.ndim == 0 else mean.tolist()
            else:
                row[name] = series[-1]
        rows.append(row)
    return rows


def _row_value(row: dict, metric: str):
    value = row.get(metric)
    return np.nan if value is None else value


def summarize_rows(grid: Grid, rows: list[dict], metrics: tuple[str, ...] = ("episode_return", "episode_cost",
                                                                            "multiplier")) -> dict:
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
        for metric in (*metrics, "steps"):
            if not any(metric in r for r in lane_rows):
                continue
            values = np.asarray([np.asarray(_row_value(r, metric), float) for r in lane_rows], float)
            entry[metric] = summarize(values)
        points.append(entry)
    return {"points": points}


def _first_nonfinite(metrics: dict, params: Callable[[], Any], lanes: list[int]) -> tuple[int, int] | None:
    """``(lane, update)`` of the first non-finite update among ``lanes`` in a chunk, or None.

    ``metrics`` and ``params()`` are host arrays with a leading axis over ``lanes``. Uses the learner's ``nonfinite``
    metric when it reports one; otherwise any non-finite parameter at the chunk's end marks its lane (the update is
    then reported as the chunk's last)."""
    if not lanes:
        return None
    if "nonfinite" in metrics:
        bad = np.argwhere(np.asarray(metrics["nonfinite"]).reshape(len(lanes), -1))
        return None if not bad.size else (lanes[int(bad[0][0])], int(bad[0][1]))
    finite = np.ones(len(lanes), bool)
    for leaf in jax.tree.leaves(params()):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.floating):
            finite &= np.isfinite(leaf.reshape(len(lanes), -1)).all(1)
    if finite.all():
        return None
    length = next(iter(metrics.values())).shape[1] if metrics else 1
    return lanes[int(np.argmin(finite))], length - 1


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
      CheckpointError, RunWriteError: a write failed (full disk); the last good checkpoint is kept.
    """
    run_dir = _open_run_dir(spec, out_dir, resume)
    try:
        return _run_training(spec, run_dir, resume, progress, stop_after_chunks, plot)
    except OSError as err:
        raise RunWriteError(f"could not write to {run_dir.path}: {err}; the run stopped and its last good "
                            f"checkpoint (step {checkpoint.latest_step(run_dir.checkpoint_dir)}) is kept: free "
                            f"space, then continue it with --resume") from None


def _open_run_dir(spec: RunSpec, out_dir: str | Path, resume: bool) -> RunDir:
    """The run directory, opened the same way by every process: all check that a new run's directory is free
    before the primary creates it and writes ``config.json`` (one process alone does this in one step)."""
    if resume:
        return RunDir(out_dir, must_exist=True)
    if distributed.process_count() == 1:
        run_dir = RunDir(out_dir)
        run_dir.write_config(spec.to_json())
        return run_dir
    check_new_run_dir(out_dir)
    distributed.barrier("jaxsafe-run-dir-checked")
    if distributed.is_primary():
        RunDir(out_dir).write_config(spec.to_json())
    distributed.barrier("jaxsafe-run-dir-created")
    return RunDir(out_dir, must_exist=True)


def _agreed_nonfinite(bad: tuple[int, int] | None) -> tuple[int, int] | None:
    """The first diverged (lane, update) over every process's lanes, the same answer in every process."""
    code = -1 if bad is None else bad[0] * 2**31 + bad[1]
    codes = [c for c in distributed.any_process(code).tolist() if c >= 0]
    return None if not codes else divmod(min(codes), 2**31)


def _run_training(spec: RunSpec, run_dir: RunDir, resume: bool, progress: bool, stop_after_chunks: int | None,
                  plot: bool) -> RunResult:
    algo, problem, config, grid, parts = _build(spec)
    lengths = chunk_lengths(parts.num_updates, spec.num_chunks)
    multi = distributed.process_count() > 1

    def run_chunk(state, hparams, length):
        return jax.lax.scan(lambda s, _: parts.update(s, hparams), state, None, length=length)

    def to_save(state):
        # One process saves the grid without its padding; several save their shards of the padded global arrays.
        return state if multi else jax.tree.map(lambda x: x[: grid.size], state)

    chunk_fns = {n: jax.jit(jax.vmap(lambda s, h, n=n: run_chunk(s, h, n))) for n in sorted(set(lengths))}
    keys, hparams = shard_grid((grid.keys, grid.hparams), grid.size)
    state = jax.jit(jax.vmap(parts.init))(keys, hparams)

    start_chunk = 0
    if resume and not checkpoint.all_steps(run_dir.checkpoint_dir):
        # Stopped before its first checkpoint: nothing to restore, so the run starts again (same key, same result).
        warnings.warn(f"{run_dir.path} has no checkpoint yet: the run starts from its first update", stacklevel=3)
        run_dir.truncate_metrics(0, process=_metrics_process())
    elif resume:
        step, restored = checkpoint.restore(run_dir.checkpoint_dir, to_save(state))
        if distributed.is_primary():
            for newer in [s for s in checkpoint.all_steps(run_dir.checkpoint_dir) if s > step]:
                checkpoint.set_aside(run_dir.checkpoint_dir, newer)  # damaged: kept aside, rewritten by this run
        distributed.barrier("jaxsafe-restored")
        state = restored if multi else shard_grid(restored, grid.size)
        start_chunk = step
        run_dir.truncate_metrics(sum(lengths[:step]) * parts.steps_per_update, process=_metrics_process())

    per_lane = parts.steps_per_update
    bar = Progress(parts.num_updates * per_lane * grid.size, desc=f"{spec.algorithm} {spec.problem}",
                   unit=algo.step_unit, enabled=progress and distributed.is_primary())
    bar.update(sum(lengths[:start_chunk]) * per_lane * grid.size)
    summary_metrics = tuple(dict.fromkeys((*algo.curve_metrics, "multiplier")))
    try:
        for chunk_index in range(start_chunk, len(lengths)):
            if stop_after_chunks is not None and chunk_index - start_chunk >= stop_after_chunks:
                break
            state, metrics = chunk_fns[lengths[chunk_index]](state, hparams)
            lanes, metrics = distributed.addressable_lanes(metrics, grid.size)
            first_update = sum(lengths[:chunk_index])
            bad = _first_nonfinite(metrics, lambda: distributed.addressable_lanes(state.params, grid.size)[1], lanes)
            bad = _agreed_nonfinite(bad) if multi else bad
            if bad is not None:
                lane, update = bad
                raise TrainingDiverged(
                    f"non-finite loss at update {first_update + update} (chunk {chunk_index}) of grid lane {lane} "
                    f"{grid.points[lane]}; the last good checkpoint (chunk {chunk_index}) is kept in "
                    f"{run_dir.checkpoint_dir}"
                )
            # Rows first, then the checkpoint: a crash between the two leaves rows past the newest checkpoint,
            # which resume drops and recomputes; the other order could leave a checkpoint with its rows missing.
            new_rows = _chunk_rows(grid, metrics, chunk_index, first_update, per_lane, algo.chunk_means, lanes)
            run_dir.append_metrics(new_rows, process=_metrics_process())
            checkpoint.save(run_dir.checkpoint_dir, chunk_index + 1, to_save(state),
                            max_to_keep=spec.keep_checkpoints or None)
            shown = {}
            for name in summary_metrics[:3]:  # NaN (no episode ended in the chunk) is left out, silently
                values = np.asarray([r[name] for r in new_rows if r.get(name) is not None], np.float64).ravel()
                values = values[np.isfinite(values)]
                if values.size:
                    shown[name] = float(values.mean())
            bar.update(int(new_rows[0]["steps"]) * grid.size, **shown)
    finally:
        bar.close()

    distributed.barrier("jaxsafe-rows-written")
    rows = run_dir.read_metrics()
    summary = summarize_rows(grid, rows, summary_metrics)
    summary.update(algorithm=spec.algorithm, problem=spec.problem, swept=list(grid.swept), step_unit=algo.step_unit,
                   complete=bool(rows) and max(r["chunk"] for r in rows) == len(lengths) - 1,
                   processes=distributed.process_count())
    if distributed.is_primary():
        run_dir.write_summary(summary)
        if plot and rows:
            from jaxsafe.plotting import plot_curves

            plot_curves(rows, grid.swept, run_dir.figure_path, cost_limits=_cost_limits(algo, spec, grid),
                        title=f"{spec.algorithm} on {spec.problem}", metrics=algo.curve_metrics,
                        xlabel=algo.step_unit)
    distributed.barrier("jaxsafe-summary-written")
    return RunResult(run_dir, grid, jax.tree.map(lambda x: x[: grid.size], state), rows, summary)


def _metrics_process() -> int | None:
    """Which per-process metrics file this process writes (None: the one ``metrics.jsonl`` of a single process)."""
    return distributed.process_index() if distributed.process_count() > 1 else None


def _cost_limits(algo: Algorithm, spec: RunSpec, grid: Grid) -> dict:
    field = algo.cost_limit_field
    if field is None:
        return {}
    if field in grid.swept:
        return {field: sorted(set(p[field] for p in grid.points))}
    value = spec.hparams.get(field)
    return {field: [value]} if isinstance(value, float) else {}


def resume_training(out_dir: str | Path, **kwargs) -> RunResult:
    """Continue the run in ``out_dir`` from its newest usable checkpoint (from its first update, with a warning, if
    it stopped before writing one). Errors if the directory or its config is missing or corrupt."""
    run_dir = RunDir(out_dir, must_exist=True)
    spec = RunSpec.from_json(run_dir.read_config())
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


class RestoredRun(NamedTuple):
    """Any run directory rebuilt: its spec, the built learner (:class:`Built`: algorithm, problem, config, grid,
    parts), the restored checkpoint step and the learner state of every lane (a leading grid axis)."""

    spec: RunSpec
    built: Built
    checkpoint_step: int
    state: Any


def restore_run(out_dir: str | Path, step: int | None = None) -> RestoredRun:
    """Rebuild a run directory's learner and restore checkpoint ``step`` (default: the newest usable one; every
    lane). :func:`checkpoint_steps` lists the steps on disk."""
    run_dir = RunDir(out_dir, must_exist=True)
    spec = RunSpec.from_json(run_dir.read_config())
    built = _build(spec)
    template = jax.vmap(built.parts.init)(built.grid.keys, built.grid.hparams)
    step, state = checkpoint.restore(run_dir.checkpoint_dir, template, step)
    return RestoredRun(spec, built, step, state)


def checkpoint_steps(out_dir: str | Path) -> list[int]:
    """The chunk checkpoints a run directory holds, oldest first (checkpoint ``k`` is the state after chunk ``k``;
    ``keep_checkpoints`` decides how many stay)."""
    return checkpoint.all_steps(RunDir(out_dir, must_exist=True).checkpoint_dir)


def load_run(out_dir: str | Path) -> LoadedRun:
    """An environment learner's run directory with the newest checkpoint's parameters of every lane.

    Raises:
      ValueError: the run's algorithm is not an environment policy (it has no ``make_act``).
    """
    run_dir = RunDir(out_dir, must_exist=True)
    spec = RunSpec.from_json(run_dir.read_config())
    algo = get_algorithm(spec.algorithm)
    if algo.make_act is None:
        raise ValueError(f"{run_dir.path} holds a {spec.algorithm} run on a {algo.problems.kind}; evaluation and "
                         f"flipping need an environment policy (one of the RL learners)")
    restored = restore_run(out_dir)
    _, problem, config, grid, _ = restored.built
    env, env_params = problem
    return LoadedRun(spec, env, env_params, config, grid, algo.make_act(config, problem), restored.state.params,
                     restored.checkpoint_step)


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
    rollouts = rollout_episodes(env, env_params, from_act(act, params, deterministic), key, episodes, max_steps)
    return rollouts.returns, rollouts.costs, rollouts.finished
