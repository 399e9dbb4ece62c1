"""``jaxsafe align grpo``: GRPO on a verifiable task at a token budget H, with the relative budget xi = H / E[T].

    jaxsafe align grpo --task first_guess --budget 4 --seeds 2 --iterations 60 --out runs/grpo
    jaxsafe align grpo --task chain_arithmetic --xi 1.5 --reward solve_early     # H chosen from the estimate
    jaxsafe align grpo --task first_guess --budget 6 --xi-band 1.5 2.0            # keep prompts with xi in band
    jaxsafe align grpo --quick --out runs/grpo-quick

Pipeline: build the task's base policy by SFT (a tiny decoder on traces whose first-success time T has a known
law: geometric for ``first_guess``, a sum of K geometric waits, Gamma-like, for ``chain_arithmetic``), estimate
``E[T]`` and ``xi`` per prompt from capped base-policy rollouts (:func:`jaxsafe.llm.budget.estimate_xi`), choose
the budget (``--budget H``, or ``--xi`` for ``H = ceil(xi * median E[T])``) or filter the prompts to an xi band,
then run GRPO (:mod:`jaxsafe.llm.grpo`) for every seed as one vmapped program in chunks of ``--track-every``
iterations, re-estimating ``E[T]`` under the current policy after each chunk (the online xi tracker). Writes
``config.json``, ``metrics.jsonl`` (per iteration and lane), ``summary.json``, ``curves.png`` and ``xi.png`` into a
new run directory (a non-empty ``--out`` is refused).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe import plotting
from jaxsafe.llm import budget, grpo
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import train as train_lib
from jaxsafe.llm.tasks import chain_arithmetic, first_guess
from jaxsafe.logging import Progress, RunDir, check_new_run_dir, to_jsonable
from jaxsafe.validation import is_int, require

#: name -> (task module, task object, one-line description)
TASKS = {
    "first_guess": (first_guess, first_guess.FirstGuessTask(modulus=16, success_probs=(0.5, 0.25, 0.1)),
                    "first correct guess of a named residue mod 16; T ~ Geometric(p), p = 0.5 / 0.25 / 0.1 by level"),
    "chain_arithmetic": (chain_arithmetic, chain_arithmetic.ChainTask(modulus=7, steps=2, success_prob=0.8),
                         "a 2-step chain mod 7 with retries; T = sum of 2 Geometric(0.4) waits (Gamma-like), "
                         "E[T] = 5"),
}
#: The difficulty level each task trains on by default (first_guess: p = 0.25, E[T] = 4).
DEFAULT_LEVEL = {"first_guess": 1, "chain_arithmetic": None}
#: Longest SFT trace (tokens after the prompt): the base policy is in distribution up to this budget.
TRACE_LENGTH = 56
MAX_SEQ_LEN = 72
#: Prompts the online tracker re-estimates E[T] on (the first ones of the set; chain_arithmetic has 252).
TRACKED_PROMPTS = 32


def describe_problems() -> dict[str, str]:
    return {name: text for name, (_, _, text) in TASKS.items()}


def _check_task(name: str) -> None:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")


def task_prompts(name: str, level: int | None = None) -> jax.Array:
    """The prompt set of task ``name`` (first_guess: one difficulty level, default :data:`DEFAULT_LEVEL`)."""
    _check_task(name)
    module, task, _ = TASKS[name]
    if name == "first_guess":
        level = DEFAULT_LEVEL[name] if level is None else level
        require(is_int(level, 0) and level < len(task.success_probs), "level",
                f"an integer in [0, {len(task.success_probs) - 1}]", level)
        return module.all_prompts(task, [level])
    return module.all_prompts(task)


def exact_step_probs(name: str, prompt_tokens) -> np.ndarray:
    """The base policy's per-sub-step success probabilities [N, K] by construction of its traces."""
    module, task, _ = TASKS[name]
    if name == "first_guess":
        return np.asarray(module.success_probabilities(task, prompt_tokens))[:, None]
    return np.asarray(module.step_success_probabilities(task, prompt_tokens))


class BasePolicy(NamedTuple):
    """A task's SFT base policy: the task, its module, (graphdef, params), the final SFT loss."""

    name: str
    task: Any
    module: Any
    graphdef: Any
    params: Any
    sft_loss: float


@functools.lru_cache(maxsize=8)
def base_policy(name: str, seed: int = 0, sft_steps: int = 300, batch_size: int = 32) -> BasePolicy:
    """SFT of a tiny decoder (2 layers, width 64) on the task's base traces of :data:`TRACE_LENGTH` guesses
    (every prompt of the task, every level); deterministic in ``seed`` and cached."""
    _check_task(name)
    require(is_int(sft_steps), "sft_steps", "an integer >= 1", sft_steps)
    module, task, _ = TASKS[name]
    prompts = module.all_prompts(task)
    data_key, init_key, train_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    repeats = max(1, -(-2048 // prompts.shape[0]))
    corpus = module.base_traces(task, data_key, jnp.tile(prompts, (repeats, 1)), TRACE_LENGTH)
    config = model_lib.preset("tiny", vocab_size=task.vocab_size, max_seq_len=MAX_SEQ_LEN)
    graphdef, params = model_lib.init_params(config, init_key)
    params, metrics = train_lib.train_sft(graphdef, params, corpus, train_key, n_steps=sft_steps,
                                          batch_size=batch_size, learning_rate=3e-3,
                                          vocab_mask=task.answer_vocab_mask())
    return BasePolicy(name, task, module, graphdef, params, float(np.mean(np.asarray(metrics["loss"])[-20:])))


def make_problem(name: str = "first_guess", *, seed: int = 0, sft_steps: int = 300, reward: str = "binary",
                 level: int | None = None, prompt_mask=None) -> grpo.GRPOProblem:
    """GRPO's problem by name: the SFT base policy, the task's prompts (``prompt_mask`` keeps a subset) and its
    verifier as a :class:`~jaxsafe.llm.budget.VerifiableReward` of form ``reward``. ValueError names bad options."""
    _check_task(name)
    require(reward in budget.REWARD_FORMS, "reward", f"one of {budget.REWARD_FORMS}", reward)
    policy = base_policy(name, seed, sft_steps)
    prompts = task_prompts(name, level)
    if prompt_mask is not None:
        prompts = prompts[np.asarray(prompt_mask, bool)]
        require(prompts.shape[0] >= 1, "prompt_mask", "a mask keeping at least one prompt", "none kept")
    verifier = budget.VerifiableReward(policy.task, policy.module.first_success_positions, reward)
    return grpo.GRPOProblem(policy.graphdef, policy.params, prompts, verifier, verifier.reward_range,
                            success_fn=verifier.success, vocab_mask=policy.task.answer_vocab_mask())


def estimate_base_xi(problem: grpo.GRPOProblem, horizon: int, key: jax.Array, *, rollouts: int = 16,
                     cap: int = TRACE_LENGTH, params=None, temperature: float = 1.0, pooled: bool = False,
                     form: str = "binary", max_prompts: int | None = None) -> budget.XiEstimate:
    """xi of ``problem``'s prompts (the first ``max_prompts``) under ``params`` (default the base policy) from
    ``rollouts`` capped rollouts each."""
    verifier = problem.reward_fn
    prompts = problem.prompt_tokens if max_prompts is None else problem.prompt_tokens[:max_prompts]
    times, censored = budget.sample_first_success(
        problem.graphdef, problem.params if params is None else params, prompts, verifier.positions,
        key, rollouts=rollouts, cap=cap, vocab_mask=problem.vocab_mask, temperature=temperature)
    return budget.estimate_xi(times, censored, cap, horizon, form=form, pooled=pooled)


# ----------------------------------------------------------------------------- the experiment


@dataclasses.dataclass(frozen=True)
class GRPOArgs:
    """Settings of one ``jaxsafe align grpo`` run (validated on construction)."""

    task: str = "first_guess"
    budget: int | None = None
    xi: float | None = None
    xi_band: tuple | None = None
    reward: str = "binary"
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    group_size: int = 8
    prompts_per_batch: int = 8
    iterations: int = 60
    inner_epochs: int = 1
    learning_rate: float = 1e-3
    beta: float = 0.0
    seeds: int = 1
    track_every: int = 10
    rollouts: int = 16
    sft_steps: int = 300
    level: int | None = None
    seed: int = 0

    def __post_init__(self):
        _check_task(self.task)
        require(self.budget is None or self.xi is None, "--budget / --xi", "one of them (not both)",
                (self.budget, self.xi))
        if self.budget is not None:
            require(is_int(self.budget), "--budget", "an integer >= 1 (the token budget H)", self.budget)
            require(self.budget <= TRACE_LENGTH, "--budget", f"<= {TRACE_LENGTH} (the base policy's trace length)",
                    self.budget)
        if self.xi is not None:
            require(np.isfinite(self.xi) and self.xi > 0, "--xi", "a number > 0", self.xi)
        require(self.reward in budget.REWARD_FORMS, "--reward", f"one of {budget.REWARD_FORMS}", self.reward)
        for name in ("seeds", "iterations", "track_every", "rollouts", "sft_steps", "prompts_per_batch",
                     "inner_epochs"):
            require(is_int(getattr(self, name)), f"--{name.replace('_', '-')}", "an integer >= 1", getattr(self, name))
        if self.xi_band is not None:
            budget.in_band([], tuple(self.xi_band))
        # the learner's own checks (group size, loss type, scaling) run here too, before any work
        self.grpo_config(horizon=1)
        grpo.GRPOHParams(learning_rate=self.learning_rate, beta=self.beta).validate()

    def grpo_config(self, horizon: int) -> grpo.GRPOConfig:
        return grpo.GRPOConfig(group_size=self.group_size, prompts_per_batch=self.prompts_per_batch,
                               max_new_tokens=horizon, loss_type=self.loss_type, scale_rewards=self.scale_rewards,
                               num_iterations=self.iterations, inner_epochs=self.inner_epochs)


QUICK = dict(iterations=20, sft_steps=150, track_every=10, rollouts=8)


def run_lanes(config: grpo.GRPOConfig, problem: grpo.GRPOProblem, hparams: grpo.GRPOHParams, keys: jax.Array, *,
              track_every: int, on_chunk=None):
    """GRPO for every key in ``keys [S]`` as one vmapped program, in chunks of ``track_every`` iterations.

    ``on_chunk(iteration, params [S, ...], metrics {name: [S, chunk]})`` runs after each chunk (the tracker, the
    progress bar). Returns ``(params [S, ...], metrics {name: [S, num_iterations]})``; the lanes equal
    :func:`jaxsafe.llm.grpo.make_train` runs with the same keys.
    """
    parts = grpo.make_train_parts(config, problem)
    state = jax.jit(jax.vmap(parts.init, in_axes=(0, None)))(keys, hparams)

    @functools.partial(jax.jit, static_argnums=2)
    def chunk(state, hparams, length):
        return jax.vmap(lambda s: jax.lax.scan(lambda c, _: parts.update(c, hparams), s, None, length=length))(state)

    collected, done = [], 0
    if on_chunk is not None:
        on_chunk(0, state.params, None)
    while done < parts.num_updates:
        length = min(track_every, parts.num_updates - done)
        state, metrics = chunk(state, hparams, length)
        done += length
        collected.append(jax.device_get(metrics))
        if on_chunk is not None:
            on_chunk(done, state.params, collected[-1])
    metrics = {k: np.concatenate([c[k] for c in collected], axis=1) for k in collected[0]}
    return state.params, metrics


def track_lanes(trackers: list, problem: grpo.GRPOProblem, params, iteration: int, key: jax.Array, *,
                rollouts: int) -> None:
    """The online tracker step: re-estimate ``E[T]`` (pooled over the first :data:`TRACKED_PROMPTS` prompts) under
    each lane's current policy ``params [S, ...]`` and record it in ``trackers[lane]``."""
    for lane, tracker in enumerate(trackers):
        lane_params = jax.tree.map(lambda x: x[lane], params)
        estimate = estimate_base_xi(problem, tracker.horizon, jax.random.fold_in(key, iteration * 1000 + lane),
                                    rollouts=rollouts, params=lane_params, pooled=True, max_prompts=TRACKED_PROMPTS)
        tracker.record(iteration, estimate)


def run_grpo(args: GRPOArgs, out_dir, progress: bool = True) -> dict:
    """Run one experiment and write its run directory (refuses a non-empty ``out_dir``)."""
    check_new_run_dir(out_dir)
    start = time.perf_counter()
    estimate_key, train_key, track_key = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    problem = make_problem(args.task, seed=args.seed, sft_steps=args.sft_steps, reward=args.reward,
                           level=args.level)
    cap = TRACE_LENGTH
    times, censored = budget.sample_first_success(problem.graphdef, problem.params, problem.prompt_tokens,
                                                  problem.reward_fn.positions, estimate_key, rollouts=args.rollouts,
                                                  cap=cap, vocab_mask=problem.vocab_mask)
    probe = budget.estimate_xi(times, censored, cap, 1)
    if args.budget is not None:
        horizon = args.budget
    else:
        horizon = min(budget.choose_budget(probe.mean_first_success, 1.5 if args.xi is None else args.xi), cap)
    base = budget.estimate_xi(times, censored, cap, horizon, form=args.reward)
    kept = None
    if args.xi_band is not None:
        kept = budget.in_band(base.xi, tuple(args.xi_band))
        if not kept.any():
            raise ValueError(f"no prompt has xi in {tuple(args.xi_band)} at H = {horizon} (xi ranges "
                             f"{base.xi.min():.3g} .. {base.xi.max():.3g}); change the band or the budget")
        problem = make_problem(args.task, seed=args.seed, sft_steps=args.sft_steps, reward=args.reward,
                               level=args.level, prompt_mask=kept)
    config = args.grpo_config(horizon)
    hparams = config.default_hparams().replace(learning_rate=jnp.float32(args.learning_rate),
                                               beta=jnp.float32(args.beta)).validate()
    run_dir = RunDir(out_dir)
    run_dir.write_config({"algorithm": "grpo", "args": dataclasses.asdict(args), "max_new_tokens": horizon,
                          "grpo_config": {k: v for k, v in dataclasses.asdict(config).items() if not callable(v)},
                          "hparams": to_jsonable(dataclasses.asdict(hparams))})
    tracker = budget.OnlineXiTracker(horizon, args.track_every)
    lane_tracks = [budget.OnlineXiTracker(horizon, args.track_every) for _ in range(args.seeds)]
    bar = Progress(args.iterations * args.seeds * config.rollout_batch, desc=f"grpo {args.task} H={horizon}",
                   enabled=progress, unit="samples")

    def on_chunk(iteration, params, metrics):
        track_lanes(lane_tracks, problem, params, iteration, track_key, rollouts=args.rollouts)
        tracker.iterations.append(iteration)
        tracker.xi.append(float(np.mean([t.xi[-1] for t in lane_tracks])))
        tracker.mean_first_success.append(float(np.mean([t.mean_first_success[-1] for t in lane_tracks])))
        if metrics is not None:
            bar.update(iteration * args.seeds * config.rollout_batch, pass_at_1=np.mean(metrics["pass_at_1"][:, -1]),
                       xi=tracker.xi[-1])

    keys = jax.random.split(train_key, args.seeds)
    _, metrics = run_lanes(config, problem, hparams, keys, track_every=args.track_every, on_chunk=on_chunk)
    bar.close()
    rows = [{"run": lane, "seed": lane, "iteration": i + 1, "steps": (i + 1) * config.rollout_batch,
             **{k: v[lane, i] for k, v in metrics.items()}}
            for lane in range(args.seeds) for i in range(args.iterations)]
    run_dir.append_metrics(rows)
    summary = summarise(metrics, base, tracker, horizon)
    summary.update({"task": args.task, "reward": args.reward, "prompts": int(problem.prompt_tokens.shape[0]),
                    "kept_by_band": None if kept is None else int(kept.sum()),
                    "lane_xi": [t.xi for t in lane_tracks], "total_seconds": time.perf_counter() - start})
    run_dir.write_summary(summary)
    iterations = np.arange(1, args.iterations + 1)
    plotting.plot_mean_band({"pass@1 within H": metrics["pass_at_1"], "mean reward": metrics["mean_reward"],
                             "zero-variance groups": metrics["zero_variance_fraction"]},
                            run_dir.figure_path, xlabel="GRPO iteration", ylabel="fraction",
                            title=f"GRPO on {args.task}, H = {horizon}, xi0 = {summary['xi0']:.2f}", steps=iterations)
    plotting.plot_mean_band({"xi (tracked)": np.asarray([t.xi for t in lane_tracks])}, run_dir.path / "xi.png",
                            xlabel="GRPO iteration", ylabel="xi = H / E[T]", title="online xi tracker",
                            steps=np.asarray(tracker.iterations))
    return to_jsonable(summary)


def summarise(metrics: dict, base: budget.XiEstimate, tracker: budget.OnlineXiTracker, horizon: int) -> dict:
    """Improvement of pass@1 within H (first vs last fifth of the iterations, mean over lanes), per iteration and
    per generated token; zero-variance fraction; xi0 and the tracked xi with its linear fit."""
    passes = np.asarray(metrics["pass_at_1"])
    span = max(1, passes.shape[1] // 5)
    first, last = passes[:, :span].mean(), passes[:, -span:].mean()
    iterations = passes.shape[1] - span
    tokens = float(np.asarray(metrics["tokens_generated"]).mean(axis=0)[span // 2: passes.shape[1] - span // 2].sum())
    improvement = last - first
    return {"max_new_tokens": horizon, "xi0": float(np.median(base.xi)),
            "mean_first_success0": float(np.median(base.mean_first_success)),
            "estimator": sorted(set(base.method)), "q0": float(base.success_within_budget.mean()),
            "anti_concentration0": float(base.anti_concentration.mean()),
            "pass_at_1_first": float(first), "pass_at_1_last": float(last), "improvement": float(improvement),
            "improvement_per_iteration": float(improvement / max(iterations, 1)),
            "improvement_per_token": float(improvement / max(tokens, 1.0)),
            "tokens_per_iteration": float(np.asarray(metrics["tokens_generated"]).mean()),
            "zero_variance_fraction": float(np.asarray(metrics["zero_variance_fraction"]).mean()),
            "kl_last": float(np.asarray(metrics["kl"])[:, -1].mean()),
            "xi_track": {"iterations": tracker.iterations, "xi": tracker.xi,
                         "mean_first_success": tracker.mean_first_success, **tracker.linear_fit()}}


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of ``jaxsafe align grpo`` to ``parser`` and set ``func=handle``."""
    parser.add_argument("--task", default="first_guess", choices=sorted(TASKS))
    parser.add_argument("--budget", type=int, default=None, metavar="H",
                        help="token budget H (default: H = ceil(1.5 * median E[T]))")
    parser.add_argument("--xi", type=float, default=None, help="target relative budget: H = ceil(xi * median E[T])")
    parser.add_argument("--xi-band", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="keep only the prompts whose estimated xi lies in [LOW, HIGH] at H")
    parser.add_argument("--reward", default="binary", choices=budget.REWARD_FORMS)
    parser.add_argument("--loss-type", default="dapo", choices=grpo.LOSS_TYPES)
    parser.add_argument("--scale-rewards", default="group", choices=grpo.SCALE_REWARDS)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-batch", type=int, default=None, help="prompts per iteration (8)")
    parser.add_argument("--iterations", type=int, default=None, help="GRPO iterations (60; quick 20)")
    parser.add_argument("--inner-epochs", type=int, default=1, help="optimiser steps per generated batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.0, help="k3 KL coefficient to the base policy")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds (vmapped)")
    parser.add_argument("--track-every", type=int, default=None, help="re-estimate xi every k iterations (10)")
    parser.add_argument("--rollouts", type=int, default=None, help="rollouts per prompt of the xi estimator (16)")
    parser.add_argument("--sft-steps", type=int, default=None, help="SFT steps of the base policy (300; quick 150)")
    parser.add_argument("--level", type=int, default=None, help="first_guess difficulty level (0, 1, 2; default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small budget for a smoke run")
    parser.add_argument("--out", default=None, help="run directory (default runs/<time>-align-grpo)")
    parser.set_defaults(func=handle, parser=parser)
    return parser


def args_from_namespace(namespace: argparse.Namespace) -> GRPOArgs:
    """Apply ``--quick`` to unset flags, then validate (ValueError names the flag)."""
    values = dict(task=namespace.task, budget=namespace.budget, xi=namespace.xi,
                  xi_band=None if namespace.xi_band is None else tuple(namespace.xi_band), reward=namespace.reward,
                  loss_type=namespace.loss_type, scale_rewards=namespace.scale_rewards,
                  group_size=namespace.group_size, inner_epochs=namespace.inner_epochs,
                  learning_rate=namespace.lr, beta=namespace.beta, seeds=namespace.seeds, level=namespace.level,
                  seed=namespace.seed)
    sizes = dict(iterations=namespace.iterations, sft_steps=namespace.sft_steps, track_every=namespace.track_every,
                 rollouts=namespace.rollouts, prompts_per_batch=namespace.prompts_per_batch)
    defaults = QUICK if namespace.quick else {}
    values.update({k: v if v is not None else defaults.get(k, getattr(GRPOArgs, k)) for k, v in sizes.items()})
    return GRPOArgs(**values)


def handle(namespace: argparse.Namespace) -> int:
    """Run ``jaxsafe align grpo`` from parsed flags."""
    try:
        args = args_from_namespace(namespace)
    except ValueError as err:
        namespace.parser.error(str(err))
    out = namespace.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-align-grpo"
    summary = run_grpo(args, out)
    print(f"\ntask {summary['task']} ({summary['reward']} reward), H = {summary['max_new_tokens']}, "
          f"E[T]0 = {summary['mean_first_success0']:.2f} ({', '.join(summary['estimator'])}), "
          f"xi0 = {summary['xi0']:.2f}, q0 = {summary['q0']:.3f}")
    print(f"pass@1 within H: {summary['pass_at_1_first']:.3f} -> {summary['pass_at_1_last']:.3f} "
          f"({summary['improvement_per_iteration']:.2e} per iteration, {summary['improvement_per_token']:.2e} per "
          f"token); zero-variance groups {summary['zero_variance_fraction']:.2f}")
    track = summary["xi_track"]
    fit = "" if track["slope"] is None else f" (slope {track['slope']:.3g} per iteration, r2 {track['r2']:.2f})"
    print("tracked xi: " + ", ".join(f"{i}: {x:.2f}" for i, x in zip(track["iterations"], track["xi"])) + fit)
    print(f"\nrun directory: {out}")
    return 0
