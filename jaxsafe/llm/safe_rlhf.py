"""A Safe-RLHF style baseline: learned reward and cost models, then PPO-Lagrangian on the LM.

Pipeline (kept small but complete):

1. Reward model: a :class:`~jaxsafe.llm.model.ScoreModel` initialised from the SFT decoder,
   Bradley-Terry loss on helpfulness pairs (:func:`jaxsafe.llm.losses.reward_model_objective`).
2. Cost model: same architecture, Safe-RLHF's cost loss on safety pairs: Bradley-Terry
   with the *less safe* response scored higher, plus the sign term
   ``-log sigma(s(y) c(y))`` with ``s = +1`` for an unsafe and ``-1`` for a safe response,
   which anchors the cost's zero at the safe/unsafe boundary.
3. PPO-Lagrangian: each iteration samples ``prompts_per_iteration`` prompts, draws
   ``samples_per_prompt`` responses each with the jitted generator
   (:func:`jaxsafe.llm.generate.generate`, KV cache, a logit processor for the response
   alphabet), scores them with the frozen reward / cost models, and forms the sequence
   signal ``r_hat - kl_coefficient * (log pi_old - log pi_ref) - lambda * c_hat``
   (group-mean baseline per prompt, whitened, divided by ``1 + lambda``). The policy takes
   ``ppo_epochs`` full-batch steps on the token-level clipped surrogate. The multiplier
   is updated from the measured mean learned cost against ``cost_limit`` by a
   :mod:`jaxsafe.constraints` handler (Lagrangian or PID).

Responses are *sampled* (not enumerated), as an RLHF pipeline would; the exact oracle is
only used by callers to evaluate the result.

``make_train(...) -> train(key, hparams)`` is pure, so cost limits, KL coefficients and
seeds are vmapped like any other learner.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxsafe.llm import generate as generate_lib
from jaxsafe.llm import losses
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import train as train_lib
from jaxsafe import constraints


# ----------------------------------------------------------------------------- config / hparams


class SafeRLHFHparams(NamedTuple):
    """Swept (traced) hyperparameters; attribute names follow :mod:`jaxsafe.constraints`.

    kl_coefficient []: weight of the sequence KL penalty to the SFT reference (>= 0).
    cost_limit []: limit on the expected learned cost (Safe-RLHF uses 0, the sign boundary).
    multiplier_lr, initial_multiplier, pid_kp, pid_ki, pid_kd []: multiplier updater settings.
    """

    kl_coefficient: jax.Array
    cost_limit: jax.Array
    multiplier_lr: jax.Array
    initial_multiplier: jax.Array
    pid_kp: jax.Array
    pid_ki: jax.Array
    pid_kd: jax.Array


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"SafeRLHFConfig.{field}: {message}")


@dataclasses.dataclass(frozen=True)
class SafeRLHFConfig:
    """Static settings (hashable).

    n_iterations: PPO iterations (sample, then ``ppo_epochs`` policy steps), >= 1.
    prompts_per_iteration, samples_per_prompt: rollout batch = their product, each >= 1;
      samples_per_prompt >= 2 (the group-mean baseline needs two).
    ppo_epochs: full-batch policy steps per rollout, >= 1.
    clip_epsilon: PPO ratio clip in (0, 1).
    learning_rate: policy Adam step size, > 0.
    score_steps, score_batch_size, score_learning_rate: reward / cost model training, >= 1 / > 0.
    multiplier: multiplier updater name in :data:`jaxsafe.constraints.HANDLERS`.
    default_*: values of :meth:`default_hparams`.
    """

    n_iterations: int = 150
    prompts_per_iteration: int = 32
    samples_per_prompt: int = 4
    ppo_epochs: int = 4
    clip_epsilon: float = 0.2
    learning_rate: float = 1e-3
    score_steps: int = 300
    score_batch_size: int = 64
    score_learning_rate: float = 1e-3
    multiplier: str = "lagrangian"
    default_kl_coefficient: float = 0.5
    default_cost_limit: float = 0.0
    default_multiplier_lr: float = 0.05
    default_initial_multiplier: float = 0.0

    def __post_init__(self):
        for name in ("n_iterations", "prompts_per_iteration", "ppo_epochs", "score_steps", "score_batch_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
                     f"must be an integer >= 1, got {value!r}")
        _require(isinstance(self.samples_per_prompt, int) and self.samples_per_prompt >= 2, "samples_per_prompt",
                 f"must be an integer >= 2 (group baseline), got {self.samples_per_prompt!r}")
        _require(0 < self.clip_epsilon < 1, "clip_epsilon", f"must be in (0, 1), got {self.clip_epsilon!r}")
        for name in ("learning_rate", "score_learning_rate"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, name, f"must be a finite float > 0, got {value!r}")
        _require(self.multiplier in constraints.HANDLERS, "multiplier",
                 f"must be one of {sorted(constraints.HANDLERS)}, got {self.multiplier!r}")
        _require(math.isfinite(self.default_kl_coefficient) and self.default_kl_coefficient >= 0,
                 "default_kl_coefficient", f"must be a finite float >= 0, got {self.default_kl_coefficient!r}")
        _require(math.isfinite(self.default_cost_limit), "default_cost_limit",
                 f"must be finite, got {self.default_cost_limit!r}")
        for name in ("default_multiplier_lr", "default_initial_multiplier"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, name, f"must be a finite float >= 0, got {value!r}")

    @property
    def rollout_batch(self) -> int:
        return self.prompts_per_iteration * self.samples_per_prompt

    @property
    def policy_gradient_steps(self) -> int:
        return self.n_iterations * self.ppo_epochs

    def default_hparams(self) -> SafeRLHFHparams:
        f = jnp.float32
        return SafeRLHFHparams(f(self.default_kl_coefficient), f(self.default_cost_limit),
                               f(self.default_multiplier_lr), f(self.default_initial_multiplier), f(0.1), f(0.01),
                               f(0.0))


# ----------------------------------------------------------------------------- reward and cost models


class CostPairs(NamedTuple):
    """Safety pairs for the cost model: pairs [N, T] (chosen = safer) and per-response safe flags [N]."""

    pairs: losses.PreferenceBatch
    chosen_safe: jax.Array
    rejected_safe: jax.Array


def cost_model_objective(graphdef, params, data: CostPairs):
    """Safe-RLHF cost-model loss ``(loss [], metrics)``: BT with the less-safe response costlier,
    plus ``-log sigma(s c)`` per response with ``s = +1`` unsafe / ``-1`` safe (one forward pass)."""
    batch = data.pairs
    tokens = jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens], axis=0)
    attention_mask = jnp.concatenate([batch.chosen_attention_mask, batch.rejected_attention_mask], axis=0)
    costs = model_lib.scores(graphdef, params, tokens, attention_mask=attention_mask)[:, 0]
    half = batch.chosen_tokens.shape[0]
    safer_cost, riskier_cost = costs[:half], costs[half:]
    preference = jnp.mean(losses.bradley_terry_loss(riskier_cost, safer_cost))
    signs = jnp.where(jnp.concatenate([data.chosen_safe, data.rejected_safe]), -1.0, 1.0)
    sign_term = -jnp.mean(jax.nn.log_sigmoid(signs * costs))
    loss = preference + sign_term
    return loss, {"loss": loss, "accuracy": jnp.mean((riskier_cost > safer_cost).astype(jnp.float32)),
                  "sign_accuracy": jnp.mean((signs * costs > 0).astype(jnp.float32))}


@functools.lru_cache(maxsize=16)
def _score_loss_fn(graphdef, kind: str):
    if kind == "reward":
        return lambda params, batch, hparams: losses.reward_model_objective(graphdef, params, batch)
    return lambda params, data, hparams: cost_model_objective(graphdef, params, data)


class ScoreModels(NamedTuple):
    """graphdef (shared), reward_params, cost_params, and training metrics of both."""

    graphdef: object
    reward_params: object
    cost_params: object
    metrics: dict


def train_score_models(config: SafeRLHFConfig, policy_graphdef, sft_params, helpfulness_pairs: losses.PreferenceBatch,
                       cost_pairs: CostPairs, key: jax.Array) -> ScoreModels:
    """Reward and cost models (scalar heads on a copy of the SFT decoder), ``config.score_steps`` Adam steps each."""
    reward_key, cost_key, init_key = jax.random.split(key, 3)
    graphdef, reward_init = model_lib.score_model_from_decoder(policy_graphdef, sft_params, init_key)
    _, cost_init = model_lib.score_model_from_decoder(policy_graphdef, sft_params, init_key)
    optimizer = optax.adam(config.score_learning_rate)
    reward_params, reward_metrics = train_lib.run_training(
        _score_loss_fn(graphdef, "reward"), optimizer, reward_init, helpfulness_pairs, None, reward_key,
        n_steps=config.score_steps, batch_size=config.score_batch_size)
    cost_params, cost_metrics = train_lib.run_training(
        _score_loss_fn(graphdef, "cost"), optimizer, cost_init, cost_pairs, None, cost_key,
        n_steps=config.score_steps, batch_size=config.score_batch_size)
    metrics = {**{f"reward_model/{k}": v for k, v in reward_metrics.items()},
               **{f"cost_model/{k}": v for k, v in cost_metrics.items()}}
    return ScoreModels(graphdef, reward_params, cost_params, metrics)


# ----------------------------------------------------------------------------- PPO-Lagrangian


class Rollout(NamedTuple):
    """One rollout batch [N, T]: sequences, masks, behaviour token log-probs and advantages [N]."""

    tokens: jax.Array
    attention_mask: jax.Array
    response_mask: jax.Array
    old_token_logprobs: jax.Array
    advantages: jax.Array
    vocab_mask: jax.Array | None


@functools.lru_cache(maxsize=16)
def ppo_loss_fn(graphdef, clip_epsilon: float):
    """Token-level clipped surrogate, averaged over response tokens: ``(params, Rollout, _) -> (loss, metrics)``."""

    def loss_fn(params, rollout: Rollout, hparams):
        del hparams
        new = losses.per_token_logprobs(graphdef, params, rollout.tokens, rollout.attention_mask, rollout.vocab_mask)
        mask = rollout.response_mask.astype(bool)
        log_ratio = jnp.where(mask, new - rollout.old_token_logprobs, 0.0)
        ratio = jnp.exp(log_ratio)
        advantages = rollout.advantages[:, None]
        surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - clip_epsilon, 1 + clip_epsilon) * advantages)
        n_tokens = jnp.maximum(mask.sum(), 1)
        loss = -jnp.sum(jnp.where(mask, surrogate, 0.0)) / n_tokens
        clipped = jnp.sum(jnp.where(mask, jnp.abs(ratio - 1) > clip_epsilon, False)) / n_tokens
        return loss, {"policy_loss": loss, "clip_fraction": clipped}

    return loss_fn


def _group_centred(values: jax.Array, group_size: int) -> jax.Array:
    """``values [N]`` minus the mean of its group of ``group_size`` consecutive entries."""
    grouped = values.reshape(-1, group_size)
    return (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1)


class PolicyInputs(NamedTuple):
    """Array inputs of the PPO stage (arguments, not compile-time constants).

    sft_params: the SFT policy (initialisation and KL reference).
    reward_params, cost_params: frozen score models (sharing ``ScoreModels.graphdef``).
    prompt_tokens [P, Lp] int (all real tokens); prompt_probs [P].
    vocab_mask [V] bool or None: the policy's sub-vocabulary (must match ``processor``).
    """

    sft_params: object
    reward_params: object
    cost_params: object
    prompt_tokens: jax.Array
    prompt_probs: jax.Array
    vocab_mask: jax.Array | None


def ppo_lagrangian(config: SafeRLHFConfig, policy_graphdef, score_graphdef, sampling: generate_lib.SamplingConfig,
                   processor: Callable | None, key: jax.Array, hparams: SafeRLHFHparams, inputs: PolicyInputs):
    """PPO-Lagrangian from the SFT policy; pure. Returns ``(params, metrics [n_iterations])``.

    Static: config, graphdefs, sampling settings and ``processor`` (hashable, e.g. a
    module-level function). metrics: ``measured_cost`` / ``measured_reward`` (learned
    models, batch mean), ``kl`` (sequence KL estimate to the reference), ``multiplier``,
    ``policy_loss``, ``clip_fraction``.
    """
    handler = constraints.make_handler(config.multiplier)
    optimizer = optax.adam(config.learning_rate)
    step = train_lib.make_train_step(ppo_loss_fn(policy_graphdef, config.clip_epsilon), optimizer, jit=False)
    log_prompt_probs = jnp.log(inputs.prompt_probs)
    group = config.samples_per_prompt

    def rollout_signals(params, key):
        prompt_key, sample_key = jax.random.split(key)
        prompt_ids = jax.random.categorical(prompt_key, log_prompt_probs, shape=(config.prompts_per_iteration,))
        prompts = inputs.prompt_tokens[jnp.repeat(prompt_ids, group)]
        out = generate_lib.generate(policy_graphdef, params, prompts, jnp.ones(prompts.shape, bool), sample_key,
                                    sampling, processor)
        token_logprobs = jax.lax.stop_gradient(losses.per_token_logprobs(
            policy_graphdef, params, out.sequences, out.attention_mask, inputs.vocab_mask))
        reference_logprobs = losses.per_token_logprobs(policy_graphdef, inputs.sft_params, out.sequences,
                                                       out.attention_mask, inputs.vocab_mask)
        kl = losses.sum_response_logprobs(token_logprobs - reference_logprobs, out.response_mask)
        rewards = model_lib.scores(score_graphdef, inputs.reward_params, out.sequences,
                                   attention_mask=out.attention_mask)[:, 0]
        costs = model_lib.scores(score_graphdef, inputs.cost_params, out.sequences,
                                 attention_mask=out.attention_mask)[:, 0]
        return out, token_logprobs, kl, rewards, costs

    def iteration(carry, iteration_key):
        params, opt_state, multiplier_state = carry
        out, token_logprobs, kl, rewards, costs = rollout_signals(params, iteration_key)
        measured_cost = jnp.mean(costs)
        multiplier_state = handler.update(multiplier_state, measured_cost, hparams.cost_limit, hparams)
        multiplier = multiplier_state.multiplier
        reward_signal = _group_centred(rewards - hparams.kl_coefficient * kl, group)
        cost_signal = _group_centred(costs, group)
        advantages = (reward_signal - multiplier * cost_signal) / (1.0 + multiplier)
        advantages = advantages / (jnp.std(advantages) + 1e-6)
        rollout = Rollout(out.sequences, out.attention_mask, out.response_mask, token_logprobs,
                          jax.lax.stop_gradient(advantages), inputs.vocab_mask)

        def epoch(state, _):
            params, opt_state = state
            params, opt_state, metrics = step(params, opt_state, rollout, None)
            return (params, opt_state), metrics

        (params, opt_state), epoch_metrics = jax.lax.scan(epoch, (params, opt_state), None, length=config.ppo_epochs)
        metrics = {"measured_cost": measured_cost, "measured_reward": jnp.mean(rewards), "kl": jnp.mean(kl),
                   "multiplier": multiplier, **{k: v[-1] for k, v in epoch_metrics.items()}}
        return (params, opt_state, multiplier_state), metrics

    carry = (inputs.sft_params, optimizer.init(inputs.sft_params), handler.init(hparams))
    (params, _, _), metrics = jax.lax.scan(iteration, carry, jax.random.split(key, config.n_iterations))
    return params, metrics


def make_train(config: SafeRLHFConfig, policy_graphdef, score_models: ScoreModels, sampling, processor,
               inputs: PolicyInputs):
    """``train(key, hparams: SafeRLHFHparams) -> (params, metrics)``: the learner contract (closes over inputs)."""

    def train(key: jax.Array, hparams: SafeRLHFHparams):
        return ppo_lagrangian(config, policy_graphdef, score_models.graphdef, sampling, processor, key, hparams, inputs)

    return train


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _grid_program(config, policy_graphdef, score_graphdef, sampling, processor, keys, hparams, inputs):
    run = functools.partial(ppo_lagrangian, config, policy_graphdef, score_graphdef, sampling, processor)
    return jax.vmap(run, in_axes=(0, 0, None))(keys, hparams, inputs)


def run_grid(config: SafeRLHFConfig, policy_graphdef, score_models: ScoreModels, sampling, processor,
             inputs: PolicyInputs, hparams: SafeRLHFHparams, keys: jax.Array):
    """PPO-Lagrangian over stacked ``hparams [G]`` and ``keys [G]`` as one vmapped, jitted program."""
    if keys.shape[0] != jnp.shape(hparams.cost_limit)[0]:
        raise ValueError(f"keys: need one key per grid point ({jnp.shape(hparams.cost_limit)}), got {keys.shape}")
    return _grid_program(config, policy_graphdef, score_models.graphdef, sampling, processor, keys, hparams, inputs)


def stack_hparams(config: SafeRLHFConfig, **fields) -> SafeRLHFHparams:
    """Stack a grid: every given field is a sequence of G values; the rest take the defaults."""
    if not fields:
        raise ValueError("fields: give at least one swept field, e.g. cost_limit=[...]")
    unknown = set(fields) - set(SafeRLHFHparams._fields)
    if unknown:
        raise ValueError(f"fields: unknown {sorted(unknown)}; allowed {SafeRLHFHparams._fields}")
    sizes = {len(v) for v in fields.values()}
    if len(sizes) != 1:
        raise ValueError(f"fields: all swept fields need the same length, got {sorted(sizes)}")
    (size,) = sizes
    defaults = config.default_hparams()
    return SafeRLHFHparams(*(jnp.asarray(fields[name], jnp.float32) if name in fields
                             else jnp.full((size,), getattr(defaults, name), jnp.float32)
                             for name in SafeRLHFHparams._fields))
