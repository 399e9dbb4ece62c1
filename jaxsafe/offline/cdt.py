"""The Constrained Decision Transformer (CDT; Liu et al. 2023) on the shared transformer core, as OSRL configures it.

Each step ``t`` of a context of ``K`` steps is four tokens, interleaved into one ``[B, 4K, D]`` sequence::

    (return-to-go R_t, cost-to-go C_t, state s_t, action a_t),   each + a timestep embedding of t

then an embedding LayerNorm, dropout and the causal "gpt2" core (:mod:`jaxsafe.nn.transformer`, positions
come from the timestep table). Every weight starts N(0, 0.02^2) and every bias 0, as OSRL's ``_init_weights``.
Two heads read the hidden states:

* the action head, on the state token of step ``t`` (which sees ``R_<=t, C_<=t, s_<=t, a_<t``): a diagonal
  Gaussian ``N(mean, exp(log_std)^2)`` (no tanh; ``log_std`` is clipped to ``[-10, 2]`` as a numerical guard). The
  loss is its negative log-likelihood minus ``temperature * entropy``; the temperature is learned with its own
  Adam so that the entropy tracks ``-action_dim`` (SAC-style);
* the cost head, on the action token of step ``t``: a 2-class classifier of "step t has a positive cost", an
  auxiliary cross-entropy weighted by ``cost_loss_weight`` (0.02).

The model is fed ``reward_scale * R_t`` and ``cost_scale * (cost_offset - C_t)`` (OSRL: 0.1, 1 and 50). Training
windows end at a uniformly drawn step of an episode drawn with probability ``max(0, cost_sample_cap - episode
cost)`` (OSRL's ``cost_sample``, cap 70; a cap ``<= 0`` samples episodes uniformly) and are left-padded (masked)
before the episode's start, which is the shape of the context at deployment. AdamW with a linear warm-up and
global-norm clipping; everything a grid sweeps is in :class:`CDTHParams`.

At deployment (:func:`make_policy`) the policy state is the context window and the remaining targets, which
decrease by the realised reward and cost each step (never clipped), read from a
:class:`~jaxsafe.offline.feedback.RewardCostFeedback` environment; the action is the Gaussian mean clamped to the
action bounds.

OSRL's Pareto-frontier return augmentation (:mod:`jaxsafe.offline.pareto`) adds ``augment_fraction`` relabelled
copies of episodes whose targets lie above the dataset's reward-cost frontier; they are sampled like the real
episodes (their cost for ``cost_sample`` is the target cost). Dropout (``CDTHParams.dropout``, OSRL's 0.1) applies
to the embeddings, the attention probabilities and each block's outputs, as OSRL's three dropout rates (all 0.1).

Not implemented: OSRL's best-checkpoint selection by online rollouts every 2,500 steps (the runner keeps the
last checkpoint; evaluate any chunk's checkpoint with ``jaxsafe offline eval``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.nn.transformer import Dropout, Transformer, TransformerConfig, inverted_dropout, linear
from jaxsafe.offline.dataset import TrajectoryDataset
from jaxsafe.offline.pareto import Augmentation, augment_targets
from jaxsafe.offline.training import ADAM, clipped_adamw_step, episode_table, sample_steps, tree_all_finite
from jaxsafe.policy import Policy
from jaxsafe.validation import in_range, is_int, non_negative, positive, require

__all__ = ["PRESETS", "CDTHParams", "CDTConfig", "CDTModel", "CDTState", "CDTContext", "make_model",
           "TrainingEpisodes", "training_episodes",
           "make_train_parts", "make_train", "make_policy", "LOG_STD_RANGE"]

#: The numerical guard on the Gaussian head's log standard deviation.
LOG_STD_RANGE = (-10.0, 2.0)

#: Config presets: OSRL's full-size CDT and a CPU-sized one.
PRESETS = {
    "osrl": dict(context_len=10, d_model=128, n_layers=3, n_heads=8, batch_size=2048, num_updates=100_000,
                 warmup_steps=500, max_grad_norm=0.25),
    "cpu": dict(context_len=10, d_model=64, n_layers=2, n_heads=4, batch_size=256, num_updates=5_000,
                warmup_steps=100, max_grad_norm=0.25),
}


@struct.dataclass
class CDTHParams(HParams):
    """Traced hyperparameters (OSRL's defaults).

    learning_rate, weight_decay: AdamW of the model; temperature_lr: Adam of the log temperature;
    initial_temperature: the entropy temperature at init (> 0); reward_scale, cost_scale, cost_offset: the model
    reads ``reward_scale * R`` and ``cost_scale * (cost_offset - C)``; cost_loss_weight: weight of the auxiliary
    cost classifier; dropout: the rate in [0, 1) of embedding, attention and residual dropout; cost_sample_cap:
    episodes are drawn with probability ``max(0, cap - episode cost)`` (``<= 0``: uniformly).
    """

    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    temperature_lr: float = 1e-4
    initial_temperature: float = 0.1
    reward_scale: float = 0.1
    cost_scale: float = 1.0
    cost_offset: float = 50.0
    cost_loss_weight: float = 0.02
    dropout: float = 0.1
    cost_sample_cap: float = 70.0

    rules = {"learning_rate": positive(), "weight_decay": non_negative(), "temperature_lr": non_negative(),
             "initial_temperature": positive(), "reward_scale": positive(), "cost_scale": positive(),
             "cost_loss_weight": non_negative(), "dropout": in_range(0.0, 0.99)}


@dataclasses.dataclass(frozen=True)
class CDTConfig(Config):
    """Static settings (defaults: OSRL's, ``PRESETS["osrl"]``; ``CDTConfig.preset("cpu")`` for a laptop).

    context_len: K steps of context (<= the longest episode of the dataset); d_model, n_layers, n_heads: the core
    (d_ff = 4 d_model); max_episode_len: size of the timestep table (>= the longest episode; later timesteps at
    deployment reuse the last entry); batch_size, num_updates, warmup_steps (linear lr warm-up), max_grad_norm.

    Pareto-frontier return augmentation (:func:`jaxsafe.offline.pareto.augment_targets`; drawn once per dataset,
    host side): augment_fraction (OSRL's 0.2; 0 turns it off) relabelled episodes per real one, pareto_degree of
    the frontier fit (OSRL: 4 CarCircle ... 1 Velocity), augment_min_above (targets at least this far above the
    frontier; OSRL's 1), augment_max_return (None: the dataset's best return), augment_max_decrease (None: a
    quarter of the return range), augment_beta (OSRL's 1), augment_seed.
    """

    context_len: int = 10
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 8
    max_episode_len: int = 1000
    batch_size: int = 2048
    num_updates: int = 100_000
    warmup_steps: int = 500
    max_grad_norm: float = 0.25
    augment_fraction: float = 0.2
    pareto_degree: int = 4
    augment_min_above: float = 1.0
    augment_max_return: float | None = None
    augment_max_decrease: float | None = None
    augment_beta: float = 1.0
    augment_seed: int = 0

    def __post_init__(self):
        for name in ("context_len", "d_model", "n_layers", "n_heads", "max_episode_len", "batch_size",
                     "num_updates"):
            require(is_int(getattr(self, name)), f"CDTConfig.{name}", "an integer >= 1", getattr(self, name))
        require(is_int(self.warmup_steps, 0), "CDTConfig.warmup_steps", "an integer >= 0", self.warmup_steps)
        require(self.d_model % self.n_heads == 0, "CDTConfig.d_model", f"divisible by n_heads={self.n_heads}",
                self.d_model)
        require(isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm > 0, "CDTConfig.max_grad_norm",
                "a float > 0", self.max_grad_norm)
        require(isinstance(self.augment_fraction, (int, float)) and 0 <= self.augment_fraction <= 10,
                "CDTConfig.augment_fraction", "a float in [0, 10]", self.augment_fraction)
        require(is_int(self.pareto_degree, 0), "CDTConfig.pareto_degree", "an integer >= 0", self.pareto_degree)
        require(isinstance(self.augment_beta, (int, float)) and self.augment_beta > 0, "CDTConfig.augment_beta",
                "a float > 0", self.augment_beta)

    @classmethod
    def preset(cls, name: str, **overrides) -> "CDTConfig":
        require(name in PRESETS, "preset", f"one of {sorted(PRESETS)}", name)
        return cls(**{**PRESETS[name], **overrides})

    def core_config(self) -> TransformerConfig:
        return TransformerConfig(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                                 d_ff=4 * self.d_model, max_seq_len=4 * self.context_len, block_style="gpt2")

    def default_hparams(self) -> CDTHParams:
        return CDTHParams().as_arrays()


class CDTModel(nnx.Module):
    """Modality embeddings + the shared core + the action and cost heads (see the module docstring)."""

    def __init__(self, config: CDTConfig, obs_dim: int, action_dim: int, *, rngs: nnx.Rngs):
        d, core = config.d_model, config.core_config()
        # Every weight N(0, 0.02^2), biases 0: OSRL's ``_init_weights``, the core's own initialiser. With a unit-scale
        # init the scalar tokens (about 50 - C and 0.1 R) swamp the timestep embedding and the LayerNorm keeps
        # only their sign, so a short training run never learns to read the cost-to-go.
        self.embed_return = linear(core, 1, d, True, rngs)
        self.embed_cost = linear(core, 1, d, True, rngs)
        self.embed_state = linear(core, obs_dim, d, True, rngs)
        self.embed_action = linear(core, action_dim, d, True, rngs)
        self.embed_time = nnx.Embed(config.max_episode_len, d, embedding_init=nnx.initializers.normal(core.init_std),
                                    rngs=rngs)
        self.embed_norm = nnx.LayerNorm(d, rngs=rngs)
        self.core = Transformer(core, rngs=rngs)
        self.action_mean = linear(core, d, action_dim, True, rngs)
        self.action_log_std = linear(core, d, action_dim, True, rngs)
        self.cost_head = linear(core, d, 2, True, rngs)

    def __call__(self, returns, costs, states, actions, timesteps, mask, dropout_key=None, dropout_rate=0.0):
        """Inputs ``[B, K]`` (``returns``, ``costs``: already scaled; ``timesteps`` int; ``mask`` bool),
        ``states [B, K, obs_dim]``, ``actions [B, K, action_dim]``. Returns ``(mean, log_std)`` ``[B, K,
        action_dim]`` and the cost logits ``[B, K, 2]``."""
        batch, length = returns.shape
        time = self.embed_time(timesteps)
        tokens = jnp.stack([self.embed_return(returns[..., None]) + time, self.embed_cost(costs[..., None]) + time,
                            self.embed_state(states) + time, self.embed_action(actions) + time], axis=2)
        tokens = self.embed_norm(tokens.reshape(batch, 4 * length, -1))
        drop = None
        if dropout_key is not None:
            embed_key, core_key = jax.random.split(dropout_key)
            tokens = inverted_dropout(embed_key, tokens, dropout_rate)
            drop = Dropout(core_key, dropout_rate, dropout_rate)
        hidden, _ = self.core(tokens, attention_mask=jnp.repeat(mask, 4, axis=1), dropout=drop)
        hidden = hidden.reshape(batch, length, 4, -1)
        state_tokens, action_tokens = hidden[:, :, 2], hidden[:, :, 3]
        log_std = jnp.clip(self.action_log_std(state_tokens), *LOG_STD_RANGE)
        return (self.action_mean(state_tokens), log_std), self.cost_head(action_tokens)


def make_model(config: CDTConfig, obs_dim: int, action_dim: int):
    """``(graphdef, init_params)``: ``init_params(key) -> params`` (an ``nnx.State``), jit/vmap-able."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: CDTModel(config, obs_dim, action_dim, rngs=nnx.Rngs(0))))

    def init_params(key):
        return nnx.split(CDTModel(config, obs_dim, action_dim, rngs=nnx.Rngs(params=key)))[1]

    return graphdef, init_params


class CDTState(NamedTuple):
    params: nnx.State
    adam_state: tuple
    log_temperature: jax.Array
    temperature_adam_state: tuple
    key: jax.Array
    step: jax.Array


def _dataset_arrays(dataset: TrajectoryDataset):
    flat = lambda x: np.asarray(x, np.float32).reshape(np.shape(x)[0], -1)  # noqa: E731
    return (jnp.asarray(flat(dataset.observations)), jnp.asarray(flat(dataset.actions)),
            jnp.asarray(dataset.returns_to_go, jnp.float32), jnp.asarray(dataset.costs_to_go.sum(-1), jnp.float32),
            jnp.asarray(dataset.costs.sum(-1), jnp.float32))


def _gaussian_log_prob_and_entropy(mean, log_std, action):
    """Per step ``[...]``: the diagonal Gaussian's log-density of ``action`` and its entropy (summed over dims)."""
    log_prob = -0.5 * (((action - mean) / jnp.exp(log_std)) ** 2 + 2 * log_std + math.log(2 * math.pi))
    entropy = log_std + 0.5 * math.log(2 * math.pi * math.e)
    return log_prob.sum(-1), entropy.sum(-1)


class TrainingEpisodes(NamedTuple):
    """The episodes the CDT samples windows from ``[E + A]``: the dataset's ``E`` episodes, then the ``A``
    relabelled copies of the Pareto augmentation. ``starts``/``lengths`` locate each in the dataset's steps,
    ``costs`` is its (target) cost return for the cost sampling, and ``return_shift``/``cost_shift`` are added to
    its returns- and costs-to-go (0 for real episodes)."""

    starts: np.ndarray
    lengths: np.ndarray
    costs: np.ndarray
    return_shift: np.ndarray
    cost_shift: np.ndarray
    augmentation: Augmentation


def training_episodes(config: CDTConfig, dataset: TrajectoryDataset) -> TrainingEpisodes:
    """The real and augmented episodes of ``dataset`` under ``config``'s augmentation settings (host side)."""
    table = episode_table(dataset)
    augmented = augment_targets(table.costs, table.returns, config.augment_fraction, degree=config.pareto_degree,
                                min_above=config.augment_min_above, max_return=config.augment_max_return,
                                max_decrease=config.augment_max_decrease, beta=config.augment_beta,
                                seed=config.augment_seed)
    source = np.concatenate([np.arange(table.starts.size), augmented.source])
    zeros = np.zeros(table.starts.size)
    return TrainingEpisodes(table.starts[source], table.lengths[source],
                            np.concatenate([table.costs, augmented.target_cost]),
                            np.concatenate([zeros, augmented.return_shift]),
                            np.concatenate([zeros, augmented.cost_shift]), augmented)


def make_train_parts(config: CDTConfig, dataset: TrajectoryDataset) -> TrainParts:
    """CDT on ``dataset``: one gradient step on a batch of ``batch_size`` windows per update.

    Raises:
      ValueError: ``context_len`` exceeds the longest episode, or the longest episode exceeds ``max_episode_len``
        (both before anything compiles).
    """
    table = episode_table(dataset)
    longest = int(table.lengths.max())
    require(config.context_len <= longest, "CDTConfig.context_len",
            f"at most the longest episode of the dataset ({longest} steps)", config.context_len)
    require(longest <= config.max_episode_len, "CDTConfig.max_episode_len",
            f"at least the longest episode of the dataset ({longest} steps)", config.max_episode_len)
    observations, actions, returns_to_go, costs_to_go, step_costs = _dataset_arrays(dataset)
    episodes_table = training_episodes(config, dataset)
    starts, lengths = jnp.asarray(episodes_table.starts), jnp.asarray(episodes_table.lengths)
    episode_costs = jnp.asarray(episodes_table.costs, jnp.float32)
    return_shift = jnp.asarray(episodes_table.return_shift, jnp.float32)
    cost_shift = jnp.asarray(episodes_table.cost_shift, jnp.float32)
    action_dim = actions.shape[1]
    target_entropy = -float(action_dim)
    graphdef, init_params = make_model(config, observations.shape[1], action_dim)
    context = config.context_len

    def init(key, hparams):
        init_key, key = jax.random.split(key)
        params = init_params(init_key)
        log_temperature = jnp.log(hparams.initial_temperature).astype(jnp.float32)
        return CDTState(params, ADAM.init(params), log_temperature, ADAM.init(log_temperature), key,
                        jnp.zeros((), jnp.int32))

    def sample_windows(key, hparams):
        episode_key, end_key = jax.random.split(key)
        weights = jnp.where(hparams.cost_sample_cap > 0, jnp.maximum(hparams.cost_sample_cap - episode_costs, 0.0),
                            1.0)
        episodes = sample_steps(episode_key, weights, config.batch_size)
        ends = jax.random.randint(end_key, (config.batch_size,), 0, lengths[episodes])
        offsets = ends[:, None] - context + 1 + jnp.arange(context)  # [B, K] steps within the episode
        mask = offsets >= 0
        timesteps = jnp.maximum(offsets, 0)
        index = starts[episodes][:, None] + timesteps
        return index, episodes, timesteps, mask

    def loss_fn(params, temperature, hparams, index, episodes, timesteps, mask, dropout_key):
        model = nnx.merge(graphdef, params)
        returns = returns_to_go[index] + return_shift[episodes][:, None]
        costs = costs_to_go[index] + cost_shift[episodes][:, None]
        (mean, log_std), cost_logits = model(
            returns * hparams.reward_scale, (hparams.cost_offset - costs) * hparams.cost_scale,
            observations[index], actions[index], timesteps, mask, dropout_key, hparams.dropout)
        log_prob, entropy = _gaussian_log_prob_and_entropy(mean, log_std, actions[index])
        weight = mask.astype(jnp.float32) / mask.sum()
        nll = -(log_prob * weight).sum()
        mean_entropy = (entropy * weight).sum()
        labels = (step_costs[index] > 0).astype(jnp.int32)
        cost_ce = -((jax.nn.log_softmax(cost_logits) * jax.nn.one_hot(labels, 2)).sum(-1) * weight).sum()
        loss = nll - temperature * mean_entropy + hparams.cost_loss_weight * cost_ce
        return loss, (nll, mean_entropy, cost_ce)

    def update(state, hparams):
        key, window_key, dropout_key = jax.random.split(state.key, 3)
        index, episodes, timesteps, mask = sample_windows(window_key, hparams)
        temperature = jnp.exp(state.log_temperature)
        (loss, (nll, entropy, cost_ce)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, temperature, hparams, index, episodes, timesteps, mask, dropout_key)
        warmup = jnp.minimum(1.0, (state.step + 1) / max(config.warmup_steps, 1))
        params, adam_state, grad_norm = clipped_adamw_step(grads, state.adam_state, state.params,
                                                           hparams.learning_rate * warmup, hparams.weight_decay,
                                                           config.max_grad_norm)
        # d/d log_temperature of temperature * stop_gradient(entropy - target_entropy)
        temperature_grad = temperature * (entropy - target_entropy)
        direction, temperature_adam_state = ADAM.update(temperature_grad, state.temperature_adam_state)
        log_temperature = state.log_temperature - hparams.temperature_lr * direction
        metrics = {"loss": loss, "action_nll": nll, "entropy": entropy, "cost_ce": cost_ce,
                   "temperature": temperature, "grad_norm": grad_norm,
                   "nonfinite": ~(jnp.isfinite(loss) & tree_all_finite(params))}
        return CDTState(params, adam_state, log_temperature, temperature_adam_state, key, state.step + 1), metrics

    return TrainParts(init, update, config.num_updates, steps_per_update=config.batch_size)


make_train = make_train_from_parts(make_train_parts)


class CDTContext(NamedTuple):
    """A deployed CDT's state: the last ``K`` steps (``returns``/``costs`` [K] as fed to the model, ``states``
    [K, obs_dim], ``actions`` [K, action_dim], ``timesteps`` [K] int, ``mask`` [K] bool), the remaining targets
    (unscaled) and the episode's step count."""

    returns: jax.Array
    costs: jax.Array
    states: jax.Array
    actions: jax.Array
    timesteps: jax.Array
    mask: jax.Array
    target_return: jax.Array
    target_cost: jax.Array
    t: jax.Array


def _check_targets(dataset: TrajectoryDataset, target_return, target_cost) -> None:
    table = episode_table(dataset)
    for name, value, values in (("target_return", target_return, table.returns),
                                ("target_cost", target_cost, table.costs)):
        if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
            continue  # traced targets (a grid of targets) are not checked
        require(value >= 0, name, "a finite number >= 0", value)
        low, high = float(values.min()), float(values.max())
        if not low <= value <= high:
            warnings.warn(f"{name}={value} is outside the dataset's episode range [{low:g}, {high:g}]: the CDT "
                          f"extrapolates", stacklevel=3)


def make_policy(config: CDTConfig, dataset: TrajectoryDataset, params, hparams: CDTHParams, target_return,
                target_cost, action_low, action_high, deterministic: bool = True) -> Policy:
    """The trained CDT as a :class:`~jaxsafe.policy.Policy` conditioned on ``(target_return, target_cost)``.

    Play it on ``RewardCostFeedback(env)`` (:mod:`jaxsafe.offline.feedback`): each step the targets decrease by
    the reward and cost the previous step realised, the step joins the context, and the action is the Gaussian
    mean at the newest state token (OSRL's evaluation; ``deterministic=False`` samples the Gaussian head instead)
    clamped to ``[action_low, action_high]``.

    Raises:
      ValueError: a negative target. Warns when a target lies outside the dataset's episode range.
    """
    _check_targets(dataset, target_return, target_cost)
    obs_shape, action_shape = np.shape(dataset.observations)[1:], np.shape(dataset.actions)[1:]
    obs_dim, action_dim = int(np.prod(obs_shape, dtype=int)), int(np.prod(action_shape, dtype=int))
    graphdef, _ = make_model(config, obs_dim, action_dim)
    context = config.context_len

    def init(key):
        del key
        zeros = jnp.zeros((context,), jnp.float32)
        return CDTContext(zeros, zeros, jnp.zeros((context, obs_dim)), jnp.zeros((context, action_dim)),
                          jnp.zeros((context,), jnp.int32), jnp.zeros((context,), bool),
                          jnp.asarray(target_return, jnp.float32), jnp.asarray(target_cost, jnp.float32),
                          jnp.zeros((), jnp.int32))

    def push(window, value):
        return jnp.concatenate([window[1:], value[None].astype(window.dtype)])

    def step(state, obs, key):
        target_return_now = state.target_return - obs["reward"]
        target_cost_now = state.target_cost - obs["cost"]
        state = CDTContext(
            push(state.returns, target_return_now * hparams.reward_scale),
            push(state.costs, (hparams.cost_offset - target_cost_now) * hparams.cost_scale),
            push(state.states, jnp.reshape(obs["obs"], (-1,)).astype(jnp.float32)),
            push(state.actions, jnp.zeros((action_dim,))),
            push(state.timesteps, jnp.minimum(state.t, config.max_episode_len - 1)),
            push(state.mask, jnp.ones((), bool)), target_return_now, target_cost_now, state.t + 1)
        model = nnx.merge(graphdef, params)
        (mean, log_std), _ = model(state.returns[None], state.costs[None], state.states[None],
                                   state.actions[None], state.timesteps[None], state.mask[None])
        action = mean[0, -1]
        if not deterministic:
            action = action + jnp.exp(log_std[0, -1]) * jax.random.normal(key, action.shape)
        action = jnp.clip(action, action_low, action_high)
        state = state._replace(actions=state.actions.at[-1].set(action))
        return state, action.reshape(action_shape)

    return Policy(init, step)
