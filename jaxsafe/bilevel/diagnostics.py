"""Hypergradient quality at a fixed leader parameter: where an estimator's error comes from.

At a fixed ``x`` of a configurable MDP everything exact is available (the follower's soft-optimal ``Q_F``, its
implicit Jacobian ``d_x Q_F [S, A, d]``, the leader's exact ``Q_L``, ``V_L``, ``A_L`` and the exact
hypergradient ``g*``), so one estimator can be rebuilt with its ingredients swapped one at a time between exact
and estimated, and each version evaluated over many independent batches of ``N`` follower transitions:

``exact_all``        direct term + ``(1/lambda) sum_t w_t dQ*_F(s_t, a_t) A*_L(s_t, a_t)``: only the sampled
                     ``(s, a)`` are random: the covariance term's own variance (BC-HG); for HPGD the score
                     ``(dQ*_F - dV*_F)`` times ``Q*_L``.
``exact_critic``     ``d_x Q_F`` estimated from the batch (every-visit Monte Carlo), exact leader critic.
``sarsa_cold``       the SARSA critic from zero on this batch only (a leader that forgets its critic).
``sarsa_warm``       the SARSA critic after ``warm_batches`` earlier independent batches at the same ``x`` (the
                     carried critic of a slowly moving leader), then this batch: what the benchmark's runs use.
``sarsa_warm_k``     the same, with ``critic_epochs`` passes over each batch (more critic steps).
``sarsa_split``      the warm critic from the earlier batches only: this batch estimates ``d_x Q_F`` and is
                     *not* used by the critic before the step (sample splitting: the critic's error is then
                     independent of this batch's returns).
``sarsa_averaged``   ``sarsa_warm`` with :func:`~jaxsafe.bilevel.bchg.sarsa_averaged` (step ``max(lr, 1/n)``: no
                     pull of rarely visited pairs towards the zero start).
``follower_k``       ``sarsa_warm`` ingredients, but the follower ran only ``follower_backups`` soft-Q backups from
                     the exact ``Q_F`` of ``x_prev`` (a partly converged follower; ``g*`` stays the exact one).

:func:`gradient_quality` returns, per variant, the per-batch estimates' cosine to ``g*`` (mean and its standard
error), the cosine of their mean (bias direction), the relative bias ``|E g - g*| / |g*|``, the relative variance
``E|g - E g|^2 / |g*|^2`` and the expected ascent of the clipped step ``E[g* . clip(g)] / |g*|`` (what the leader's
clipped SGD step gains to first order).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsafe.bilevel import bchg, exact, followers
from jaxsafe.bilevel.followers import MDPValueParams
from jaxsafe.bilevel.train import visited_advantages
from jaxsafe.exact import tabular

Array = jax.Array

VARIANTS = ("exact_all", "exact_critic", "sarsa_cold", "sarsa_warm", "sarsa_warm_k", "sarsa_split", "sarsa_averaged",
            "follower_k")
ESTIMATORS = ("bchg", "hpgd")


class ExactIngredients(NamedTuple):
    """Everything exact at one ``x``: ``follower_q, policy [S, A]``, ``grad_q [S, A, d]``, ``grad_v [S, d]``
    (``E_pi grad_q``), ``leader_q, leader_advantage [S, A]``, ``leader_v [S]``, ``follower_value [S]`` and the
    exact hypergradient ``oracle [d]``."""

    follower_q: Array
    policy: Array
    grad_q: Array
    grad_v: Array
    leader_q: Array
    leader_advantage: Array
    leader_v: Array
    follower_value: Array
    oracle: Array


def exact_ingredients(problem, x: Array, temperature, follower_gamma, leader_gamma) -> ExactIngredients:
    """The exact follower, its Jacobian ``d_x Q_F`` (implicit differentiation), the leader critic and ``g*``."""
    follower_q = exact.mdp_follower_q(problem, x, temperature, follower_gamma)
    grad_q = jax.jacfwd(lambda p: exact.mdp_follower_q(problem, p, temperature, follower_gamma, follower_q))(x)
    policy = tabular.soft_policy(follower_q, temperature)
    grad_v = jnp.einsum("sa,sad->sd", policy, grad_q)
    rewards = problem.leader_reward_fn(x)
    transitions = problem.transition_fn(x)
    leader_v = tabular.policy_evaluation(policy, rewards, transitions, leader_gamma)
    leader_q = tabular.action_values(leader_v, rewards, transitions, leader_gamma)
    _, oracle = exact.mdp_exact_hypergradient(problem, x, temperature, follower_gamma, leader_gamma, follower_q)
    value_params = MDPValueParams(jnp.asarray(temperature, jnp.float32), jnp.asarray(problem.live, jnp.float32))
    return ExactIngredients(follower_q, policy, grad_q, grad_v, leader_q, leader_q - leader_v[:, None], leader_v,
                            followers.mdp_soft_value(follower_q, value_params), oracle)


def _estimates(problem, x, ing: ExactIngredients, batch, leader_q, visits, temperature, follower_gamma,
               leader_gamma, exact_inputs: bool, policy) -> dict:
    """BC-HG and HPGD from one batch: ``exact_inputs`` uses ``d Q*_F`` and the exact leader critic."""
    if exact_inputs:
        advantage, leader_v, q_table = ing.leader_advantage, ing.leader_v, ing.leader_q
    elif leader_q is None:  # exact critic, estimated d Q_F
        advantage, leader_v, q_table = ing.leader_advantage, ing.leader_v, ing.leader_q
    else:
        advantage, leader_v = visited_advantages(leader_q, visits, policy)
        q_table = leader_q
    terms = bchg.mdp_gradient_terms(problem, x, batch, ing.follower_value, leader_v[batch.next_state],
                                    follower_gamma, leader_gamma)
    if exact_inputs:
        terms = terms._replace(grad_q=ing.grad_q[batch.state, batch.action], grad_v=ing.grad_v[batch.state])
    sa = (batch.state, batch.action)
    return {"bchg": bchg.bchg_mdp_gradient(terms, advantage[sa], temperature),
            "hpgd": terms.direct + terms.leader_transition + jnp.einsum(
                "n,nd->d", terms.weights * q_table[sa], (terms.grad_q - terms.grad_v) / temperature)}


def _sarsa_epochs(key, leader_q, batch, rewards, leader_gamma, critic_lr, epochs):
    for k in jax.random.split(key, epochs):
        leader_q = bchg.sarsa(k, leader_q, batch, rewards, leader_gamma, critic_lr)
    return leader_q


def batch_estimates(problem, x: Array, ing: ExactIngredients, key: Array, num_samples: int, temperature,
                    follower_gamma, leader_gamma, critic_lr, warm_batches: int = 10, critic_epochs: int = 3,
                    follower_q_partial: Array | None = None, max_episode_steps: int = 0) -> dict:
    """Every variant's BC-HG and HPGD estimate ``[d]`` from one independent draw (``{variant: {est: g}}``)."""
    live = jnp.asarray(problem.live)
    initial = jnp.asarray(problem.initial)
    limit = max_episode_steps or problem.max_episode_steps
    transitions = problem.transition_fn(x)
    reward_table = problem.leader_reward_fn(x)
    num_states, num_actions = ing.policy.shape
    batch_key, cold_key, warm_key, follower_key = jax.random.split(key, 4)

    def draw(k, policy):
        return bchg.sample_batch(k, policy, transitions, initial, live, num_samples, limit)

    batch = draw(batch_key, ing.policy)
    rewards = reward_table[batch.state, batch.action]
    out = {"exact_all": _estimates(problem, x, ing, batch, None, None, temperature, follower_gamma, leader_gamma,
                                   True, ing.policy),
           "exact_critic": _estimates(problem, x, ing, batch, None, None, temperature, follower_gamma,
                                      leader_gamma, False, ing.policy)}
    zeros = jnp.zeros((num_states, num_actions), jnp.float32)

    def visits_of(b, v):
        return v.at[b.state, b.action].add(1.0)

    cold_q = bchg.sarsa(cold_key, zeros, batch, rewards, leader_gamma, critic_lr)
    out["sarsa_cold"] = _estimates(problem, x, ing, batch, cold_q, visits_of(batch, zeros), temperature,
                                   follower_gamma, leader_gamma, False, ing.policy)

    def warm_averaged(key, final_batch):
        def body(carry, k):
            q, n = carry
            b_key, s_key = jax.random.split(k)
            b = draw(b_key, ing.policy)
            return bchg.sarsa_averaged(s_key, q, n, b, reward_table[b.state, b.action], leader_gamma,
                                       critic_lr), None

        (q, n), _ = jax.lax.scan(body, (zeros, zeros), jax.random.split(key, warm_batches))
        return bchg.sarsa_averaged(jax.random.fold_in(key, 1), q, n, final_batch,
                                   reward_table[final_batch.state, final_batch.action], leader_gamma, critic_lr)

    def warm(epochs, policy, key, final_batch, update_on_final=True):
        def body(carry, k):
            q, v = carry
            b_key, s_key = jax.random.split(k)
            b = draw(b_key, policy)
            q = _sarsa_epochs(s_key, q, b, reward_table[b.state, b.action], leader_gamma, critic_lr, epochs)
            return (q, visits_of(b, v)), None

        (q, v), _ = jax.lax.scan(body, (zeros, zeros), jax.random.split(key, warm_batches))
        if not update_on_final:
            return q, v
        final_rewards = reward_table[final_batch.state, final_batch.action]
        q = _sarsa_epochs(jax.random.fold_in(key, 1), q, final_batch, final_rewards, leader_gamma, critic_lr, epochs)
        return q, visits_of(final_batch, v)

    q1, v1 = warm(1, ing.policy, warm_key, batch)
    out["sarsa_warm"] = _estimates(problem, x, ing, batch, q1, v1, temperature, follower_gamma, leader_gamma,
                                   False, ing.policy)
    qk, vk = warm(critic_epochs, ing.policy, warm_key, batch)
    out["sarsa_warm_k"] = _estimates(problem, x, ing, batch, qk, vk, temperature, follower_gamma, leader_gamma,
                                     False, ing.policy)
    qs, vs = warm(1, ing.policy, warm_key, batch, update_on_final=False)
    out["sarsa_split"] = _estimates(problem, x, ing, batch, qs, vs, temperature, follower_gamma, leader_gamma,
                                    False, ing.policy)
    qa, na = warm_averaged(warm_key, batch)
    out["sarsa_averaged"] = _estimates(problem, x, ing, batch, qa, na, temperature, follower_gamma, leader_gamma,
                                       False, ing.policy)
    if follower_q_partial is not None:
        policy = tabular.soft_policy(follower_q_partial, temperature)
        value_params = MDPValueParams(jnp.asarray(temperature, jnp.float32), live.astype(jnp.float32))
        partial = ing._replace(policy=policy, follower_value=followers.mdp_soft_value(follower_q_partial,
                                                                                      value_params))
        f_batch = draw(follower_key, policy)
        qf, vf = warm(1, policy, warm_key, f_batch)
        out["follower_k"] = _estimates(problem, x, partial, f_batch, qf, vf, temperature, follower_gamma,
                                       leader_gamma, False, policy)
    return out


def summarize_estimates(estimates: Array, oracle: Array, max_norm: float = 1.0) -> dict:
    """Quality of ``estimates [M, d]`` against ``oracle [d]`` (see the module docstring)."""
    oracle_norm = jnp.linalg.norm(oracle)
    norms = jnp.linalg.norm(estimates, axis=1)
    cosines = estimates @ oracle / jnp.maximum(norms * oracle_norm, 1e-30)
    mean = estimates.mean(axis=0)
    clipped = estimates * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-30))[:, None]
    ascent = clipped @ oracle / jnp.maximum(oracle_norm, 1e-30)
    m = estimates.shape[0]
    return {"cosine": float(cosines.mean()), "cosine_stderr": float(cosines.std(ddof=1) / jnp.sqrt(m)),
            "cosine_of_mean": float(mean @ oracle / jnp.maximum(jnp.linalg.norm(mean) * oracle_norm, 1e-30)),
            "relative_bias": float(jnp.linalg.norm(mean - oracle) / oracle_norm),
            "relative_variance": float(jnp.sum((estimates - mean) ** 2) / (m - 1) / oracle_norm ** 2),
            "median_norm_ratio": float(jnp.median(norms) / oracle_norm),
            "clipped_ascent": float(ascent.mean()), "clipped_ascent_stderr": float(ascent.std(ddof=1) / jnp.sqrt(m)),
            "oracle_clipped_ascent": float(jnp.minimum(oracle_norm, max_norm))}


@functools.partial(jax.jit, static_argnums=(0, 6))
def _exact_and_partial(problem, x, x_prev, temperature, follower_gamma, leader_gamma, follower_backups):
    """The exact ingredients at ``x`` and the partly converged follower started from ``x_prev``'s exact one, as
    one compiled program (eagerly they cost several times more: many small operations)."""
    ing = exact_ingredients(problem, x, temperature, follower_gamma, leader_gamma)
    start_q = exact.mdp_follower_q(problem, x_prev, temperature, follower_gamma)
    value_params = MDPValueParams(jnp.asarray(temperature, jnp.float32), jnp.asarray(problem.live, jnp.float32))
    partial_q = followers.partly_converged_follower(problem.follower_reward(x), problem.transition_fn(x),
                                                    follower_gamma, followers.mdp_soft_value, value_params, start_q,
                                                    follower_backups, True)
    return ing, partial_q


def gradient_quality(problem, x: Array, key: Array, num_samples: int, num_batches: int, temperature,
                     follower_gamma, leader_gamma, critic_lr, x_prev: Array | None = None, follower_backups: int = 5,
                     warm_batches: int = 10, critic_epochs: int = 3, max_norm: float = 1.0,
                     batches_per_call: int = 50) -> dict:
    """``{variant: {estimator: summary}}`` over ``num_batches`` independent draws at ``x`` (see the module
    docstring); ``x_prev`` (default: ``x``) is where the partly converged follower's exact start comes from."""
    ing, partial_q = _exact_and_partial(problem, x, x if x_prev is None else x_prev, temperature, follower_gamma,
                                        leader_gamma, follower_backups)
    one = jax.jit(jax.vmap(lambda k: batch_estimates(problem, x, ing, k, num_samples, temperature, follower_gamma,
                                                     leader_gamma, critic_lr, warm_batches, critic_epochs,
                                                     partial_q)))
    keys = jax.random.split(key, num_batches)
    parts = [one(keys[i:i + batches_per_call]) for i in range(0, num_batches, batches_per_call)]
    stacked = jax.tree.map(lambda *p: jnp.concatenate(p), *parts)
    out = {variant: {est: summarize_estimates(stacked[variant][est], ing.oracle, max_norm) for est in ESTIMATORS}
           for variant in VARIANTS}
    policy_kl = jnp.sum(ing.policy * (jnp.log(jnp.maximum(ing.policy, 1e-30))
                                      - jnp.log(jnp.maximum(tabular.soft_policy(partial_q, temperature), 1e-30))),
                        axis=1)
    out["info"] = {"oracle_norm": float(jnp.linalg.norm(ing.oracle)),
                   "partial_follower_max_kl": float(policy_kl.max()),
                   "partial_follower_q_error": float(jnp.max(jnp.abs(partial_q - ing.follower_q)))}
    return out
