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


def group_curves(rows: list[dict], swept: Sequence[str], metric: str):
    """``{setting: (env_steps [C], values [seeds, C])}`` from metrics rows (one row per lane and chunk)."""
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
        steps = np.asarray([r["env_steps"] for r in lanes[0][:length]], float)
        values = np.asarray([[np.nan if r.get(metric) is None else r[metric] for r in l[:length]] for l in lanes])
        out[setting] = (steps, values)
    return out


def plot_curves(rows: list[dict], swept: Sequence[str], path: str | Path, cost_limits: dict | None = None,
                title: str = "", extra_runs: dict[str, list[dict]] | None = None) -> Path:
    """Return and cost against env steps (mean line, min-max band over seeds), cost limits as dashed lines.

    ``extra_runs`` adds other runs' rows under a label (e.g. unconstrained PPO next to PPO-Lagrangian).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    runs = {"": (rows, swept)}
    for label, extra in (extra_runs or {}).items():
        runs[label] = (extra, ())
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_index = 0
    for prefix, (run_rows, run_swept) in runs.items():
        for metric, ax in (("episode_return", axes[0]), ("episode_cost", axes[1])):
            curves = group_curves(run_rows, run_swept, metric)
            for offset, (setting, (steps, values)) in enumerate(sorted(curves.items())):
                color = colors[(color_index + offset) % len(colors)]
                label = prefix or _label(setting)
                with np.errstate(all="ignore"):
                    mean = np.nanmean(values, axis=0)
                    ax.fill_between(steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=color,
                                    alpha=0.2, linewidth=0)
                ax.plot(steps, mean, color=color, label=label)
                if metric == "episode_cost" and not prefix and "cost_limit" in dict(setting):
                    ax.axhline(dict(setting)["cost_limit"], color=color, linestyle="--", linewidth=1)
        color_index += len(group_curves(run_rows, run_swept, "episode_return"))
    for limit in (cost_limits or {}).get("cost_limit", []):
        if "cost_limit" not in swept and limit is not None:
            axes[1].axhline(limit, color="black", linestyle="--", linewidth=1, label=f"cost limit {limit:g}")
    axes[0].set_ylabel("episode return")
    axes[1].set_ylabel("episode cost")
    for ax in axes:
        ax.set_xlabel("env steps")
        _readable_axes(ax)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
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
