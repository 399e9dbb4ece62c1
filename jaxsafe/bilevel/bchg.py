"""BC-HG: the Boltzmann-covariance hypergradient, estimated from follower rollouts only (bchg.md 1.3).

Configurable MDP (the follower policy is ``pi = softmax(Q_F / lambda)``)::

    dJ/dx = E_tau[ sum_t gamma^t d_x r_L(s_t, a_t; x) ]                                         (direct)
          + E_tau[ sum_t gamma^(t+1) d_x log P_x(s_t+1 | s_t, a_t) V_L(s_t+1) ]                 (leader transition score)
          + (1/lambda) E_tau[ sum_t gamma^t d_x Q_F(s_t, a_t) A_L(s_t, a_t) ]                   (covariance term)

with ``d_x Q_F(s, a) = E[ sum_k gamma_F^k (d_x r_F(s_k, a_k) + gamma_F d_x log P_x(s_k+1|s_k, a_k) V_F(s_k+1)) ]``
(envelope theorem), estimated per sample by a forward-mode Jacobian (``jax.jacfwd``) of the discounted follower
"incentive returns" computed by a reverse ``lax.scan``, then averaged per (state, action) over the batch (tabular
every-visit Monte Carlo). ``A_L = Q_L - V_L`` comes from a leader critic (tabular SARSA carried across leader
steps, or the exact one for tests).

Markov game (the follower sees ``a_L`` and plays ``softmax(Q_F(s, a_L, .) / beta)``)::

    dJ/dx = E_d[ d_x log pi_x(a_L|s) (Qbar_L(s, a_L) - V_L(s)) ]                                (direct)
          + (1/beta) E_d[ B(s, a_L, a_F) d_x Q_F(s, a_L, a_F) ]                                 (guidance)

with the benefit ``B = Q_L - Qbar_L`` (the leader's advantage over follower actions) and
``d_x Q_F = E[ sum_{k>=1} gamma_F^k d_x log pi_x(a_L,k|s_k) (W_F(s_k, a_L,k) - b(s_k)) ]``. The follower's
``pi_F`` and ``W_F`` come from a *follower model*: the white-box oracle, or one estimated from observed follower
actions and rewards (:func:`estimate_follower_model`).

Every sampled quantity here is a pure function of a :class:`TabularBatch` and arrays; the leader loop in
``train.py`` composes them. Batches are tabular with *flat* actions: in a game the joint action
``a = a_L * A_F + a_F`` indexes ``[S, A_L * A_F]`` tables, so one rollout and one SARSA serve both settings.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxsafe.rl.gae import returns_to_go

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------------------------


class TabularBatch(NamedTuple):
    """``N`` consecutive transitions of one auto-resetting environment (all ``[N]``).

    Attributes:
      state, action, next_state: int32; ``next_state`` is the true successor (before any reset).
      next_action: int32, the action the policy takes in ``next_state`` (used by SARSA; meaningless if terminal).
      episode_time: int32 step index within the episode (the leader's discount exponent).
      terminal: bool, ``next_state`` is terminal (no bootstrapping).
      done: bool, the episode ended after this transition (terminal or time limit).
    """

    state: Array
    action: Array
    next_state: Array
    next_action: Array
    episode_time: Array
    terminal: Array
    done: Array


def sample_batch(key: Array, policy: Array, transitions: Array, initial: Array, live: Array, num_steps: int,
                 max_episode_steps: int) -> TabularBatch:
    """Roll ``policy [S, A]`` in ``transitions [S, A, S]`` for ``num_steps`` steps, resetting on episode ends.

    Episodes start from ``initial [S]`` and end on entering a state with ``live == 0`` or after
    ``max_episode_steps`` steps.
    """
    num_states, num_actions = policy.shape
    assert transitions.shape == (num_states, num_actions, num_states) and initial.shape == (num_states,)
    log_policy = jnp.log(jnp.maximum(policy, 1e-30))
    log_initial = jnp.log(jnp.maximum(initial, 1e-30))
    log_transitions = jnp.log(jnp.maximum(transitions, 1e-30))

    def reset(key):
        state_key, action_key = jax.random.split(key)
        state = jax.random.categorical(state_key, log_initial)
        return state, jax.random.categorical(action_key, log_policy[state])

    def step(carry, key):
        state, action, time = carry
        next_key, action_key, reset_key = jax.random.split(key, 3)
        next_state = jax.random.categorical(next_key, log_transitions[state, action])
        next_action = jax.random.categorical(action_key, log_policy[next_state])
        terminal = live[next_state] <= 0
        done = jnp.logical_or(terminal, time + 1 >= max_episode_steps)
        reset_state, reset_action = reset(reset_key)
        sample = TabularBatch(state, action, next_state, next_action, time, terminal, done)
        carry = (jnp.where(done, reset_state, next_state), jnp.where(done, reset_action, next_action),
                 jnp.where(done, 0, time + 1))
        return carry, sample

    start_key, scan_key = jax.random.split(key)
    state, action = reset(start_key)
    _, batch = jax.lax.scan(step, (state, action, jnp.zeros((), jnp.int32)), jax.random.split(scan_key, num_steps))
    return batch


def num_episodes(batch: TabularBatch) -> Array:
    """Episodes started in the batch (at least 1): the normaliser of per-episode sums."""
    return jnp.maximum(jnp.sum(batch.episode_time == 0), 1).astype(jnp.float32)


def leader_discounts(batch: TabularBatch, leader_gamma: Array) -> Array:
    """``gamma^t`` with ``t`` the within-episode time, ``[N]``."""
    return leader_gamma ** batch.episode_time.astype(jnp.result_type(leader_gamma, jnp.float32))


# ---------------------------------------------------------------------------------------------------------------
# Returns and tabular averages
# ---------------------------------------------------------------------------------------------------------------


def forward_return_jacobian(step_values_fn: Callable[[Array], Array], params: Array, done: Array,
                            discount: Array) -> Array:
    """``d/dx`` of the discounted returns-to-go of ``step_values_fn(x) [N]``, by ``jax.jacfwd``; ``[N, d]``.

    Forward mode pushes ``d`` tangents through one reverse scan, so the cost is one rollout-length pass for all
    ``N`` per-sample gradients at once (reverse mode would need ``N`` passes).
    """
    return jax.jacfwd(lambda x: returns_to_go(step_values_fn(x), done, discount))(params)


def every_visit_average(per_sample: Array, index: Array, num_cells: int) -> tuple[Array, Array]:
    """Average ``per_sample [N, ...]`` over samples sharing ``index [N]``.

    Returns:
      ``(averaged [N, ...], counts [num_cells])``: each sample gets the mean over its cell (every-visit Monte
      Carlo), and the visit counts.
    """
    sums = jax.ops.segment_sum(per_sample, index, num_cells)
    counts = jax.ops.segment_sum(jnp.ones_like(index, per_sample.dtype), index, num_cells)
    means = sums / jnp.maximum(counts, 1.0).reshape((-1,) + (1,) * (per_sample.ndim - 1))
    return means[index], counts


# ---------------------------------------------------------------------------------------------------------------
# Leader critic
# ---------------------------------------------------------------------------------------------------------------


def sarsa(key: Array, leader_q: Array, batch: TabularBatch, rewards: Array, leader_gamma: Array,
          critic_lr: Array) -> Array:
    """Tabular SARSA(0) over the batch in a random order (bchg.md 1.4 step 4); ``leader_q [S, A]``.

    ``Q(s, a) += lr (r + gamma (1 - terminal) Q(s', a') - Q(s, a))`` with ``a'`` the action actually taken next
    (sampled in ``s'`` even when the episode was truncated there, so time limits bootstrap correctly).
    """
    assert rewards.shape == batch.state.shape

    def update(q, i):
        bootstrap = jnp.where(batch.terminal[i], 0.0, q[batch.next_state[i], batch.next_action[i]])
        td_error = rewards[i] + leader_gamma * bootstrap - q[batch.state[i], batch.action[i]]
        return q.at[batch.state[i], batch.action[i]].add(critic_lr * td_error), None

    order = jax.random.permutation(key, rewards.shape[0])
    leader_q, _ = jax.lax.scan(update, leader_q, order)
    return leader_q


def sarsa_averaged(key: Array, leader_q: Array, counts: Array, batch: TabularBatch, rewards: Array,
                   leader_gamma: Array, critic_lr: Array) -> tuple[Array, Array]:
    """SARSA(0) with the step ``max(critic_lr, 1 / n(s, a))``, ``n`` the pair's visits so far (``counts [S, A]``,
    updated and returned): a pair's first update *sets* ``Q`` to its target and the next ones average until the
    constant step takes over.

    With a constant step from a zero start, a pair visited once holds ``critic_lr`` times its target, so rare pairs
    (the ones that carry BC-HG's covariance term under a near-greedy follower) are biased towards 0, a bias that
    ``1 / lambda`` amplifies. Returns ``(leader_q, counts)``.
    """
    assert rewards.shape == batch.state.shape

    def update(carry, i):
        q, n = carry
        s, a = batch.state[i], batch.action[i]
        n = n.at[s, a].add(1.0)
        step = jnp.maximum(critic_lr, 1.0 / n[s, a])
        bootstrap = jnp.where(batch.terminal[i], 0.0, q[batch.next_state[i], batch.next_action[i]])
        td_error = rewards[i] + leader_gamma * bootstrap - q[s, a]
        return (q.at[s, a].add(step * td_error), n), None

    order = jax.random.permutation(key, rewards.shape[0])
    (leader_q, counts), _ = jax.lax.scan(update, (leader_q, counts), order)
    return leader_q, counts


# ---------------------------------------------------------------------------------------------------------------
# Configurable-MDP estimator pieces
# ---------------------------------------------------------------------------------------------------------------


class MDPGradientTerms(NamedTuple):
    """Ingredients shared by BC-HG, HPGD and the naive gradient (all normalised per episode).

    Attributes:
      direct: ``[d]`` the direct term.
      leader_transition: ``[d]`` leader transition-score term (zeros when ``P`` does not depend on ``x``).
      grad_q: ``[N, d]`` every-visit average of the per-sample ``d_x Q_F`` at each sample's ``(s, a)``.
      grad_v: ``[N, d]`` every-visit average at each sample's ``s`` (estimates ``E_pi[d_x Q_F(s, .)]``).
      weights: ``[N]`` ``gamma^t / episodes``.
    """

    direct: Array
    leader_transition: Array
    grad_q: Array
    grad_v: Array
    weights: Array


def mdp_gradient_terms(problem, params: Array, batch: TabularBatch, follower_value: Array,
                       leader_next_value: Array, follower_gamma: Array, leader_gamma: Array,
                       with_follower_gradient: bool = True) -> MDPGradientTerms:
    """Estimate the pieces of the configurable-MDP hypergradient from one batch.

    Args:
      problem: a ``ConfigurableMDP`` (uses ``incentive_fn``, ``leader_reward_fn``, ``transition_fn``).
      params: ``[d]`` leader parameters.
      batch: follower rollouts in ``M_x``.
      follower_value: ``[S]`` the follower's soft value ``V_F`` (only used when ``P`` depends on ``x``: the
        follower-model input of the transition path).
      leader_next_value: ``[N]`` the leader's value estimate of each ``next_state`` (a critic's ``V_L(s')`` or a
        Monte Carlo return); used by the leader transition score only.
      with_follower_gradient: ``False`` skips the ``d_x Q_F`` estimate (naive gradient); ``grad_q, grad_v`` are
        then zeros.
    """
    num_states, num_actions = problem.num_states, problem.num_actions
    weights = leader_discounts(batch, leader_gamma) / num_episodes(batch)
    not_terminal = 1.0 - batch.terminal.astype(params.dtype)
    transition_dependent = problem.transitions_depend_on_params

    def log_transition(x):
        probs = problem.transition_fn(x)[batch.state, batch.action, batch.next_state]
        return jnp.log(jnp.maximum(probs, 1e-30))

    def leader_direct(x):
        return jnp.sum(weights * problem.leader_reward_fn(x)[batch.state, batch.action])

    direct = jax.grad(leader_direct)(params)
    if transition_dependent:
        leader_score = jax.grad(lambda x: jnp.sum(weights * leader_gamma * not_terminal * log_transition(x)
                                                  * leader_next_value))(params)
    else:
        leader_score = jnp.zeros_like(params)

    def incentive_steps(x):
        """Per-step follower "incentive": the x-dependent part of r_F, plus the transition score times V_F."""
        values = problem.incentive_fn(x)[batch.state, batch.action]
        if transition_dependent:
            values = values + follower_gamma * not_terminal * log_transition(x) * follower_value[batch.next_state]
        return values

    if not with_follower_gradient:
        zeros = jnp.zeros(batch.state.shape + params.shape, params.dtype)
        return MDPGradientTerms(direct, leader_score, zeros, zeros, weights)
    per_sample = forward_return_jacobian(incentive_steps, params, batch.done, follower_gamma)  # [N, d]
    grad_q, _ = every_visit_average(per_sample, batch.state * num_actions + batch.action, num_states * num_actions)
    grad_v, _ = every_visit_average(per_sample, batch.state, num_states)
    return MDPGradientTerms(direct, leader_score, grad_q, grad_v, weights)


def bchg_mdp_gradient(terms: MDPGradientTerms, leader_advantage: Array, temperature: Array) -> Array:
    """BC-HG: ``direct + transition score + (1/lambda) sum_t w_t grad_q_t A_L,t``; ``leader_advantage [N]``."""
    covariance = jnp.einsum("n,nd->d", terms.weights * leader_advantage, terms.grad_q) / temperature
    return terms.direct + terms.leader_transition + covariance


def covariance_identity_terms(policy: Array, grad_q: Array, leader_q: Array,
                              temperature: Array) -> tuple[Array, Array]:
    """Both sides of the covariance identity at every state, by enumeration over actions.

    ``E_a[d log pi(a|s) Q_L(s, a)]`` with ``d log pi = (grad_q - E_pi grad_q) / lambda`` (left) and
    ``E_a[grad_q(s, a) A_L(s, a)] / lambda`` (right); ``policy, leader_q [S, A]``, ``grad_q [S, A, d]`` -> two
    ``[S, d]`` arrays that must be equal.
    """
    score = (grad_q - jnp.einsum("sa,sad->sd", policy, grad_q)[:, None]) / temperature
    left = jnp.einsum("sa,sad,sa->sd", policy, score, leader_q)
    advantage = leader_q - jnp.sum(policy * leader_q, axis=-1, keepdims=True)
    right = jnp.einsum("sa,sad,sa->sd", policy, grad_q, advantage) / temperature
    return left, right


# ---------------------------------------------------------------------------------------------------------------
# Markov games
# ---------------------------------------------------------------------------------------------------------------


class FollowerModel(NamedTuple):
    """What the leader knows of the follower: ``policy [S, A_L, A_F]`` and soft values ``W_F [S, A_L]``."""

    policy: Array
    value: Array


def split_joint_action(action: Array, num_follower_actions: int) -> tuple[Array, Array]:
    """Flat joint action -> ``(a_L, a_F)``."""
    return action // num_follower_actions, action % num_follower_actions


def estimate_follower_model(batch: TabularBatch, follower_reward: Array, temperature: Array,
                            follower_gamma: Array, prior_count: float = 1.0) -> FollowerModel:
    """A follower model fitted to observed follower actions and rewards (the decentralised setting).

    * ``pi_F(a_F | s, a_L)`` from action counts with a symmetric Dirichlet prior ``prior_count``.
    * ``W_F(s, a_L)``: every-visit Monte Carlo average of the follower's *soft* return from ``(s, a_L)``,
      ``sum_k gamma_F^k (r_F,k - beta log pi_F(a_F,k | s_k, a_L,k))`` (the entropy bonus makes this the soft value).
      Pairs never visited get the mean of their state's visited pairs (0 if none), which only enters baselines.

    Args:
      batch: the game rollouts (flat joint actions).
      follower_reward: ``[S, A_L, A_F]`` the follower's reward table (the leader observes the rewards the follower
        receives; only entries at visited triples are used).
    """
    num_states, num_leader, num_follower = follower_reward.shape
    leader_action, follower_action = split_joint_action(batch.action, num_follower)
    pair = batch.state * num_leader + leader_action
    counts = jax.ops.segment_sum(jax.nn.one_hot(follower_action, num_follower), pair, num_states * num_leader)
    policy = (counts + prior_count) / jnp.sum(counts + prior_count, axis=-1, keepdims=True)
    policy = policy.reshape(num_states, num_leader, num_follower)
    soft_reward = (follower_reward[batch.state, leader_action, follower_action]
                   - temperature * jnp.log(policy[batch.state, leader_action, follower_action]))
    soft_return = returns_to_go(soft_reward, batch.done, follower_gamma)
    sums = jax.ops.segment_sum(soft_return, pair, num_states * num_leader).reshape(num_states, num_leader)
    visits = jax.ops.segment_sum(jnp.ones_like(soft_return), pair, num_states * num_leader).reshape(
        num_states, num_leader)
    visited_mean = sums / jnp.maximum(visits, 1.0)
    state_fill = jnp.sum(sums, axis=1) / jnp.maximum(jnp.sum(visits, axis=1), 1.0)
    value = jnp.where(visits > 0, visited_mean, state_fill[:, None])
    return FollowerModel(policy, value)


def bchg_game_gradient(game, params: Array, batch: TabularBatch, follower: FollowerModel, leader_q: Array,
                       temperature: Array, follower_gamma: Array, leader_gamma: Array,
                       guidance: bool = True) -> tuple[Array, dict]:
    """BC-HG for a Markov game from one batch; ``leader_q [S, A_L, A_F]``.

    Returns ``(gradient [d], {"direct": [d], "guidance": [d]})``; ``guidance=False`` is the "no guidance"
    baseline (direct term only).
    """
    num_states, num_leader, num_follower = leader_q.shape
    assert follower.policy.shape == leader_q.shape and follower.value.shape == (num_states, num_leader)
    leader_action, follower_action = split_joint_action(batch.action, num_follower)
    weights = leader_discounts(batch, leader_gamma) / num_episodes(batch)
    leader_policy = game.leader_policy_fn(params)
    # Leader values under the follower model: Qbar_L(s, aL) and V_L(s).
    q_bar = jnp.sum(follower.policy * leader_q, axis=-1)  # [S, A_L]
    v_leader = jnp.sum(leader_policy * q_bar, axis=-1)  # [S]

    def log_leader_policy(x):
        return jnp.log(game.leader_policy_fn(x)[batch.state, leader_action])

    leader_advantage = q_bar[batch.state, leader_action] - v_leader[batch.state]
    direct = jax.grad(lambda x: jnp.sum(weights * log_leader_policy(x) * leader_advantage))(params)
    if not guidance:
        return direct, {"direct": direct, "guidance": jnp.zeros_like(direct)}

    # Follower influence: d_x Q_F(s_t, ...) = E[sum_{k>=1} gamma_F^k d log pi_x(a_L,k|s_k) (W_F - b)(s_k, a_L,k)].
    baseline = jnp.sum(leader_policy * follower.value, axis=-1)  # b(s) = E_{a~pi_x} W_F(s, a)
    centred_value = follower.value[batch.state, leader_action] - baseline[batch.state]

    def influence_steps(x):
        return log_leader_policy(x) * jax.lax.stop_gradient(centred_value)

    returns_jacobian = forward_return_jacobian(influence_steps, params, batch.done, follower_gamma)
    # Drop the k = 0 term (it has zero mean against the benefit and only adds variance).
    influence = returns_jacobian - jax.jacfwd(influence_steps)(params)
    benefit = leader_q[batch.state, leader_action, follower_action] - q_bar[batch.state, leader_action]
    guidance_term = jnp.einsum("n,nd->d", weights * benefit, influence) / temperature
    return direct + guidance_term, {"direct": direct, "guidance": guidance_term}


# ---------------------------------------------------------------------------------------------------------------
# Linear-quadratic (continuous) configurable problems
# ---------------------------------------------------------------------------------------------------------------


class LQBatch(NamedTuple):
    """``E`` episodes of ``T`` steps from the problem's initial state (leading axes ``[E, T]``).

    Attributes: state ``[E, T, n]``, action ``[E, T, m]``, next_state ``[E, T, n]``, next_action ``[E, T, m]``.
    """

    state: Array
    action: Array
    next_state: Array
    next_action: Array


def sample_lq_batch(key: Array, system, gain: Array, policy_cov: Array, num_episodes: int,
                    episode_length: int) -> LQBatch:
    """Roll the Gaussian follower ``a ~ N(-gain z, policy_cov)`` in ``z' = A z + B a + w``."""
    n, m = system.control.shape
    noise_std = jnp.sqrt(jnp.diagonal(system.noise_cov))
    policy_chol = jnp.linalg.cholesky(policy_cov)

    def act(key, z):
        return -gain @ z + policy_chol @ jax.random.normal(key, (m,), z.dtype)

    def episode(key):
        def step(carry, key):
            z, a = carry
            noise_key, action_key = jax.random.split(key)
            z_next = system.dynamics @ z + system.control @ a + noise_std * jax.random.normal(noise_key, (n,), z.dtype)
            a_next = act(action_key, z_next)
            return (z_next, a_next), (z, a, z_next, a_next)

        first_key, scan_key = jax.random.split(key)
        z0 = system.initial_state
        _, (z, a, z_next, a_next) = jax.lax.scan(step, (z0, act(first_key, z0)),
                                                  jax.random.split(scan_key, episode_length))
        return LQBatch(z, a, z_next, a_next)

    return jax.vmap(episode)(jax.random.split(key, num_episodes))


def quadratic_features(z: Array, a: Array) -> Array:
    """Features of a quadratic critic: the upper triangle of ``u u'`` for ``u = [z; a; 1]``; ``[k]``."""
    u = jnp.concatenate([z, a, jnp.ones((1,), z.dtype)])
    rows, cols = jnp.triu_indices(u.shape[0])
    return (u[:, None] * u[None, :])[rows, cols]


def _features_to_matrix(weights: Array, size: int) -> Array:
    """Inverse of :func:`quadratic_features`: ``Q(u) = u' M u`` with ``M`` symmetric ``[size, size]``."""
    rows, cols = jnp.triu_indices(size)
    upper = jnp.zeros((size, size), weights.dtype).at[rows, cols].set(weights)
    return 0.5 * (upper + upper.T)


def fit_quadratic_critic(batch: LQBatch, rewards: Array, gamma: Array, ridge: float = 1e-6) -> Array:
    """LSTD-Q with quadratic features: the leader critic ``Q_L(z, a) = u' M u`` of the sampled policy.

    For linear dynamics and a Gaussian policy the true ``Q_L`` is exactly quadratic, so this fitted "network" is
    unbiased in the limit (bchg.md uses an MLP; a quadratic family is the right one for LQ). Returns ``M``.
    """
    n, m = batch.state.shape[-1], batch.action.shape[-1]
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    phi = jax.vmap(quadratic_features)(flat(batch.state), flat(batch.action))
    phi_next = jax.vmap(quadratic_features)(flat(batch.next_state), flat(batch.next_action))
    # Episodes are cut at T but the process continues, so every transition bootstraps.
    a_matrix = phi.T @ (phi - gamma * phi_next) / phi.shape[0]
    b_vector = phi.T @ rewards.reshape(-1) / phi.shape[0]
    scale = jnp.trace(a_matrix) / a_matrix.shape[0]
    weights = jnp.linalg.solve(a_matrix + ridge * scale * jnp.eye(a_matrix.shape[0], dtype=a_matrix.dtype), b_vector)
    return _features_to_matrix(weights, n + m + 1)


def quadratic_value(critic: Array, z: Array, mean_action: Array, action_cov: Array) -> Array:
    """``E_{a ~ N(mean, cov)}[u' M u]`` for ``u = [z; a; 1]`` (closed form)."""
    n, m = z.shape[0], mean_action.shape[0]
    u = jnp.concatenate([z, mean_action, jnp.ones((1,), z.dtype)])
    return u @ critic @ u + jnp.trace(critic[n:n + m, n:n + m] @ action_cov)


def gaussian_log_density(x: Array, mean: Array, variance: Array) -> Array:
    """Diagonal Gaussian log-density up to a constant, over coordinates with ``variance > 0`` (the augmented
    constant coordinate of an affine system is deterministic and carries no score)."""
    noisy = variance > 0
    safe = jnp.where(noisy, variance, 1.0)
    return -0.5 * jnp.sum(jnp.where(noisy, (x - mean) ** 2 / safe, 0.0))


def bchg_lq_gradient(problem, params: Array, batch: LQBatch, follower, leader_critic: Array,
                     temperature: Array, follower_gamma: Array, leader_gamma: Array,
                     guidance: bool = True) -> tuple[Array, dict]:
    """BC-HG for a configurable linear-quadratic problem (transition-dependent ``x``, bchg.md 1.4).

    Args:
      problem: an ``LQProblem``; params ``[d]``.
      batch: rollouts of the follower; follower: its ``MaxEntLQR`` solution (the white-box follower model: its
        soft value ``V_F(z) = -z' P z - c`` enters the transition path of ``d_x Q_F``).
      leader_critic: ``M`` of the fitted quadratic ``Q_L``.
      guidance: ``False`` drops the covariance term (the naive gradient).

    The score terms use a state-action baseline ``E[V(z') | z, a]`` (closed form for Gaussian ``w`` and
    quadratic ``V``): it leaves them unbiased (the score has zero mean given ``(z, a)``) and removes most of the
    variance that the small transition noise (std 0.02) would otherwise cause; bchg.md clips instead.
    """
    system = problem.system(params)
    num_eps, horizon, n = batch.state.shape
    variance = jnp.diagonal(system.noise_cov)
    discounts = leader_gamma ** jnp.arange(horizon, dtype=params.dtype)
    weights = jnp.broadcast_to(discounts, (num_eps, horizon)) / num_eps

    def follower_value(z):
        return -(z @ follower.value_matrix @ z) - follower.value_offset

    def expected_next(value_fn_quadratic, mean):
        """``E[V(mean + w)]`` for ``V(z) = -z' P z - c`` given as ``(P, c)``."""
        matrix, offset = value_fn_quadratic
        return -(mean @ matrix @ mean + jnp.trace(matrix @ system.noise_cov)) - offset

    def leader_value(z):
        return quadratic_value(leader_critic, z, -follower.gain @ z, follower.policy_cov)

    # V_L is quadratic in z: recover (P_L, c_L) so the baseline E[V_L(z')|z,a] has a closed form.
    zero = jnp.zeros((n,), params.dtype)
    leader_matrix = -jax.hessian(leader_value)(zero) / 2.0
    leader_linear = jax.grad(leader_value)(zero)
    leader_offset = -leader_value(zero)

    def expected_leader_next(mean):
        return (-(mean @ leader_matrix @ mean + jnp.trace(leader_matrix @ system.noise_cov))
                + leader_linear @ mean - leader_offset)

    def leader_direct(x):
        sys_x = problem.system(x)
        rewards = -(jnp.einsum("eti,ij,etj->et", batch.state, sys_x.leader_state_cost, batch.state)
                    + jnp.einsum("eti,ij,etj->et", batch.action, sys_x.leader_action_cost, batch.action)
                    + sys_x.leader_constant_cost)
        return jnp.sum(weights * rewards)

    direct = jax.grad(leader_direct)(params)
    stop = jax.lax.stop_gradient
    mean_now = batch.state @ system.dynamics.T + batch.action @ system.control.T  # [E, T, n]
    leader_advantage_next = (jax.vmap(jax.vmap(leader_value))(batch.next_state)
                             - jax.vmap(jax.vmap(expected_leader_next))(mean_now))

    def leader_score(x):
        sys_x = problem.system(x)
        means = batch.state @ sys_x.dynamics.T + batch.action @ sys_x.control.T
        log_p = jax.vmap(jax.vmap(gaussian_log_density, in_axes=(0, 0, None)), in_axes=(0, 0, None))(
            batch.next_state, means, variance)
        return jnp.sum(weights * leader_gamma * log_p * stop(leader_advantage_next))

    leader_transition = jax.grad(leader_score)(params)
    terms = {"direct": direct, "leader_transition": leader_transition}
    if not guidance:
        terms["covariance"] = jnp.zeros_like(direct)
        return direct + leader_transition, terms

    follower_pair = (follower.value_matrix, follower.value_offset)
    follower_advantage_next = (jax.vmap(jax.vmap(follower_value))(batch.next_state)
                               - jax.vmap(jax.vmap(lambda m: expected_next(follower_pair, m)))(mean_now))
    done = jnp.arange(horizon) == horizon - 1

    def grad_q_episode(states, actions, next_states, centred_values):
        def incentive_steps(x):
            sys_x = problem.system(x)
            means = states @ sys_x.dynamics.T + actions @ sys_x.control.T
            log_p = jax.vmap(gaussian_log_density, in_axes=(0, 0, None))(next_states, means, variance)
            return follower_gamma * log_p * stop(centred_values)

        return forward_return_jacobian(incentive_steps, params, done, follower_gamma)  # [T, d]

    grad_q = jax.vmap(grad_q_episode)(batch.state, batch.action, batch.next_state, follower_advantage_next)
    zero_cov = jnp.zeros_like(follower.policy_cov)
    q_values = jax.vmap(jax.vmap(lambda z, a: quadratic_value(leader_critic, z, a, zero_cov)))(batch.state,
                                                                                             batch.action)
    v_values = jax.vmap(jax.vmap(leader_value))(batch.state)
    covariance = jnp.einsum("et,etd->d", weights * (q_values - v_values), grad_q) / temperature
    terms["covariance"] = covariance
    return direct + leader_transition + covariance, terms
