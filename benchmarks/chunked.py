"""Resumable chunked training cells for the long benchmarks, mirrored into a committed store.

A *cell* is one ``jaxsafe train`` run directory (any grid and seeds, one compiled program) with a target budget in
environment steps per lane. :func:`run_cells` advances a list of cells one chunk at a time until a wall-clock bound,
either finishing them in order (``schedule="finish"``) or always advancing the one with the smallest fraction of its
budget done (``"round-robin"``, so that a session that stops early leaves every cell at a similar budget);
rerunning the same call resumes every cell from its newest checkpoint, bit-identically (``jaxsafe train
--resume``).

Run directories under ``runs/`` do not outlive a checkout, so after every chunk the cell is mirrored into a
committed store directory: its ``config.json``, ``metrics.jsonl`` and ``summary.json``, and its newest checkpoint
while the cell is unfinished (or always, with ``Cell.keep_final``, for benchmarks that evaluate the final
policies). A run root that lacks a cell, or holds fewer of its steps, is filled from the store before any work, so a
fresh clone resumes where the last commit stopped. Wall seconds per cell accumulate in ``wall_seconds.json`` in
both places.

Used by ``benchmarks/safety_suite_full.py`` (the suite at 10^7 steps) and ``benchmarks/flipping.py`` (the
navigation policy ladders).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import time
from pathlib import Path
from typing import Callable, NamedTuple

from jaxsafe import runner
from jaxsafe.logging import RunDir

SCHEDULES = ("finish", "round-robin")


class Cell(NamedTuple):
    """One run directory ``<root>/<name>``: ``make_spec()`` builds its :class:`jaxsafe.runner.RunSpec` (called only
    when the cell starts), ``steps`` is its target budget per lane, ``keep_final`` keeps the final checkpoint in the
    store."""

    name: str
    steps: int
    make_spec: Callable[[], runner.RunSpec]
    keep_final: bool = False


def steps_done(run_dir: Path) -> int:
    """Env steps per lane the run directory has logged (0 before its first chunk, or when it does not exist)."""
    if not (Path(run_dir) / "config.json").exists():
        return 0
    rows = RunDir(run_dir, must_exist=True).read_metrics()
    return max((int(r["steps"]) for r in rows), default=0)


def newest(cell: Cell, root: Path, store_root: Path | None) -> Path:
    """The cell's directory holding more steps: the run root's or the store's."""
    run_dir = Path(root) / cell.name
    if store_root is not None and steps_done(Path(store_root) / cell.name) > steps_done(run_dir):
        return Path(store_root) / cell.name
    return run_dir


def final_values(rows: list[dict], metric: str) -> np.ndarray:
    """Per lane (``run``), the mean of ``metric`` over the chunks in the last 10% of the steps reached."""
    reached = max(r["steps"] for r in rows)
    by_lane: dict[int, list[float]] = {}
    for r in rows:
        if r["steps"] >= 0.9 * reached and r.get(metric) is not None:
            by_lane.setdefault(r["run"], []).append(float(r[metric]))
    with np.errstate(all="ignore"):
        return np.array([np.nanmean(v) for _, v in sorted(by_lane.items())])


def _timing_path(root: Path) -> Path:
    return Path(root) / "wall_seconds.json"


def wall_seconds(root: Path, store_root: Path | None) -> dict[str, float]:
    """Accumulated wall seconds per cell name: the larger of the run root's and the store's value (they only grow,
    and two calls running different cells into one store each hold the other's older values)."""
    wall: dict[str, float] = {}
    for where in (store_root, root):
        if where is not None and _timing_path(where).exists():
            for name, seconds in json.loads(_timing_path(where).read_text()).items():
                wall[name] = max(wall.get(name, 0.0), seconds)
    return wall


def _newest_checkpoint(run_dir: Path) -> int | None:
    steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.is_dir() and p.name.isdigit()]
    return max(steps, default=None)


def save_to_store(run_dir: Path, store: Path, keep_checkpoint: bool) -> None:
    """Mirror a run directory into the store: config, metrics, summary and (``keep_checkpoint``) the newest
    checkpoint with its digest. Written to a temporary directory first, then swapped in."""
    run_dir, store = Path(run_dir), Path(store)
    tmp = store.with_name(store.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, tmp / name)
    latest = _newest_checkpoint(run_dir)
    if keep_checkpoint and latest is not None:
        shutil.copytree(run_dir / "checkpoints" / str(latest), tmp / "checkpoints" / str(latest))
        digest = run_dir / "checkpoints" / f"{latest}.digest.json"
        if digest.exists():
            shutil.copy2(digest, tmp / "checkpoints" / digest.name)
    shutil.rmtree(store, ignore_errors=True)
    tmp.replace(store)


def restore_from_store(cells: list[Cell], root: Path, store_root: Path) -> None:
    """Fill ``root`` with every stored cell it lacks or holds fewer steps of (a fresh checkout's run root)."""
    for cell in cells:
        stored, run_dir = Path(store_root) / cell.name, Path(root) / cell.name
        if not (stored / "config.json").exists() or steps_done(stored) <= steps_done(run_dir):
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(stored, run_dir)
        print(f"{cell.name}: restored {steps_done(run_dir):,} steps per lane from {stored}", flush=True)


def next_cell(cells: list[Cell], root: Path, schedule: str) -> Cell | None:
    """The cell to advance: the first unfinished one (``finish``) or the one with the smallest fraction of its
    budget done (``round-robin``); None when every cell is done."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    todo = [(steps_done(Path(root) / c.name) / c.steps, i, c) for i, c in enumerate(cells)]
    todo = [t for t in todo if t[0] < 1.0]
    if not todo:
        return None
    chosen = min(todo, key=lambda t: t[1]) if schedule == "finish" else min(todo, key=lambda t: t[:2])
    return chosen[2]


def advance(cell: Cell, root: Path) -> float:
    """Run one more chunk of a cell (creating its run directory first); returns the wall seconds it took."""
    run_dir = Path(root) / cell.name
    start = time.perf_counter()
    if (run_dir / "config.json").exists():
        runner.resume_training(run_dir, progress=False, stop_after_chunks=1, plot=False)
    else:
        runner.run_training(cell.make_spec(), run_dir, progress=False, stop_after_chunks=1, plot=False)
    return time.perf_counter() - start


def run_cells(cells: list[Cell], root: Path, hours: float, store_root: Path | None = None,
              schedule: str = "finish") -> None:
    """Advance ``cells`` chunk by chunk for at most ``hours`` (a chunk started before the bound finishes), mirroring
    each into ``store_root`` (None: no store) after every chunk."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if store_root is not None:
        store_root = Path(store_root)
        store_root.mkdir(parents=True, exist_ok=True)
        restore_from_store(cells, root, store_root)
    deadline = time.time() + hours * 3600
    while time.time() < deadline:
        cell = next_cell(cells, root, schedule)
        if cell is None:
            break
        seconds = advance(cell, root)
        # re-read the timings before adding this chunk: another call may run other cells into the same store
        wall = wall_seconds(root, store_root)
        wall[cell.name] = wall.get(cell.name, 0.0) + seconds
        _timing_path(root).write_text(json.dumps(wall, indent=2))
        done = steps_done(root / cell.name)
        if store_root is not None:
            save_to_store(root / cell.name, store_root / cell.name, cell.keep_final or done < cell.steps)
            _timing_path(store_root).write_text(json.dumps(wall, indent=2))
        print(f"{cell.name}: {done:,} steps per lane (+{seconds:.0f} s)", flush=True)
