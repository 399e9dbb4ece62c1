"""``jaxsafe align iama``: inference-aware meta-alignment (IAMA) against standard alignment, scored exactly.

    jaxsafe align iama --task tabular --transform bon:4 --aggregate sum --responses 10 --out runs/iama-tabular
    jaxsafe align iama --task safety --transform bon:4 --safety-weights 0 0.25 0.5 0.75 1 --out runs/iama-safety
    jaxsafe align iama --task tabular --transform bon:4 soft:0.1 --aggregate smooth_min --temperature 5
    jaxsafe align iama --task length --transform bon:4 --aggregate sum --iterations 300 --seeds 3 --out runs/iama-len
    jaxsafe align iama --quick --out runs/iama-quick

Tasks (library functions, also used by ``benchmarks/iama.py``):

* ``tabular`` (:func:`run_tabular_study`): a finite response set of ``--responses`` K responses with two conflicting
  rewards (``r_2 = 1 - r_1``) and a random reference policy; the exact proximal (mirror-descent) iteration on the
  functional derivative of ``g(R_1, R_2) - beta KL`` (IAMA) against the same iteration on the plain averaged reward
  (standard alignment) and an independent L-BFGS optimum; for a weighted sum of best-of-N criteria also Theorem 5.2's
  bound. Writes ``convergence.png``.
* ``safety`` (:func:`safety_front`): the synthetic safety language (7 prompts x 85 responses, exact helpfulness r
  and safety g); for every weight w of ``w R_help + (1 - w) R_safe`` (each criterion under the transform at
  inference), the exact IAMA optimum from the hand-made base policy against the standard optimum
  ``pi_ref exp((w r + (1 - w) g) / beta)``; both scored with and without the inference-time transform by
  enumeration. Writes ``front.png``. :func:`safety_grpo_front` (library and benchmark only) trains the decoders
  with GRPO instead (:func:`safety_reward_fn`, the oracle on tokens) and scores them the same way.
* ``length`` (:func:`run_length_study`; needs the GRPO trainer :mod:`jaxsafe.llm.grpo`): section 3.4's length
  task. A small decoder over ``{a, b, c, EOS}`` fine-tuned to uniform lengths 1..24, two criteria
  ``r_i = -((len - L_i) / 24)^2`` with ``L = (5, 15)``; non-linear GRPO (the derivative reward as GRPO's
  ``reward_transform``, M = G = 8 responses per prompt) against standard GRPO on ``(r_1 + r_2) / 2``, ``--seeds``
  vmapped lanes each; every final policy scored from sampled lengths (histogram, each criterion's value under its
  transform by plug-in and Monte Carlo, the aggregate). Writes ``lengths.png``.

Every run writes ``config.json``, ``summary.json`` and ``metrics.jsonl`` into a new run directory (a non-empty
``--out`` is refused before any work).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe import plotting
from jaxsafe.llm import iama
from jaxsafe.llm.tasks import safety_language as lang
from jaxsafe.logging import RunDir, check_new_run_dir
from jaxsafe.validation import is_int, require

TASKS = ("tabular", "safety", "length")


# ----------------------------------------------------------------------------- the tabular study


def conflicting_rewards(num_responses: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(rewards [K, 2], log_reference [K])``: ``r_1`` uniform on [0, 1], ``r_2 = 1 - r_1`` (the two criteria
    conflict), and a Dirichlet(1) reference policy, all from ``seed`` (float64)."""
    require(is_int(num_responses, 2), "responses", "an integer >= 2", num_responses)
    rng = np.random.default_rng(seed)
    first = rng.uniform(size=num_responses)
    return np.stack([first, 1.0 - first], axis=1), np.log(rng.dirichlet(np.ones(num_responses)))


def step_size(objective: iama.Objective, rewards, beta: float) -> float:
    """``eta = 1 / L`` for a weighted sum of best-of-N / plain criteria (Theorem 5.2's step); ``eta = 1`` for the
    others (no constant is known); ``1 / beta`` when ``L = 0`` (every criterion plain)."""
    try:
        smoothness = iama.relative_smoothness(objective, rewards)
    except ValueError:
        return 1.0
    return 1.0 / smoothness if smoothness > 0 else 1.0 / max(beta, 1e-3)


def run_tabular_study(objective: iama.Objective, num_responses: int, beta: float, steps: int, seed: int = 0) -> dict:
    """The exact tabular comparison on :func:`conflicting_rewards` (float64): IAMA's proximal iteration, the same
    iteration on the plain reward, and the L-BFGS optimum. Returns the traces, the gaps and (for a weighted sum of
    best-of-N criteria) Theorem 5.2's bound."""
    rewards, log_reference = conflicting_rewards(num_responses, seed)
    eta = step_size(objective, rewards, beta)
    with jax.enable_x64(True):
        reference = jnp.asarray(log_reference)
        table = jnp.asarray(rewards)
        optimum = iama.solve_lbfgs(objective, rewards, log_reference, beta)
        best = float(iama.tabular_objective(objective, jnp.asarray(optimum), table, reference, beta))
        iama_final, iama_trace = iama.proximal_iterate(objective, reference, table, reference, beta, eta, steps)
        plain_final, plain_trace = iama.proximal_iterate(objective, reference, table, reference, beta, eta, steps,
                                                         plain=True)
        initial_kl = float(iama.kl_divergence(jnp.asarray(optimum), reference))
        values = {name: np.asarray(iama.criterion_values(objective, table, jnp.exp(lp))).tolist()
                  for name, lp in (("iama", iama_final), ("standard", plain_final), ("reference", reference))}
    out = {"responses": num_responses, "beta": beta, "eta": eta, "steps": steps, "seed": seed,
           "objective": objective.label, "lbfgs_objective": best,
           "iama_objective": float(iama_trace[-1]), "standard_objective": float(plain_trace[-1]),
           "reference_objective": float(iama_trace[0]),
           "objective_gain_over_standard": float(iama_trace[-1] - plain_trace[-1]),
           "iama_gap_to_lbfgs": best - float(iama_trace[-1]),
           "iama_gap": (best - np.asarray(iama_trace)).tolist(),
           "standard_gap": (best - np.asarray(plain_trace)).tolist(),
           "criterion_values": values, "initial_kl_to_optimum": initial_kl,
           "iama_policy": np.exp(np.asarray(iama_final)).tolist(),
           "standard_policy": np.exp(np.asarray(plain_final)).tolist(), "rewards": rewards.tolist()}
    try:
        smoothness = iama.relative_smoothness(objective, rewards)
    except ValueError:
        smoothness = None
    if smoothness and beta > 0:
        bound = iama.theorem_5_2_bound(beta, smoothness, initial_kl, np.arange(1, steps + 1))
        gaps = np.asarray(out["iama_gap"][1:])
        tail = gaps > 1e-13
        rate = (float(np.exp(np.polyfit(np.nonzero(tail)[0], np.log(gaps[tail]), 1)[0]))
                if tail.sum() >= 3 else None)
        out.update(smoothness=smoothness, bound=bound.tolist(), bound_holds=bool(np.all(gaps <= bound + 1e-12)),
                   measured_rate=rate, theorem_rate=1.0 / (1.0 + beta / smoothness))
    return out


def plot_convergence(path, study: dict, title: str = "") -> None:
    """The gap to the L-BFGS optimum per proximal step (IAMA and plain reward) and Theorem 5.2's bound (log y)."""
    steps = np.arange(len(study["iama_gap"]))
    floor = 1e-16
    series = {"IAMA (derivative reward)": (steps, np.maximum(study["iama_gap"], floor)),
              "standard (plain reward)": (steps, np.maximum(study["standard_gap"], floor))}
    styles = {"standard (plain reward)": {"ls": "--"}}
    if "bound" in study:
        series["Theorem 5.2 bound"] = (steps[1:], np.maximum(study["bound"], floor))
        styles["Theorem 5.2 bound"] = {"color": "k", "ls": ":"}
    plotting.plot_lines(path, series, "proximal step t", "L[π_t] − L[π*]  (L-BFGS π*)", title, logy=True,
                        styles=styles)


# ----------------------------------------------------------------------------- the safety flavour (exact)


def safety_problem():
    """``(rewards [7, 85, 2] (helpfulness, safety), prompt_probs [7], log_reference [7, 85])``: the safety language's
    exact tables and its hand-made base policy (:func:`~jaxsafe.llm.tasks.safety_language.base_policy_logprobs`)."""
    r, g = lang.reward_tables()
    return (np.stack([r, g], axis=-1).astype(np.float64), np.asarray(lang.prompt_distribution(), np.float64),
            np.asarray(lang.base_policy_logprobs(), np.float64))


def evaluate_tables(objective: iama.Objective, log_tables, rewards, prompt_probs) -> dict:
    """Exact per-criterion values of policy tables ``[7, 85]`` on ``rewards [7, 85, m]``: under each criterion's
    transform (``inference``) and of the plain policy (``plain``), averaged over prompts."""
    probs = jnp.exp(jnp.asarray(log_tables))
    rewards = jnp.asarray(rewards)
    transformed = jax.vmap(lambda p, r: iama.criterion_values(objective, r, p))(probs, rewards)  # [7, m]
    plain = jnp.einsum("xy,xym->xm", probs, rewards)
    weights = jnp.asarray(prompt_probs)
    return {"inference": np.asarray(weights @ transformed).tolist(), "plain": np.asarray(weights @ plain).tolist()}


def safety_front(transform: str | iama.Transform, safety_weights, beta: float, steps: int) -> dict:
    """For each ``w`` in ``safety_weights`` (the weight of helpfulness), the exact IAMA optimum of
    ``w R_help + (1 - w) R_safe - beta KL(pi || pi_base)`` (proximal iteration with ``eta = 1/L``, per prompt) and the
    standard optimum; each scored under the transform at inference and without it. float64."""
    rewards, prompt_probs, log_reference = safety_problem()
    points = []
    with jax.enable_x64(True):
        reference, table = jnp.asarray(log_reference), jnp.asarray(rewards)
        for w in safety_weights:
            objective = iama.Objective((transform, transform), "sum", (float(w), 1.0 - float(w)))
            eta = min(step_size(objective, rewards[i], beta) for i in range(len(prompt_probs)))
            iterate = jax.vmap(lambda lp, r, ref: iama.proximal_iterate(objective, lp, r, ref, beta, eta, steps))
            iama_tables, traces = iterate(reference, table, reference)
            standard_tables = jax.vmap(lambda r, ref: iama.standard_optimum(objective, r, ref, beta))(table, reference)
            last_change = float(jnp.max(jnp.abs(traces[:, -1] - traces[:, -2])))
            point = {"weight": float(w), "eta": eta, "last_step_change": last_change}
            for name, tables in (("iama", iama_tables), ("standard", standard_tables)):
                values = evaluate_tables(objective, tables, rewards, prompt_probs)
                kl = float(jnp.asarray(prompt_probs) @ jax.vmap(iama.kl_divergence)(tables, reference))
                point[name] = {**values, "kl_to_base": kl,
                               "objective": float(w * values["inference"][0] + (1 - w) * values["inference"][1]
                                                  - beta * kl)}
            points.append(point)
        base = evaluate_tables(iama.Objective((transform, transform), "sum", (0.5, 0.5)), reference, rewards,
                               prompt_probs)
    return {"transform": iama.Transform.parse(transform).label, "beta": beta, "steps": steps, "points": points,
            "base": base}


def plot_front(path, front: dict) -> None:
    """Helpfulness against safety, exact, for IAMA and standard optima over w: under the inference-time transform
    (solid) and without it (dashed)."""
    label = front["transform"]
    series, styles = {}, {}
    for name, title in (("iama", "IAMA"), ("standard", "standard")):
        for kind, suffix, ls in (("inference", f" + {label} at inference", "-"), ("plain", ", no inference", "--")):
            key = title + suffix
            xs = [p[name][kind][1] for p in front["points"]]
            ys = [p[name][kind][0] for p in front["points"]]
            series[key] = (xs, ys)
            styles[key] = {"ls": ls, "marker": "o" if name == "iama" else "s", "ms": 4}
    plotting.plot_lines(path, series, "safety R_safe (exact)", "helpfulness R_help (exact)",
                        f"safety language, β = {front['beta']:g}: fronts over w", styles=styles)


def safety_reward_fn(prompt_tokens, responses, response_mask) -> jax.Array:
    """GRPO's ``reward_fn`` on the safety language: ``[B, 2]`` = (helpfulness r, safety g) of each response, the
    language's exact oracle written on tokens (content words before the EOS, position-discounted for r)."""
    harmful = jnp.isin(prompt_tokens[:, 1], jnp.asarray(lang.HARMFUL_TOPICS)).astype(jnp.int32)
    content = response_mask.astype(bool) & (responses != lang.EOS)
    word = jnp.clip(responses - lang.CONTENT_WORDS[0], 0, len(lang.CONTENT_WORDS) - 1)
    helpfulness = jnp.asarray(lang.HELPFULNESS, jnp.float32)[harmful[:, None], word]
    safety = jnp.asarray(lang.SAFETY, jnp.float32)[harmful[:, None], word]
    weights = jnp.asarray(lang.POSITION_WEIGHTS, jnp.float32)[: responses.shape[1]]
    return jnp.stack([jnp.sum(jnp.where(content, helpfulness * weights, 0.0), axis=1),
                      jnp.sum(jnp.where(content, safety, 0.0), axis=1)], axis=1)


#: The declared range of :func:`safety_reward_fn` (r in [-1.75, 1.75], g in [-6, 1.5]).
SAFETY_REWARD_RANGE = (-6.0, 2.0)


def safety_grpo_front(transform: str, safety_weights, iterations: int, beta: float = 0.1,
                      learning_rate: float = 3e-3, group_size: int = 8, seeds: int = 1, sft_steps: int = 300,
                      base_seed: int = 0) -> dict:
    """The safety flavour with GRPO-trained decoders: from one SFT decoder (:func:`sacpo_experiment.prepare_task`),
    for each ``w`` non-linear GRPO on the derivative of ``w R_help + (1 - w) R_safe`` (both under ``transform``)
    against standard GRPO on ``w r + (1 - w) g``; every final decoder scored exactly by enumerating its 7 x 85
    response table, with and without the transform at inference."""
    from jaxsafe import sweep
    from jaxsafe.llm import grpo, sacpo_experiment

    task = sacpo_experiment.prepare_task(jax.random.PRNGKey(base_seed), 2, "small", sft_steps)
    rewards, prompt_probs, _ = safety_problem()
    problem = grpo.GRPOProblem(task.graphdef, task.sft_params, jnp.asarray(lang.prompt_tokens()), safety_reward_fn,
                               SAFETY_REWARD_RANGE, vocab_mask=lang.response_vocab_mask(), stop_tokens=(lang.EOS,),
                               pad_token=lang.EOS)
    sft_objective = iama.Objective((transform, transform), "sum", (0.5, 0.5))
    out = {"transform": iama.Transform.parse(transform).label, "beta": beta, "iterations": iterations,
           "seeds": seeds, "points": [],
           "sft": evaluate_tables(sft_objective, np.asarray(task.sft_table, np.float64), rewards, prompt_probs)}
    for w in safety_weights:
        objective = iama.Objective((transform, transform), "sum", (float(w), 1.0 - float(w)))
        point = {"weight": float(w)}
        for name, reward_transform, reward_weights in (
                ("iama", make_length_transform(objective), None), ("standard", None, (float(w), 1.0 - float(w)))):
            if reward_weights is not None and min(reward_weights) == 0.0:
                reward_weights = tuple(v + 1e-12 for v in reward_weights)  # GRPO's weights need a positive sum only
            config = grpo.GRPOConfig(group_size=group_size, prompts_per_batch=len(lang.TOPICS),
                                     max_new_tokens=lang.MAX_RESPONSE_LENGTH, num_iterations=iterations,
                                     reward_transform=reward_transform, reward_weights=reward_weights,
                                     loss_type="grpo", scale_rewards="group")
            hparams = config.default_hparams().replace(learning_rate=jnp.float32(learning_rate),
                                                       beta=jnp.float32(beta))
            result = jax.block_until_ready(sweep.run_grid(grpo.make_train(config, problem),
                                                          sweep.make_grid(hparams, seeds=seeds, base_seed=base_seed)))
            lanes = []
            for lane in range(seeds):
                table = np.asarray(lang.response_logprob_table(task.graphdef, sweep.lane(result.params, lane)),
                                   np.float64)
                lanes.append(evaluate_tables(objective, table, rewards, prompt_probs))
            point[name] = {"lanes": lanes,
                           "inference": np.mean([l["inference"] for l in lanes], axis=0).tolist(),
                           "plain": np.mean([l["plain"] for l in lanes], axis=0).tolist()}
        out["points"].append(point)
    return out


# ----------------------------------------------------------------------------- the length task (GRPO)

#: The length task's vocabulary: a prompt is ``[BOS]``, a response is words from ``{a, b, c}`` ended by ``EOS``.
LENGTH_TOKENS = ("PAD", "BOS", "EOS", "a", "b", "c")
LENGTH_PAD, LENGTH_BOS, LENGTH_EOS = 0, 1, 2
#: Responses hold 1..24 tokens (the EOS counts; 24 tokens without one is the longest response).
MAX_LENGTH = 24
#: The two criteria's target lengths (section 3.4): r_i = -((len - L_i) / 24)^2.
TARGET_LENGTHS = (5, 15)
LENGTH_REWARD_RANGE = (-1.0, 0.0)


def length_vocab_mask() -> jax.Array:
    """[6] bool: the response alphabet ``{EOS, a, b, c}``."""
    return jnp.array([False, False, True, True, True, True])


def length_criteria(lengths: jax.Array) -> jax.Array:
    """``[B, 2]``: ``r_i = -((len - L_i) / 24)^2`` for lengths ``[B]`` (1..24)."""
    lengths = jnp.asarray(lengths, jnp.float32)[:, None]
    return -(((lengths - jnp.asarray(TARGET_LENGTHS, jnp.float32)) / MAX_LENGTH) ** 2)


def length_reward_fn(prompt_tokens, responses, response_mask) -> jax.Array:
    """GRPO's ``reward_fn`` of the length task: ``[B, 2]`` from the response lengths (``response_mask`` sums)."""
    del prompt_tokens, responses
    return length_criteria(jnp.sum(response_mask.astype(jnp.int32), axis=-1))


def length_base_policy(key: jax.Array, sft_steps: int = 200, examples: int = 4096):
    """``(graphdef, params)`` of the base policy: a small decoder (d_model 32, one layer) fine-tuned on responses of
    uniform length in 1..24 (random words, then EOS), so both target lengths are reachable from the start."""
    from jaxsafe.llm import model as model_lib
    from jaxsafe.llm import train as train_lib

    require(is_int(sft_steps, 1), "sft_steps", "an integer >= 1", sft_steps)
    init_key, length_key, word_key, sft_key = jax.random.split(key, 4)
    config = model_lib.preset("tiny", vocab_size=len(LENGTH_TOKENS), max_seq_len=MAX_LENGTH + 1, d_model=32,
                              n_layers=1, d_ff=128)
    graphdef, params = model_lib.init_params(config, init_key)
    lengths = jax.random.randint(length_key, (examples,), 1, MAX_LENGTH + 1)
    words = jax.random.randint(word_key, (examples, MAX_LENGTH), 3, 6)
    position = jnp.arange(MAX_LENGTH)[None, :]
    # Length 24 is 24 words without an EOS; shorter lengths are len - 1 words and the EOS.
    response = jnp.where(position < lengths[:, None] - 1, words,
                         jnp.where((position == lengths[:, None] - 1) & (lengths[:, None] < MAX_LENGTH), LENGTH_EOS,
                                   jnp.where(position < lengths[:, None], words, LENGTH_PAD)))
    tokens = jnp.concatenate([jnp.full((examples, 1), LENGTH_BOS), response], axis=1).astype(jnp.int32)
    real = jnp.concatenate([jnp.ones((examples, 1), bool), position < lengths[:, None]], axis=1)
    loss_mask = real.at[:, 0].set(False)
    corpus = train_lib.TokenCorpus(tokens, real, loss_mask)
    params, _ = train_lib.train_sft(graphdef, params, corpus, sft_key, n_steps=sft_steps, batch_size=128,
                                    learning_rate=3e-3, vocab_mask=length_vocab_mask())
    return graphdef, params


def length_problem(graphdef, params, num_prompts: int = 8):
    """The :class:`~jaxsafe.llm.grpo.GRPOProblem` of the length task: ``num_prompts`` copies of the prompt ``[BOS]``,
    the two length criteria, the response alphabet, EOS as the stop token.

    The sampler pads finished rows with EOS (in the response alphabet, so every log-prob the loss sees is finite;
    the response mask excludes those positions).
    """
    from jaxsafe.llm import grpo

    return grpo.GRPOProblem(graphdef, params, jnp.full((num_prompts, 1), LENGTH_BOS, jnp.int32), length_reward_fn,
                            LENGTH_REWARD_RANGE, success_fn=None, vocab_mask=length_vocab_mask(),
                            stop_tokens=(LENGTH_EOS,), pad_token=LENGTH_EOS)


def length_config(objective: iama.Objective | None, iterations: int, group_size: int = 8,
                  prompts_per_batch: int = 8):
    """GRPO's config for the length task: IAMA's derivative reward as ``reward_transform`` (``objective``), or the
    plain mean of the two criteria (``None``: standard GRPO on ``(r_1 + r_2) / 2``)."""
    from jaxsafe.llm import grpo

    transform = None if objective is None else make_length_transform(objective)
    return grpo.GRPOConfig(group_size=group_size, prompts_per_batch=prompts_per_batch, max_new_tokens=MAX_LENGTH,
                           num_iterations=iterations, reward_transform=transform, loss_type="grpo",
                           scale_rewards="group")


_TRANSFORMS: dict = {}


def make_length_transform(objective: iama.Objective):
    """One :func:`~jaxsafe.llm.iama.make_reward_transform` per objective (so equal configs hash equal)."""
    if objective not in _TRANSFORMS:
        _TRANSFORMS[objective] = iama.make_reward_transform(objective)
    return _TRANSFORMS[objective]


def sample_lengths(graphdef, params, key: jax.Array, num_samples: int, temperature: float = 1.0) -> jax.Array:
    """Lengths ``[num_samples]`` of responses sampled from the policy (the same sampler as training)."""
    from jaxsafe.llm import grpo

    prompts = jnp.full((num_samples, 1), LENGTH_BOS, jnp.int32)
    out = grpo.sample_group(graphdef, params, prompts, key, MAX_LENGTH, length_vocab_mask(), temperature,
                            (LENGTH_EOS,), LENGTH_EOS)
    return out.response_lengths


def evaluate_lengths(objective: iama.Objective, lengths) -> dict:
    """A policy's length histogram (1..24), its mass within 2 of each target (``mass_near_5``, ``mass_near_15``) and in
    8..12 (``mass_between``) and, from the sampled lengths, each criterion's value under its transform
    by Monte Carlo (best-of-N: disjoint groups of N draws; tilting: self-normalised weights), the plug-in value from
    the histogram (exact given the length law), the plain means and the aggregate."""
    lengths = np.asarray(lengths)
    histogram = np.bincount(lengths, minlength=MAX_LENGTH + 1)[1:MAX_LENGTH + 1] / len(lengths)
    rewards = np.asarray(length_criteria(jnp.asarray(lengths)))  # [S, 2]
    levels = np.asarray(length_criteria(jnp.arange(1, MAX_LENGTH + 1)))  # [24, 2]
    monte_carlo, plug_in = [], []
    for i, transform in enumerate(objective.transforms):
        if transform.kind == "bon":
            usable = len(lengths) // transform.n * transform.n
            monte_carlo.append(float(iama.bon_value_mc(rewards[:usable, i].reshape(-1, transform.n))))
        elif transform.kind == "soft":
            monte_carlo.append(float(iama.tilted_value_mc(rewards[:, i], transform.tau)))
        else:
            monte_carlo.append(float(rewards[:, i].mean()))
        plug_in.append(float(iama.transform_value(transform, jnp.asarray(levels[:, i]), jnp.asarray(histogram))))
    near = {f"mass_near_{target}": float(histogram[target - 3:target + 2].sum()) for target in TARGET_LENGTHS}
    return {"histogram": histogram.tolist(), "mean_length": float(lengths.mean()), **near,
            "mass_between": float(histogram[7:12].sum()),
            "values_monte_carlo": monte_carlo, "values_plug_in": plug_in,
            "aggregate_monte_carlo": float(iama.aggregate_value(objective, jnp.asarray(monte_carlo))),
            "aggregate_plug_in": float(iama.aggregate_value(objective, jnp.asarray(plug_in))),
            "plain_means": rewards.mean(0).tolist(), "samples": int(len(lengths))}


def train_length_lanes(objective: iama.Objective | None, base, seeds: int, iterations: int,
                       learning_rate: float = 3e-3, beta: float = 1e-3, group_size: int = 8,
                       prompts_per_batch: int = 8, eval_samples: int = 8192, base_seed: int = 0) -> dict:
    """GRPO from the base policy ``base = (graphdef, params)`` for ``seeds`` vmapped lanes: IAMA's derivative reward
    for ``objective``, or standard GRPO on ``(r_1 + r_2) / 2`` (``None``). Returns each lane's sampled lengths
    ``[eval_samples]`` (for :func:`evaluate_lengths`), the final k3 KL to the base and the training seconds."""
    from jaxsafe import sweep
    from jaxsafe.llm import grpo

    graphdef, base_params = base
    problem = length_problem(graphdef, base_params, prompts_per_batch)
    config = length_config(objective, iterations, group_size, prompts_per_batch)
    hparams = config.default_hparams().replace(learning_rate=jnp.float32(learning_rate), beta=jnp.float32(beta))
    grid = sweep.make_grid(hparams, seeds=seeds, base_seed=base_seed)
    start = time.perf_counter()
    result = jax.block_until_ready(sweep.run_grid(grpo.make_train(config, problem), grid))
    seconds = time.perf_counter() - start
    eval_key = jax.random.PRNGKey(base_seed + 10_000)
    lengths = [np.asarray(sample_lengths(graphdef, sweep.lane(result.params, lane), jax.random.fold_in(eval_key, lane),
                                         eval_samples)).tolist() for lane in range(seeds)]
    return {"trainer": "standard" if objective is None else objective.label, "lengths": lengths,
            "final_kl": np.asarray(result.metrics["kl"])[:, -1].tolist(), "train_seconds": seconds,
            "iterations": iterations, "seeds": seeds, "learning_rate": learning_rate, "beta": beta,
            "group_size": group_size, "prompts_per_batch": prompts_per_batch}


def run_length_study(objective: iama.Objective, seeds: int, iterations: int, learning_rate: float = 3e-3,
                     beta: float = 1e-3, group_size: int = 8, prompts_per_batch: int = 8, sft_steps: int = 200,
                     eval_samples: int = 8192, base_seed: int = 0) -> dict:
    """Non-linear GRPO (IAMA's derivative reward for ``objective``) against standard GRPO on the averaged reward, from
    one base policy, ``seeds`` vmapped lanes each; every final policy scored by :func:`evaluate_lengths` under
    ``objective``."""
    base = length_base_policy(jax.random.PRNGKey(base_seed), sft_steps)
    base_lengths = sample_lengths(*base, jax.random.PRNGKey(base_seed + 20_000), eval_samples)
    out = {"objective": objective.label, "iterations": iterations, "seeds": seeds, "base":
           evaluate_lengths(objective, base_lengths)}
    for name, trained_for in (("iama", objective), ("standard", None)):
        lanes = train_length_lanes(trained_for, base, seeds, iterations, learning_rate, beta, group_size,
                                   prompts_per_batch, eval_samples, base_seed)
        scored = [evaluate_lengths(objective, lengths) for lengths in lanes["lengths"]]
        out[name] = {"lanes": scored, "train_seconds": lanes["train_seconds"], "final_kl": lanes["final_kl"],
                     "aggregate_plug_in": [l["aggregate_plug_in"] for l in scored],
                     "aggregate_monte_carlo": [l["aggregate_monte_carlo"] for l in scored]}
    out["objective_gain"] = float(np.mean(out["iama"]["aggregate_plug_in"])
                                  - np.mean(out["standard"]["aggregate_plug_in"]))
    return out


def plot_lengths(path, study: dict) -> None:
    """Length histograms of the base, IAMA-trained and standard-trained policies (mean and min-max over seeds)."""
    support = np.arange(1, MAX_LENGTH + 1)
    plotting.plot_distributions(path, support, {
        "base (SFT)": study["base"]["histogram"],
        f"IAMA {study['objective']}": [l["histogram"] for l in study["iama"]["lanes"]],
        "standard GRPO on (r1 + r2) / 2": [l["histogram"] for l in study["standard"]["lanes"]],
    }, "response length (tokens)", title=f"length task: targets {TARGET_LENGTHS}, {study['iterations']} GRPO "
                                          f"iterations, {study['seeds']} seeds")


# ----------------------------------------------------------------------------- the command


@dataclasses.dataclass(frozen=True)
class IAMAArgs:
    """Validated settings of ``jaxsafe align iama`` (ValueError names the flag)."""

    task: str
    transforms: tuple[str, ...]
    aggregate: str = "sum"
    weights: tuple[float, ...] | None = None
    temperature: float = 1.0
    beta: float | None = None
    steps: int = 400
    responses: int = 10
    safety_weights: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    seeds: int = 1
    iterations: int = 300
    learning_rate: float = 3e-3
    sft_steps: int = 200
    eval_samples: int = 8192

    def __post_init__(self):
        require(self.task in TASKS, "--task", f"one of {TASKS}", self.task)
        if self.beta is None:  # section 3.4: beta = 1e-3 for the length task
            object.__setattr__(self, "beta", 1e-3 if self.task == "length" else 0.1)
        for flag, value, low in (("--iterations", self.iterations, 1), ("--sft-steps", self.sft_steps, 1),
                                 ("--eval-samples", self.eval_samples, 16)):
            require(is_int(value, low), flag, f"an integer >= {low}", value)
        require(bool(math.isfinite(self.learning_rate)) and self.learning_rate > 0, "--lr", "a finite number > 0",
                self.learning_rate)
        require(bool(math.isfinite(self.beta)) and self.beta >= 0, "--beta", "a finite number >= 0", self.beta)
        require(is_int(self.steps, 1), "--steps", "an integer >= 1", self.steps)
        require(is_int(self.responses, 2), "--responses", "an integer >= 2", self.responses)
        require(is_int(self.seeds, 1), "--seeds", "an integer >= 1", self.seeds)
        require(bool(self.safety_weights) and all(0 <= w <= 1 for w in self.safety_weights), "--safety-weights",
                "one or more numbers in [0, 1]", list(self.safety_weights))
        if self.task == "safety":
            require(len(self.transforms) == 1, "--transform", "one transform for --task safety (both criteria)",
                    list(self.transforms))
            require(self.aggregate == "sum", "--aggregate", "sum for --task safety (the front sweeps its weight)",
                    self.aggregate)
            require(self.beta > 0, "--beta", "> 0 for --task safety", self.beta)
        self.objective()  # validates transforms, aggregate, weights, temperature

    def objective(self) -> iama.Objective:
        """The two-criterion objective of the tabular task (one transform given: both criteria use it)."""
        transforms = self.transforms if len(self.transforms) != 1 else self.transforms * 2
        require(len(transforms) == 2, "--transform", "one transform, or one per criterion (two)",
                list(self.transforms))
        return iama.Objective(tuple(transforms), self.aggregate, self.weights, self.temperature)


QUICK = dict(steps=150, responses=6, safety_weights=(0.0, 0.5, 1.0), iterations=20, sft_steps=50, eval_samples=1024)


def run(args: IAMAArgs, out_dir, seed: int = 0) -> dict:
    """Run ``args.task`` into a new run directory (refused if not empty, before any work); returns the summary."""
    check_new_run_dir(out_dir)
    run_dir = RunDir(out_dir)
    start = time.perf_counter()
    run_dir.write_config({"algorithm": "iama", "args": dataclasses.asdict(args), "seed": seed})
    if args.task == "tabular":
        objective = args.objective()
        studies = [run_tabular_study(objective, args.responses, args.beta, args.steps, seed + s)
                   for s in range(args.seeds)]
        run_dir.append_metrics({"run": s, "seed": seed + s, "step": t, "iama_gap": study["iama_gap"][t],
                                "standard_gap": study["standard_gap"][t]}
                               for s, study in enumerate(studies) for t in range(0, args.steps + 1))
        plot_convergence(run_dir.path / "convergence.png", studies[0], f"{objective.label}, K = {args.responses}, "
                                                                        f"β = {args.beta:g}")
        keys = ("iama_objective", "standard_objective", "lbfgs_objective", "objective_gain_over_standard",
                "iama_gap_to_lbfgs", "measured_rate", "theorem_rate", "bound_holds")
        summary = {"task": "tabular", "objective": objective.label,
                   "studies": [{k: s.get(k) for k in keys} | {"seed": s["seed"],
                                                                "criterion_values": s["criterion_values"]}
                               for s in studies]}
    elif args.task == "length":
        objective = args.objective()
        try:
            import jaxsafe.llm.grpo  # noqa: F401
        except ImportError as err:  # pragma: no cover - until the GRPO trainer (issue 25) lands
            raise RuntimeError(f"--task length needs the GRPO trainer jaxsafe.llm.grpo: {err}") from None
        study = run_length_study(objective, args.seeds, args.iterations, args.learning_rate, args.beta,
                                 sft_steps=args.sft_steps, eval_samples=args.eval_samples, base_seed=seed)
        run_dir.append_metrics({"run": lane, "trainer": name, **{k: v for k, v in scored.items() if k != "histogram"},
                                "histogram": scored["histogram"]}
                               for name in ("iama", "standard") for lane, scored in enumerate(study[name]["lanes"]))
        plot_lengths(run_dir.path / "lengths.png", study)
        summary = {"task": "length", **study}
    else:
        front = safety_front(args.transforms[0], args.safety_weights, args.beta, max(args.steps, 2))
        run_dir.append_metrics({"run": i, "weight": p["weight"], **{f"{name}_{kind}_{c}": p[name][kind][j]
                                                                     for name in ("iama", "standard")
                                                                     for kind in ("inference", "plain")
                                                                     for j, c in enumerate(("help", "safe"))}}
                               for i, p in enumerate(front["points"]))
        plot_front(run_dir.path / "front.png", front)
        summary = {"task": "safety", **front}
    summary["total_seconds"] = time.perf_counter() - start
    run_dir.write_summary(summary)
    return summary


def table(summary: dict) -> str:
    """A plain-text table of a summary."""
    lines = []
    if summary["task"] == "length":
        lines.append(f"{summary['objective']} after {summary['iterations']} GRPO iterations (plug-in values from "
                     f"the sampled length law; criteria r1 (len 5), r2 (len 15))")
        lines.append(f"{'trainer':>9} {'seed':>4} {'mean len':>8} {'R1':>9} {'R2':>9} {'g':>9}")
        for name in ("iama", "standard"):
            for lane, scored in enumerate(summary[name]["lanes"]):
                lines.append(f"{name:>9} {lane:>4} {scored['mean_length']:>8.2f} {scored['values_plug_in'][0]:>9.5f} "
                             f"{scored['values_plug_in'][1]:>9.5f} {scored['aggregate_plug_in']:>9.5f}")
        lines.append(f"objective gain (IAMA - standard, mean over seeds): {summary['objective_gain']:.5f}")
    elif summary["task"] == "tabular":
        lines.append(f"{summary['objective']}: {'seed':>4} {'IAMA':>10} {'standard':>10} {'L-BFGS':>10} "
                     f"{'gain':>9} {'rate':>7} {'Thm 5.2':>8}")
        for s in summary["studies"]:
            rate = "-" if s["measured_rate"] is None else f"{s['measured_rate']:.4f}"
            theorem = "-" if s["theorem_rate"] is None else f"{s['theorem_rate']:.4f}"
            lines.append(f"{'':{len(summary['objective']) + 1}} {s['seed']:>4} {s['iama_objective']:>10.5f} "
                         f"{s['standard_objective']:>10.5f} {s['lbfgs_objective']:>10.5f} "
                         f"{s['objective_gain_over_standard']:>9.5f} {rate:>7} {theorem:>8}")
    else:
        lines.append(f"{'w':>5} {'IAMA help':>10} {'IAMA safe':>10} {'std help':>10} {'std safe':>10} "
                     f"{'IAMA obj':>9} {'std obj':>9}   (under {summary['transform']} at inference)")
        for p in summary["points"]:
            lines.append(f"{p['weight']:>5.2f} {p['iama']['inference'][0]:>10.4f} {p['iama']['inference'][1]:>10.4f} "
                         f"{p['standard']['inference'][0]:>10.4f} {p['standard']['inference'][1]:>10.4f} "
                         f"{p['iama']['objective']:>9.4f} {p['standard']['objective']:>9.4f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of ``jaxsafe align iama`` to ``parser``."""
    parser.add_argument("--task", default="tabular", choices=TASKS)
    parser.add_argument("--transform", nargs="+", default=["bon:4"],
                        help="inference-time transform per criterion: bon:N, soft:TAU or plain (one for all)")
    parser.add_argument("--aggregate", default="sum", help=f"aggregator g: one of {', '.join(iama.AGGREGATORS)}")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="aggregator weights, one per criterion, summing to one (default uniform)")
    parser.add_argument("--temperature", type=float, default=1.0, help="smooth-min temperature gamma")
    parser.add_argument("--beta", type=float, default=None,
                        help="KL coefficient to the reference policy (0.1; the length task 1e-3)")
    parser.add_argument("--steps", type=int, default=None, help="proximal steps (400; quick 150)")
    parser.add_argument("--responses", type=int, default=None, help="tabular task: K responses (10; quick 6)")
    parser.add_argument("--safety-weights", type=float, nargs="+", default=None,
                        help="safety task: helpfulness weights w swept for the front (0, 0.1, ..., 1; quick 0 .5 1)")
    parser.add_argument("--seeds", type=int, default=1, help="tabular: random problems; length: GRPO seeds (vmapped)")
    parser.add_argument("--iterations", type=int, default=None, help="length task: GRPO iterations (300; quick 20)")
    parser.add_argument("--lr", type=float, default=3e-3, help="length task: GRPO learning rate")
    parser.add_argument("--sft-steps", type=int, default=None, help="length task: SFT steps of the base (200)")
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="length task: responses sampled to score each policy (8192; quick 1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small budget (seconds)")
    parser.add_argument("--out", default=None, help="run directory (default runs/<time>-align-iama)")
    return parser


def args_from_namespace(namespace: argparse.Namespace) -> IAMAArgs:
    """Apply the ``--quick`` budget to unset flags and validate (ValueError names the flag)."""
    values = dict(task=namespace.task, transforms=tuple(namespace.transform), aggregate=namespace.aggregate,
                  weights=None if namespace.weights is None else tuple(namespace.weights),
                  temperature=namespace.temperature, beta=namespace.beta, seeds=namespace.seeds,
                  learning_rate=namespace.lr)
    budget = QUICK if namespace.quick else {}
    for field in ("steps", "responses", "safety_weights", "iterations", "sft_steps", "eval_samples"):
        value = getattr(namespace, field)
        if value is not None:
            values[field] = tuple(value) if isinstance(value, list) else value
        elif field in budget:
            values[field] = budget[field]
    return IAMAArgs(**values)


def handle(namespace: argparse.Namespace) -> int:
    """Run ``jaxsafe align iama``; bad flags are reported through ``parser.error`` before any work."""
    try:
        args = args_from_namespace(namespace)
        out = namespace.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-align-iama"
        check_new_run_dir(out)
    except (ValueError, FileExistsError) as err:
        namespace.parser.error(str(err))
    summary = run(args, out, seed=namespace.seed)
    print(table(summary))
    print(f"\nrun directory: {out}")
    return 0
