"""The SACPO experiment on the synthetic safety language: the task, exact evaluation and a run directory.

Used by ``jaxsafe align sacpo`` (:mod:`jaxsafe.llm.cli`), ``benchmarks/sacpo.py`` and the registry
(:mod:`jaxsafe.llm.registry`), so all three build the same task the same way:

* :func:`prepare_task`: SFT a small decoder on the hand-made base behaviour, then sample helpfulness and
  safety preference pairs from it (Bradley-Terry labels on the true r and g); :func:`stage_datasets` turns
  them into DPO pairs or KTO examples per stage; :func:`make_problem` does both from a seed and returns the
  :class:`~jaxsafe.llm.sacpo.SACPOProblem` (``make_safe_rlhf_problem`` adds the reward and cost models and
  returns a :class:`~jaxsafe.llm.safe_rlhf.SafeRLHFProblem`).
* :func:`exact_point`, :func:`optimum_table`, :func:`exact_front`, :func:`front_reward_at`: every model is
  scored exactly by enumerating the 85 responses of the 7 prompts.
* :func:`run_sacpo`: the stepwise pipeline for every (lambda, seed) as one vmapped program
  (``jaxsafe.sweep.run_grid``), scored exactly, written to a new run directory: ``config.json``,
  ``metrics.jsonl`` (one row per grid point and logged step: ``run``, ``seed``, ``lagrange_multiplier``,
  ``step``, the stage losses), ``summary.json`` (per grid point exact E[r], E[g], KL to the exact optimum
  pi*_{r + lambda g} and to the SFT model; the first-stage models; lambda* from the exact dual; the selected
  feasible point) and ``plane.png`` (the helpfulness-safety plane with the exact optimal front).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe import sweep
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import generate as generate_lib
from jaxsafe.llm import sacpo
from jaxsafe.llm import safe_rlhf
from jaxsafe.llm import train as train_lib
from jaxsafe.llm.tasks import safety_language as lang
from jaxsafe.logging import RunDir, summarize
from jaxsafe.plotting import plot_plane
from jaxsafe.validation import is_int, require

MODEL_SIZES = {
    "small": dict(d_model=32, n_layers=1, d_ff=128),  # ~20k parameters
    "tiny": dict(d_model=64, n_layers=2, d_ff=256),  # the "tiny" preset
}
ORDERS = {"reward-first": ("reward", "safety"), "safety-first": ("safety", "reward")}
LOSSES = ("dpo", "kto")
PROBLEMS = {"safety_language": "7 prompts x 85 responses, SFT decoder + helpfulness / safety preference "
                               "pairs, exact oracle (jaxsafe.llm.tasks.safety_language)",
            "safety_language_large": "the larger language: 20 prompts (8 harmful, severities 0.5-1.5) x 341 "
                                     "responses, same pipeline and exact oracle (safety_language.LARGE)"}


# ----------------------------------------------------------------------------- the synthetic task


class SyntheticTask(NamedTuple):
    """An SFT policy on a safety language with its preference data and exact oracle.

    graphdef, sft_params: the SFT decoder. sft_table [P, N] (P prompts, N responses; 7 x 85 for the default
    language): its exact log-probs. reward_pairs / safety_pairs: PreferenceBatch [n_pairs] sampled from the SFT
    policy with BT labels. safety_ids: dict of prompt / chosen / rejected indices of the safety pairs.
    reward [P, N], safety [P, N]: true r and g. prompt_probs [P]. language: the
    :class:`~jaxsafe.llm.tasks.safety_language.SafetyLanguage`.
    """

    graphdef: object
    sft_params: object
    sft_table: jax.Array
    reward_pairs: object
    safety_pairs: object
    safety_ids: dict
    reward: jax.Array
    safety: jax.Array
    prompt_probs: jax.Array
    language: lang.SafetyLanguage = lang.DEFAULT


@functools.partial(jax.jit, static_argnums=(0, 2))
def _logprob_table(graphdef, params, language):
    return language.response_logprob_table(graphdef, params)


def logprob_table(graphdef, params, language: lang.SafetyLanguage = lang.DEFAULT) -> jax.Array:
    """Exact ``log pi(y|x)`` [P, N] of a policy on ``language`` (jitted; one compile per graph and language)."""
    return _logprob_table(graphdef, params, language)


def prepare_task(key: jax.Array, n_pairs: int, model_size: str = "small", sft_steps: int = 300,
                 sft_examples: int = 8192, language: lang.SafetyLanguage = lang.DEFAULT) -> SyntheticTask:
    """SFT a decoder of ``model_size`` on ``language``'s :meth:`~lang.SafetyLanguage.sft_corpus`, then sample
    ``n_pairs`` pairs per objective."""
    require(model_size in MODEL_SIZES, "model_size", f"one of {sorted(MODEL_SIZES)}", model_size)
    require(is_int(n_pairs, 2), "n_pairs", "an integer >= 2", n_pairs)
    require(is_int(sft_steps), "sft_steps", "an integer >= 1", sft_steps)
    init_key, corpus_key, sft_key, reward_key, safety_key = jax.random.split(key, 5)
    config = model_lib.preset("tiny", vocab_size=language.vocab_size, max_seq_len=max(8, language.sequence_length),
                              **MODEL_SIZES[model_size])
    graphdef, params = model_lib.init_params(config, init_key)
    corpus = language.sft_corpus(corpus_key, sft_examples)
    sft_params, _ = train_lib.train_sft(graphdef, params, corpus, sft_key, n_steps=sft_steps, batch_size=128,
                                        learning_rate=3e-3, vocab_mask=language.response_vocab_mask())
    table = logprob_table(graphdef, sft_params, language)
    prompt_probs = language.prompt_distribution()
    reward_pairs, _ = language.preference_pairs(reward_key, table, prompt_probs, n_pairs, "reward")
    safety_pairs, safety_ids = language.preference_pairs(safety_key, table, prompt_probs, n_pairs, "safety")
    reward, safety = (jnp.asarray(t) for t in language.reward_tables())
    return SyntheticTask(graphdef, sft_params, table, reward_pairs, safety_pairs, safety_ids, reward, safety,
                         prompt_probs, language)


def stage_datasets(task: SyntheticTask, loss: str, key: jax.Array) -> dict:
    """``{"reward": ..., "safety": ...}``: the pairs (DPO) or unpaired data (KTO, SACPO-repo labelling:
    helpfulness chosen/rejected -> desirable/undesirable; safety: each response by its own g >= 0)."""
    if loss == "dpo":
        return {"reward": task.reward_pairs, "safety": task.safety_pairs}
    require(loss == "kto", "loss", f"one of {LOSSES}", loss)
    reward_key, safety_key = jax.random.split(key)
    pairs, ids = task.safety_pairs, task.safety_ids
    tokens = jnp.concatenate([pairs.chosen_tokens, pairs.rejected_tokens])
    attention_mask = jnp.concatenate([pairs.chosen_attention_mask, pairs.rejected_attention_mask])
    response_mask = jnp.concatenate([pairs.chosen_response_mask, pairs.rejected_response_mask])
    prompts = jnp.concatenate([ids["prompt_ids"], ids["prompt_ids"]])
    responses = jnp.concatenate([ids["chosen_ids"], ids["rejected_ids"]])
    safe = task.safety[prompts, responses] >= 0
    return {"reward": sacpo.unpaired_from_pairs(task.reward_pairs, reward_key),
            "safety": sacpo.unpaired_batch(tokens, attention_mask, response_mask, safe, safety_key)}


def sacpo_problem(task: SyntheticTask, datasets: dict) -> sacpo.SACPOProblem:
    """The :class:`~jaxsafe.llm.sacpo.SACPOProblem` of a task: its SFT policy, ``datasets`` and the response
    alphabet as the vocabulary mask."""
    return sacpo.SACPOProblem(task.graphdef, task.sft_params, datasets, task.language.response_vocab_mask())


def cost_pairs(task: SyntheticTask) -> safe_rlhf.CostPairs:
    """The safety pairs with each response's safe flag (g >= 0), for Safe-RLHF's cost model."""
    ids = task.safety_ids
    return safe_rlhf.CostPairs(task.safety_pairs, task.safety[ids["prompt_ids"], ids["chosen_ids"]] >= 0,
                               task.safety[ids["prompt_ids"], ids["rejected_ids"]] >= 0)


def rlhf_problem(task: SyntheticTask, models: safe_rlhf.ScoreModels) -> safe_rlhf.SafeRLHFProblem:
    """The :class:`~jaxsafe.llm.safe_rlhf.SafeRLHFProblem` of a task and its trained score models."""
    language = task.language
    sampling = generate_lib.SamplingConfig(language.max_response_length, stop_tokens=(language.eos,),
                                           pad_token=language.pad)
    return safe_rlhf.SafeRLHFProblem(task.graphdef, models.graphdef, task.sft_params, models.reward_params,
                                     models.cost_params, jnp.asarray(language.prompt_tokens()), task.prompt_probs,
                                     language.response_vocab_mask(), sampling, language.response_processor)


# ----------------------------------------------------------------------------- problems by name


_TASK_OPTIONS = dict(seed=0, pairs=16384, model="small", sft_steps=300)


def _options(name: str, overrides: dict, extra: dict) -> dict:
    require(name in PROBLEMS, "problem", f"one of {sorted(PROBLEMS)}", name)
    defaults = {**_TASK_OPTIONS, **extra}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for problem {name!r}; options: {sorted(defaults)}")
    options = {**defaults, **overrides}
    require(is_int(options["seed"], 0), "seed", "an integer >= 0", options["seed"])
    return options


def synthetic_task(seed: int, pairs: int, model: str, sft_steps: int,
                   problem: str = "safety_language") -> tuple[SyntheticTask, jax.Array]:
    """The task ``problem`` (a key of :data:`PROBLEMS`) drawn from ``jax.random.PRNGKey(seed)``, and the key
    left for its datasets."""
    require(problem in PROBLEMS, "problem", f"one of {sorted(PROBLEMS)}", problem)
    task_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    return prepare_task(task_key, pairs, model, sft_steps, language=lang.LANGUAGES[problem]), data_key


def make_problem(name: str = "safety_language", **overrides) -> sacpo.SACPOProblem:
    """SACPO's problem by name: ``make_problem("safety_language", seed=0, pairs=16384, model="small",
    sft_steps=300, loss="dpo")``; deterministic in ``seed``. ValueError names an unknown or bad option."""
    options = _options(name, overrides, {"loss": "dpo"})
    require(options["loss"] in LOSSES, "loss", f"one of {LOSSES}", options["loss"])
    task, data_key = synthetic_task(options["seed"], options["pairs"], options["model"], options["sft_steps"],
                                    name)
    return sacpo_problem(task, stage_datasets(task, options["loss"], data_key))


def make_safe_rlhf_problem(name: str = "safety_language", **overrides) -> safe_rlhf.SafeRLHFProblem:
    """Safe-RLHF's problem by name: the same task as :func:`make_problem` plus reward and cost models trained
    for ``score_steps`` (300) Adam steps of ``score_batch_size`` (64) pairs at ``score_learning_rate``
    (1e-3)."""
    options = _options(name, overrides,
                       {"score_steps": 300, "score_batch_size": 64, "score_learning_rate": 1e-3})
    score_config = safe_rlhf.ScoreModelConfig(options["score_steps"], options["score_batch_size"],
                                              options["score_learning_rate"])
    task, data_key = synthetic_task(options["seed"], options["pairs"], options["model"], options["sft_steps"],
                                    name)
    models = safe_rlhf.train_score_models(score_config, task.graphdef, task.sft_params, task.reward_pairs,
                                          cost_pairs(task), data_key)
    return rlhf_problem(task, models)


def describe_problems() -> dict[str, str]:
    return dict(PROBLEMS)


# ----------------------------------------------------------------------------- exact evaluation


def exact_point(task: SyntheticTask, table: jax.Array, target: jax.Array | None = None) -> dict:
    """Exact E[r], E[g], KL to the SFT policy and (if given) to ``target`` of a log-prob table [P, N]."""
    point = {"expected_reward": float(lang.expected_value(table, task.reward, task.prompt_probs)),
             "expected_safety": float(lang.expected_value(table, task.safety, task.prompt_probs)),
             "kl_to_sft": float(lang.kl_divergence(table, task.sft_table, task.prompt_probs))}
    if target is not None:
        point["kl_to_optimum"] = float(lang.kl_divergence(table, target, task.prompt_probs))
    return point


def optimum_table(task: SyntheticTask, beta: float, lagrange_multiplier: float) -> jax.Array:
    """Exact ``log pi*_{r + lambda g}`` [P, N] relative to the SFT policy."""
    return lang.optimal_policy_logprobs(task.sft_table, task.reward, task.safety, beta, lagrange_multiplier)


def exact_front(task: SyntheticTask, beta: float, multipliers=None) -> dict:
    """The exact optimal front: (E[r], E[g]) of pi*_{r + lambda g} over a lambda grid."""
    if multipliers is None:
        multipliers = np.concatenate([[0.0], np.geomspace(0.05, 50.0, 60)])
    points = [exact_point(task, optimum_table(task, beta, float(m))) for m in multipliers]
    return {"lagrange_multiplier": list(map(float, multipliers)),
            "expected_reward": [p["expected_reward"] for p in points],
            "expected_safety": [p["expected_safety"] for p in points]}


def front_reward_at(front: dict, expected_safety: float) -> float:
    """The exact front's E[r] at a given E[g] (linear interpolation; NaN outside the front's range)."""
    safeties, rewards = np.asarray(front["expected_safety"]), np.asarray(front["expected_reward"])
    order = np.argsort(safeties)
    safeties, rewards = safeties[order], rewards[order]
    if not safeties[0] <= expected_safety <= safeties[-1]:
        return float("nan")
    return float(np.interp(expected_safety, safeties, rewards))


# ----------------------------------------------------------------------------- the experiment


@dataclasses.dataclass(frozen=True)
class AlignArgs:
    """Validated settings of ``jaxsafe align sacpo`` (ValueError names the flag)."""

    beta: float
    lambdas: tuple[float, ...]
    pairs: int
    steps: int
    seeds: int
    threshold: float
    order: str
    loss: str
    batch_size: int
    learning_rate: float
    model: str
    sft_steps: int
    task: str = "safety_language"

    def __post_init__(self):
        object.__setattr__(self, "lambdas", tuple(self.lambdas))
        require(bool(np.isfinite(self.beta)) and self.beta > 0, "--beta", "a finite number > 0", self.beta)
        require(bool(self.lambdas) and all(np.isfinite(v) and v > 0 for v in self.lambdas), "--lambdas",
                "one or more finite numbers > 0", list(self.lambdas))
        for flag, value, low in (("--pairs", self.pairs, 2), ("--steps", self.steps, 1),
                                 ("--seeds", self.seeds, 1),
                                 ("--batch-size", self.batch_size, 1), ("--sft-steps", self.sft_steps, 1)):
            require(is_int(value, low), flag, f"an integer >= {low}", value)
        require(self.batch_size <= self.pairs, "--batch-size", f"<= --pairs ({self.pairs})", self.batch_size)
        require(bool(np.isfinite(self.threshold)), "--threshold", "finite", self.threshold)
        require(self.order in ORDERS, "--order", f"one of {sorted(ORDERS)}", self.order)
        require(self.loss in LOSSES, "--loss", f"one of {LOSSES}", self.loss)
        require(self.model in MODEL_SIZES, "--model", f"one of {sorted(MODEL_SIZES)}", self.model)
        require(self.task in PROBLEMS, "--task", f"one of {sorted(PROBLEMS)}", self.task)
        require(bool(np.isfinite(self.learning_rate)) and self.learning_rate > 0, "--lr",
                "a finite number > 0",
                self.learning_rate)


#: The ``--quick`` budget and the full defaults of the settings that have both.
QUICK = dict(pairs=4096, steps=150, sft_steps=150, model="small")
DEFAULTS = dict(pairs=16384, steps=400, sft_steps=300, model="small")


def first_stage_grid(config: sacpo.SACPOConfig, hparams: sacpo.SACPOHParams, seeds: int, base_seed: int,
                     lambdas) -> sweep.Grid:
    """The grid of the first-stage-only runs matching a SACPO grid: one lane per seed when the first stage is
    the reward stage (it does not depend on lambda), else one per (seed, lambda)."""
    if config.stages[0] == sacpo.REWARD_STAGE:
        return sweep.make_grid(hparams, seeds=seeds, base_seed=base_seed)
    return sweep.make_grid(hparams, seeds=seeds, base_seed=base_seed, lagrange_multipliers=list(lambdas))


def run_sacpo(args: AlignArgs, out_dir, seed: int = 0, log_every: int = 10) -> dict:
    """Run the SACPO grid described by ``args`` and write a new run directory (refused if ``out_dir`` is not
    empty, before any work); returns the summary."""
    run_dir = RunDir(out_dir)
    start = time.perf_counter()
    task, data_key = synthetic_task(seed, args.pairs, args.model, args.sft_steps, args.task)
    problem = sacpo_problem(task, stage_datasets(task, args.loss, data_key))
    config = sacpo.SACPOConfig(stages=ORDERS[args.order], n_steps=args.steps, batch_size=args.batch_size)
    hparams = config.default_hparams().replace(beta=args.beta, learning_rate=args.learning_rate)
    grid = sweep.make_grid(hparams, seeds=args.seeds, base_seed=seed, lagrange_multipliers=list(args.lambdas))
    run_dir.write_config({"algorithm": "sacpo", "task": args.task, "args": dataclasses.asdict(args),
                          "config": dataclasses.asdict(config), "grid": grid.points,
                          "hparams": dataclasses.asdict(hparams), "seed": seed})
    train_start = time.perf_counter()
    result = jax.block_until_ready(sweep.run_grid(sacpo.make_train(config, problem), grid))
    first_config = config.replace(stages=config.stages[:1])
    first_grid = first_stage_grid(config, hparams, args.seeds, seed, args.lambdas)
    first_result = jax.block_until_ready(sweep.run_grid(sacpo.make_train(first_config, problem), first_grid))
    train_seconds = time.perf_counter() - train_start

    by_stage = {name: np.asarray(values)
                for name, values in sacpo.stage_metrics(config, result.metrics).items()}
    rows = []
    for index, point in enumerate(grid.points):
        lam = point["lagrange_multipliers"]
        for step in range(0, args.steps, log_every):
            row = {"run": f"lambda={lam:g}", "seed": point["seed"], "lagrange_multiplier": lam, "step": step}
            row.update({name: values[index, step] for name, values in by_stage.items()})
            rows.append(row)
    run_dir.append_metrics(rows)

    def first_lane(point):
        for index, first_point in enumerate(first_grid.points):
            if all(first_point[k] == point[k] for k in first_point):
                return index
        raise AssertionError(point)  # pragma: no cover - every SACPO lane has its first-stage lane

    points, first = [], []
    for index, point in enumerate(grid.points):
        lam = point["lagrange_multipliers"]
        final = logprob_table(task.graphdef, sweep.lane(result.params, index), task.language)
        after_first = logprob_table(task.graphdef, sweep.lane(first_result.params, first_lane(point)),
                                    task.language)
        points.append({"lagrange_multiplier": lam, "seed": point["seed"],
                       **exact_point(task, final, optimum_table(task, args.beta, lam))})
        first.append(exact_point(task, after_first))
    lambda_star = float(sacpo.minimize_dual(task.sft_table, task.reward, task.safety,
                                            task.prompt_probs, args.beta,
                                            args.threshold))
    selection = sacpo.select_feasible([p["expected_reward"] for p in points],
                                      [p["expected_safety"] for p in points],
                                      args.threshold)
    per_lambda = {}
    for lam in args.lambdas:
        chosen = [p for p in points if np.isclose(p["lagrange_multiplier"], lam)]
        per_lambda[f"{lam:g}"] = {name: summarize(np.array([p[name] for p in chosen]))
                                  for name in ("expected_reward", "expected_safety", "kl_to_optimum",
                                               "kl_to_sft")}
    first_stage = config.stages[0]
    summary = {
        "sft": exact_point(task, task.sft_table),
        f"after_{first_stage}_stage": {name: summarize(np.array([p[name] for p in first]))
                                       for name in ("expected_reward", "expected_safety", "kl_to_sft")},
        "points": points, "per_lambda": per_lambda,
        "lambda_star_exact_dual": lambda_star,
        "optimum_at_lambda_star": exact_point(task, optimum_table(task, args.beta, lambda_star)),
        "selected": {**points[selection.index], "feasible": selection.feasible},
        "threshold": args.threshold, "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start,
    }
    run_dir.write_summary(summary)
    plot_plane(run_dir.path / "plane.png", exact_front(task, args.beta), {
        "SFT": ([summary["sft"]["expected_reward"]], [summary["sft"]["expected_safety"]]),
        f"after {first_stage} stage": ([p["expected_reward"] for p in first],
                                       [p["expected_safety"] for p in first]),
        f"SACPO ({args.order}, {args.loss})": ([p["expected_reward"] for p in points],
                                               [p["expected_safety"] for p in points]),
    }, args.threshold, f"SACPO, β={args.beta:g}, λ ∈ {list(args.lambdas)}")
    return summary
