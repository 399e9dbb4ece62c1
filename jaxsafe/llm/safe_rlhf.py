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

The PPO stage follows the learner contract of :mod:`jaxsafe.learner`: :class:`SafeRLHFConfig` (static loop
counts), :class:`SafeRLHFHParams` (traced: KL coefficient, cost limit, multiplier settings, learning rate,
clip), a :class:`SafeRLHFProblem` (the SFT policy, the frozen score models, the prompts), and
:func:`make_train_parts` whose ``update`` is one PPO iteration; :func:`make_train` gives the pure
``train(key, hparams) -> TrainResult(params, metrics)``, so cost limits, KL coefficients and seeds are swept
with ``jaxsafe.sweep.run_grid`` like any other learner.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxsafe import constraints
from jaxsafe import losses as pg_losses
from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.llm import generate as generate_lib
from jaxsafe.llm import losses
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import train as train_lib
from jaxsafe.validation import finite, is_int, non_negative, open_unit_interval, positive, require

#: Multiplier rules a Safe-RLHF run may use (the names of :data:`jaxsafe.constraints.HANDLERS` it reads
#: hparams for; CPO's learned margin is not one of them).
MULTIPLIERS = ("none", "lagrangian", "lagrangian_adam", "pid", "fixed")


# ----------------------------------------------------------------------------- config / hparams


@struct.dataclass
class SafeRLHFHParams(HParams):
    """Traced (vmappable) hyperparameters; attribute names follow :mod:`jaxsafe.constraints`.

    kl_coefficient []: weight of the sequence KL penalty to the SFT reference, >= 0.
    cost_limit []: limit on the expected learned cost (Safe-RLHF uses 0, the sign boundary); any finite value.
    multiplier_lr, initial_multiplier, pid_kp, pid_ki, pid_kd []: multiplier updater settings, >= 0.
    learning_rate []: policy Adam step size, > 0.
    clip_eps []: PPO ratio clip, in (0, 1).
    """

    rules = {"kl_coefficient": non_negative(), "cost_limit": finite("learned-cost units"),
             "multiplier_lr": non_negative(), "initial_multiplier": non_negative(), "pid_kp": non_negative(),
             "pid_ki": non_negative(), "pid_kd": non_negative(), "learning_rate": positive(),
             "clip_eps": open_unit_interval()}

    kl_coefficient: Any = 0.5
    cost_limit: Any = 0.0
    multiplier_lr: Any = 0.05
    initial_multiplier: Any = 0.0
    pid_kp: Any = 0.1
    pid_ki: Any = 0.01
    pid_kd: Any = 0.0
    learning_rate: Any = 1e-3
    clip_eps: Any = 0.2


@dataclasses.dataclass(frozen=True)
class SafeRLHFConfig(Config):
    """Static settings (hashable).

    n_iterations: PPO iterations (sample, then ``ppo_epochs`` policy steps), >= 1; one update each.
    prompts_per_iteration: prompts per rollout, >= 1.
    samples_per_prompt: responses per prompt, >= 2 (the group-mean baseline needs two); the rollout batch is
      ``prompts_per_iteration * samples_per_prompt``.
    ppo_epochs: full-batch policy steps per rollout, >= 1.
    multiplier: multiplier updater, one of :data:`MULTIPLIERS` (:mod:`jaxsafe.constraints`).
    """

    n_iterations: int = 150
    prompts_per_iteration: int = 32
    samples_per_prompt: int = 4
    ppo_epochs: int = 4
    multiplier: str = "lagrangian"

    def __post_init__(self):
        for name in ("n_iterations", "prompts_per_iteration", "ppo_epochs"):
            require(is_int(getattr(self, name)), f"SafeRLHFConfig.{name}", "an integer >= 1",
                    getattr(self, name))
        require(is_int(self.samples_per_prompt, 2), "SafeRLHFConfig.samples_per_prompt",
                "an integer >= 2 (group baseline)", self.samples_per_prompt)
        require(self.multiplier in MULTIPLIERS, "SafeRLHFConfig.multiplier", f"one of {MULTIPLIERS}",
                self.multiplier)

    @property
    def rollout_batch(self) -> int:
        return self.prompts_per_iteration * self.samples_per_prompt

    @property
    def policy_gradient_steps(self) -> int:
        return self.n_iterations * self.ppo_epochs

    @property
    def num_updates(self) -> int:
        return self.n_iterations

    def default_hparams(self) -> SafeRLHFHParams:
        return SafeRLHFHParams().as_arrays()


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


@dataclasses.dataclass(frozen=True)
class ScoreModelConfig:
    """Training of the reward and cost models: ``n_steps`` Adam steps (>= 1) of ``batch_size`` pairs (>= 1)
    at ``learning_rate`` (> 0) each."""

    n_steps: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-3

    def __post_init__(self):
        for name in ("n_steps", "batch_size"):
            require(is_int(getattr(self, name)), f"ScoreModelConfig.{name}", "an integer >= 1",
                    getattr(self, name))
        require(isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < float("inf"),
                "ScoreModelConfig.learning_rate", "a finite float > 0", self.learning_rate)


def train_score_models(config: ScoreModelConfig, policy_graphdef, sft_params,
                       helpfulness_pairs: losses.PreferenceBatch, cost_pairs: CostPairs,
                       key: jax.Array) -> ScoreModels:
    """Reward and cost models (scalar heads on a copy of the SFT decoder), ``config.n_steps`` Adam steps
    each."""
    reward_key, cost_key, init_key = jax.random.split(key, 3)
    graphdef, reward_init = model_lib.score_model_from_decoder(policy_graphdef, sft_params, init_key)
    _, cost_init = model_lib.score_model_from_decoder(policy_graphdef, sft_params, init_key)
    optimizer = optax.adam(config.learning_rate)
    reward_params, reward_metrics = train_lib.run_training(
        _score_loss_fn(graphdef, "reward"), optimizer, reward_init, helpfulness_pairs, None, reward_key,
        n_steps=config.n_steps, batch_size=config.batch_size)
    cost_params, cost_metrics = train_lib.run_training(
        _score_loss_fn(graphdef, "cost"), optimizer, cost_init, cost_pairs, None, cost_key,
        n_steps=config.n_steps, batch_size=config.batch_size)
    metrics = {**{f"reward_model/{k}": v for k, v in reward_metrics.items()},
               **{f"cost_model/{k}": v for k, v in cost_metrics.items()}}
    return ScoreModels(graphdef, reward_params, cost_params, metrics)


# ----------------------------------------------------------------------------- PPO-Lagrangian


class SafeRLHFProblem(NamedTuple):
    """What the PPO stage learns on.

    policy_graphdef, score_graphdef: static ``nnx.GraphDef``s of the policy and of the score models (closed
      over by the learner, never traced).
    sft_params: the SFT policy (initialisation and KL reference).
    reward_params, cost_params: frozen score models (sharing ``score_graphdef``).
    prompt_tokens [P, Lp] int (all real tokens); prompt_probs [P].
    vocab_mask [V] bool or None: the policy's sub-vocabulary (must match ``processor``).
    sampling: the (static, hashable) :class:`~jaxsafe.llm.generate.SamplingConfig` of the rollouts.
    processor: a static, hashable logit processor for generation (e.g. a module-level function), or None.
    """

    policy_graphdef: Any
    score_graphdef: Any
    sft_params: Any
    reward_params: Any
    cost_params: Any
    prompt_tokens: jax.Array
    prompt_probs: jax.Array
    vocab_mask: jax.Array | None
    sampling: generate_lib.SamplingConfig
    processor: Callable | None = None


class Rollout(NamedTuple):
    """One rollout batch [N, T]: sequences, masks, behaviour token log-probs and advantages [N]."""

    tokens: jax.Array
    attention_mask: jax.Array
    response_mask: jax.Array
    old_token_logprobs: jax.Array
    advantages: jax.Array


class SafeRLHFState(NamedTuple):
    """Learner state (arrays only): policy params, Adam moments, the multiplier, the key, the update count."""

    params: Any
    adam_state: Any
    constraint: constraints.MultiplierState
    key: jax.Array
    step: jax.Array


def ppo_loss(graphdef, params, rollout: Rollout, clip_eps, vocab_mask=None):
    """Token-level clipped surrogate (:func:`jaxsafe.losses.clipped_surrogate`) over response tokens:
    ``(loss [], metrics)``; every response token carries its sequence's advantage."""
    new = losses.per_token_logprobs(graphdef, params, rollout.tokens, rollout.attention_mask, vocab_mask)
    mask = rollout.response_mask.astype(bool)
    advantages = jnp.broadcast_to(rollout.advantages[:, None], new.shape)
    out = pg_losses.clipped_surrogate(new, rollout.old_token_logprobs, advantages, clip_eps, mask)
    return out.loss, {"policy_loss": out.loss, "clip_fraction": out.clip_fraction, "approx_kl": out.approx_kl}


def group_centred(values: jax.Array, group_size: int) -> jax.Array:
    """``values [N]`` minus the mean of its group of ``group_size`` consecutive entries (the per-prompt
    baseline)."""
    return jax.vmap(pg_losses.centre)(values.reshape(-1, group_size)).reshape(-1)


def make_train_parts(config: SafeRLHFConfig, problem: SafeRLHFProblem) -> TrainParts:
    """PPO-Lagrangian from the SFT policy as ``init`` / ``update``; one update is one PPO iteration.

    An iteration draws ``prompts_per_iteration`` prompts (``samples_per_prompt`` responses each, key
    ``fold_in(key, step)``), scores them with the frozen models, updates the multiplier from the mean learned
    cost against ``cost_limit`` (multiplier first, as OmniSafe does), forms the advantage
    ``standardise(mix_advantages(centred r_hat - kl * KL, centred c_hat, multiplier))`` and takes
    ``ppo_epochs`` full-batch AdamW steps on the clipped surrogate. Metrics per update: ``measured_cost`` /
    ``measured_reward`` (learned models, batch mean), ``kl`` (sequence KL estimate to the reference),
    ``multiplier``, the last epoch's ``policy_loss``, ``clip_fraction``, ``approx_kl`` and ``grad_norm``, and
    ``nonfinite``.
    """
    handler = constraints.make_handler(config.multiplier)
    graphdef, score_graphdef, vocab_mask = problem.policy_graphdef, problem.score_graphdef, problem.vocab_mask
    log_prompt_probs = jnp.log(problem.prompt_probs)
    group = config.samples_per_prompt

    def rollout_signals(params, key):
        prompt_key, sample_key = jax.random.split(key)
        prompt_ids = jax.random.categorical(prompt_key, log_prompt_probs,
                                            shape=(config.prompts_per_iteration,))
        prompts = problem.prompt_tokens[jnp.repeat(prompt_ids, group)]
        out = generate_lib.generate(graphdef, params, prompts, jnp.ones(prompts.shape, bool), sample_key,
                                    problem.sampling, problem.processor)
        token_logprobs = jax.lax.stop_gradient(losses.per_token_logprobs(
            graphdef, params, out.sequences, out.attention_mask, vocab_mask))
        reference_logprobs = losses.per_token_logprobs(graphdef, problem.sft_params, out.sequences,
                                                       out.attention_mask, vocab_mask)
        kl = losses.sum_response_logprobs(token_logprobs - reference_logprobs, out.response_mask)
        rewards = model_lib.scores(score_graphdef, problem.reward_params, out.sequences,
                                   attention_mask=out.attention_mask)[:, 0]
        costs = model_lib.scores(score_graphdef, problem.cost_params, out.sequences,
                                 attention_mask=out.attention_mask)[:, 0]
        return out, token_logprobs, kl, rewards, costs

    def init(key, hparams):
        params = problem.sft_params
        return SafeRLHFState(params, train_lib.ADAM.init(params), handler.init(hparams), key,
                             jnp.zeros((), jnp.int32))

    def update(state: SafeRLHFState, hparams: SafeRLHFHParams):
        out, token_logprobs, kl, rewards, costs = rollout_signals(state.params,
                                                                  jax.random.fold_in(state.key, state.step))
        measured_cost = jnp.mean(costs)
        constraint = handler.update(state.constraint, measured_cost, hparams.cost_limit, hparams)
        multiplier = constraint.multiplier
        reward_advantage = group_centred(rewards - hparams.kl_coefficient * kl, group)
        advantages = pg_losses.standardise(pg_losses.mix_advantages(reward_advantage,
                                                                    group_centred(costs, group),
                                                                    multiplier))
        rollout = Rollout(out.sequences, out.attention_mask, out.response_mask, token_logprobs,
                          jax.lax.stop_gradient(advantages))

        def epoch(carry, _):
            params, adam_state = carry
            (_, metrics), grads = jax.value_and_grad(ppo_loss, argnums=1, has_aux=True)(
                graphdef, params, rollout, hparams.clip_eps, vocab_mask)
            params, adam_state = train_lib.adamw_update(grads, adam_state, params, hparams.learning_rate)
            return (params, adam_state), {**metrics, "grad_norm": optax.tree.norm(grads)}

        (params, adam_state), epoch_metrics = jax.lax.scan(epoch, (state.params, state.adam_state), None,
                                                           length=config.ppo_epochs)
        metrics = {"measured_cost": measured_cost, "measured_reward": jnp.mean(rewards), "kl": jnp.mean(kl),
                   "multiplier": multiplier, **{k: v[-1] for k, v in epoch_metrics.items()}}
        metrics["nonfinite"] = ~(jnp.all(jnp.isfinite(epoch_metrics["policy_loss"]))
                                 & jnp.all(jnp.isfinite(epoch_metrics["grad_norm"])))
        return SafeRLHFState(params, adam_state, constraint, state.key, state.step + 1), metrics

    return TrainParts(init, update, config.n_iterations, config.rollout_batch)


make_train = make_train_from_parts(make_train_parts)
