"""SACPO: stepwise alignment for constrained policy optimisation (and P-SACPO merging).

The constrained problem is ``max_pi E[r] - beta KL(pi || pi_ref)`` subject to
``E[g] >= b`` (``g`` larger is safer). For a multiplier ``lambda`` its maximiser is
``pi*_{r + lambda g} ∝ pi_ref exp((r + lambda g) / beta)`` and, since

    pi*_{r + lambda g} ∝ pi*_r exp(lambda g / beta),

the same policy is reached in two KL-regularised steps: align for ``r`` from ``pi_ref``
with coefficient ``beta``, then align for ``g`` *from that model* (init and frozen
reference) with coefficient ``beta / lambda``. Any order works, and so do several
constraints in sequence (stage ``i`` uses ``beta / lambda_i``). Each step is a direct
preference method: DPO on Bradley-Terry pairs, or KTO on unpaired desirable /
undesirable labels.

The whole pipeline is one pure function ``train(key, hparams)`` built by
:func:`make_train`: static shapes and step counts in :class:`SACPOConfig`, the swept
``beta`` and ``lagrange_multipliers`` in :class:`SACPOHparams` (a pytree), so a
``beta / lambda`` grid is ``jax.jit(jax.vmap(train))(keys, stacked_hparams)``.

Choosing ``lambda``: :func:`dual_objective` / :func:`minimize_dual` (the empirical dual
``D(lambda) = beta E_x log E_{y ~ pi_ref} exp((r + lambda g) / beta) - lambda b`` with a
known ``g``, from an exact table or from samples) and :func:`select_feasible` (the best
measured reward among candidates whose measured safety meets the threshold).

P-SACPO: weight merge (:func:`jaxsafe.llm.merge.interpolate_params`), sequence-level
log-prob merge (:func:`sequence_logprob_merge`, exact: the geometric mixture of
``pi*_r`` and ``pi*_{r + lambda_bar g}`` with weight ``q`` *is* ``pi*_{r + q lambda_bar g}``)
and the token-level logit mixture (:func:`jaxsafe.llm.merge.make_logit_mixture`,
deployable for generation, approximate). :func:`merge_gaps` measures all three against
the exact optimum at ``lambda = q lambda_bar``.

Shapes: ``N`` examples, ``T`` sequence length, ``G`` grid points, ``P`` prompts,
``Y`` responses per prompt (oracle tables are ``[P, Y]`` log-probabilities).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsafe.llm import losses
from jaxsafe.llm import merge
from jaxsafe.llm import train as train_lib
from jaxsafe.llm.tasks.safety_language import kl_divergence

REWARD_STAGE = "reward"
STAGE_LOSSES = ("dpo", "kto")


# ----------------------------------------------------------------------------- data


class UnpairedBatch(NamedTuple):
    """Unpaired (KTO) examples, each field with leading axis N.

    tokens, attention_mask, response_mask [N, T]: prompt + own completion.
    desirable [N] bool: the example's label.
    kl_tokens, kl_attention_mask, kl_response_mask [N, T]: the same prompt with a
      mismatched completion (another example's), for KTO's reference point ``z``.
    """

    tokens: jax.Array
    attention_mask: jax.Array
    response_mask: jax.Array
    desirable: jax.Array
    kl_tokens: jax.Array
    kl_attention_mask: jax.Array
    kl_response_mask: jax.Array


StageData = losses.PreferenceBatch | UnpairedBatch


def stage_loss_type(data: StageData) -> str:
    """"dpo" for a :class:`~jaxsafe.llm.losses.PreferenceBatch`, "kto" for an :class:`UnpairedBatch`."""
    if isinstance(data, losses.PreferenceBatch):
        return "dpo"
    if isinstance(data, UnpairedBatch):
        return "kto"
    raise ValueError(f"datasets: each stage needs a PreferenceBatch (DPO) or UnpairedBatch (KTO), got "
                     f"{type(data).__name__}")


def relabel_pairs(key: jax.Array, first_ids, second_ids, prompt_ids, score_table, sequences_fn,
                  label_temperature: float = 1.0) -> losses.PreferenceBatch:
    """Bradley-Terry labels on an arbitrary score table for given response pairs.

    first_ids, second_ids, prompt_ids [N] int: the two responses and the prompt of each pair.
    score_table [P, Y]: the score the annotator uses (e.g. ``r + lambda g``).
    sequences_fn(prompt_ids, response_ids) -> object with tokens / attention_mask /
      response_mask [N, T] (e.g. :func:`jaxsafe.llm.tasks.safety_language.sequences`).
    The first response is chosen with probability
    ``sigmoid((s(x, y1) - s(x, y2)) / label_temperature)``.
    """
    score_table = jnp.asarray(score_table)
    margin = score_table[prompt_ids, first_ids] - score_table[prompt_ids, second_ids]
    first_preferred = jax.random.bernoulli(key, jax.nn.sigmoid(margin / label_temperature))
    chosen = sequences_fn(prompt_ids, jnp.where(first_preferred, first_ids, second_ids))
    rejected = sequences_fn(prompt_ids, jnp.where(first_preferred, second_ids, first_ids))
    return losses.PreferenceBatch(chosen.tokens, chosen.attention_mask, chosen.response_mask, rejected.tokens,
                                  rejected.attention_mask, rejected.response_mask)


def unpaired_batch(tokens, attention_mask, response_mask, desirable, key: jax.Array) -> UnpairedBatch:
    """An :class:`UnpairedBatch` whose mismatched completions come from a random derangement.

    tokens, attention_mask, response_mask [N, T] with prompts in the columns where
    ``response_mask`` is False and ``attention_mask`` True (prompts of one length, as in the
    synthetic tasks); desirable [N]. Example ``i`` is paired with the completion of example
    ``(i + shift) % N``, ``shift`` uniform in ``[1, N)``.
    """
    n = tokens.shape[0]
    if n < 2:
        raise ValueError(f"tokens: KTO needs at least 2 examples, got {n}")
    shift = jax.random.randint(key, (), 1, n)
    other = (jnp.arange(n) + shift) % n
    response_mask = jnp.asarray(response_mask, bool)
    prompt_columns = jnp.asarray(attention_mask, bool) & ~response_mask
    kl_tokens = jnp.where(prompt_columns, tokens, tokens[other])
    kl_attention_mask = prompt_columns | jnp.asarray(attention_mask, bool)[other]
    return UnpairedBatch(jnp.asarray(tokens), jnp.asarray(attention_mask, bool), response_mask,
                         jnp.asarray(desirable, bool), kl_tokens, kl_attention_mask, response_mask[other])


def unpaired_from_pairs(batch: losses.PreferenceBatch, key: jax.Array) -> UnpairedBatch:
    """KTO data from pairs as in the SACPO repository: chosen -> desirable, rejected -> undesirable (2N rows)."""
    n = batch.chosen_tokens.shape[0]
    return unpaired_batch(jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens]),
                          jnp.concatenate([batch.chosen_attention_mask, batch.rejected_attention_mask]),
                          jnp.concatenate([batch.chosen_response_mask, batch.rejected_response_mask]),
                          jnp.arange(2 * n) < n, key)


# ----------------------------------------------------------------------------- config / hparams


class SACPOHparams(NamedTuple):
    """Swept (traced) hyperparameters; stack them for a grid.

    beta []: KL coefficient of the reward stage (> 0).
    lagrange_multipliers [n_constraints]: lambda_i > 0 of each constraint stage, in the
      order the constraint stages appear in ``SACPOConfig.stages``; stage ``i`` is trained
      with KL coefficient ``beta / lambda_i``.
    """

    beta: jax.Array
    lagrange_multipliers: jax.Array


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"SACPOConfig.{field}: {message}")


@dataclasses.dataclass(frozen=True)
class SACPOConfig:
    """Static settings of the stepwise pipeline (hashable).

    stages: dataset names in alignment order; ``"reward"`` is the reward stage (coefficient
      beta), every other name is a constraint stage (coefficient beta / lambda_i). At least
      one stage, names unique, at most one ``"reward"``. ``("reward", "safety")`` is SACPO,
      ``("safety", "reward")`` the reversed order.
    n_steps: optimiser steps per stage, >= 1.
    batch_size: pairs (DPO) or examples (KTO) per step, >= 1 (and <= dataset size).
    learning_rate: Adam step size, finite and > 0.
    weight_decay: AdamW decoupled weight decay, >= 0.
    label_smoothing: conservative-DPO label smoothing in [0, 0.5).
    default_beta, default_lagrange_multiplier: values of :meth:`default_hparams`, > 0.
    """

    stages: tuple[str, ...] = (REWARD_STAGE, "safety")
    n_steps: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    default_beta: float = 0.5
    default_lagrange_multiplier: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        _require(len(self.stages) >= 1 and all(isinstance(s, str) and s for s in self.stages), "stages",
                 f"must be a non-empty tuple of non-empty names, got {self.stages!r}")
        _require(len(set(self.stages)) == len(self.stages), "stages", f"names must be unique, got {self.stages!r}")
        for name in ("n_steps", "batch_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
                     f"must be an integer >= 1, got {value!r}")
        _require(math.isfinite(self.learning_rate) and self.learning_rate > 0, "learning_rate",
                 f"must be a finite float > 0, got {self.learning_rate!r}")
        _require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
                 f"must be a finite float >= 0, got {self.weight_decay!r}")
        _require(0 <= self.label_smoothing < 0.5, "label_smoothing",
                 f"must be in [0, 0.5), got {self.label_smoothing!r}")
        for name in ("default_beta", "default_lagrange_multiplier"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, name, f"must be a finite float > 0, got {value!r}")

    @property
    def constraint_stages(self) -> tuple[str, ...]:
        return tuple(s for s in self.stages if s != REWARD_STAGE)

    def default_hparams(self) -> SACPOHparams:
        return SACPOHparams(jnp.float32(self.default_beta),
                            jnp.full((len(self.constraint_stages),), self.default_lagrange_multiplier, jnp.float32))

    def stage_coefficients(self, hparams: SACPOHparams) -> tuple[jax.Array, ...]:
        """KL coefficient of each stage, in order: beta for the reward, beta / lambda_i for constraint i."""
        out, constraint = [], 0
        for stage in self.stages:
            if stage == REWARD_STAGE:
                out.append(hparams.beta)
            else:
                out.append(hparams.beta / hparams.lagrange_multipliers[constraint])
                constraint += 1
        return tuple(out)


def stack_hparams(betas: Sequence[float], lagrange_multipliers: Sequence[Sequence[float]] | Sequence[float]
                  ) -> SACPOHparams:
    """Stacked hparams for a grid: ``betas [G]`` and multipliers ``[G]`` or ``[G, n_constraints]``.

    Raises ValueError if lengths differ or a value is not finite and > 0.
    """
    betas = np.asarray(betas, np.float32)
    multipliers = np.asarray(lagrange_multipliers, np.float32)
    if multipliers.ndim == 1:
        multipliers = multipliers[:, None]
    if betas.ndim != 1 or multipliers.ndim != 2 or multipliers.shape[0] != betas.shape[0]:
        raise ValueError(f"lagrange_multipliers: need one row per beta ({betas.shape}), got {multipliers.shape}")
    if not (np.all(np.isfinite(betas)) and np.all(betas > 0)):
        raise ValueError(f"betas: must be finite and > 0, got {betas.tolist()}")
    if not (np.all(np.isfinite(multipliers)) and np.all(multipliers > 0)):
        raise ValueError(f"lagrange_multipliers: must be finite and > 0, got {multipliers.tolist()}")
    return SACPOHparams(jnp.asarray(betas), jnp.asarray(multipliers))


def validate_hparams(config: SACPOConfig, hparams: SACPOHparams) -> None:
    """Host-side check of concrete (possibly stacked) hparams against ``config``."""
    beta, multipliers = np.asarray(hparams.beta), np.asarray(hparams.lagrange_multipliers)
    if not (np.all(np.isfinite(beta)) and np.all(beta > 0)):
        raise ValueError(f"SACPOHparams.beta: must be finite and > 0, got {beta.tolist()}")
    if multipliers.shape[-1:] != (len(config.constraint_stages),):
        raise ValueError(f"SACPOHparams.lagrange_multipliers: last axis must have one entry per constraint stage "
                         f"{config.constraint_stages}, got shape {multipliers.shape}")
    if not (np.all(np.isfinite(multipliers)) and np.all(multipliers > 0)):
        raise ValueError(f"SACPOHparams.lagrange_multipliers: must be finite and > 0, got {multipliers.tolist()}")


# ----------------------------------------------------------------------------- one stage


class StageInputs(NamedTuple):
    """One minibatch of a stage, with everything the loss needs passed in (nothing closed over).

    data: PreferenceBatch or UnpairedBatch minibatch [B, ...].
    reference_logps: frozen reference log-probs, (chosen [B], rejected [B]) or (own [B], mismatched [B]),
      precomputed once per stage because the reference does not change within a stage.
    vocab_mask: [V] bool sub-vocabulary of the policy, or None.
    undesirable_weight: [] KTO weight of undesirable examples (unused by DPO).
    """

    data: Any
    reference_logps: Any
    vocab_mask: Any
    undesirable_weight: jax.Array


def _stage_logps(graphdef, params, data: StageData, vocab_mask):
    """Sequence log-probs of a stage's data: (chosen, rejected) [N] or (own, mismatched) [N]."""
    if isinstance(data, losses.PreferenceBatch):
        return losses.concatenated_logprobs(graphdef, params, data, vocab_mask=vocab_mask)
    tokens = jnp.concatenate([data.tokens, data.kl_tokens])
    attention_mask = jnp.concatenate([data.attention_mask, data.kl_attention_mask])
    response_mask = jnp.concatenate([data.response_mask, data.kl_response_mask])
    logps = losses.sequence_logprobs(graphdef, params, tokens, attention_mask, response_mask, vocab_mask=vocab_mask)
    n = data.tokens.shape[0]
    return logps[:n], logps[n:]


@functools.lru_cache(maxsize=32)
def stage_loss_fn(graphdef, loss_type: str, label_smoothing: float = 0.0):
    """``loss_fn(params, StageInputs, kl_coefficient) -> (loss, metrics)`` for one stage.

    loss_type "dpo": sigmoid DPO with label smoothing on pairs; "kto": KTO (TRL semantics)
    on unpaired data, desirable weight 1 and ``inputs.undesirable_weight`` (the SACPO repo
    uses n_desirable / n_undesirable). One policy forward pass per step. Memoised, so the
    jitted train step built from it is reused.
    """
    if loss_type not in STAGE_LOSSES:
        raise ValueError(f"loss_type: must be one of {STAGE_LOSSES}, got {loss_type!r}")

    def dpo(params, inputs: StageInputs, kl_coefficient):
        chosen, rejected = losses.concatenated_logprobs(graphdef, params, inputs.data, vocab_mask=inputs.vocab_mask)
        out = losses.dpo_loss(chosen, rejected, *inputs.reference_logps, kl_coefficient, label_smoothing)
        return out.loss, {"loss": out.loss, "accuracy": out.accuracy,
                          "margin": jnp.mean(out.chosen_rewards - out.rejected_rewards)}

    def kto(params, inputs: StageInputs, kl_coefficient):
        own, mismatched = _stage_logps(graphdef, params, inputs.data, inputs.vocab_mask)
        out = losses.kto_loss(own, inputs.reference_logps[0], inputs.data.desirable, mismatched,
                              inputs.reference_logps[1], kl_coefficient, 1.0, inputs.undesirable_weight)
        return out.loss, {"loss": out.loss, "kl": out.kl, "reward": jnp.mean(out.rewards)}

    return dpo if loss_type == "dpo" else kto


@functools.lru_cache(maxsize=32)
def _optimizer(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.adamw(learning_rate, weight_decay=weight_decay)


def align_stage(graphdef, config: SACPOConfig, params, data: StageData, kl_coefficient, key: jax.Array,
                vocab_mask=None):
    """One SACPO step: initialise at ``params``, freeze ``params`` as the reference, and
    minimise DPO (pairs) or KTO (unpaired) with ``kl_coefficient`` for ``config.n_steps``.

    Pure and traceable (vmap over ``kl_coefficient``, ``key`` or ``params``). Returns
    ``(params, metrics [n_steps])``.
    """
    loss_type = stage_loss_type(data)
    n_examples = jax.tree.leaves(data)[0].shape[0]
    reference_logps = jax.lax.stop_gradient(_stage_logps(graphdef, params, data, vocab_mask))
    undesirable_weight = jnp.float32(1.0)
    if loss_type == "kto":
        n_desirable = jnp.sum(data.desirable)
        undesirable_weight = n_desirable / jnp.maximum(n_examples - n_desirable, 1)
    optimizer = _optimizer(config.learning_rate, config.weight_decay)
    step = train_lib.make_train_step(stage_loss_fn(graphdef, loss_type, config.label_smoothing), optimizer,
                                     jit=False)
    indices = train_lib.minibatches(key, n_examples, config.batch_size, config.n_steps)

    def body(carry, batch_indices):
        params, opt_state = carry
        inputs = StageInputs(jax.tree.map(lambda x: x[batch_indices], data),
                             jax.tree.map(lambda x: x[batch_indices], reference_logps), vocab_mask,
                             undesirable_weight)
        params, opt_state, metrics = step(params, opt_state, inputs, kl_coefficient)
        return (params, opt_state), metrics

    (params, _), metrics = jax.lax.scan(body, (params, optimizer.init(params)), indices)
    return params, metrics


# ----------------------------------------------------------------------------- the pipeline


class SACPOResult(NamedTuple):
    """stage_params: tuple of params after each stage (the last one is the SACPO output);
    metrics: ``{"<stage>/<name>": [n_steps]}``. Under vmap every leaf gets the grid axis."""

    stage_params: tuple
    metrics: dict


def check_datasets(config: SACPOConfig, datasets: Mapping[str, StageData]) -> None:
    """Raise ValueError if a stage has no dataset, a dataset is malformed or smaller than a batch."""
    for stage in config.stages:
        if stage not in datasets:
            raise ValueError(f"datasets: no dataset for stage {stage!r}; have {sorted(datasets)}")
        data = datasets[stage]
        stage_loss_type(data)
        sizes = {x.shape[0] for x in jax.tree.leaves(data)}
        if len(sizes) != 1:
            raise ValueError(f"datasets[{stage!r}]: fields disagree on the number of examples: {sorted(sizes)}")
        (size,) = sizes
        if size < config.batch_size:
            raise ValueError(f"datasets[{stage!r}]: {size} examples < SACPOConfig.batch_size={config.batch_size}")


def sacpo_pipeline(config: SACPOConfig, graphdef, key: jax.Array, hparams: SACPOHparams, initial_params,
                   datasets: Mapping[str, StageData], vocab_mask=None) -> SACPOResult:
    """The stepwise pipeline as a pure function of arrays (config and graphdef are static).

    initial_params: the SFT policy (start and first reference).
    datasets: one dataset per name in ``config.stages`` (PreferenceBatch -> DPO,
      UnpairedBatch -> KTO). Stage ``k`` starts from, and is regularised towards, the
      output of stage ``k - 1``, with KL coefficient ``config.stage_coefficients(hparams)[k]``.
    vocab_mask [V]: optional restriction of the policy to a sub-vocabulary.
    """
    coefficients = config.stage_coefficients(hparams)
    params, outputs, metrics = initial_params, [], {}
    for stage, coefficient, stage_key in zip(config.stages, coefficients, jax.random.split(key, len(config.stages))):
        params, stage_metrics = align_stage(graphdef, config, params, datasets[stage], coefficient, stage_key,
                                            vocab_mask)
        outputs.append(params)
        metrics.update({f"{stage}/{name}": value for name, value in stage_metrics.items()})
    return SACPOResult(tuple(outputs), metrics)


def make_train(config: SACPOConfig, graphdef, initial_params, datasets: Mapping[str, StageData],
               vocab_mask=None):
    """``train(key, hparams: SACPOHparams) -> SACPOResult`` (the learner contract of DESIGN.md).

    Closes over the SFT params and datasets (see :func:`sacpo_pipeline`). A grid is
    ``jax.jit(jax.vmap(train))(keys [G], stacked hparams)``; for large datasets prefer
    :func:`run_grid`, which passes them as arguments instead of compile-time constants.
    """
    check_datasets(config, datasets)
    datasets = {stage: datasets[stage] for stage in config.stages}

    def train(key: jax.Array, hparams: SACPOHparams) -> SACPOResult:
        return sacpo_pipeline(config, graphdef, key, hparams, initial_params, datasets, vocab_mask)

    return train


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grid_program(config, graphdef, keys, hparams, initial_params, datasets, vocab_mask):
    pipeline = functools.partial(sacpo_pipeline, config, graphdef)
    return jax.vmap(pipeline, in_axes=(0, 0, None, None, None))(keys, hparams, initial_params, datasets, vocab_mask)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _single_program(config, graphdef, key, hparams, initial_params, datasets, vocab_mask):
    return sacpo_pipeline(config, graphdef, key, hparams, initial_params, datasets, vocab_mask)


def run_grid(config: SACPOConfig, graphdef, initial_params, datasets: Mapping[str, StageData],
             hparams: SACPOHparams, keys: jax.Array, vocab_mask=None) -> SACPOResult:
    """The pipeline over a stacked grid ``hparams [G, ...]`` and ``keys [G]`` as ONE vmapped, jitted program.

    Compiled once per (config, graphdef, shapes); the data and SFT params are arguments,
    not constants. Every leaf of the result has a leading [G] axis.
    """
    validate_hparams(config, hparams)
    check_datasets(config, datasets)
    if jnp.ndim(hparams.beta) != 1 or keys.shape[0] != hparams.beta.shape[0]:
        raise ValueError(f"keys: need one key per grid point ({jnp.shape(hparams.beta)}), got {keys.shape}")
    datasets = {stage: datasets[stage] for stage in config.stages}
    return _grid_program(config, graphdef, keys, hparams, initial_params, datasets, vocab_mask)


def run_single(config: SACPOConfig, graphdef, initial_params, datasets: Mapping[str, StageData],
               hparams: SACPOHparams, key: jax.Array, vocab_mask=None) -> SACPOResult:
    """One grid point, jitted (the unvmapped program; used to time a grid point by point)."""
    validate_hparams(config, hparams)
    check_datasets(config, datasets)
    datasets = {stage: datasets[stage] for stage in config.stages}
    return _single_program(config, graphdef, key, hparams, initial_params, datasets, vocab_mask)


# ----------------------------------------------------------------------------- exact targets and lambda


def stepwise_target_logprobs(reference_logprobs, score_tables: Sequence, coefficients: Sequence) -> jax.Array:
    """Exact output of aligning in sequence: stage k maps ``log pi -> log_softmax(log pi + s_k / c_k)``.

    reference_logprobs [P, Y]; score_tables: one [P, Y] table per stage; coefficients: the
    KL coefficient of each stage. By the SACPO identity the result equals
    ``optimal_policy_logprobs(ref, r, g, beta, lambda)`` for (r, beta), (g, beta / lambda).
    """
    table = jnp.asarray(reference_logprobs)
    for scores, coefficient in zip(score_tables, coefficients):
        table = jax.nn.log_softmax(table + jnp.asarray(scores) / coefficient, axis=-1)
    return table


def dual_objective(lagrange_multiplier, log_weights, reward, safety, prompt_probs, beta, threshold) -> jax.Array:
    """Empirical Lagrange dual ``D(lambda)`` (scalar), convex in lambda.

    ``D = beta sum_x rho(x) logsumexp_j(log_w[x, j] + (r[x, j] + lambda g[x, j]) / beta) - lambda b``.
    log_weights, reward, safety [P, M]: exact (``log_weights`` = reference log-probs over all
    responses, M = Y) or Monte-Carlo (M responses sampled from the reference per prompt and
    ``log_weights = -log M``). prompt_probs [P]. ``D'(lambda) = E_{pi*_lambda}[g] - b``.
    """
    exponent = log_weights + (reward + lagrange_multiplier * safety) / beta
    return beta * jnp.sum(prompt_probs * jax.scipy.special.logsumexp(exponent, axis=-1)) - lagrange_multiplier * threshold


@functools.partial(jax.jit, static_argnames=("n_iterations",))
def minimize_dual(log_weights, reward, safety, prompt_probs, beta, threshold, *, max_multiplier: float = 1e3,
                  n_iterations: int = 60) -> jax.Array:
    """``lambda* = argmin_{lambda >= 0} D(lambda)`` by bisection on ``D'(lambda) = E_{pi*_lambda}[g] - b``.

    D is convex, so ``D'(lambda) = E_{pi*_lambda}[g] - b`` is non-decreasing (more weight on g
    makes the optimum safer) and its root is found by bisection on [0, max_multiplier]. Returns 0 when the
    reward-only optimum is already feasible and ``max_multiplier`` when no multiplier in
    range is (the constraint cannot be met). Inputs as in :func:`dual_objective`; jit-able.
    """
    derivative = jax.grad(dual_objective)

    def slope(lagrange_multiplier):
        return derivative(lagrange_multiplier, log_weights, reward, safety, prompt_probs, beta, threshold)

    def body(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        negative = slope(middle) < 0
        return jnp.where(negative, middle, low), jnp.where(negative, high, middle)

    low, high = jax.lax.fori_loop(0, n_iterations, body, (jnp.float32(0.0), jnp.float32(max_multiplier)))
    root = 0.5 * (low + high)
    return jnp.where(slope(jnp.float32(0.0)) >= 0, 0.0, root)


class Selection(NamedTuple):
    """index: chosen candidate; feasible: whether it meets the threshold (else the safest one)."""

    index: int
    feasible: bool


def select_feasible(expected_rewards, expected_safeties, threshold: float) -> Selection:
    """The candidate with the largest measured reward among those with safety >= threshold.

    expected_rewards, expected_safeties [G] (host arrays). If none is feasible the safest
    candidate is returned with ``feasible=False``.
    """
    rewards, safeties = np.asarray(expected_rewards, np.float64), np.asarray(expected_safeties, np.float64)
    if rewards.shape != safeties.shape or rewards.ndim != 1 or rewards.size == 0:
        raise ValueError(f"expected_rewards/expected_safeties: need equal non-empty [G] arrays, got "
                         f"{rewards.shape} and {safeties.shape}")
    feasible = safeties >= threshold
    if not feasible.any():
        return Selection(int(np.argmax(safeties)), False)
    return Selection(int(np.argmax(np.where(feasible, rewards, -np.inf))), True)


# ----------------------------------------------------------------------------- P-SACPO


def sequence_logprob_merge(logprobs_reward, logprobs_constrained, q) -> jax.Array:
    """Geometric mixture over whole responses: ``log_softmax((1 - q) log pi_a + q log pi_b)`` [P, Y].

    With ``pi_a = pi*_r`` and ``pi_b = pi*_{r + lambda_bar g}`` this is exactly
    ``pi*_{r + q lambda_bar g}`` (any q, also outside [0, 1]). Tables [P, Y] over the full
    response space.
    """
    return merge.mix_logits(logprobs_reward, logprobs_constrained, q, mode="geometric")


class MergeGaps(NamedTuple):
    """KL(merged || pi*_{r + q lambda_bar g}) [Q] of each merge, and the exact targets [Q, P, Y]."""

    weight_merge: jax.Array
    token_logit_merge: jax.Array
    sequence_logprob_merge: jax.Array
    targets: jax.Array


def merge_gaps(graphdef, params_reward, params_constrained, qs, target_fn, logprob_table_fn,
               prompt_probs) -> MergeGaps:
    """Gap of the three P-SACPO merges to the exact optimum at ``lambda = q lambda_bar``.

    params_reward / params_constrained: the step-1 model and the SACPO model at lambda_bar.
    qs [Q]: merge weights (weight on the constrained model).
    target_fn(q) -> [P, Y] exact ``log pi*_{r + q lambda_bar g}``.
    logprob_table_fn(graphdef, params) -> [P, Y] exact log-probs of a (possibly mixture) model.
    """
    qs = jnp.asarray(qs, jnp.float32)
    table_reward = logprob_table_fn(graphdef, params_reward)
    table_constrained = logprob_table_fn(graphdef, params_constrained)
    targets = jnp.stack([target_fn(q) for q in qs])
    weight, token, sequence = [], [], []
    for q, target in zip(qs, targets):
        merged = merge.interpolate_params(params_reward, params_constrained, q)
        weight.append(kl_divergence(logprob_table_fn(graphdef, merged), target, prompt_probs))
        mix_graphdef, mix_state = merge.make_logit_mixture(graphdef, params_reward, graphdef, params_constrained, q)
        token.append(kl_divergence(logprob_table_fn(mix_graphdef, mix_state), target, prompt_probs))
        sequence.append(kl_divergence(sequence_logprob_merge(table_reward, table_constrained, q), target, prompt_probs))
    return MergeGaps(jnp.stack(weight), jnp.stack(token), jnp.stack(sequence), targets)
