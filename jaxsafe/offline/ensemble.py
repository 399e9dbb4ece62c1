"""A probabilistic ensemble dynamics model: Gaussian MLPs with mean and log-variance heads, trained by NLL.

The learned model a user would reach for beside OGSRL's 1-nearest-neighbour lookup (PETS, Chua et al. 2018; MBPO,
Janner et al. 2019; MOPO, Yu et al. 2020 use the same construction). Each of ``num_members`` MLPs maps an input
``x [D_in]`` to a diagonal Gaussian over the target ``y [D_out]`` and, optionally, to logits over ``num_classes``
discrete outcomes (OGSRL: continue / death / discharge)::

    config = EnsembleConfig(num_members=5, hidden=(64, 64))
    model, history = fit_ensemble(key, config, inputs, targets, labels)     # vmapped over members
    mean, log_var, logits = predict(model, inputs)                          # [M, N, D_out], ..., [M, N, C]
    y, label, member = sample(model, key, inputs[0])                       # one member drawn per call
    disagreement(model, inputs)                                             # [N] spread of the member means

* Loss per member: the Gaussian negative log-likelihood :func:`gaussian_nll` (in targets standardised with the
  training set's mean and standard deviation) plus, with classes, the cross-entropy of the labels. The log-variance
  is kept inside ``[min_log_var, max_log_var]`` by softplus bounds (PETS), so a member cannot buy likelihood with
  a vanishing variance.
* Members differ by their initialisation, their bootstrap resample of the data (``bootstrap=True``) and their
  minibatch order. Training is :func:`fit_member` for one member; :func:`fit_ensemble` is ``vmap`` of it over
  member keys (so member ``i`` equals ``fit_member(split(key, M)[i], ...)``; the tests check it).
* :func:`disagreement`: the norm of the per-dimension standard deviation of the member means (in standardised
  target units), the epistemic signal MOPO-style penalties use. OGSRL's guardian is the KDE, so OGSRL only reports
  it (``info["disagreement"]`` of the model env); nothing is penalised with it.

Bad configuration raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.offline.training import clipped_adamw_step
from jaxsafe.offline.training import ADAM
from jaxsafe.rl.networks import MLP
from jaxsafe.validation import is_int, require

__all__ = ["EnsembleConfig", "EnsembleModel", "GaussianMLP", "gaussian_nll", "ensemble_loss", "fit_member",
           "fit_ensemble", "predict", "sample", "disagreement"]


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """Static settings of the ensemble (CPU-sized defaults; PETS uses 5-7 members of 200-unit layers)."""

    num_members: int = 5
    hidden: tuple = (64, 64)
    activation: str = "silu"
    num_updates: int = 2000
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    min_log_var: float = -10.0
    max_log_var: float = 0.5
    bootstrap: bool = True

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(self.hidden))
        require(is_int(self.num_members), "EnsembleConfig.num_members", "an integer >= 1", self.num_members)
        require(bool(self.hidden) and all(is_int(w) for w in self.hidden), "EnsembleConfig.hidden",
                "a non-empty tuple of positive integers", self.hidden)
        require(self.activation in ("tanh", "relu", "gelu", "silu"), "EnsembleConfig.activation",
                "one of 'tanh', 'relu', 'gelu', 'silu'", self.activation)
        require(is_int(self.num_updates), "EnsembleConfig.num_updates", "an integer >= 1", self.num_updates)
        require(is_int(self.batch_size), "EnsembleConfig.batch_size", "an integer >= 1", self.batch_size)
        require(self.learning_rate > 0, "EnsembleConfig.learning_rate", "> 0", self.learning_rate)
        require(self.weight_decay >= 0, "EnsembleConfig.weight_decay", ">= 0", self.weight_decay)
        require(self.min_log_var < self.max_log_var, "EnsembleConfig.min_log_var",
                f"below max_log_var ({self.max_log_var})", self.min_log_var)


class GaussianMLP(nn.Module):
    """``[..., D_in] -> (mean [..., D_out], log_var [..., D_out], logits [..., C])`` (``C = 0``: empty logits)."""

    output_dim: int
    num_classes: int
    hidden: Sequence[int]
    activation: str
    min_log_var: float
    max_log_var: float

    @nn.compact
    def __call__(self, x):
        h = MLP(self.hidden, self.activation)(x)
        mean = nn.Dense(self.output_dim)(h)
        raw = nn.Dense(self.output_dim)(h)
        # Softplus bounds (PETS): smooth, and the gradient never vanishes at a hard clip.
        log_var = self.max_log_var - jax.nn.softplus(self.max_log_var - raw)
        log_var = self.min_log_var + jax.nn.softplus(log_var - self.min_log_var)
        logits = nn.Dense(self.num_classes)(h) if self.num_classes else jnp.zeros(x.shape[:-1] + (0,))
        return mean, log_var, logits


class EnsembleModel(NamedTuple):
    """A fitted ensemble: member parameters stacked on a leading ``[M]`` axis, and the target standardisation."""

    params: Any
    target_mean: jax.Array  # [D_out]
    target_std: jax.Array  # [D_out]
    config: EnsembleConfig
    output_dim: int
    num_classes: int

    def network(self) -> GaussianMLP:
        return _network(self.config, self.output_dim, self.num_classes)


def _network(config: EnsembleConfig, output_dim: int, num_classes: int) -> GaussianMLP:
    return GaussianMLP(output_dim, num_classes, config.hidden, config.activation, config.min_log_var,
                       config.max_log_var)


def gaussian_nll(mean, log_var, target) -> jax.Array:
    """Mean over the batch of ``-log N(target; mean, diag(exp(log_var)))``: all ``[N, D]`` (or ``[D]``)::

        0.5 * sum_d [ (target_d - mean_d)^2 exp(-log_var_d) + log_var_d + log(2 pi) ]
    """
    per_dim = (target - mean) ** 2 * jnp.exp(-log_var) + log_var + math.log(2.0 * math.pi)
    return 0.5 * jnp.mean(jnp.sum(jnp.atleast_2d(per_dim), -1))


def ensemble_loss(network: GaussianMLP, params, inputs, targets, labels=None) -> tuple[jax.Array, dict]:
    """One member's loss on a batch: :func:`gaussian_nll` (+ the labels' cross-entropy with classes)."""
    mean, log_var, logits = network.apply(params, inputs)
    nll = gaussian_nll(mean, log_var, targets)
    if labels is None or network.num_classes == 0:
        return nll, {"nll": nll, "cross_entropy": jnp.zeros(())}
    log_probs = jax.nn.log_softmax(logits)
    cross_entropy = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))
    return nll + cross_entropy, {"nll": nll, "cross_entropy": cross_entropy}


def _standardisation(targets):
    targets = jnp.asarray(targets, jnp.float32)
    return targets.mean(0), jnp.maximum(targets.std(0), 1e-6)


def _check_data(inputs, targets, labels, num_classes):
    inputs, targets = np.shape(inputs), np.shape(targets)
    if len(inputs) != 2 or len(targets) != 2 or inputs[0] != targets[0] or inputs[0] < 1:
        raise ValueError(f"ensemble: inputs [N, D_in] and targets [N, D_out] with the same N >= 1 are needed, got "
                         f"inputs {inputs} and targets {targets}")
    if (labels is None) != (num_classes == 0):
        raise ValueError(f"ensemble: labels must be given exactly when num_classes > 0 (got num_classes="
                         f"{num_classes} and labels {'None' if labels is None else np.shape(labels)})")
    if labels is not None and np.shape(labels) != (inputs[0],):
        raise ValueError(f"ensemble: labels must be [N] = [{inputs[0]}] integers, got {np.shape(labels)}")


def fit_member(key, config: EnsembleConfig, inputs, targets, labels=None, num_classes: int = 0):
    """Train one Gaussian MLP: ``(params, history {"nll", "cross_entropy"} [num_updates])``.

    Targets are standardised with the full training set's statistics (the same for every member). ``key`` draws
    the initialisation, the bootstrap resample (``config.bootstrap``) and the minibatches.
    """
    inputs, targets = jnp.asarray(inputs, jnp.float32), jnp.asarray(targets, jnp.float32)
    mean, std = _standardisation(targets)
    standardised = (targets - mean) / std
    labels = None if labels is None else jnp.asarray(labels, jnp.int32)
    network = _network(config, targets.shape[1], num_classes)
    init_key, boot_key, batch_key = jax.random.split(key, 3)
    params = network.init(init_key, inputs[:1])
    n = inputs.shape[0]
    pool = jax.random.randint(boot_key, (n,), 0, n) if config.bootstrap else jnp.arange(n)

    def step(carry, step_key):
        params, adam_state = carry
        index = pool[jax.random.randint(step_key, (config.batch_size,), 0, n)]
        batch_labels = None if labels is None else labels[index]
        (_, parts), grads = jax.value_and_grad(
            lambda p: ensemble_loss(network, p, inputs[index], standardised[index], batch_labels), has_aux=True)(params)
        params, adam_state, _ = clipped_adamw_step(grads, adam_state, params, config.learning_rate,
                                                   config.weight_decay)
        return (params, adam_state), parts

    (params, _), history = jax.lax.scan(step, (params, ADAM.init(params)),
                                        jax.random.split(batch_key, config.num_updates))
    return params, history


def fit_ensemble(key, config: EnsembleConfig, inputs, targets, labels=None, num_classes: int = 0):
    """``(EnsembleModel, history [M, num_updates])``: :func:`fit_member` vmapped over ``split(key, M)``."""
    _check_data(inputs, targets, labels, num_classes)
    keys = jax.random.split(key, config.num_members)
    fit = jax.jit(jax.vmap(lambda k: fit_member(k, config, inputs, targets, labels, num_classes)))
    params, history = fit(keys)
    mean, std = _standardisation(targets)
    return EnsembleModel(params, mean, std, config, int(np.shape(targets)[1]), int(num_classes)), history


def predict(model: EnsembleModel, inputs):
    """Every member's prediction in target units: ``mean [M, N, D]``, ``log_var [M, N, D]``, ``logits [M, N, C]``
    (``inputs [N, D_in]``; a single ``[D_in]`` input gives ``[M, D]`` etc.)."""
    network = model.network()
    mean, log_var, logits = jax.vmap(lambda p: network.apply(p, jnp.asarray(inputs, jnp.float32)))(model.params)
    return mean * model.target_std + model.target_mean, log_var + 2.0 * jnp.log(model.target_std), logits


def sample(model: EnsembleModel, key, inputs):
    """One draw for one input ``[D_in]``: a member ``m`` uniformly at random, ``y ~ N(mean_m, var_m)`` and (with
    classes) a label from member ``m``'s softmax. Returns ``(y [D_out], label int32 (0 without classes), m)``."""
    k_member, k_noise, k_label = jax.random.split(key, 3)
    mean, log_var, logits = predict(model, inputs)
    member = jax.random.randint(k_member, (), 0, model.config.num_members)
    y = mean[member] + jnp.exp(0.5 * log_var[member]) * jax.random.normal(k_noise, mean.shape[1:])
    label = (jax.random.categorical(k_label, logits[member]) if model.num_classes
             else jnp.zeros((), jnp.int32)).astype(jnp.int32)
    return y, label, member


def disagreement(model: EnsembleModel, inputs) -> jax.Array:
    """``[N]`` (or ``()`` for one input): ``|std over members of the member means|_2`` in standardised units."""
    mean, _, _ = predict(model, inputs)
    return jnp.linalg.norm(jnp.std(mean / model.target_std, axis=0), axis=-1)
