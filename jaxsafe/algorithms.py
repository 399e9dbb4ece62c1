"""The registry of every trainable method, reachable by name from the CLI, the chunked runner and the benchmarks.

Each entry is an :class:`Algorithm`: the learner contract of :mod:`jaxsafe.learner` (a config class with
``default_hparams()``, ``make_train_parts(config, problem) -> TrainParts``) plus the problem space it trains on
(environments, bi-level problems, alignment tasks), so ``jaxsafe train|sweep`` and :mod:`jaxsafe.runner` give every
method grids, checkpoints, bit-identical resume, progress, a metrics file, a summary and a figure.

Adding a method is one :func:`register_algorithm` call (see ``docs/adding_a_method.md``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple


class ProblemSpace(NamedTuple):
    """What a family of learners trains on, by name.

    Attributes:
      kind: what a problem is, for messages ("environment", "bi-level problem", "alignment task").
      make: ``make(name, **overrides) -> problem``; validates the name and overrides (ValueError naming them).
      describe: ``describe() -> {name: one-line description}``.
    """

    kind: str
    make: Callable[..., Any]
    describe: Callable[[], dict[str, str]]

    def names(self) -> list[str]:
        return sorted(self.describe())


class Algorithm(NamedTuple):
    """One registered method.

    Attributes:
      name: registry key (``jaxsafe train NAME``).
      description: one line for ``jaxsafe list``.
      config_cls: the frozen config dataclass; ``config_defaults`` are this entry's overrides of its defaults
        (``ppo`` and ``ppo_lag`` share ``PPOConfig`` with different ``multiplier``).
      make_train_parts: ``(config, problem) -> TrainParts``.
      problems: the :class:`ProblemSpace` the method trains on.
      default_hparams: ``(config, problem) -> hparams``; ``None`` means ``config.default_hparams()``.
      make_act: ``(config, problem) -> act(params, obs, key, deterministic)`` for environment learners (used by
        ``jaxsafe eval`` and ``jaxsafe flip``); ``None`` for methods that are not environment policies.
      curve_metrics: metrics plotted against progress and summarised per grid point.
      chunk_means: metrics averaged over a chunk's updates (NaN-aware) in ``metrics.jsonl``; the others are taken
        at the chunk's last update.
      step_unit: what ``TrainParts.steps_per_update`` counts ("env steps", "samples", "examples").
      cost_limit_field: the hparams field drawn as a dashed limit on the cost curve (``None``: no limit).
      presets: ``(problem name) -> (preset name or None, {field: value})``: per-problem defaults applied before
        the user's overrides (:mod:`jaxsafe.rl.presets`); ``None``: the config's defaults everywhere.
    """

    name: str
    description: str
    config_cls: type
    config_defaults: dict
    make_train_parts: Callable[[Any, Any], Any]
    problems: ProblemSpace
    default_hparams: Callable[[Any, Any], Any] | None = None
    make_act: Callable[[Any, Any], Any] | None = None
    curve_metrics: tuple[str, ...] = ("episode_return", "episode_cost")
    chunk_means: tuple[str, ...] = ("episode_return", "episode_cost", "step_cost")
    step_unit: str = "env steps"
    cost_limit_field: str | None = "cost_limit"
    presets: Callable[[str], tuple[str | None, dict]] | None = None

    def make_config(self, **overrides):
        return self.config_cls(**{**self.config_defaults, **overrides})

    def preset(self, problem_name: str) -> tuple[str | None, dict]:
        """``(preset name, overrides)`` for ``problem_name`` (``(None, {})`` when the method has none for it)."""
        return (None, {}) if self.presets is None else self.presets(problem_name)

    def hparams_for(self, config, problem):
        """The default hparams of ``config`` on ``problem`` (problems may set their own defaults)."""
        if self.default_hparams is None:
            return config.default_hparams()
        return self.default_hparams(config, problem)


_ALGORITHMS: dict[str, Algorithm] = {}

#: Modules whose import registers a family's algorithms (imported on first use, so ``import jaxsafe`` stays light).
_FAMILY_MODULES = (
    "jaxsafe.rl.registry", "jaxsafe.bilevel.registry", "jaxsafe.llm.registry", "jaxsafe.offline.registry",
)
_loaded = False


def register_algorithm(algorithm: Algorithm) -> None:
    """Add ``algorithm`` to the registry (its name must be new)."""
    if algorithm.name in _ALGORITHMS and _ALGORITHMS[algorithm.name] is not algorithm:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered")
    _ALGORITHMS[algorithm.name] = algorithm


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in _FAMILY_MODULES:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise


def list_algorithms() -> list[str]:
    _load_families()
    return sorted(_ALGORITHMS)


def describe_algorithms() -> dict[str, str]:
    return {name: _ALGORITHMS[name].description for name in list_algorithms()}


def get_algorithm(name: str) -> Algorithm:
    _load_families()
    if name not in _ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; available algorithms: {', '.join(list_algorithms())}")
    return _ALGORITHMS[name]
