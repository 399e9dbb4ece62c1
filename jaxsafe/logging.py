"""Run directories: config, metrics, summary and progress, shared by every learner and the CLI.

A run directory holds::

    config.json     what was run: algorithm, problem (environment, bi-level problem, task), config, hparams, grid, seeds
    metrics.jsonl   one JSON object per logged chunk and grid point ("run", "chunk", "update", "steps", "seed",
                    swept hparams, metrics)
    summary.json    final mean and spread per grid point
    checkpoints/    orbax checkpoints (see jaxsafe.checkpoint)
    curves.png      learning curves (see jaxsafe.plotting)

Files are written atomically (write to a temporary file, then rename) so a killed run never leaves half a JSON.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np


def to_jsonable(value: Any) -> Any:
    """Convert numpy/jax scalars and arrays (and containers of them) to plain JSON types; NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        value = np.asarray(value)
        return to_jsonable(value.item() if value.ndim == 0 else value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def check_new_run_dir(path: str | os.PathLike) -> None:
    """Raise :class:`RunDirExists` unless ``path`` is free for a new run (absent, or an empty directory)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "a jaxsafe run" if (path / "config.json").is_file() else "files"
        raise RunDirExists(f"{path} already exists and holds {what}; a new run never writes into an existing "
                           f"directory: choose a new --out, or continue a run with --resume")


def _read_rows(path: Path) -> list[dict]:
    """The JSON-object rows of one metrics file; a torn last line is dropped with a warning."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise json.JSONDecodeError("a metrics row must be a JSON object", line, 0)
        except json.JSONDecodeError as err:
            if number == len(lines):
                warnings.warn(f"{path}: dropped a torn last line ({err}); it is rewritten on resume", stacklevel=3)
                break
            raise ValueError(f"{path} line {number} is not a JSON object: {err}") from None
        rows.append(row)
    return rows


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDirExists(FileExistsError):
    """A new run was pointed at a directory that already holds something; nothing was written."""


class RunDir:
    """A run directory, with one policy for every command and learner.

    ``RunDir(path)`` starts a **new** run: ``path`` must not exist or be an empty directory, otherwise
    :class:`RunDirExists` is raised before anything is written (a new run never writes into, appends to or deletes
    an existing directory). ``RunDir(path, must_exist=True)`` opens an existing run to resume or read it.
    """

    def __init__(self, path: str | os.PathLike, must_exist: bool = False):
        self.path = Path(path)
        if must_exist:
            if not self.path.is_dir():
                raise FileNotFoundError(f"run directory {self.path} does not exist")
            if not self.config_path.is_file():
                raise FileNotFoundError(f"{self.path} is not a jaxsafe run directory: {self.config_path} is missing")
        else:
            check_new_run_dir(self.path)
            self.path.mkdir(parents=True, exist_ok=True)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")
    figure_path = property(lambda self: self.path / "curves.png")

    def write_config(self, config: dict) -> None:
        _atomic_write(self.config_path, json.dumps(to_jsonable(config), indent=2, sort_keys=True))

    def read_config(self) -> dict:
        try:
            config = json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{self.config_path} is corrupt: {err}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{self.config_path} is corrupt: expected a JSON object, got {type(config).__name__}")
        return config

    def metrics_file(self, process: int | None = None) -> Path:
        """``metrics.jsonl``, or in a multi-process run the file of process ``process``."""
        return self.metrics_path if process is None else self.path / f"metrics.process-{process}.jsonl"

    def append_metrics(self, rows: Iterable[dict], process: int | None = None) -> None:
        """Append rows (one JSON object per line) to this process's file; flushed and fsynced before returning."""
        lines = "".join(json.dumps(to_jsonable(row), sort_keys=True) + "\n" for row in rows)
        with open(self.metrics_file(process), "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def _metrics_files(self) -> list[Path]:
        return [p for p in [self.metrics_path, *sorted(self.path.glob("metrics.process-*.jsonl"))] if p.exists()]

    def read_metrics(self) -> list[dict]:
        """Every metrics row, of every process, in (chunk, lane) order. A torn last line (a kill during an append)
        is dropped with a warning, since resume replays everything after the restored checkpoint anyway; a bad line
        elsewhere is an error naming the file and the line."""
        rows = []
        for path in self._metrics_files():
            rows.extend(_read_rows(path))
        if len(self._metrics_files()) > 1:
            rows.sort(key=lambda r: (r.get("chunk", 0), r.get("run", 0)))
        return rows

    def truncate_metrics(self, max_steps: float, process: int | None = None) -> None:
        """Drop this process's rows logged after ``max_steps`` progress steps per lane (used on resume so the metrics
        match the restored checkpoint). Rows of runs written before rows carried ``steps`` are read by
        ``env_steps``."""
        path = self.metrics_file(process)
        if not path.exists():
            return
        rows = [r for r in _read_rows(path) if r.get("steps", r.get("env_steps", 0)) <= max_steps]
        _atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def write_summary(self, summary: dict) -> None:
        _atomic_write(self.summary_path, json.dumps(to_jsonable(summary), indent=2, sort_keys=True))

    def read_summary(self) -> dict:
        return json.loads(self.summary_path.read_text())


def summarize(values: np.ndarray, axis: int = 0) -> dict:
    """Mean, standard deviation, min and max of ``values`` along ``axis`` (the seed axis)."""
    values = np.asarray(values, np.float64)
    return {
        "mean": values.mean(axis=axis),
        "std": values.std(axis=axis),
        "min": values.min(axis=axis),
        "max": values.max(axis=axis),
    }


class Progress:
    """A tqdm progress bar over progress steps (env steps, samples, examples) summed over every lane of a grid,
    with the throughput over all lanes and the latest metrics in its postfix (silent when disabled)."""

    def __init__(self, total_steps: int, desc: str = "train", enabled: bool = True, unit: str = "env steps"):
        self.enabled = enabled
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=int(total_steps), desc=desc, unit=" " + unit, unit_scale=True, dynamic_ncols=True)

    def update(self, steps: int, **postfix) -> None:
        """Move the bar to ``steps`` (summed over lanes) and show ``postfix`` metrics; tqdm shows the rate."""
        if self._bar is None:
            return
        self._bar.update(int(steps) - self._bar.n)
        short = {"episode_return": "ret", "episode_cost": "cost", "multiplier": "mult"}
        fields = {short.get(k, k): f"{float(v):.3g}" for k, v in postfix.items() if v is not None}
        self._bar.set_postfix(fields, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
