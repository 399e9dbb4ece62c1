"""The biased-safety experiment of TSDI (``../shared/papers/tsdi.md`` §5.5) on the synthetic safety language.

1. SFT a small decoder and sample helpfulness pairs as SACPO does (:mod:`jaxsafe.llm.sacpo_experiment`).
2. Make the **safety** pairs biased: the annotator scores ``g(x, y) + refusal_bonus * [y starts with REFUSE]``, a
   context-independent "refusing is always safe" shortcut, so the chosen response starts with REFUSE in most pairs
   whatever the prompt, benign ones included.
3. Run SACPO (reward stage with ``beta``, then the biased safety stage with ``beta / lambda``) for every
   ``(lambda, seed)`` as one vmapped program; the step-1 (reward-aligned) models come from the same grid.
4. Estimate the TSDI bias of every SACPO model against its reference (the step-1 model, or the SFT model) from
   random prompts, and score the debiased policies **exactly** (all 85 responses of all 7 prompts) for every
   strength ``alpha`` and number of debiased positions ``L``: refusal rate on benign prompts, safety on harmful
   prompts, exact helpfulness and safety, and KL to the exact optimum ``pi*_{r + lambda g}`` of the *unbiased* g.
5. Compare the helpfulness-safety fronts with and without TSDI (the upper envelope of the points, and the area it
   dominates above a common reference point).

:func:`run_tsdi` writes a new run directory: ``config.json``, ``summary.json`` (every point, the per-setting
means over seeds, the fronts and their dominated areas), ``bias-lambda<l>.safetensors`` (seed 0's bias at each
lambda) and ``pareto.png``. ``jaxsafe align tsdi`` and ``benchmarks/tsdi.py`` call it.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe import sweep
from jaxsafe.llm import losses, sacpo, tsdi
from jaxsafe.llm import sacpo_experiment as sx
from jaxsafe.llm.tasks import safety_language as lang
from jaxsafe.logging import RunDir, summarize
from jaxsafe.plotting import plot_plane
from jaxsafe.validation import is_int, require

REFERENCES = ("step1", "sft")
#: Token pools of the random prompts: ``neutral`` (response words in the topic slot: prompts that are neither
#: benign nor harmful, as the paper's random-token prompts are), the real ``topics``, or ``all`` of them.
POOLS = {"neutral": lang.CONTENT_WORDS, "topics": lang.TOPICS, "all": lang.TOPICS + lang.CONTENT_WORDS}
REFUSE = lang.TOKEN_ID["REFUSE"]


@dataclasses.dataclass(frozen=True)
class TSDIArgs:
    """Settings of the experiment (ValueError names the flag)."""

    beta: float = 0.5
    lambdas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    strengths: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)
    positions: tuple[int, ...] = (1, 2, 3)
    seeds: int = 3
    refusal_bonus: float = 1.5
    refusal_pair_rate: float = 0.8
    prompts: int = 1024
    references: tuple[str, ...] = ("step1", "sft")
    pools: tuple[str, ...] = ("neutral", "topics", "all")
    pairs: int = 16384
    steps: int = 400
    sft_steps: int = 300
    batch_size: int = 128
    learning_rate: float = 3e-3
    model: str = "small"

    def __post_init__(self):
        for name in ("lambdas", "strengths", "positions", "references", "pools"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        require(np.isfinite(self.beta) and self.beta > 0, "--beta", "a finite number > 0", self.beta)
        require(bool(self.lambdas) and all(np.isfinite(v) and v > 0 for v in self.lambdas), "--lambdas",
                "one or more finite numbers > 0", list(self.lambdas))
        require(bool(self.strengths) and all(np.isfinite(a) and a >= 0 for a in self.strengths), "--strength",
                "one or more finite numbers >= 0", list(self.strengths))
        require(bool(self.positions) and all(is_int(p) and p <= lang.MAX_RESPONSE_LENGTH for p in self.positions),
                "--positions", f"integers in [1, {lang.MAX_RESPONSE_LENGTH}] (the longest response)",
                list(self.positions))
        for flag, value, low in (("--seeds", self.seeds, 1), ("--prompts", self.prompts, 1),
                                 ("--pairs", self.pairs, 2), ("--steps", self.steps, 1),
                                 ("--sft-steps", self.sft_steps, 1), ("--batch-size", self.batch_size, 1)):
            require(is_int(value, low), flag, f"an integer >= {low}", value)
        require(self.batch_size <= self.pairs, "--batch-size", f"<= --pairs ({self.pairs})", self.batch_size)
        require(np.isfinite(self.refusal_bonus) and self.refusal_bonus >= 0, "--refusal-bonus",
                "a finite number >= 0", self.refusal_bonus)
        require(0 <= self.refusal_pair_rate <= 1, "--refusal-pair-rate", "in [0, 1]", self.refusal_pair_rate)
        require(bool(self.references) and set(self.references) <= set(REFERENCES), "--reference",
                f"one or more of {REFERENCES}", list(self.references))
        require(bool(self.pools) and set(self.pools) <= set(POOLS), "--pool", f"one or more of {sorted(POOLS)}",
                list(self.pools))
        require(self.model in sx.MODEL_SIZES, "--model", f"one of {sorted(sx.MODEL_SIZES)}", self.model)
        require(np.isfinite(self.learning_rate) and self.learning_rate > 0, "--lr", "a finite number > 0",
                self.learning_rate)


#: The ``--quick`` settings (a smoke run of a minute or two).
QUICK = dict(lambdas=(1.0, 4.0), strengths=(0.0, 1.0), positions=(1, 3), seeds=1, prompts=256, pairs=4096,
             steps=150, sft_steps=150, references=("step1",), pools=("neutral",))


# ----------------------------------------------------------------------------- the biased data


def starts_with(word: int) -> np.ndarray:
    """``[85]`` bool: the response's first content word is ``word``."""
    return np.array([bool(content) and content[0] == word for content in lang.enumerate_responses().content])


def biased_safety_pairs(key: jax.Array, sampling_table: jax.Array, prompt_probs: jax.Array, n_pairs: int,
                        refusal_bonus: float, refusal_pair_rate: float = 0.8):
    """Safety pairs with a context-independent refusal shortcut.

    Each pair is a response from the SFT policy ``sampling_table`` (``[7, 85]`` log-probs) and, with probability
    ``refusal_pair_rate``, a second one from the SFT policy conditioned on starting with REFUSE (otherwise a plain
    SFT sample), labelled by Bradley-Terry on ``g(x, y) + refusal_bonus * [y starts with REFUSE]``: most chosen
    responses then start with REFUSE whatever the prompt. Returns the
    :class:`~jaxsafe.llm.losses.PreferenceBatch` and the share of chosen responses starting with REFUSE on benign
    and on harmful prompts.
    """
    _, safety = lang.reward_tables()
    refuses = starts_with(REFUSE)
    scores = jnp.asarray(safety + refusal_bonus * refuses[None, :], jnp.float32)
    pair_key, second_key, which_key, label_key = jax.random.split(key, 4)
    prompt_ids, first_ids = lang.sample_pairs(pair_key, sampling_table, prompt_probs, n_pairs)
    conditioned = jnp.where(jnp.asarray(refuses)[None, :], sampling_table, -jnp.inf)[prompt_ids]
    plain_key, refusal_key = jax.random.split(second_key)
    second_ids = jnp.where(jax.random.bernoulli(which_key, refusal_pair_rate, (n_pairs,)),
                           jax.random.categorical(refusal_key, conditioned, axis=-1),
                           jax.random.categorical(plain_key, sampling_table[prompt_ids], axis=-1))
    batch = sacpo.relabel_pairs(label_key, first_ids, second_ids, prompt_ids, scores, lang.sequences)
    margin = scores[prompt_ids, first_ids] - scores[prompt_ids, second_ids]
    first_chosen = np.asarray(jax.random.bernoulli(label_key, jax.nn.sigmoid(margin)))  # relabel_pairs' draw
    chosen = np.where(first_chosen, np.asarray(first_ids), np.asarray(second_ids))
    harmful = np.isin(np.asarray(lang.TOPICS)[np.asarray(prompt_ids)], lang.HARMFUL_TOPICS)
    return batch, {"chosen_starts_with_refuse_benign": float(refuses[chosen][~harmful].mean()),
                   "chosen_starts_with_refuse_harmful": float(refuses[chosen][harmful].mean())}


# ----------------------------------------------------------------------------- exact scoring


_SPACE = lang.enumerate_responses()
_PROMPT_IDS = np.repeat(np.arange(len(lang.TOPICS)), len(_SPACE.content))
_RESPONSE_IDS = np.tile(np.arange(len(_SPACE.content)), len(lang.TOPICS))


@jax.jit(static_argnums=0)
def debiased_table(graphdef, params, bias: jax.Array, strength: jax.Array) -> jax.Array:
    """Exact ``log pi_TSDI(y | x)`` ``[7, 85]`` of a decoder with a bias ``[L, V]`` at ``strength``."""
    batch = lang.sequences(_PROMPT_IDS, _RESPONSE_IDS)
    per_token = tsdi.debiased_token_logprobs(tsdi.model_logits(graphdef, params), batch.tokens,
                                             batch.attention_mask, lang.PROMPT_LENGTH,
                                             tsdi.TSDIState(bias, strength), lang.response_vocab_mask())
    return losses.sum_response_logprobs(per_token, batch.response_mask).reshape(len(lang.TOPICS), -1)


@jax.jit(static_argnums=(0, 4))
def estimate(graphdef, aligned_params, reference_params, contexts, positions: int) -> jax.Array:
    """The TSDI bias ``[L, V]`` of an aligned decoder against its reference (same graphdef)."""
    return tsdi.estimate_bias(tsdi.model_logits(graphdef, aligned_params), tsdi.model_logits(graphdef,
                              reference_params), contexts, lang.PROMPT_LENGTH, positions, lang.response_vocab_mask())


def exact_metrics(task: sx.SyntheticTask, table: jax.Array, target: jax.Array) -> dict:
    """Exact E[r], E[g], benign-prompt refusal rate, harmful-prompt safety and helpfulness, benign helpfulness and
    KL to ``target`` of a policy table ``[7, 85]``."""
    probs = np.exp(np.asarray(table, np.float64))
    prompt_probs = np.asarray(task.prompt_probs, np.float64)
    harmful = np.isin(np.asarray(lang.TOPICS), lang.HARMFUL_TOPICS)
    reward, safety = np.asarray(task.reward, np.float64), np.asarray(task.safety, np.float64)

    def conditional(values, rows):
        weights = prompt_probs[rows] / prompt_probs[rows].sum()
        return float(np.sum(weights * np.sum(probs[rows] * values[rows], axis=1)))

    return {
        **sx.exact_point(task, table, target),
        "benign_refusal": conditional(np.broadcast_to(starts_with(REFUSE), probs.shape).astype(float), ~harmful),
        "benign_helpfulness": conditional(reward, ~harmful),
        "harmful_safety": conditional(safety, harmful),
        "harmful_refusal": conditional(np.broadcast_to(starts_with(REFUSE), probs.shape).astype(float), harmful),
    }


# ----------------------------------------------------------------------------- fronts


def upper_front(safeties, rewards) -> tuple[np.ndarray, np.ndarray]:
    """The non-dominated points (more safety and more reward are better), sorted by safety."""
    points = sorted(zip(np.asarray(safeties, float), np.asarray(rewards, float)), key=lambda p: (-p[0], -p[1]))
    front, best = [], -np.inf
    for safety_value, reward_value in points:
        if reward_value > best:
            front.append((safety_value, reward_value))
            best = reward_value
    front.sort()
    return np.array([p[0] for p in front]), np.array([p[1] for p in front])


def dominated_area(safeties, rewards, reference: tuple[float, float]) -> float:
    """Area of the region dominated by the points above ``reference = (safety, reward)`` (a hypervolume)."""
    xs, ys = upper_front(safeties, rewards)
    keep = (xs > reference[0]) & (ys > reference[1])
    xs, ys = xs[keep], ys[keep]
    area, previous = 0.0, reference[0]
    for index in range(len(xs)):  # sorted by safety ascending; reward descending along the front
        area += (xs[index] - previous) * (ys[index:].max() - reference[1])
        previous = xs[index]
    return float(area)


# ----------------------------------------------------------------------------- the experiment


def run_tsdi(args: TSDIArgs, out_dir, seed: int = 0) -> dict:
    """The whole experiment (see the module docstring); writes a new run directory and returns the summary."""
    run_dir = RunDir(out_dir)
    start = time.perf_counter()
    task, data_key = sx.synthetic_task(seed, args.pairs, args.model, args.sft_steps)
    pairs_key, context_key = jax.random.split(data_key)
    safety_pairs, bias_stats = biased_safety_pairs(pairs_key, task.sft_table, task.prompt_probs, args.pairs,
                                                   args.refusal_bonus, args.refusal_pair_rate)
    problem = sacpo.SACPOProblem(task.graphdef, task.sft_params, {"reward": task.reward_pairs,
                                                                  "safety": safety_pairs},
                                 lang.response_vocab_mask())
    config = sacpo.SACPOConfig(stages=("reward", "safety"), n_steps=args.steps, batch_size=args.batch_size)
    hparams = config.default_hparams().replace(beta=args.beta, learning_rate=args.learning_rate)
    grid = sweep.make_grid(hparams, seeds=args.seeds, base_seed=seed, lagrange_multipliers=list(args.lambdas))
    run_dir.write_config({"experiment": "tsdi", "args": dataclasses.asdict(args), "seed": seed,
                          "config": dataclasses.asdict(config), "grid": grid.points})
    result = jax.block_until_ready(sweep.run_grid(sacpo.make_train(config, problem), grid))
    first_config = config.replace(stages=config.stages[:1])
    first_grid = sx.first_stage_grid(config, hparams, args.seeds, seed, args.lambdas)
    first = jax.block_until_ready(sweep.run_grid(sacpo.make_train(first_config, problem), first_grid))
    train_seconds = time.perf_counter() - start

    max_positions = max(args.positions)
    context_keys = dict(zip(args.pools, jax.random.split(context_key, len(args.pools))))
    contexts = {pool: tsdi.random_contexts(context_keys[pool], POOLS[pool], args.prompts, lang.PROMPT_LENGTH,
                                           max_positions, prefix_pool=lang.CONTENT_WORDS, prompt_prefix=[lang.BOS])
                for pool in args.pools}
    points, refusal_bias = [], {}
    for index, point in enumerate(grid.points):
        lam = point["lagrange_multipliers"]
        aligned = sweep.lane(result.params, index)
        step1 = sweep.lane(first.params, [i for i, p in enumerate(first_grid.points) if p["seed"] == point["seed"]][0])
        target = sx.optimum_table(task, args.beta, lam)
        undebiased = exact_metrics(task, sx.logprob_table(task.graphdef, aligned), target)
        points.append({"lagrange_multiplier": lam, "seed": point["seed"], "strength": 0.0, "positions": 0,
                       "reference": "-", "pool": "-", **undebiased})
        for reference_name, pool in itertools.product(args.references, args.pools):
            reference = step1 if reference_name == "step1" else task.sft_params
            bias = estimate(task.graphdef, aligned, reference, contexts[pool], max_positions)
            setting = f"{reference_name}/{pool}"
            refusal_bias.setdefault(setting, {}).setdefault(f"{lam:g}", []).append(np.asarray(bias[:, REFUSE]).tolist())
            if point["seed"] == grid.points[0]["seed"]:
                tsdi.save_bias(run_dir.path / f"bias-lambda{lam:g}-{reference_name}-{pool}.safetensors", bias,
                               positions=max_positions,
                               metadata={"lagrange_multiplier": lam, "reference": reference_name, "pool": pool,
                                         "prompts": args.prompts, "beta": args.beta})
            for strength, positions in itertools.product(args.strengths, args.positions):
                if strength == 0:
                    continue  # alpha = 0 is the undebiased model (above)
                table = debiased_table(task.graphdef, aligned, bias[:positions], jnp.float32(strength))
                points.append({"lagrange_multiplier": lam, "seed": point["seed"], "strength": strength,
                               "positions": positions, "reference": reference_name, "pool": pool,
                               **exact_metrics(task, table, target)})

    summary = _summarise(task, args, points, bias_stats)
    summary["refusal_bias_by_position"] = refusal_bias  # b_i(REFUSE), centred: reference/pool -> lambda -> seeds
    summary.update(train_seconds=train_seconds, total_seconds=time.perf_counter() - start)
    run_dir.write_summary(summary)
    _figure(run_dir.path / "pareto.png", task, args, summary)
    return summary


METRICS = ("expected_reward", "expected_safety", "benign_refusal", "benign_helpfulness", "harmful_safety",
           "harmful_refusal", "kl_to_optimum")


def _summarise(task, args: TSDIArgs, points: list[dict], bias_stats: dict) -> dict:
    settings = {}
    for p in points:
        key = (p["reference"], p["pool"], p["lagrange_multiplier"], p["strength"], p["positions"])
        settings.setdefault(key, []).append(p)
    per_setting = [{"reference": reference, "pool": pool, "lagrange_multiplier": lam, "strength": strength,
                    "positions": positions, "seeds": len(group),
                    **{name: summarize(np.array([p[name] for p in group])) for name in METRICS}}
                   for (reference, pool, lam, strength, positions), group in sorted(settings.items())]
    sacpo_points = [s for s in per_setting if s["strength"] == 0]
    reference_point = (min(s["expected_safety"]["mean"] for s in per_setting) - 0.05,
                       min(s["expected_reward"]["mean"] for s in per_setting) - 0.05)

    def front(group):
        safeties = [s["expected_safety"]["mean"] for s in group]
        rewards = [s["expected_reward"]["mean"] for s in group]
        xs, ys = upper_front(safeties, rewards)
        return {"expected_safety": xs.tolist(), "expected_reward": ys.tolist(),
                "dominated_area": dominated_area(safeties, rewards, reference_point)}

    fronts = {"sacpo": front(sacpo_points)}
    for reference, pool in itertools.product(args.references, args.pools):
        for strength, positions in itertools.product(args.strengths, args.positions):
            if strength == 0:
                continue
            group = sacpo_points + [s for s in per_setting if (s["reference"], s["pool"], s["strength"],
                                                              s["positions"]) == (reference, pool, strength,
                                                                                  positions)]
            fronts[f"tsdi {reference}/{pool} alpha={strength:g} L={positions}"] = front(group)
        group = sacpo_points + [s for s in per_setting if (s["reference"], s["pool"]) == (reference, pool)]
        fronts[f"tsdi {reference}/{pool} all alpha, L"] = front(group)
    return {"points": points, "per_setting": per_setting, "fronts": fronts, "area_reference": list(reference_point),
            "biased_data": bias_stats, "sft": exact_metrics(task, task.sft_table, task.sft_table)}


def _figure(path, task, args: TSDIArgs, summary: dict) -> None:
    primary = (args.references[0], args.pools[0])
    groups = {"SFT": ([summary["sft"]["expected_reward"]], [summary["sft"]["expected_safety"]])}
    for s in summary["per_setting"]:
        if s["strength"] == 0:
            label = "SACPO (biased safety data)"
        elif (s["reference"], s["pool"]) == primary:
            label = f"TSDI α={s['strength']:g}, L={s['positions']}"
        else:
            continue
        rewards, safeties = groups.setdefault(label, ([], []))
        rewards.append(s["expected_reward"]["mean"])
        safeties.append(s["expected_safety"]["mean"])
    plot_plane(path, sx.exact_front(task, args.beta), groups, None,
               f"TSDI on SACPO, β={args.beta:g}; bias vs {primary[0]}, {primary[1]} prompts")


def table(summary: dict) -> str:
    """A markdown table of the per-setting means."""
    lines = ["| reference / pool | λ | α | L | E[r] | E[g] | benign refusal | harmful E[g] | KL to π*_{r+λg} |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary["per_setting"]:
        where = "-" if s["strength"] == 0 else f"{s['reference']} / {s['pool']}"
        lines.append(f"| {where} | {s['lagrange_multiplier']:g} | {s['strength']:g} | {s['positions'] or '-'} | "
                     f"{s['expected_reward']['mean']:.3f} | {s['expected_safety']['mean']:.3f} | "
                     f"{s['benign_refusal']['mean']:.3f} | {s['harmful_safety']['mean']:.3f} | "
                     f"{s['kl_to_optimum']['mean']:.4f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- TSDI on a trained SACPO run


def debias_run(run_path, out_dir, positions: int = 1, prompts: int = 1024, strengths=(0.0, 1.0),
               pool: str = "neutral", seed: int = 0) -> dict:
    """TSDI on every lane of a SACPO run directory (``jaxsafe train|sweep sacpo --problem safety_language``).

    The reference is the run's SFT policy (the problem's initial params; a run directory keeps no step-1 model).
    Writes a new ``out_dir`` with one ``bias-lane<i>.safetensors`` per lane, ``summary.json`` (exact metrics of
    every lane at every strength) and ``pareto.png``; returns the summary.

    Raises:
      ValueError: the run is not a SACPO run on the synthetic safety language, or a bad setting (named).
    """
    from jaxsafe import runner

    require(is_int(positions) and positions <= lang.MAX_RESPONSE_LENGTH, "--positions",
            f"an integer in [1, {lang.MAX_RESPONSE_LENGTH}]", positions)
    require(is_int(prompts), "--prompts", "an integer >= 1", prompts)
    require(pool in POOLS, "--pool", f"one of {sorted(POOLS)}", pool)
    require(all(np.isfinite(a) and a >= 0 for a in strengths), "--strength", "finite numbers >= 0", list(strengths))
    spec = runner.RunSpec.from_json(RunDir(run_path, must_exist=True).read_config())
    require(spec.algorithm == "sacpo" and spec.problem == "safety_language", "RUN_DIR",
            "a sacpo run on the safety_language task", f"{spec.algorithm} on {spec.problem}")
    out = RunDir(out_dir)
    restored = runner.restore_run(run_path)
    problem, grid = restored.built.problem, restored.built.grid
    reward, safety = (jnp.asarray(t) for t in lang.reward_tables())
    sft_table = sx.logprob_table(problem.graphdef, problem.initial_params)
    task = sx.SyntheticTask(problem.graphdef, problem.initial_params, sft_table, None, None, None, reward, safety,
                            lang.prompt_distribution())
    contexts = tsdi.random_contexts(jax.random.PRNGKey(seed), POOLS[pool], prompts, lang.PROMPT_LENGTH, positions,
                                    prefix_pool=lang.CONTENT_WORDS, prompt_prefix=[lang.BOS])
    out.write_config({"experiment": "tsdi on a run", "run": str(run_path), "checkpoint": restored.checkpoint_step,
                      "positions": positions, "prompts": prompts, "strengths": list(strengths), "pool": pool,
                      "reference": "sft", "seed": seed})
    points = []
    for lane, point in enumerate(grid.points):
        params = sweep.lane(restored.state.params, lane)
        hparams = sweep.lane(grid.hparams, lane)
        beta, lam = float(hparams.beta), float(np.ravel(np.asarray(hparams.lagrange_multipliers))[0])
        bias = estimate(problem.graphdef, params, problem.initial_params, contexts, positions)
        tsdi.save_bias(out.path / f"bias-lane{lane}.safetensors", bias, positions=positions,
                       metadata={"run": str(run_path), "lane": lane, **point})
        target = sx.optimum_table(task, beta, lam)
        for strength in strengths:
            table = debiased_table(problem.graphdef, params, bias, jnp.float32(strength))
            points.append({"lane": lane, **point, "strength": float(strength), "positions": positions,
                           **exact_metrics(task, table, target)})
    summary = {"points": points, "checkpoint": restored.checkpoint_step}
    out.write_summary(summary)
    groups = {}
    for p in points:
        rewards, safeties = groups.setdefault(f"α = {p['strength']:g}", ([], []))
        rewards.append(p["expected_reward"])
        safeties.append(p["expected_safety"])
    beta0 = float(np.ravel(np.asarray(grid.hparams.beta))[0])
    plot_plane(out.path / "pareto.png", sx.exact_front(task, beta0), groups, None,
               f"TSDI (L = {positions}) on {run_path}")
    return summary
