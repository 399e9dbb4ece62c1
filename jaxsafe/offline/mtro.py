"""MTRO (Tatematsu & Wachi 2025): choosing each game's target return for a Multi-Game DT from the offline data.

Every target-return rule is a :class:`Selector` with one function, called at every step of play::

    select(key, model_state, context, game_stats) -> target bin (int32)

``model_state`` is the :class:`ReturnPrediction` of the MGDT at the current step (its return-to-go logits over the
``config.num_return_bins`` bins, read at the last patch of the current frame), ``context`` a
:class:`SelectorContext` (the scaled return realised so far in the episode, the step), ``game_stats`` the game's
:class:`GameStats` (computed once from the offline data, no training). Four rules:

* ``mgdt_default`` (MGDT's expert-action inference, §4.2 of the notes): logits multiplied by ``temperature`` (the
  colab's 0.75, which flattens them), plus ``kappa * linspace(0, 1)`` over the bins (the optimality tilt; the colab's
  default 0), ``num_samples`` (128) draws, keep the largest.
* ``fixed`` (``fixed_max``, ``fixed_percentile``): a per-game target from the data (the best episode return, or
  a percentile of the episode returns) at the start, lowered by the realised reward (the DT convention).
* ``derd``: DERD alone. **Reconstructed** (the paper's text was not available; notes §4.3): the expert episodes
  are the top ``expert_fraction`` of the game's episodes by return; the target is the mean expert return, lowered
  by the realised reward.
* ``derd_barp``: DERD + BARP. **Reconstructed**: the adjusted distribution over bins is
  ``log q(R) = a_g log p_theta(R | context) + log P_g(R | expert) - log P_g(R)``, where ``P_g(. | expert)`` and
  ``P_g`` are the histograms (add-``pseudo_count`` smoothed) of the returns-to-go at every step of the expert
  episodes and of all episodes (Bayes: ``P(expert | R) ~ P(R | expert) / P(R)``, the frequency adjustment), and
  ``a_g`` in [0, 1] is the model's return-prediction accuracy on game ``g`` (:func:`return_accuracy`: the mean
  probability it puts within ``tolerance`` bins of the true bin on sampled windows of the data); the target is the
  mean of ``q``, rounded. A model that predicts returns well keeps its context-dependent prediction; one that does
  not falls back on the data's expert prior.

Evaluation as in the Atari literature: per-game normalised score (the random policy's mean return = 0, the best
dataset episode = 1, both measured: :func:`normalised_scores`), aggregated by the interquartile mean
(:func:`iqm`) with stratified bootstrap confidence intervals (:func:`stratified_bootstrap_ci`, rliable's method:
resample runs with replacement within each game, percentile interval).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsafe.offline import mgdt
from jaxsafe.offline.dataset import episode_returns
from jaxsafe.offline.feedback import RewardCostFeedback
from jaxsafe.offline.multigame import MultiGameData
from jaxsafe.policy import Policy
from jaxsafe.validation import require

__all__ = ["SELECTORS", "ReturnPrediction", "SelectorContext", "GameStats", "Selector", "mgdt_default", "fixed",
           "derd", "derd_barp", "make_selector", "return_histograms", "game_statistics", "return_accuracy",
           "make_policy", "evaluate_games", "normalised_scores", "iqm", "stratified_bootstrap_ci", "summarise",
           "run_suite", "evaluate_selectors", "selector_timing", "plot_summary", "barp_distribution",
           "top_percentile_sample"]

#: The selectors by name (``make_selector(name)``).
SELECTORS = ("mgdt_default", "fixed_max", "fixed_percentile", "derd", "derd_barp")


class ReturnPrediction(NamedTuple):
    """The model's return-to-go prediction at the current step: ``logits [bins]``."""

    logits: jax.Array


class SelectorContext(NamedTuple):
    """``return_so_far``: the episode's realised return so far, times the game's reward scale; ``t``: the step."""

    return_so_far: jax.Array
    t: jax.Array


class GameStats(NamedTuple):
    """One game's offline statistics (bins: ``config.num_return_bins``; returns in scaled units, i.e. times the
    game's reward scale): ``expert_hist``/``data_hist [bins]`` the return-to-go histograms of expert / all steps
    (probabilities), ``expert_return`` the mean expert episode return, ``max_return`` the best episode return,
    ``percentile_return`` the ``percentile``-th episode return, ``accuracy`` the model's return accuracy a_g."""

    expert_hist: jax.Array
    data_hist: jax.Array
    expert_return: jax.Array
    max_return: jax.Array
    percentile_return: jax.Array
    accuracy: jax.Array


class Selector(NamedTuple):
    name: str
    select: Callable  # select(key, model_state, context, game_stats) -> int32 bin


def _to_bin(scaled_return, num_bins: int, low: int):
    return jnp.clip(jnp.round(scaled_return) - low, 0, num_bins - 1).astype(jnp.int32)


def mgdt_default(low: int, kappa: float = 0.0, num_samples: int = 128, temperature: float = 0.75) -> Selector:
    """MGDT's expert-action inference (see the module docstring; ``low`` is the config's ``return_low``)."""
    del low

    def select(key, model_state, context, game_stats):
        logits = model_state.logits * temperature
        logits = logits + kappa * jnp.linspace(0.0, 1.0, logits.shape[-1])
        return jnp.max(jax.random.categorical(key, logits, shape=(num_samples,))).astype(jnp.int32)

    return Selector("mgdt_default", select)


def fixed(low: int, which: str = "max") -> Selector:
    """A fixed per-game target (``which``: "max", the best episode; "percentile"), lowered by the realised return."""
    require(which in ("max", "percentile"), "which", "'max' or 'percentile'", which)

    def select(key, model_state, context, game_stats):
        start = game_stats.max_return if which == "max" else game_stats.percentile_return
        return _to_bin(start - context.return_so_far, model_state.logits.shape[-1], low)

    return Selector(f"fixed_{which}", select)


def derd(low: int) -> Selector:
    """DERD alone (reconstructed): the mean expert episode return, lowered by the realised return."""

    def select(key, model_state, context, game_stats):
        return _to_bin(game_stats.expert_return - context.return_so_far, model_state.logits.shape[-1], low)

    return Selector("derd", select)


def barp_distribution(logits, game_stats: GameStats):
    """BARP's adjusted log-distribution over bins (reconstructed; module docstring): ``[bins]`` log-probabilities."""
    log_model = jax.nn.log_softmax(logits)
    log_q = game_stats.accuracy * log_model + jnp.log(game_stats.expert_hist) - jnp.log(game_stats.data_hist)
    return jax.nn.log_softmax(log_q)


def derd_barp(low: int) -> Selector:
    """DERD + BARP (reconstructed): the rounded mean of :func:`barp_distribution`."""

    def select(key, model_state, context, game_stats):
        q = jnp.exp(barp_distribution(model_state.logits, game_stats))
        mean = (q * jnp.arange(q.shape[-1])).sum()
        return jnp.clip(jnp.round(mean), 0, q.shape[-1] - 1).astype(jnp.int32)

    return Selector("derd_barp", select)


def make_selector(name: str, config: mgdt.MGDTConfig, **options) -> Selector:
    """The selector ``name`` (one of :data:`SELECTORS`); ``options`` go to the mgdt_default rule (``kappa``,
    ``num_samples``, ``temperature``)."""
    require(name in SELECTORS, "selector", f"one of {list(SELECTORS)}", name)
    low = config.return_low
    if name == "mgdt_default":
        return mgdt_default(low, **options)
    if name.startswith("fixed_"):
        return fixed(low, name[len("fixed_"):])
    return derd(low) if name == "derd" else derd_barp(low)


# ----------------------------------------------------------------------------------------- offline statistics


def return_histograms(return_bins, episode_ids, episode_return, num_bins: int, expert_fraction: float,
                      pseudo_count: float = 0.5):
    """DERD's histograms: ``(expert_hist, data_hist, expert_mask_per_episode)``.

    ``return_bins [N]`` each step's bin, ``episode_ids [N]``, ``episode_return [E]``. The expert episodes are the
    ``ceil(expert_fraction * E)`` best by return; both histograms count every step's bin, add ``pseudo_count`` to
    every bin and normalise.
    """
    require(0 < expert_fraction <= 1, "expert_fraction", "a float in (0, 1]", expert_fraction)
    episode_return = np.asarray(episode_return)
    n_expert = max(1, int(np.ceil(expert_fraction * episode_return.size)))
    expert = np.zeros(episode_return.size, bool)
    expert[np.argsort(-episode_return, kind="stable")[:n_expert]] = True
    bins = np.asarray(return_bins)
    step_expert = expert[np.asarray(episode_ids)]
    expert_counts = np.bincount(bins[step_expert], minlength=num_bins) + pseudo_count
    data_counts = np.bincount(bins, minlength=num_bins) + pseudo_count
    return expert_counts / expert_counts.sum(), data_counts / data_counts.sum(), expert


def game_statistics(config: mgdt.MGDTConfig, data: MultiGameData, accuracy=None, expert_fraction: float = 0.1,
                    percentile: float = 90.0, pseudo_count: float = 0.5) -> list[GameStats]:
    """Each game's :class:`GameStats` from its offline data (no training; ``accuracy [G]`` from
    :func:`return_accuracy`, default 1 for every game)."""
    stats = []
    for index, (game, dataset) in enumerate(zip(data.games, data.datasets)):
        scale = data.spec(game).reward_scale
        bins = np.asarray(mgdt.bin_returns(dataset.returns_to_go, scale, config.return_low, config.return_high))
        returns = episode_returns(dataset)[0] * scale
        expert_hist, data_hist, expert = return_histograms(bins, dataset.episode_ids, returns,
                                                           config.num_return_bins, expert_fraction, pseudo_count)
        a_g = 1.0 if accuracy is None else float(accuracy[index])
        stats.append(GameStats(jnp.asarray(expert_hist, jnp.float32), jnp.asarray(data_hist, jnp.float32),
                               jnp.float32(returns[expert].mean()), jnp.float32(returns.max()),
                               jnp.float32(np.percentile(returns, percentile)), jnp.float32(a_g)))
    return stats


def return_accuracy(config: mgdt.MGDTConfig, data: MultiGameData, params, key, windows: int = 256,
                    tolerance: int = 1, lanes: bool = False) -> np.ndarray:
    """``[G]`` the model's return accuracy per game: the mean probability its return head puts within
    ``tolerance`` bins of the true bin, over ``windows`` windows of each game's data (the training data: no split
    is held out at this scale). ``lanes=True``: ``params`` and ``key`` carry a leading lane axis (e.g. seeds) and
    the result is ``[L, G]``, one compiled program for every lane."""
    prepared = mgdt.prepare(config, data)
    graphdef, _ = mgdt.make_model(config, prepared.layout)
    sample_config = config.replace(batch_size=windows * len(data.games))

    def per_game(params, key):
        patches, bins, actions, rewards, mask = mgdt.sample_windows(key, prepared, sample_config)
        logits = nnx.merge(graphdef, params)(patches, bins, actions, rewards, mask)[0]
        probs = jax.nn.softmax(logits)
        near = jnp.abs(jnp.arange(config.num_return_bins) - bins[..., None]) <= tolerance
        mass = (probs * near).sum(-1)
        weight = mask.reshape(len(data.games), windows, -1).astype(jnp.float32)
        return (mass.reshape(weight.shape) * weight).sum((1, 2)) / weight.sum((1, 2))

    return np.asarray(jax.jit(jax.vmap(per_game) if lanes else per_game)(params, key))


# ----------------------------------------------------------------------------------------- play


class MGDTContext(NamedTuple):
    """A deployed MGDT's state: the last ``K`` steps (padded observations, return bins, actions, reward classes,
    mask) and the scaled return so far."""

    obs: jax.Array
    return_bins: jax.Array
    actions: jax.Array
    rewards: jax.Array
    mask: jax.Array
    return_so_far: jax.Array
    t: jax.Array


def top_percentile_sample(key, logits, valid, top_percentile: float = 50.0):
    """MGDT's action sampling: keep the valid actions whose logit is at least the ``top_percentile`` percentile of
    the valid logits, sample among them at temperature 1."""
    valid_logits = jnp.where(valid, logits, jnp.nan)
    cut = jnp.nanpercentile(valid_logits, top_percentile)
    keep = valid & (logits >= cut)
    return jax.random.categorical(key, jnp.where(keep, logits, -jnp.inf)).astype(jnp.int32)


def make_policy(config: mgdt.MGDTConfig, layout: mgdt.SuiteLayout, params, selectors, selector_index,
                game_stats: GameStats, num_actions: int, reward_scale: float, top_percentile: float = 50.0) -> Policy:
    """The MGDT as a :class:`~jaxsafe.policy.Policy` for one game, its target chosen by
    ``selectors[selector_index]`` (a traced index: one program holds every selector). Play it on
    ``RewardCostFeedback(env)``. Each step: the previous step's reward joins the context, the frame is appended,
    the return logits are read, the selector writes the target bin, the action logits are read and sampled
    (:func:`top_percentile_sample` over the game's ``num_actions`` valid actions)."""
    graphdef, _ = mgdt.make_model(config, layout)
    context = config.context_len
    valid = jnp.arange(layout.num_actions) < num_actions
    branches = [s.select for s in selectors]

    def init(key):
        del key
        zeros = jnp.zeros((context,), jnp.int32)
        return MGDTContext(jnp.zeros((context,) + layout.obs_shape), zeros, zeros, zeros,
                           jnp.zeros((context,), bool), jnp.zeros(()), jnp.zeros((), jnp.int32))

    def push(window, value):
        return jnp.concatenate([window[1:], jnp.asarray(value)[None].astype(window.dtype)])

    def step(state, obs, key):
        select_key, action_key = jax.random.split(key)
        reward = obs["reward"]
        rewards = state.rewards.at[-1].set(mgdt.reward_classes(reward))
        state = MGDTContext(push(state.obs, mgdt.pad_observations(obs["obs"], layout)), push(state.return_bins, 0),
                            push(state.actions, 0), push(rewards, 0), push(state.mask, True),
                            state.return_so_far + reward * reward_scale, state.t + 1)
        return_logits, _, _ = mgdt.forward_window(graphdef, params, config, layout, state.obs, state.return_bins,
                                                  state.actions, state.rewards, state.mask)
        prediction = ReturnPrediction(return_logits[-1])
        ctx = SelectorContext(state.return_so_far, state.t - 1)
        target = jax.lax.switch(selector_index, branches, select_key, prediction, ctx, game_stats)
        state = state._replace(return_bins=state.return_bins.at[-1].set(target))
        _, action_logits, _ = mgdt.forward_window(graphdef, params, config, layout, state.obs, state.return_bins,
                                                  state.actions, state.rewards, state.mask)
        action = top_percentile_sample(action_key, action_logits[-1], valid, top_percentile)
        return state._replace(actions=state.actions.at[-1].set(action)), action

    return Policy(init, step)


def evaluate_games(config: mgdt.MGDTConfig, data: MultiGameData, params_lanes, selectors, stats, key,
                   episodes: int, max_steps: int | None = None, progress=None) -> np.ndarray:
    """Episode returns ``[S selectors, L lanes, G games, episodes]`` of the MGDT (``params_lanes``: parameters
    with a leading lane axis, e.g. seeds) under each selector; one compiled program per game (vmapped over
    selectors and lanes). ``max_steps`` defaults to each game's cap."""
    from jaxsafe.evaluate import rollout_episodes
    from jaxsafe.offline.multigame import make_game

    layout = mgdt.suite_layout(config, data)
    out = []
    for index, game in enumerate(data.games):
        env, env_params = make_game(data.suite, game)
        play_env = RewardCostFeedback(env)
        steps = data.spec(game).max_steps if max_steps is None else int(max_steps)
        scale = data.spec(game).reward_scale

        def run(params, selector_index, key, game_stats=stats[index], n=data.num_actions[index]):
            policy = make_policy(config, layout, params, selectors, selector_index, game_stats, n, scale)
            return rollout_episodes(play_env, env_params, policy, key, episodes, steps).returns

        lanes = jax.vmap(run, in_axes=(0, None, None))
        every = jax.jit(jax.vmap(lanes, in_axes=(None, 0, None)))
        out.append(np.asarray(every(params_lanes, jnp.arange(len(selectors)), jax.random.fold_in(key, index))))
        if progress is not None:
            progress(game, out[-1])
    return np.stack(out, axis=2)


# ----------------------------------------------------------------------------------------- aggregate metrics


def normalised_scores(returns, random_returns, best_returns):
    """``(R - random) / (best - random)`` per game (the last axis of ``returns``; a degenerate span divides by 1)."""
    random_returns, best_returns = np.asarray(random_returns, float), np.asarray(best_returns, float)
    span = best_returns - random_returns
    return (np.asarray(returns, float) - random_returns) / np.where(span > 0, span, 1.0)


def iqm(scores) -> float:
    """The interquartile mean of every entry of ``scores`` (rliable: ``scipy.stats.trim_mean(x, 0.25)`` on the
    flattened runs x games matrix)."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(scores, float).reshape(-1), 0.25))


def stratified_bootstrap_ci(scores, statistic=iqm, reps: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` on a ``[runs, games]`` matrix, resampling the runs with
    replacement within each game (rliable's ``StratifiedBootstrap``)."""
    scores = np.asarray(scores, float)
    require(scores.ndim == 2, "scores", "a [runs, games] matrix", scores.shape)
    require(0 < confidence < 1, "confidence", "a float in (0, 1)", confidence)
    rng = np.random.default_rng(seed)
    runs, games = scores.shape
    rows = rng.integers(0, runs, size=(reps, runs, games))
    resampled = scores[rows, np.arange(games)[None, None, :]]  # [reps, runs, games], each game on its own
    if statistic is iqm:  # vectorised: the same trimmed mean on every resample at once
        from scipy.stats import trim_mean

        estimates = trim_mean(resampled.reshape(reps, -1), 0.25, axis=1)
    else:
        estimates = np.array([statistic(sample) for sample in resampled])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


# ----------------------------------------------------------------------------------------- the whole pipeline


def summarise(names, scores, games, reps: int = 2000, seed: int = 0) -> dict:
    """Per selector: IQM of ``scores [S, runs, G]`` (normalised, mean over episodes) with its 95% stratified
    bootstrap interval, the mean, and the per-game means over runs."""
    out = {}
    for index, name in enumerate(names):
        matrix = np.asarray(scores[index], float)
        low, high = stratified_bootstrap_ci(matrix, reps=reps, seed=seed)
        out[name] = {"iqm": iqm(matrix), "iqm_low": low, "iqm_high": high, "mean": float(matrix.mean()),
                     "per_game": {g: float(matrix[:, j].mean()) for j, g in enumerate(games)}}
    return out


def run_suite(data: MultiGameData, cards: dict, config: mgdt.MGDTConfig, selector_names=SELECTORS, seeds: int = 3,
              episodes: int = 16, max_steps: int | None = None, seed: int = 0, hparams=None,
              progress=None) -> dict:
    """Train the MGDT on ``data`` (``seeds`` vmapped seeds), compute each game's statistics, play every selector
    and score it. ``cards[game]`` supplies the measured ``random_return`` (score 0); the best dataset episode is
    score 1. Returns a JSON-able dict: per-selector IQM/intervals/per-game scores, raw returns, the accuracy a_g,
    the training loss and timings (seconds; the machine may be shared)."""
    import time

    say = progress or (lambda message: None)
    hparams = config.default_hparams() if hparams is None else hparams
    train = jax.jit(jax.vmap(mgdt.make_train(config, data), in_axes=(0, None)))
    keys = jax.random.split(jax.random.PRNGKey(seed), seeds)
    start = time.time()
    compiled = train.lower(keys, hparams).compile()
    compile_seconds = time.time() - start
    start = time.time()
    result = jax.block_until_ready(compiled(keys, hparams))
    train_seconds = time.time() - start
    say(f"trained {seeds} seeds x {config.num_updates} updates in {train_seconds:.0f}s (+{compile_seconds:.0f}s "
        f"compile); final loss {np.asarray(result.metrics['loss'])[:, -50:].mean():.3f}")
    out = evaluate_selectors(data, cards, config, result.params, selector_names, episodes, max_steps, seed, say)
    return {**out, "seeds": seeds, "num_updates": config.num_updates, "batch_size": config.batch_size,
            "final_loss": np.asarray(result.metrics["loss"])[:, -50:].mean(1).tolist(),
            "train_seconds": train_seconds, "compile_seconds": compile_seconds,
            "train_windows_per_second": seeds * config.num_updates * config.batch_size / train_seconds}


def evaluate_selectors(data: MultiGameData, cards: dict, config: mgdt.MGDTConfig, params_lanes,
                       selector_names=SELECTORS, episodes: int = 16, max_steps: int | None = None, seed: int = 0,
                       progress=None) -> dict:
    """Play trained MGDT parameters (``params_lanes``: a leading lane axis, e.g. seeds) under each selector and
    score them: per-selector IQM with its 95% stratified bootstrap interval and per-game normalised scores (the
    measured ``cards[game]["random_return"]`` = 0, the game's best dataset episode = 1), plus the accuracy a_g
    (averaged over lanes) and the per-game targets. JSON-able."""
    import time

    say = progress or (lambda message: None)
    for game in data.games:
        require(game in cards and "random_return" in cards[game], "cards", f"a card with random_return for {game}",
                sorted(cards))
    lanes = int(jax.tree.leaves(params_lanes)[0].shape[0])
    accuracy = return_accuracy(config, data, params_lanes,
                               jnp.stack([jax.random.PRNGKey(seed + 1 + i) for i in range(lanes)]), lanes=True)
    stats = game_statistics(config, data, accuracy.mean(0))
    selectors = [make_selector(name, config) for name in selector_names]
    start = time.time()
    returns = evaluate_games(config, data, params_lanes, selectors, stats, jax.random.PRNGKey(seed + 100),
                             episodes, max_steps, progress=lambda g, r: say(f"played {g}: mean returns "
                                                                            f"{np.round(r.mean((1, 2)), 2)}"))
    eval_seconds = time.time() - start
    random = np.array([cards[g]["random_return"] for g in data.games])
    best = np.array([float(episode_returns(d)[0].max()) for d in data.datasets])
    scores = normalised_scores(returns.mean(-1), random, best)
    return {"games": list(data.games), "selectors": list(selector_names), "lanes": lanes, "episodes": episodes,
            "max_steps": max_steps,
            "config": {k: getattr(config, k) for k in ("context_len", "d_model", "n_layers", "n_heads",
                                                        "patch_size", "n_patches", "return_low", "return_high")},
            "dataset_steps": {g: int(d.num_steps) for g, d in zip(data.games, data.datasets)},
            "random_return": dict(zip(data.games, random.tolist())),
            "best_return": dict(zip(data.games, best.tolist())),
            "accuracy": dict(zip(data.games, accuracy.mean(0).tolist())),
            "targets": {g: {"expert_return": float(st.expert_return), "max_return": float(st.max_return),
                            "percentile_return": float(st.percentile_return)} for g, st in zip(data.games, stats)},
            "summary": summarise(selector_names, scores, list(data.games)),
            "returns_mean": {n: returns[i].mean(-1).tolist() for i, n in enumerate(selector_names)},
            "eval_seconds": eval_seconds}


def selector_timing(config: mgdt.MGDTConfig, stats: GameStats, selector_names=SELECTORS, calls: int = 200,
                    seed: int = 0) -> dict:
    """Milliseconds per decision of each selector alone (jitted, on fixed logits; wall-clock, so it depends on the
    machine's load)."""
    import time

    out = {}
    logits = jax.random.normal(jax.random.PRNGKey(seed), (config.num_return_bins,))
    context = SelectorContext(jnp.float32(1.0), jnp.int32(3))
    for name in selector_names:
        selector = make_selector(name, config)
        fn = jax.jit(lambda key, s=selector: s.select(key, ReturnPrediction(logits), context, stats))
        jax.block_until_ready(fn(jax.random.PRNGKey(0)))
        keys = jax.random.split(jax.random.PRNGKey(1), calls)
        start = time.perf_counter()
        for key in keys:
            jax.block_until_ready(fn(key))
        out[name] = 1e3 * (time.perf_counter() - start) / calls
    return out


def plot_summary(path, results: dict, title: str = "") -> "pathlib.Path":  # noqa: F821
    """The IQM (with 95% stratified bootstrap intervals) of the normalised score per selector, one panel per
    suite: ``results[suite]`` is :func:`run_suite`'s dict."""
    from jaxsafe.plotting import plot_intervals

    panels = {suite: {name: (r["summary"][name]["iqm"], r["summary"][name]["iqm_low"],
                             r["summary"][name]["iqm_high"]) for name in r["selectors"]}
              for suite, r in results.items()}
    return plot_intervals(path, panels, "IQM of normalised score (95% CI)", title)
