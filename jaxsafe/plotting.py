"""Every figure jaxsafe draws (matplotlib, Agg backend): learning curves with bands over seeds, mean/std curves of
any metric, and two-objective planes with their exact fronts. CLIs, runners and benchmarks all draw through here."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(setting: tuple) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting) or "run"


def _progress(row: dict) -> float:
    return row.get("steps", row.get("env_steps"))


def group_curves(rows: list[dict], swept: Sequence[str], metric: str):
    """``{setting: (steps [C], values [seeds, C, ...])}`` from metrics rows (one row per lane and chunk); a vector
    metric (one entry per cost) keeps its trailing axis."""
    by_lane: dict[int, list[dict]] = {}
    for row in rows:
        by_lane.setdefault(row["run"], []).append(row)
    groups: dict[tuple, list[list[dict]]] = {}
    for lane_rows in by_lane.values():
        setting = tuple((k, lane_rows[0][k]) for k in swept)
        groups.setdefault(setting, []).append(lane_rows)
    out = {}
    for setting, lanes in groups.items():
        length = min(len(l) for l in lanes)
        steps = np.asarray([_progress(r) for r in lanes[0][:length]], float)
        values = np.asarray([[np.asarray(np.nan if r.get(metric) is None else r[metric], float)
                              for r in l[:length]] for l in lanes])
        out[setting] = (steps, values)
    return out


_LABELS = {"episode_return": "episode return", "episode_cost": "episode cost"}


def plot_curves(rows: list[dict], swept: Sequence[str], path: str | Path, cost_limits: dict | None = None,
                title: str = "", extra_runs: dict[str, list[dict]] | None = None,
                metrics: Sequence[str] = ("episode_return", "episode_cost"), xlabel: str = "env steps") -> Path:
    """One panel per metric against progress steps (mean line, min-max band over seeds); cost limits as dashed
    lines on the ``episode_cost`` panel; a vector metric draws one line per entry.

    ``extra_runs`` adds other runs' rows under a label (e.g. unconstrained PPO next to PPO-Lagrangian).
    """
    plt = _pyplot()
    metrics = tuple(metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    axes = axes[0]
    runs = {"": (rows, swept)}
    for label, extra in (extra_runs or {}).items():
        runs[label] = (extra, ())
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_index = 0
    limit_field = next(iter(cost_limits or {}), "cost_limit")
    for prefix, (run_rows, run_swept) in runs.items():
        for metric, ax in zip(metrics, axes):
            curves = group_curves(run_rows, run_swept, metric)
            for offset, (setting, (steps, values)) in enumerate(sorted(curves.items())):
                color = colors[(color_index + offset) % len(colors)]
                label = prefix or _label(setting)
                components = [values] if values.ndim == 2 else [values[..., i] for i in range(values.shape[-1])]
                for index, component in enumerate(components):
                    suffix = f" [{index}]" if len(components) > 1 else ""
                    with np.errstate(all="ignore"):
                        mean = np.nanmean(component, axis=0)
                        ax.fill_between(steps, np.nanmin(component, axis=0), np.nanmax(component, axis=0),
                                        color=color, alpha=0.2, linewidth=0)
                    ax.plot(steps, mean, color=color, label=label + suffix,
                            linestyle=("-", ":", "-.", "--")[index % 4])
                if metric == "episode_cost" and not prefix and limit_field in dict(setting):
                    ax.axhline(dict(setting)[limit_field], color=color, linestyle="--", linewidth=1)
        color_index += len(group_curves(run_rows, run_swept, metrics[0]))
    if "episode_cost" in metrics:
        cost_ax = axes[metrics.index("episode_cost")]
        for limit in (cost_limits or {}).get(limit_field, []):
            if limit_field not in swept and limit is not None:
                cost_ax.axhline(limit, color="black", linestyle="--", linewidth=1, label=f"cost limit {limit:g}")
    for metric, ax in zip(metrics, axes):
        ax.set_ylabel(_LABELS.get(metric, metric.replace("_", " ")))
        ax.set_xlabel(xlabel)
        _readable_axes(ax)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _readable_axes(ax) -> None:
    """At most six x ticks with engineering-style labels (1M, 200k), so long step counts never overlap."""
    from matplotlib.ticker import EngFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def plot_mean_band(curves: dict[str, np.ndarray], path: str | Path, xlabel: str, ylabel: str, title: str = "",
                   steps: np.ndarray | None = None) -> Path:
    """Mean line and a +-1 std band over seeds for each ``curves[label] [seeds, T]`` (e.g. estimators' leader
    values over leader iterations). ``steps [T]`` gives the x values (default ``0..T-1``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        values = np.asarray(values, float)
        x = np.arange(values.shape[1]) if steps is None else np.asarray(steps)
        mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
        ax.plot(x, mean, label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    _readable_axes(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_plane(path: str | Path, front: dict, groups: dict, threshold: float | None = None, title: str = "",
               xlabel: str = "harmlessness: exact E[g]", ylabel: str = "helpfulness: exact E[r]") -> Path:
    """A two-objective plane: the exact front ``front["expected_safety"], front["expected_reward"]`` as a line,
    ``groups[label] = (rewards, safeties)`` as markers, and an optional vertical threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(front["expected_safety"], front["expected_reward"], "k-", lw=1.5, label="exact optimum (β fixed)")
    markers = iter("os^vD<>pXh*P")
    for label, (rewards, safeties) in groups.items():
        ax.plot(safeties, rewards, next(markers, "o"), ls="", ms=7, alpha=0.85, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="grey", ls=":", lw=1, label=f"threshold E[g] = {threshold:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
