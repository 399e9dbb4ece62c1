"""Every figure jaxsafe draws (matplotlib, Agg backend): learning curves with bands over seeds, mean/std curves of
any metric, and two-objective planes with their exact fronts. CLIs, runners and benchmarks all draw through here."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import os
    import sys

    import matplotlib

    # Scripts and the CLI draw off-screen; a notebook (its inline backend comes through MPLBACKEND) or a session
    # that already imported pyplot keeps the backend it chose, so its figures still show inline.
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
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
    return _save_figure(fig, path, title, dpi=110)


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
    return _save_figure(fig, path, dpi=120)


def plot_plane(path: str | Path, front, groups: dict, threshold: float | Sequence[float] | None = None,
               title: str = "",
               xlabel: str = "harmlessness: exact E[g]", ylabel: str = "helpfulness: exact E[r]",
               front_label: str = "exact optimum (β fixed)", marker_size: float = 7,
               legend_loc: str = "lower left", threshold_label: str = "threshold E[g] = {threshold:g}") -> Path:
    """A two-objective plane: a front line, ``groups[label] = (y values, x values)`` as markers, and an optional
    vertical threshold (or several). ``front`` is a dict ``{"expected_safety": x, "expected_reward": y}`` (the alignment
    methods' exact front), an ``(x, y)`` pair, or None for no line. ``threshold_label`` is formatted with
    ``threshold``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    if isinstance(front, dict):
        front = (front["expected_safety"], front["expected_reward"])
    if front is not None:
        ax.plot(front[0], front[1], "k-", lw=1.5, label=front_label)
    markers = iter("os^vD<>pXh*P")
    for label, (ys, xs) in groups.items():
        ax.plot(xs, ys, next(markers, "o"), ls="", ms=marker_size, alpha=0.85, label=label)
    for value in ([] if threshold is None else np.atleast_1d(threshold)):
        ax.axvline(value, color="grey", ls=":", lw=1, label=threshold_label.format(threshold=value))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend_loc)
    return _save_figure(fig, path, dpi=130)


def _save_figure(fig, path: str | Path, suptitle: str = "", dpi: int = 120) -> Path:
    """The tail of every plot: an optional figure title, tight layout, save to ``path`` and close."""
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def _label_and_save(fig, ax, path: str | Path, xlabel: str, ylabel: str, title: str, dpi: int = 120) -> Path:
    """Axis labels, title, grid and legend, then save and close (the tail of :func:`plot_lines` and
    :func:`plot_distributions`)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both" if ax.get_xscale() == "log" or ax.get_yscale() == "log" else "major")
    ax.legend(fontsize=8)
    return _save_figure(fig, path, dpi=dpi)


def plot_lines(path: str | Path, series: dict, xlabel: str, ylabel: str, title: str = "", logx: bool = False,
               logy: bool = False, styles: dict | None = None) -> Path:
    """Lines ``series[label] = (x, y)`` on one axis (optionally log-scaled); ``styles[label]`` are extra matplotlib
    keyword arguments (e.g. ``{"ls": "--", "marker": "o"}``) for that line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, (x, y) in series.items():
        ax.plot(np.asarray(x), np.asarray(y), label=label, **(styles or {}).get(label, {}))
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    return _label_and_save(fig, ax, path, xlabel, ylabel, title)


def plot_distributions(path: str | Path, support, distributions: dict, xlabel: str, ylabel: str = "probability",
                       title: str = "") -> Path:
    """Discrete distributions over ``support [B]`` as step lines: ``distributions[label]`` is ``[B]`` or ``[seeds, B]``
    (mean line, min-max band over seeds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    support = np.asarray(support)
    for label, values in distributions.items():
        values = np.atleast_2d(np.asarray(values, float))
        line, = ax.step(support, values.mean(0), where="mid", label=label)
        if values.shape[0] > 1:
            ax.fill_between(support, values.min(0), values.max(0), step="mid", alpha=0.2, color=line.get_color())
    return _label_and_save(fig, ax, path, xlabel, ylabel, title)


def plot_target_search(path: str | Path, targets: np.ndarray, reward_mean: np.ndarray, safe: np.ndarray,
                       seed_mask: np.ndarray, evaluated: np.ndarray, curves: dict, title: str = "") -> Path:
    """A safe search over a 2-D target grid (PLS): the reward GP mean over ``targets [|Z|, 2]`` (an R-major grid)
    with the safe set outlined, the seed set and the ``evaluated [Q, 2]`` targets in order; then reward and
    normalised cost against online episodes for ``curves[label] = (episodes [T], reward [T], cost [T])``."""
    plt = _pyplot()
    targets = np.asarray(targets)
    returns, costs = np.unique(targets[:, 0]), np.unique(targets[:, 1])
    shape = (returns.size, costs.size)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    ax = axes[0]
    image = ax.pcolormesh(costs, returns, np.asarray(reward_mean).reshape(shape), shading="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label="reward GP mean (normalised)")
    if np.asarray(safe).any() and not np.asarray(safe).all():
        ax.contour(costs, returns, np.asarray(safe).reshape(shape).astype(float), levels=[0.5], colors="white")
    seeds = targets[np.asarray(seed_mask)]
    ax.plot(seeds[:, 1], seeds[:, 0], "s", ms=3, color="grey", alpha=0.6, label="seed set")
    evaluated = np.asarray(evaluated)
    ax.plot(evaluated[:, 1], evaluated[:, 0], "-o", color="red", ms=4, lw=0.8, label="evaluated (in order)")
    ax.set_xlabel("target cost G")
    ax.set_ylabel("target return R")
    ax.set_title("safe set (white outline) and queries")
    ax.legend(fontsize=7, loc="lower right")
    for ax, column, label in ((axes[1], 1, "normalised reward"), (axes[2], 2, "normalised cost")):
        for name, curve in curves.items():
            ax.plot(curve[0], curve[column], "-o", ms=3, label=name)
        ax.set_xlabel("online episodes")
        ax.set_ylabel(label)
        _readable_axes(ax)
        ax.grid(alpha=0.3)
    axes[2].axhline(1.0, color="grey", ls=":", lw=1, label="threshold")
    axes[2].legend(fontsize=7)
    return _save_figure(fig, path, title, dpi=110)


def plot_intervals(path: str | Path, panels: dict, xlabel: str, title: str = "") -> Path:
    """Point estimates with intervals, one panel per key of ``panels``: ``panels[panel][label] = (point, low,
    high)`` (e.g. the IQM of normalised scores with its 95% bootstrap interval per method, rliable's style)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.45 * max(len(p) for p in
                                                                                     panels.values()) + 1.6),
                             squeeze=False)
    for ax, (panel, rows) in zip(axes[0], panels.items()):
        labels = list(rows)
        points = np.array([rows[k][0] for k in labels], float)
        lows = np.array([rows[k][1] for k in labels], float)
        highs = np.array([rows[k][2] for k in labels], float)
        y = np.arange(len(labels))
        ax.errorbar(points, y, xerr=[points - lows, highs - points], fmt="o", capsize=4)
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(str(panel))
        ax.grid(alpha=0.3, axis="x")
    return _save_figure(fig, path, title, dpi=120)
