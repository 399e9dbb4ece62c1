"""Baseline hypergradient estimators: naive, HPGD (Monte Carlo and SARSA critics) and the oracle.

All share the ingredients of :func:`jaxsafe.bilevel.bchg.mdp_gradient_terms`, so the comparison isolates where
each estimator puts its baseline:

* **naive**: ``direct + leader transition score``: the policy gradient of the leader with the follower's policy
  held fixed (it ignores that the follower re-optimises when ``x`` moves).
* **HPGD** (Thoma et al., NeurIPS 2024): the follower-side score ``d log pi = (d Q_F(s,a) - d V_F(s)) / lambda``
  times a leader return ``Q_L(s,a)``. ``d V_F(s)`` must be estimated from *other* visits of ``s`` (here the
  every-visit average over the batch), so a state seen once contributes exactly zero and rare states are noisy;
  this is what BC-HG's leader-side baseline avoids. ``Q_L`` is a Monte Carlo return-to-go (``hpgd_mc``) or the
  SARSA critic (``hpgd_sarsa``).
* **oracle**: the exact hypergradient by implicit differentiation (``jaxsafe.bilevel.exact``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsafe.bilevel import exact
from jaxsafe.bilevel.bchg import MDPGradientTerms, TabularBatch
from jaxsafe.rl.gae import returns_to_go

Array = jax.Array


def naive_gradient(terms: MDPGradientTerms) -> Array:
    """Leader policy gradient ignoring the follower's response; ``[d]``."""
    return terms.direct + terms.leader_transition


def hpgd_gradient(terms: MDPGradientTerms, leader_return: Array, temperature: Array) -> Array:
    """HPGD: ``direct + transition + (1/lambda) sum_t w_t (grad_q_t - grad_v_t) Q_L,t``; ``leader_return [N]``."""
    follower_score = (terms.grad_q - terms.grad_v) / temperature
    return terms.direct + terms.leader_transition + jnp.einsum("n,nd->d", terms.weights * leader_return,
                                                               follower_score)


def monte_carlo_leader_returns(batch: TabularBatch, rewards: Array, leader_gamma: Array) -> tuple[Array, Array]:
    """Leader returns-to-go from the batch and the return of each ``next_state`` (0 after an episode end).

    Returns ``(returns [N], next_returns [N])``; the last, unfinished episode is cut at the batch end.
    """
    returns = returns_to_go(rewards, batch.done, leader_gamma)
    following = jnp.concatenate([returns[1:], jnp.zeros((1,), returns.dtype)])
    return returns, jnp.where(batch.done, 0.0, following)


def oracle_gradient(problem, params: Array, temperature: Array, follower_gamma: Array, leader_gamma: Array,
                    q_init: Array | None = None) -> Array:
    """The exact hypergradient of a configurable MDP, Markov game or LQ problem; ``[d]``."""
    if problem.kind == "mdp":
        return exact.mdp_exact_hypergradient(problem, params, temperature, follower_gamma, leader_gamma, q_init)[1]
    if problem.kind == "game":
        return exact.game_exact_hypergradient(problem, params, temperature, follower_gamma, leader_gamma, q_init)[1]
    if problem.kind == "lq":
        return exact.lq_exact_hypergradient(problem, params, temperature, follower_gamma, leader_gamma)[1]
    raise ValueError(f"unknown problem kind {problem.kind!r}")
