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

The whole pipeline follows the learner contract of :mod:`jaxsafe.learner`: static stages, step counts and
batch size in :class:`SACPOConfig`; the traced ``beta``, ``lagrange_multipliers``, learning rate, weight decay
and label smoothing in :class:`SACPOHParams`; what it learns on (the SFT policy, one dataset per stage, the
vocabulary mask) in a :class:`SACPOProblem`. :func:`make_train_parts` gives ``init`` / ``update`` (one update
is one optimiser step), :func:`make_train` the pure ``train(key, hparams) -> TrainResult(params, metrics)``,
and a ``beta / lambda`` grid is
``jaxsafe.sweep.run_grid(train, make_grid(hparams, seeds, lagrange_multipliers=[...]))`` (one vmapped
program); the registry entry (:mod:`jaxsafe.llm.registry`) gives the same through ``jaxsafe train`` and
``jaxsafe sweep`` with checkpoints and resume.

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
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.llm import losses
from jaxsafe.llm import merge
from jaxsafe.llm import train as train_lib
from jaxsafe.llm.tasks.safety_language import kl_divergence
from jaxsafe.validation import is_int, non_negative, positive, require

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
    """KTO data from pairs as in the SACPO repository: chosen -> desirable, rejected -> undesirable
    (2N rows)."""
    n = batch.chosen_tokens.shape[0]
    return unpaired_batch(jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens]),
                          jnp.concatenate([batch.chosen_attention_mask, batch.rejected_attention_mask]),
                          jnp.concatenate([batch.chosen_response_mask, batch.rejected_response_mask]),
                          jnp.arange(2 * n) < n, key)


# ----------------------------------------------------------------------------- config / hparams


@struct.dataclass
class SACPOHParams(HParams):
    """Traced (vmappable) hyperparameters; ``jaxsafe.sweep.make_grid`` stacks them for a grid.

    beta []: KL coefficient of the reward stage, > 0.
    lagrange_multipliers [] or [n_constraints]: lambda_i > 0 of each constraint stage, in the order the
      constraint stages appear in ``SACPOConfig.stages`` (a scalar serves every constraint stage); stage ``i``
      is trained with KL coefficient ``beta / lambda_i``.
    learning_rate []: Adam step size, > 0.
    weight_decay []: AdamW decoupled weight decay, >= 0.
    label_smoothing []: conservative-DPO label smoothing in [0, 0.5) (unused by KTO).
    """

    rules = {"beta": positive(), "lagrange_multipliers": positive(), "learning_rate": positive(),
             "weight_decay": non_negative(), "label_smoothing": losses.LABEL_SMOOTHING_RULE}

    beta: Any = 0.5
    lagrange_multipliers: Any = 1.0
    learning_rate: Any = 1e-3
    weight_decay: Any = 0.0
    label_smoothing: Any = 0.0


@dataclasses.dataclass(frozen=True)
class SACPOConfig(Config):
    """Static settings of the stepwise pipeline (hashable).

    stages: dataset names in alignment order; ``"reward"`` is the reward stage (coefficient beta), every other
      name is a constraint stage (coefficient beta / lambda_i). At least one stage, names unique.
      ``("reward", "safety")`` is SACPO, ``("safety", "reward")`` the reversed order.
    n_steps: optimiser steps per stage, >= 1 (a run is ``len(stages) * n_steps`` updates).
    batch_size: pairs (DPO) or examples (KTO) per step, >= 1 (and <= every stage's dataset size).
    """

    stages: tuple[str, ...] = (REWARD_STAGE, "safety")
    n_steps: int = 300
    batch_size: int = 64

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        require(len(self.stages) >= 1 and all(isinstance(s, str) and s for s in self.stages),
                "SACPOConfig.stages",
                "a non-empty tuple of non-empty names", self.stages)
        require(len(set(self.stages)) == len(self.stages), "SACPOConfig.stages", "unique names", self.stages)
        for name in ("n_steps", "batch_size"):
            require(is_int(getattr(self, name)), f"SACPOConfig.{name}", "an integer >= 1",
                    getattr(self, name))

    @property
    def constraint_stages(self) -> tuple[str, ...]:
        return tuple(s for s in self.stages if s != REWARD_STAGE)

    @property
    def num_updates(self) -> int:
        return len(self.stages) * self.n_steps

    def default_hparams(self) -> SACPOHParams:
        return SACPOHParams().as_arrays()

    def lagrange_multipliers(self, hparams: SACPOHParams) -> jax.Array:
        """``hparams.lagrange_multipliers`` as ``[n_constraints]`` (a scalar fills every entry).

        Raises ValueError (while tracing, before compiling) for any other shape.
        """
        multipliers = jnp.asarray(hparams.lagrange_multipliers, jnp.float32)
        n_constraints = len(self.constraint_stages)
        if multipliers.shape not in ((), (n_constraints,)):
            raise ValueError(f"SACPOHParams.lagrange_multipliers must be a scalar or have one entry per "
                             f"constraint stage {self.constraint_stages}, got shape {multipliers.shape}")
        return jnp.broadcast_to(multipliers, (n_constraints,))

    def stage_coefficients(self, hparams: SACPOHParams) -> jax.Array:
        """KL coefficient of each stage ``[n_stages]``, in order: beta for the reward, beta / lambda_i for
        constraint i."""
        multipliers, out, constraint = self.lagrange_multipliers(hparams), [], 0
        for stage in self.stages:
            if stage == REWARD_STAGE:
                out.append(hparams.beta)
            else:
                out.append(hparams.beta / multipliers[constraint])
                constraint += 1
        return jnp.stack([jnp.asarray(c, jnp.float32) for c in out])


# ----------------------------------------------------------------------------- the problem and the learner


class SACPOProblem(NamedTuple):
    """What SACPO learns on.

    graphdef: the policy's static ``nnx.GraphDef`` (closed over by the learner, never traced).
    initial_params: the SFT policy, the start of stage 1 and its frozen reference.
    datasets: ``{stage name: PreferenceBatch (DPO) or UnpairedBatch (KTO)}``, one per name in
      ``SACPOConfig.stages``; every stage uses the same loss.
    vocab_mask: [V] bool sub-vocabulary of the policy, or None.
    """

    graphdef: Any
    initial_params: Any
    datasets: Mapping[str, StageData]
    vocab_mask: Any = None


class SACPOState(NamedTuple):
    """Learner state (arrays only). ``step`` counts updates; stage ``step // n_steps`` is running."""

    params: Any
    reference_params: Any
    adam_state: Any
    key: jax.Array
    step: jax.Array


def check_datasets(config: SACPOConfig, datasets: Mapping[str, StageData]) -> str:
    """The stages' common loss ("dpo" or "kto"); ValueError if a stage has no dataset, a dataset is malformed,
    smaller than a batch, or the stages mix DPO and KTO data."""
    loss_types = {}
    for stage in config.stages:
        if stage not in datasets:
            raise ValueError(f"datasets: no dataset for stage {stage!r}; have {sorted(datasets)}")
        data = datasets[stage]
        loss_types[stage] = stage_loss_type(data)
        sizes = {x.shape[0] for x in jax.tree.leaves(data)}
        if len(sizes) != 1:
            raise ValueError(f"datasets[{stage!r}]: fields disagree on the number of examples: "
                             f"{sorted(sizes)}")
        (size,) = sizes
        if size < config.batch_size:
            raise ValueError(f"datasets[{stage!r}]: {size} examples < "
                             f"SACPOConfig.batch_size={config.batch_size}")
    if len(set(loss_types.values())) != 1:
        raise ValueError(f"datasets: every stage must use the same loss (all PreferenceBatch for DPO or all "
                         f"UnpairedBatch for KTO), got {loss_types}")
    return next(iter(loss_types.values()))


def _stage_logps(graphdef, params, data: StageData, vocab_mask):
    """Sequence log-probs of a stage's data: (chosen, rejected) [N] or (own, mismatched) [N], one forward."""
    if isinstance(data, losses.PreferenceBatch):
        return losses.concatenated_logprobs(graphdef, params, data, vocab_mask=vocab_mask)
    tokens = jnp.concatenate([data.tokens, data.kl_tokens])
    attention_mask = jnp.concatenate([data.attention_mask, data.kl_attention_mask])
    response_mask = jnp.concatenate([data.response_mask, data.kl_response_mask])
    logps = losses.sequence_logprobs(graphdef, params, tokens, attention_mask, response_mask,
                                     vocab_mask=vocab_mask)
    n = data.tokens.shape[0]
    return logps[:n], logps[n:]


def stage_loss(graphdef, loss_type: str, params, data: StageData, reference_logps, kl_coefficient,
               label_smoothing, undesirable_weight, vocab_mask=None):
    """One stage's loss ``(loss [], metrics)`` on a minibatch, against frozen reference log-probs.

    loss_type "dpo": sigmoid DPO with label smoothing on pairs (metrics loss, accuracy, margin); "kto": KTO
    (TRL semantics) on unpaired data, desirable weight 1 and ``undesirable_weight`` (the SACPO repository uses
    n_desirable / n_undesirable; metrics loss, kl, reward). ``reference_logps``: the :func:`_stage_logps` pair
    of the reference. One policy forward pass.
    """
    first, second = _stage_logps(graphdef, params, data, vocab_mask)
    if loss_type == "dpo":
        out = losses.dpo_loss(first, second, *reference_logps, kl_coefficient, label_smoothing)
        return out.loss, {"loss": out.loss, "accuracy": out.accuracy,
                          "margin": jnp.mean(out.chosen_rewards - out.rejected_rewards)}
    if loss_type == "kto":
        out = losses.kto_loss(first, reference_logps[0], data.desirable, second, reference_logps[1],
                              kl_coefficient, 1.0, undesirable_weight)
        return out.loss, {"loss": out.loss, "kl": out.kl, "reward": jnp.mean(out.rewards)}
    raise ValueError(f"loss_type: must be one of {STAGE_LOSSES}, got {loss_type!r}")


def _pad_rows(x: jax.Array, rows: int, length: int | None) -> jax.Array:
    """Zero-pad ``x [N, ...]`` to ``rows`` rows (and its second axis to ``length``): padding is never sampled
    (rows) or masked out (columns: attention and response masks are False there)."""
    widths = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    if length is not None and x.ndim >= 2:
        widths[1] = (0, length - x.shape[1])
    return jnp.pad(jnp.asarray(x), widths)


def _stack_stages(config: SACPOConfig, datasets: Mapping[str, StageData]):
    """Every stage's dataset stacked along a leading stage axis, padded to the largest (N, T)."""
    stage_data = [datasets[stage] for stage in config.stages]
    sizes = [jax.tree.leaves(d)[0].shape[0] for d in stage_data]
    length = max(x.shape[1] for d in stage_data for x in jax.tree.leaves(d) if x.ndim >= 2)
    padded = [jax.tree.map(lambda x: _pad_rows(x, max(sizes), length), d) for d in stage_data]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *padded), sizes


def make_train_parts(config: SACPOConfig, problem: SACPOProblem) -> TrainParts:
    """SACPO as ``init`` / ``update`` (:mod:`jaxsafe.learner`); one update is one optimiser step.

    Stage ``k = step // n_steps`` starts from, and is regularised towards, the output of stage ``k - 1`` (the
    SFT policy for ``k = 0``) with KL coefficient ``config.stage_coefficients(hparams)[k]``: at a stage
    boundary the current params become the frozen reference and Adam restarts. The reference log-probs are
    computed per minibatch. Stage ``k`` draws its minibatches (shuffled epochs) from ``fold_in(key, k)``, so
    the first ``j`` stages of a run are exactly the run of ``config.replace(stages=config.stages[:j])``: that
    is how to get the step-1 model. Metrics per update: the stage loss's metrics, ``grad_norm``, ``stage``
    (index) and ``nonfinite``; :func:`stage_metrics` splits them by stage.
    """
    loss_type = check_datasets(config, problem.datasets)
    graphdef, vocab_mask, n_steps = problem.graphdef, problem.vocab_mask, config.n_steps
    stacked, sizes = _stack_stages(config, problem.datasets)
    if loss_type == "kto":
        desirable = [jnp.sum(jnp.asarray(problem.datasets[stage].desirable)) for stage in config.stages]
        undesirable_weights = jnp.stack([d / jnp.maximum(n - d, 1) for d, n in zip(desirable, sizes)])
    else:
        undesirable_weights = jnp.ones((len(config.stages),), jnp.float32)

    def init(key, hparams):
        config.lagrange_multipliers(hparams)  # shape check while tracing
        params = problem.initial_params
        return SACPOState(params, params, train_lib.ADAM.init(params), key, jnp.zeros((), jnp.int32))

    def update(state: SACPOState, hparams: SACPOHParams):
        stage = jnp.minimum(state.step // n_steps, len(config.stages) - 1)
        within = state.step - stage * n_steps
        boundary = (within == 0) & (state.step > 0)

        def at_boundary(new, old):
            return jax.tree.map(lambda a, b: jnp.where(boundary, a, b), new, old)

        reference = at_boundary(state.params, state.reference_params)
        adam_state = at_boundary(train_lib.ADAM.init(state.params), state.adam_state)
        stage_key = jax.random.fold_in(state.key, stage)
        # one shuffled-epoch draw per distinct dataset size (not per stage: a vmapped grid runs every branch)
        by_size = {size: train_lib.minibatch_at(stage_key, size, config.batch_size, n_steps, within)
                   for size in sorted(set(sizes))}
        indices = jnp.stack([by_size[size] for size in sizes])[stage]
        batch = jax.tree.map(lambda x: x[stage, indices], stacked)
        reference_logps = jax.lax.stop_gradient(_stage_logps(graphdef, reference, batch, vocab_mask))
        coefficient = config.stage_coefficients(hparams)[stage]

        def loss_fn(params):
            return stage_loss(graphdef, loss_type, params, batch, reference_logps, coefficient,
                              hparams.label_smoothing, undesirable_weights[stage], vocab_mask)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, adam_state = train_lib.adamw_update(grads, adam_state, state.params, hparams.learning_rate,
                                                    hparams.weight_decay)
        grad_norm = optax.tree.norm(grads)
        metrics = {**metrics, "grad_norm": grad_norm, "stage": stage,
                   "nonfinite": ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))}
        return SACPOState(params, reference, adam_state, state.key, state.step + 1), metrics

    return TrainParts(init, update, config.num_updates, config.batch_size)


make_train = make_train_from_parts(make_train_parts)


def stage_metrics(config: SACPOConfig, metrics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """``{"<stage>/<name>": [..., n_steps]}`` from a run's metrics ``[..., num_updates]`` (any leading grid
    axes)."""
    out = {}
    for index, stage in enumerate(config.stages):
        window = slice(index * config.n_steps, (index + 1) * config.n_steps)
        out.update({f"{stage}/{name}": values[..., window] for name, values in metrics.items()
                    if name not in ("stage", "nonfinite")})
    return out


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


def dual_objective(lagrange_multiplier, log_weights, reward, safety, prompt_probs, beta,
                   threshold) -> jax.Array:
    """Empirical Lagrange dual ``D(lambda)`` (scalar), convex in lambda.

    ``D = beta sum_x rho(x) logsumexp_j(log_w[x, j] + (r[x, j] + lambda g[x, j]) / beta) - lambda b``.
    log_weights, reward, safety [P, M]: exact (``log_weights`` = reference log-probs over all
    responses, M = Y) or Monte-Carlo (M responses sampled from the reference per prompt and
    ``log_weights = -log M``). prompt_probs [P]. ``D'(lambda) = E_{pi*_lambda}[g] - b``.
    """
    exponent = log_weights + (reward + lagrange_multiplier * safety) / beta
    log_partition = jax.scipy.special.logsumexp(exponent, axis=-1)
    return beta * jnp.sum(prompt_probs * log_partition) - lagrange_multiplier * threshold


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
        mix_graphdef, mix_state = merge.make_logit_mixture(graphdef, params_reward, graphdef,
                                                           params_constrained, q)
        token.append(kl_divergence(logprob_table_fn(mix_graphdef, mix_state), target, prompt_probs))
        sequence.append(kl_divergence(sequence_logprob_merge(table_reward, table_constrained, q), target,
                                      prompt_probs))
    return MergeGaps(jnp.stack(weight), jnp.stack(token), jnp.stack(sequence), targets)
