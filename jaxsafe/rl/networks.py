"""Actor and critic factories (Flax linen; pure ``init``/``apply``).

The actor maps an observation to a distrax distribution: ``Categorical`` for discrete actions, a diagonal Gaussian
with a state-independent learned log standard deviation for continuous ones. Critics map an observation to a scalar
(or to one value per cost signal). Actor, reward critic and cost critic are separate networks (no shared torso), the
usual choice for PPO-Lagrangian.

``make_actor(..., policy="flipping")`` builds instead the state-dependent flipping policy of the flipping-based
CCMDP paper (Sec. 4.2; its Thm 2 says a two-point action distribution is optimal per state): a
:class:`FlippingActor` returning a :class:`FlippingMixture`, the two-component Gaussian mixture
``w(s) N(a1(s), diag s1^2) + (1 - w(s)) N(a2(s), diag s2^2)``, which becomes the binary flipping policy
"play a1(s) with probability w(s), else a2(s)" as the standard deviations go to zero.
"""

from __future__ import annotations

from typing import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}
#: Actor families for ``make_actor(policy=...)``; "gaussian" is the standard actor (Categorical on a
#: Discrete space), "flipping" the two-candidate mixture (Box spaces only).
POLICIES = ("gaussian", "flipping")
#: Observation torsos before the MLP (``torso=...`` of the actors, critics and ``PPOConfig``): "mlp" feeds vector
#: observations to the MLP as they are; "flatten" and "conv" take image observations ``[..., H, W, C]`` (MinAtar)
#: and flatten them, "conv" after one 3x3 convolution with 16 channels and a ReLU (PureJaxRL's MinAtar network).
TORSOS = ("mlp", "flatten", "conv")


class ImageTorso(nn.Module):
    """``[..., H, W, C] -> [..., features]``: "flatten" the image, or "conv" (3x3, 16 channels, ReLU) then flatten."""

    kind: str = "flatten"

    @nn.compact
    def __call__(self, obs):
        if self.kind not in ("flatten", "conv"):
            raise ValueError(f"torso must be one of {TORSOS[1:]} for image observations, got {self.kind!r}")
        if obs.ndim < 3:
            raise ValueError(f"torso={self.kind!r} needs image observations [..., H, W, C], got shape {obs.shape}")
        x = obs.astype(jnp.float32)
        if self.kind == "conv":
            x = nn.relu(nn.Conv(16, (3, 3), padding="SAME", kernel_init=nn.initializers.orthogonal(np.sqrt(2.0)),
                                bias_init=nn.initializers.zeros)(x))
        return x.reshape(x.shape[:-3] + (-1,))


def _features(obs, torso: str):
    return obs if torso == "mlp" else ImageTorso(torso)(obs)


def _dense(features: int, scale: float) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros)


class MLP(nn.Module):
    hidden: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = ACTIVATIONS[self.activation](_dense(width, np.sqrt(2.0))(x))
        return x


class Critic(nn.Module):
    """A value head: ``[..., obs_dim] -> [...]``, or ``[..., num_outputs]`` with ``num_outputs`` set (one value per
    cost signal: the cost critic of an environment with several costs)."""

    hidden: Sequence[int]
    activation: str = "tanh"
    num_outputs: int | None = None
    torso: str = "mlp"

    @nn.compact
    def __call__(self, obs):
        values = _dense(self.num_outputs or 1, 1.0)(MLP(self.hidden, self.activation)(_features(obs, self.torso)))
        return values[..., 0] if self.num_outputs is None else values


class DiscreteActor(nn.Module):
    num_actions: int
    hidden: Sequence[int]
    activation: str = "tanh"
    torso: str = "mlp"

    @nn.compact
    def __call__(self, obs):
        logits = _dense(self.num_actions, 0.01)(MLP(self.hidden, self.activation)(_features(obs, self.torso)))
        return distrax.Categorical(logits=logits)


class GaussianActor(nn.Module):
    action_dim: int
    hidden: Sequence[int]
    activation: str = "tanh"
    initial_log_std: float = 0.0
    torso: str = "mlp"

    @nn.compact
    def __call__(self, obs):
        mean = _dense(self.action_dim, 0.01)(MLP(self.hidden, self.activation)(_features(obs, self.torso)))
        log_std = self.param("log_std", nn.initializers.constant(self.initial_log_std), (self.action_dim,))
        return distrax.MultivariateNormalDiag(mean, jnp.exp(log_std) * jnp.ones_like(mean))


_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))


class FlippingMixture(distrax.Distribution):
    """Two-component diagonal Gaussian mixture ``w N(a1, diag s1^2) + (1 - w) N(a2, diag s2^2)``.

    The state-dependent flipping policy (flipping-based CCMDP paper, Sec. 4.2): a coin with probability ``w`` of
    heads picks candidate ``a1``, tails picks ``a2``, and Gaussian noise is added to the picked candidate. As the
    scales go to zero it becomes the binary flipping policy of the paper's Thm 2.

    Args:
      candidates: ``[..., 2, D]`` component means (``candidates[..., 0, :]`` is ``a1``).
      scales: component standard deviations, broadcastable to ``candidates`` (> 0).
      weight_logit: ``[...]`` logit of ``w``, the probability of candidate ``a1``.

    ``sample`` and ``log_prob`` are exact (``log_prob`` is the mixture log-density, a logsumexp over the two
    components). A mixture has no closed-form entropy or KL divergence, so :meth:`entropy` and :meth:`kl_divergence`
    return those of the *joint* law of (component, action); see their docstrings for why these are upper bounds
    and why they are what the learners need. :meth:`mode` returns the mean of the more likely component (a
    "deterministic" action for evaluation; it is not the mixture's density maximum). :meth:`flip` returns
    ``(a1, a2, w)`` for analysis.
    """

    def __init__(self, candidates, scales, weight_logit):
        candidates = jnp.asarray(candidates)
        if candidates.ndim < 2 or candidates.shape[-2] != 2:
            raise ValueError(f"candidates must have shape [..., 2, D], got {candidates.shape}")
        weight_logit = jnp.asarray(weight_logit)
        if weight_logit.shape != candidates.shape[:-2]:
            raise ValueError(f"weight_logit must have the batch shape {candidates.shape[:-2]}, "
                             f"got {weight_logit.shape}")
        self._candidates = candidates
        self._scales = jnp.broadcast_to(jnp.asarray(scales, candidates.dtype), candidates.shape)
        self._weight_logit = weight_logit

    # --- parameters -------------------------------------------------------------------------------------------
    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self._candidates.shape[-1:])

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self._candidates.shape[:-2])

    @property
    def candidates(self) -> jnp.ndarray:
        """``[..., 2, D]`` the two candidate actions (component means)."""
        return self._candidates

    @property
    def scales(self) -> jnp.ndarray:
        """``[..., 2, D]`` the component standard deviations."""
        return self._scales

    @property
    def weight_logit(self) -> jnp.ndarray:
        return self._weight_logit

    @property
    def weight(self) -> jnp.ndarray:
        """``[...]`` ``w``, the probability that the coin picks candidate ``a1``."""
        return jax.nn.sigmoid(self._weight_logit)

    @property
    def log_weights(self) -> jnp.ndarray:
        """``[..., 2]`` ``(log w, log(1 - w))``, computed stably from the logit."""
        return jnp.stack([jax.nn.log_sigmoid(self._weight_logit), jax.nn.log_sigmoid(-self._weight_logit)], -1)

    def flip(self) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """``(a1 [..., D], a2 [..., D], w [...])``: the flipping policy this mixture tends to as the scales vanish."""
        return self._candidates[..., 0, :], self._candidates[..., 1, :], self.weight

    # --- distribution -----------------------------------------------------------------------------------------
    def _sample_n(self, key, n: int):
        coin_key, noise_key = jax.random.split(key)
        heads = jax.random.bernoulli(coin_key, self.weight, (n,) + self.batch_shape)
        noisy = self._candidates + self._scales * jax.random.normal(noise_key, (n,) + self._candidates.shape)
        return jnp.where(heads[..., None], noisy[..., 0, :], noisy[..., 1, :])

    def component_log_prob(self, value) -> jnp.ndarray:
        """``[..., 2]`` the log-density of ``value`` (``[..., D]``) under each component."""
        z = (jnp.asarray(value)[..., None, :] - self._candidates) / self._scales
        return jnp.sum(-0.5 * z**2 - jnp.log(self._scales) - _HALF_LOG_2PI, axis=-1)

    def log_prob(self, value) -> jnp.ndarray:
        """Exact mixture log-density ``log(w N(value; a1, s1) + (1 - w) N(value; a2, s2))``, ``[...]``."""
        return jax.nn.logsumexp(self.log_weights + self.component_log_prob(value), axis=-1)

    def mode(self) -> jnp.ndarray:
        """The candidate of the more likely component (``a1`` when ``w >= 1/2``), ``[..., D]``.

        This is the "deterministic" action used for evaluation: the flipping policy's most likely action as the
        scales vanish. It is not the mixture's global density maximum, and acting with it drops the coin, so a
        deterministic evaluation of a flipping policy does not have the cost of the stochastic one.
        """
        return jnp.where((self.weight >= 0.5)[..., None], self._candidates[..., 0, :], self._candidates[..., 1, :])

    def mean(self) -> jnp.ndarray:
        """``w a1 + (1 - w) a2``, ``[..., D]``."""
        return jnp.sum(jnp.exp(self.log_weights)[..., None] * self._candidates, axis=-2)

    def _component_entropy(self) -> jnp.ndarray:
        return jnp.sum(0.5 + _HALF_LOG_2PI + jnp.log(self._scales), axis=-1)  # [..., 2]

    def entropy(self) -> jnp.ndarray:
        """Entropy of the joint law of (component k, action a): ``H(w) + sum_k w_k H(N_k)``, ``[...]`` nats.

        By the chain rule ``H(K, A) = H(A) + H(K | A) >= H(A)``: an upper bound on the mixture's entropy, tight when
        the components do not overlap (the limit of a flipping policy). As an entropy bonus it also rewards the
        coin's own entropy ``H(w)``, i.e. it pulls ``w`` towards 1/2.
        """
        log_weights = self.log_weights
        weights = jnp.exp(log_weights)
        return -jnp.sum(weights * log_weights, axis=-1) + jnp.sum(weights * self._component_entropy(), axis=-1)

    def kl_divergence(self, other_dist, **kwargs) -> jnp.ndarray:
        """KL of the joint laws of (component, action): ``KL(w || w') + sum_k w_k KL(N_k || N'_k)``, ``[...]``.

        By the chain rule (equivalently the log-sum inequality) this upper-bounds ``KL(p || p')`` of the two mixtures,
        with equality when the components do not overlap. Used as the trust-region divergence it makes the region
        conservative (a step within the bound is within the true KL), and it is zero with zero gradient at
        ``p' = p`` with a positive semi-definite Hessian there: the Fisher matrix of the joint (component, action)
        model, which the trust-region learners use for their Fisher-vector products.
        """
        del kwargs
        if not isinstance(other_dist, FlippingMixture):
            raise TypeError(f"FlippingMixture.kl_divergence needs another FlippingMixture, got {type(other_dist)}")
        log_weights, other_log_weights = self.log_weights, other_dist.log_weights
        weights = jnp.exp(log_weights)
        coin_kl = jnp.sum(weights * (log_weights - other_log_weights), axis=-1)
        scale_ratio = self._scales / other_dist.scales
        gaussian_kl = jnp.sum(
            0.5 * (scale_ratio**2 + ((self._candidates - other_dist.candidates) / other_dist.scales) ** 2 - 1.0)
            - jnp.log(scale_ratio),
            axis=-1,
        )  # [..., 2]
        return coin_kl + jnp.sum(weights * gaussian_kl, axis=-1)


class FlippingActor(nn.Module):
    """The state-dependent flipping policy for a ``Box`` action space: obs -> :class:`FlippingMixture`.

    A shared MLP torso feeds three heads: ``candidate_1`` and ``candidate_2`` (the actions ``a1(s)``, ``a2(s)``)
    and ``coin`` (the logit of ``w(s)``, the probability of ``a1``). The log standard deviations are learned,
    state-independent, one per candidate and action component (``log_std``, shape ``[2, D]``), clipped to
    ``[log min_std, log max_std]`` when those are set.

    The candidate heads start at ``+candidate_offset`` and ``-candidate_offset`` (their biases): each component's
    mean follows, in expectation, the policy gradient of its own expected (penalised) return, so two candidates
    that start equal follow the same path and never split; starting them apart lets them settle in different
    local optima, the flip the coin then mixes. Their kernels start small (orthogonal, scale 0.01) and
    independently drawn, so ``a1(s) - a2(s)`` also varies with the state.
    """

    action_dim: int
    hidden: Sequence[int]
    activation: str = "tanh"
    initial_log_std: float = 0.0
    candidate_offset: float = 0.5
    min_std: float | None = None
    max_std: float | None = None

    @nn.compact
    def __call__(self, obs):
        torso = MLP(self.hidden, self.activation)(obs)
        orthogonal = nn.initializers.orthogonal(0.01)
        first = nn.Dense(self.action_dim, kernel_init=orthogonal,
                         bias_init=nn.initializers.constant(self.candidate_offset), name="candidate_1")(torso)
        second = nn.Dense(self.action_dim, kernel_init=orthogonal,
                          bias_init=nn.initializers.constant(-self.candidate_offset), name="candidate_2")(torso)
        weight_logit = nn.Dense(1, kernel_init=orthogonal, bias_init=nn.initializers.zeros, name="coin")(torso)
        log_std = self.param("log_std", nn.initializers.constant(self.initial_log_std), (2, self.action_dim))
        if self.min_std is not None or self.max_std is not None:
            low = -jnp.inf if self.min_std is None else np.log(self.min_std)
            high = jnp.inf if self.max_std is None else np.log(self.max_std)
            log_std = jnp.clip(log_std, low, high)
        candidates = jnp.stack([first, second], axis=-2)
        return FlippingMixture(candidates, jnp.exp(log_std) * jnp.ones_like(candidates), weight_logit[..., 0])


def make_actor(action_space, hidden: Sequence[int], activation: str = "tanh", policy: str = "gaussian",
               torso: str = "mlp") -> nn.Module:
    """The actor for a gymnax ``Discrete`` or ``Box`` action space.

    ``policy``: ``"gaussian"`` (the standard actor: Categorical on a ``Discrete`` space, diagonal Gaussian on a
    ``Box``) or ``"flipping"`` (:class:`FlippingActor`, ``Box`` only). ``torso``: one of :data:`TORSOS` ("mlp"
    for vector observations; "flatten" / "conv" for images; the flipping actor takes "mlp" only).

    Raises:
      ValueError: an unknown ``policy``, ``"flipping"`` on a non-``Box`` space, or an unsupported space.
    """
    from gymnax.environments import spaces

    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    if torso not in TORSOS or (policy == "flipping" and torso != "mlp"):
        raise ValueError(f"torso must be one of {list(TORSOS)} ('mlp' for policy='flipping'), got {torso!r}")
    if policy == "flipping":
        if not isinstance(action_space, spaces.Box):
            raise ValueError(f"policy='flipping' needs a Box action space, got {action_space!r}; "
                             f"use policy='gaussian' for Discrete actions")
        return FlippingActor(int(np.prod(action_space.shape)), tuple(hidden), activation)
    if isinstance(action_space, spaces.Discrete):
        return DiscreteActor(int(action_space.n), tuple(hidden), activation, torso=torso)
    if isinstance(action_space, spaces.Box):
        return GaussianActor(int(np.prod(action_space.shape)), tuple(hidden), activation, torso=torso)
    raise ValueError(f"unsupported action space {action_space!r}; expected Discrete or Box")
