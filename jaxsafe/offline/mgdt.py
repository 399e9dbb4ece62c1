"""The Multi-Game Decision Transformer (MGDT; Lee et al. 2022) on the shared transformer core.

One model is trained on every game of a :class:`~jaxsafe.offline.multigame.MultiGameData` at once. Each step of a
context of ``K`` steps (MGDT: 4) is ``P + 3`` tokens::

    [observation patch 1 .. patch P, return-to-go, action, reward]

* Observations are padded to the suite's shared shape (image games: the channels to the largest count; vector games:
  the length to the longest) and cut into ``P`` patches (images: ``patch_size x patch_size`` tiles; vectors:
  ``n_patches`` equal pieces), each linearly embedded plus a learned patch-position embedding.
* Returns-to-go are the integers ``round(reward_scale_g * R)`` in ``[return_low, return_high]`` (MGDT: -20 .. 100,
  i.e. **121** bins, ``hi - lo + 1``; the official colab's 120 rows are one too few, see the paper notes §4.6),
  embedded from a table; ``reward_scale_g`` is the game's (:class:`~jaxsafe.offline.multigame.GameSpec`) and a
  dataset whose scaled returns do not fit the range is refused, naming the field.
* Actions index a shared set (the largest game's count; a game's invalid actions are masked at play).
* Rewards are the colab's classes: 0 none, 1 positive, 3 negative (2, terminal, is unused here).
* A learned position embedding over the ``K (P + 3)`` tokens of the window (no timestep table: MGDT has none).

The causal mask is relaxed so that the patches of one frame see each other (and nothing sees the future): the
core's blocks are called with per-query "last visible slot" indices, where a patch's is the last patch of its
frame. Heads: return-to-go logits at the last patch token of step ``k`` (it sees frame ``k`` and everything before,
not ``R_k``), action logits at the return token, reward logits at the action token; the loss is the mean of the
three cross-entropies over the window's real steps (``single_return_token``: only the first real step's return is
an input, the later return tokens are hidden from attention, and only it is a target).

Training windows: ``batch_size / G`` per game and update (equal weight per game), ending at a uniformly drawn step
and left-padded (masked) before the episode's start. AdamW with warm-up and global-norm clipping
(:func:`jaxsafe.offline.training.clipped_adamw_step`); :func:`make_train_parts` is the learner contract, so
``train(key, hparams)`` vmaps over seeds.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.nn.transformer import Dropout, Transformer, TransformerConfig, inverted_dropout
from jaxsafe.offline.multigame import MultiGameData
from jaxsafe.offline.training import ADAM, clipped_adamw_step, episode_table, tree_all_finite
from jaxsafe.validation import in_range, is_int, non_negative, positive, require

__all__ = ["NUM_REWARD_CLASSES", "MGDTHParams", "MGDTConfig", "MGDTModel", "MGDTState", "SuiteLayout",
           "suite_layout", "bin_returns", "unbin_returns", "reward_classes", "patchify", "relaxed_query_slots", "relaxed_core",
           "make_model", "prepare", "PreparedGames", "make_train_parts", "make_train", "forward_window"]

#: Reward classes (the official colab's): 0 none, 1 positive, 2 terminal (unused), 3 negative.
NUM_REWARD_CLASSES = 4


@struct.dataclass
class MGDTHParams(HParams):
    """Traced hyperparameters: AdamW ``learning_rate`` / ``weight_decay``, ``dropout`` (embeddings, attention and
    residual, in [0, 1)), the weights of the return and reward cross-entropies (the action's is 1)."""

    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    dropout: float = 0.0
    return_loss_weight: float = 1.0
    reward_loss_weight: float = 1.0

    rules = {"learning_rate": positive(), "weight_decay": non_negative(), "dropout": in_range(0.0, 0.99),
             "return_loss_weight": non_negative(), "reward_loss_weight": non_negative()}


@dataclasses.dataclass(frozen=True)
class MGDTConfig(Config):
    """Static settings (CPU-sized defaults; MGDT's own are d_model 1280, 10 layers, context 4).

    context_len: K steps; d_model, n_layers, n_heads (d_ff = 4 d_model); patch_size: image tiles (must divide the
    image's height and width); n_patches: pieces of a vector observation; return_low, return_high: the integer
    return-to-go bins (inclusive); single_return_token; batch_size (divisible by the number of games),
    num_updates, warmup_steps, max_grad_norm.
    """

    context_len: int = 4
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    patch_size: int = 5
    n_patches: int = 2
    return_low: int = -20
    return_high: int = 100
    single_return_token: bool = False
    batch_size: int = 64
    num_updates: int = 2000
    warmup_steps: int = 100
    max_grad_norm: float = 1.0

    def __post_init__(self):
        for name in ("context_len", "d_model", "n_layers", "n_heads", "patch_size", "n_patches", "batch_size",
                     "num_updates"):
            require(is_int(getattr(self, name)), f"MGDTConfig.{name}", "an integer >= 1", getattr(self, name))
        require(is_int(self.warmup_steps, 0), "MGDTConfig.warmup_steps", "an integer >= 0", self.warmup_steps)
        require(self.d_model % self.n_heads == 0, "MGDTConfig.d_model", f"divisible by n_heads={self.n_heads}",
                self.d_model)
        require(isinstance(self.return_low, int) and isinstance(self.return_high, int)
                and self.return_low < self.return_high, "MGDTConfig.return_high",
                f"an integer > return_low={self.return_low}", self.return_high)
        require(self.max_grad_norm > 0, "MGDTConfig.max_grad_norm", "a float > 0", self.max_grad_norm)

    @property
    def num_return_bins(self) -> int:
        """``return_high - return_low + 1`` (121 for MGDT's [-20, 100])."""
        return self.return_high - self.return_low + 1

    def default_hparams(self) -> MGDTHParams:
        return MGDTHParams().as_arrays()


# ----------------------------------------------------------------------------------------- tokenisation helpers


def bin_returns(returns, reward_scale, low: int, high: int):
    """Return-to-go bin indices ``clip(round(reward_scale * R), low, high) - low`` (int32, same shape)."""
    scaled = jnp.round(jnp.asarray(returns, jnp.float32) * reward_scale)
    return (jnp.clip(scaled, low, high) - low).astype(jnp.int32)


def unbin_returns(bins, reward_scale, low: int):
    """The returns a bin index stands for, ``(bin + low) / reward_scale`` (the inverse of :func:`bin_returns` on
    returns whose scaled value is an integer in the range)."""
    return (jnp.asarray(bins, jnp.float32) + low) / reward_scale


def reward_classes(rewards):
    """The colab's reward classes: 0 for ``r == 0``, 1 for ``r > 0``, 3 for ``r < 0`` (int32)."""
    rewards = jnp.asarray(rewards)
    return jnp.where(rewards > 0, 1, jnp.where(rewards < 0, 3, 0)).astype(jnp.int32)


class SuiteLayout(NamedTuple):
    """Shared shapes of a suite: the padded observation shape, patches ``P`` of ``patch_dim`` numbers, actions."""

    obs_shape: tuple
    image: bool
    n_patches: int
    patch_dim: int
    num_actions: int


def suite_layout(config: MGDTConfig, data: MultiGameData) -> SuiteLayout:
    """The shared layout of ``data``'s games under ``config``.

    Raises:
      ValueError: games mixing image and vector observations, images of different height/width, or a
        ``patch_size`` that does not divide them (the message names the field).
    """
    shapes = [tuple(np.shape(d.observations)[1:]) for d in data.datasets]
    image = len(shapes[0]) == 3
    for game, shape in zip(data.games, shapes):
        if (len(shape) == 3) != image or (image and shape[:2] != shapes[0][:2]) or (not image and len(shape) != 1):
            raise ValueError(f"datasets.observations: every game needs the same kind of observation (images of "
                             f"one height and width, or vectors); {data.games[0]} has {list(shapes[0])}, "
                             f"{game} has {list(shape)}")
    actions = max(data.num_actions)
    if image:
        height, width = shapes[0][:2]
        require(height % config.patch_size == 0 and width % config.patch_size == 0, "MGDTConfig.patch_size",
                f"a divisor of the image size {height}x{width}", config.patch_size)
        channels = max(s[2] for s in shapes)
        n = (height // config.patch_size) * (width // config.patch_size)
        return SuiteLayout((height, width, channels), True, n, config.patch_size ** 2 * channels, actions)
    length = max(s[0] for s in shapes)
    piece = -(-length // config.n_patches)
    return SuiteLayout((piece * config.n_patches,), False, config.n_patches, piece, actions)


def pad_observations(obs, layout: SuiteLayout):
    """``[..., *native]`` -> ``[..., *layout.obs_shape]`` float32, zero-padded (channels, or vector length)."""
    obs = jnp.asarray(obs, jnp.float32)
    missing = layout.obs_shape[-1] - obs.shape[-1]
    return jnp.pad(obs, [(0, 0)] * (obs.ndim - 1) + [(0, missing)])


def patchify(obs, layout: SuiteLayout, patch_size: int):
    """``[..., *layout.obs_shape]`` -> ``[..., P, patch_dim]`` (image tiles row-major, or vector pieces)."""
    lead = obs.shape[:-len(layout.obs_shape)]
    if not layout.image:
        return obs.reshape(lead + (layout.n_patches, layout.patch_dim))
    height, width, channels = layout.obs_shape
    rows, cols = height // patch_size, width // patch_size
    x = obs.reshape(lead + (rows, patch_size, cols, patch_size, channels))
    n = len(lead)
    x = jnp.moveaxis(x, n + 2, n + 1)  # [..., rows, cols, p, p, C]
    return x.reshape(lead + (rows * cols, layout.patch_dim))


def relaxed_query_slots(context_len: int, n_patches: int) -> np.ndarray:
    """``[K (P + 3)]`` the last key slot each query may see: a patch sees up to its frame's last patch, every other
    token up to itself (the core allows key ``s`` for query ``t`` when ``s <= slots[t]``)."""
    per_step = n_patches + 3
    slots = np.arange(context_len * per_step)
    within = slots % per_step
    last_patch = slots - within + n_patches - 1
    return np.where(within < n_patches, last_patch, slots).astype(np.int32)


def relaxed_core(core: Transformer, tokens, key_mask, query_slots, dropout: Dropout | None = None):
    """The shared core's blocks and final norm on ``tokens [B, T, D]`` with a relaxed causal mask: query ``t``
    sees the real keys ``s <= query_slots[t]`` (``query_slots = arange(T)`` is the core's own causal mask)."""
    batch, length, _ = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    x = tokens.astype(core.config.compute_dtype)
    for layer, block in enumerate(core.blocks):
        layer_drop = None if dropout is None else dropout._replace(key=jax.random.fold_in(dropout.key, layer))
        x, _ = block(x, positions, key_mask.astype(bool), query_slots, None, layer_drop)
    return core.final_norm(x)


# ----------------------------------------------------------------------------------------- model


class MGDTModel(nnx.Module):
    """Embeddings + the shared core (blocks called with the relaxed mask) + return, action and reward heads."""

    def __init__(self, config: MGDTConfig, layout: SuiteLayout, *, rngs: nnx.Rngs):
        d = config.d_model
        self.config, self.layout = config, layout
        self.embed_patch = nnx.Linear(layout.patch_dim, d, rngs=rngs)
        self.embed_patch_position = nnx.Embed(layout.n_patches, d, rngs=rngs)
        self.embed_return = nnx.Embed(config.num_return_bins, d, rngs=rngs)
        self.embed_action = nnx.Embed(layout.num_actions, d, rngs=rngs)
        self.embed_reward = nnx.Embed(NUM_REWARD_CLASSES, d, rngs=rngs)
        self.embed_position = nnx.Embed(config.context_len * (layout.n_patches + 3), d, rngs=rngs)
        self.core = Transformer(TransformerConfig(d_model=d, n_layers=config.n_layers, n_heads=config.n_heads,
                                                  d_ff=4 * d, max_seq_len=config.context_len * (layout.n_patches + 3),
                                                  block_style="gpt2"), rngs=rngs)
        self.return_head = nnx.Linear(d, config.num_return_bins, rngs=rngs)
        self.action_head = nnx.Linear(d, layout.num_actions, rngs=rngs)
        self.reward_head = nnx.Linear(d, NUM_REWARD_CLASSES, rngs=rngs)

    def __call__(self, patches, return_bins, actions, rewards, mask, dropout_key=None, dropout_rate=0.0):
        """``patches [B, K, P, patch_dim]``, ``return_bins``/``actions``/``rewards`` (classes) ``[B, K]`` int,
        ``mask [B, K]`` bool (real steps). Returns logits ``[B, K, bins]``, ``[B, K, actions]``, ``[B, K, 4]``."""
        cfg, n_patches = self.config, self.layout.n_patches
        batch, length = return_bins.shape
        obs_tokens = self.embed_patch(patches) + self.embed_patch_position(jnp.arange(n_patches))
        tokens = jnp.concatenate([obs_tokens, self.embed_return(return_bins)[:, :, None],
                                  self.embed_action(actions)[:, :, None], self.embed_reward(rewards)[:, :, None]],
                                 axis=2)  # [B, K, P + 3, D]
        per_step = n_patches + 3
        tokens = tokens.reshape(batch, length * per_step, -1) + self.embed_position(jnp.arange(length * per_step))
        key_mask = jnp.repeat(mask, per_step, axis=1)
        if cfg.single_return_token:
            first = mask & ~jnp.concatenate([jnp.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1)
            hide = jnp.zeros((batch, length, per_step), bool).at[:, :, n_patches].set(~first)
            key_mask = key_mask & ~hide.reshape(batch, -1)
        drop = None
        if dropout_key is not None:
            embed_key, core_key = jax.random.split(dropout_key)
            tokens = inverted_dropout(embed_key, tokens, dropout_rate)
            drop = Dropout(core_key, dropout_rate, dropout_rate)
        query_slots = jnp.asarray(relaxed_query_slots(length, n_patches))
        hidden = relaxed_core(self.core, tokens, key_mask, query_slots, drop).reshape(batch, length, per_step, -1)
        return (self.return_head(hidden[:, :, n_patches - 1]), self.action_head(hidden[:, :, n_patches]),
                self.reward_head(hidden[:, :, n_patches + 1]))


def make_model(config: MGDTConfig, layout: SuiteLayout):
    """``(graphdef, init_params)``: ``init_params(key) -> params`` (an ``nnx.State``), jit/vmap-able."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: MGDTModel(config, layout, rngs=nnx.Rngs(0))))

    def init_params(key):
        return nnx.split(MGDTModel(config, layout, rngs=nnx.Rngs(params=key)))[1]

    return graphdef, init_params


def forward_window(graphdef, params, config: MGDTConfig, layout: SuiteLayout, obs, return_bins, actions, rewards,
                   mask):
    """Logits of one unbatched window: ``obs [K, *layout.obs_shape]`` (padded), the rest ``[K]``."""
    model = nnx.merge(graphdef, params)
    patches = patchify(obs, layout, config.patch_size)
    out = model(patches[None], return_bins[None], actions[None], rewards[None], mask[None])
    return tuple(o[0] for o in out)


# ----------------------------------------------------------------------------------------- data and training


class PreparedGames(NamedTuple):
    """Per game (tuples over games): device arrays of native observations, actions, return bins, reward classes,
    and each step's episode start index."""

    layout: SuiteLayout
    observations: tuple
    actions: tuple
    return_bins: tuple
    rewards: tuple
    episode_starts: tuple
    reward_scales: tuple


def prepare(config: MGDTConfig, data: MultiGameData) -> PreparedGames:
    """Check ``data`` against ``config`` and put it on device (host side, before anything compiles).

    Raises:
      ValueError: no games, a game without episodes, mismatched observation shapes, or a game whose scaled
        returns-to-go fall outside ``[return_low, return_high]`` (names the field, the game and its range).
    """
    require(len(data.games) >= 1, "data.games", "at least one game", data.games)
    require(config.batch_size % len(data.games) == 0, "MGDTConfig.batch_size",
            f"a multiple of the number of games ({len(data.games)})", config.batch_size)
    layout = suite_layout(config, data)
    obs, actions, bins, rewards, starts, scales = [], [], [], [], [], []
    for game, dataset, n_actions in zip(data.games, data.datasets, data.num_actions):
        if dataset.num_steps == 0 or dataset.num_episodes == 0:
            raise ValueError(f"datasets: the dataset of {game!r} has no episodes")
        scale = data.spec(game).reward_scale
        scaled = np.round(np.asarray(dataset.returns_to_go, np.float64) * scale)
        if scaled.min() < config.return_low or scaled.max() > config.return_high:
            raise ValueError(f"MGDTConfig.return_low/return_high: the bins [{config.return_low}, "
                             f"{config.return_high}] cannot hold {game}'s returns-to-go x reward_scale {scale:g} "
                             f"(range [{scaled.min():g}, {scaled.max():g}]); widen the range or lower the game's "
                             f"reward_scale")
        act = np.asarray(dataset.actions).reshape(-1)
        if act.min() < 0 or act.max() >= n_actions:
            raise ValueError(f"datasets.actions: {game}'s actions must lie in [0, {n_actions}), got "
                             f"[{act.min()}, {act.max()}]")
        table = episode_table(dataset)
        obs.append(jnp.asarray(dataset.observations))
        actions.append(jnp.asarray(act, jnp.int32))
        bins.append(bin_returns(dataset.returns_to_go, scale, config.return_low, config.return_high))
        rewards.append(reward_classes(dataset.rewards))
        starts.append(jnp.asarray(np.repeat(table.starts, table.lengths), jnp.int32))
        scales.append(scale)
    return PreparedGames(layout, tuple(obs), tuple(actions), tuple(bins), tuple(rewards), tuple(starts),
                         tuple(scales))


def sample_windows(key, prepared: PreparedGames, config: MGDTConfig):
    """``per_game = batch_size / G`` windows per game, stacked: ``(patches [B, K, P, pd], return_bins, actions,
    rewards, mask [B, K])``, left-padded before each episode's start."""
    per_game = config.batch_size // len(prepared.observations)
    context = config.context_len
    out = []
    for game, game_key in enumerate(jax.random.split(key, len(prepared.observations))):
        n = prepared.actions[game].shape[0]
        ends = jax.random.randint(game_key, (per_game,), 0, n)
        index = ends[:, None] - context + 1 + jnp.arange(context)
        mask = index >= prepared.episode_starts[game][ends][:, None]
        index = jnp.where(mask, index, ends[:, None])
        obs = pad_observations(prepared.observations[game][index], prepared.layout)
        fields = [prepared.return_bins[game][index], prepared.actions[game][index], prepared.rewards[game][index]]
        fields = [jnp.where(mask, f, 0) for f in fields]
        out.append((patchify(obs, prepared.layout, config.patch_size), *fields, mask))
    return tuple(jnp.concatenate(parts) for parts in zip(*out))


def _cross_entropy(logits, labels, weight):
    return -((jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, logits.shape[-1])).sum(-1) * weight).sum()


class MGDTState(NamedTuple):
    params: nnx.State
    adam_state: tuple
    key: jax.Array
    step: jax.Array


def make_train_parts(config: MGDTConfig, data: MultiGameData) -> TrainParts:
    """MGDT on every game of ``data`` (one gradient step on ``batch_size`` windows per update)."""
    prepared = prepare(config, data)
    graphdef, init_params = make_model(config, prepared.layout)

    def init(key, hparams):
        init_key, key = jax.random.split(key)
        params = init_params(init_key)
        return MGDTState(params, ADAM.init(params), key, jnp.zeros((), jnp.int32))

    def loss_fn(params, hparams, batch, dropout_key):
        patches, bins, actions, rewards, mask = batch
        model = nnx.merge(graphdef, params)  # dropout is always drawn (a rate of 0 is the identity)
        return_logits, action_logits, reward_logits = model(patches, bins, actions, rewards, mask, dropout_key,
                                                            hparams.dropout)
        weight = mask.astype(jnp.float32) / mask.sum()
        return_weight = weight
        if config.single_return_token:
            first = mask & ~jnp.concatenate([jnp.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1)
            return_weight = first.astype(jnp.float32) / first.sum()
        action_ce = _cross_entropy(action_logits, actions, weight)
        return_ce = _cross_entropy(return_logits, bins, return_weight)
        reward_ce = _cross_entropy(reward_logits, rewards, weight)
        loss = (action_ce + hparams.return_loss_weight * return_ce + hparams.reward_loss_weight * reward_ce) / 3.0
        return loss, (action_ce, return_ce, reward_ce)

    def update(state, hparams):
        key, batch_key, dropout_key = jax.random.split(state.key, 3)
        batch = sample_windows(batch_key, prepared, config)
        (loss, (action_ce, return_ce, reward_ce)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, hparams, batch, dropout_key)
        warmup = jnp.minimum(1.0, (state.step + 1) / max(config.warmup_steps, 1))
        params, adam_state, grad_norm = clipped_adamw_step(grads, state.adam_state, state.params,
                                                           hparams.learning_rate * warmup, hparams.weight_decay,
                                                           config.max_grad_norm)
        metrics = {"loss": loss, "action_ce": action_ce, "return_ce": return_ce, "reward_ce": reward_ce,
                   "grad_norm": grad_norm, "nonfinite": ~(jnp.isfinite(loss) & tree_all_finite(params))}
        return MGDTState(params, adam_state, key, state.step + 1), metrics

    return TrainParts(init, update, config.num_updates, steps_per_update=config.batch_size)


make_train = make_train_from_parts(make_train_parts)
