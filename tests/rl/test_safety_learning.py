"""Learning test on ``SafePointGoal1`` (the default task, 1000-step episodes): PPO-Lagrangian keeps the episode
cost below a limit that unconstrained PPO exceeds, at a CI-sized budget with fixed seeds.

Configuration and why (measured on a 2-core CPU):

* 16 environments x 1000 steps per update, so every rollout ends exactly one episode per environment: each
  update's ``episode_cost`` (the multiplier's input) is a fresh measurement of 16 episodes of the current policy.
  With shorter rollouts (e.g. 250 steps) three updates in four reuse the last finished episode, the multiplier
  reacts late and PPO-Lag overshoots far past the limit within this budget.
* 288k steps per seed (18 updates), hidden (32, 32), 16 minibatches, learning rate 1e-3 for both learners (they
  differ only in the multiplier: PPO is the Lagrangian learner with ``multiplier_lr = 0``, exactly
  unconstrained), ``multiplier_lr = 0.1``, cost limit 60. "Final" is the mean over the last half of the updates
  (9 x 16 episodes per seed), then over the 3 seeds: single episodes' costs are heavy-tailed.
* At this budget no learner avoids hazards yet: every policy's cost grows with how far it drives, and the
  Lagrangian keeps the cost down by damping the reward advantage ``(A - m A_c) / (1 + m)`` while the multiplier
  is large. Some seeds flee the goals (negative return; more of them at lower limits such as 40 or 45), hence the
  reward check, kept deliberately modest because the seeds' returns are bimodal: the mean return beats the
  untrained policy's first episode (about -0.09 for these seeds) by 0.1, i.e. net progress towards the goals. It
  is not compared with PPO's return.

Measured over 8 seeds (lanes laid out differently from this test, so different rounding and trajectories): PPO
final cost 76, 49, 89, 86, 73, 74, 71, 63; PPO-Lag 49, 41, 36, 60, 59, 61, 33, 49, return 0.01-5.6. Over every
3-seed subset the PPO mean lies in [61, 84], the PPO-Lag mean in [37, 60] and its return mean in [0.46, 5.1]: the
limit of 60 sits between them, but with little room on either side (an estimated few-percent chance that a
different CPU's rounding lands a 3-seed mean on the wrong side). The thread count alone changes the rounding:
seeds 0-2 measured PPO 72.0 / PPO-Lag 33.8 (return 0.26) on one core and 84.9 / 36.1 (return 0.13) on two.

CPO is not in this test: at every configuration tried at CI scale (up to 320k steps per seed, rollouts of 250
and 1000 steps, target_kl 0.001-0.02, cost limits 0-80) its final cost stayed about 20 above its limit or at its
unconstrained level, never robustly below a limit that PPO exceeds (see ``tests/rl/test_cpo.py`` for CPO's
constrained learning test on ``SafeGridWorld``).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import envs, sweep
from jaxsafe.rl import ppo

COST_LIMIT = 60.0
SEEDS = 3
CONFIG = ppo.PPOConfig(num_envs=16, num_steps=1000, total_steps=16 * 1000 * 18, hidden=(32, 32),
                       num_minibatches=16, multiplier="lagrangian")
HPARAMS = CONFIG.default_hparams().replace(learning_rate=jnp.float32(1e-3), cost_limit=jnp.float32(COST_LIMIT))
PPO_LAG_MULTIPLIER_LR = 0.1


def _final(series):
    """Mean over the last half of the updates, one value per lane."""
    series = np.asarray(series)
    return series[..., series.shape[-1] // 2:].mean(axis=-1)


@pytest.fixture(scope="module")
def ppo_runs():
    """PPO and PPO-Lagrangian on 3 seeds as one ``jit(vmap(train))`` program (6 lanes, compiled once)."""
    env, params = envs.make("SafePointGoal1")
    grid = sweep.make_grid(HPARAMS, seeds=SEEDS, multiplier_lr=[0.0, PPO_LAG_MULTIPLIER_LR])
    result = sweep.run_grid(ppo.make_train(CONFIG, env, params), grid)
    lagrangian = np.array([point["multiplier_lr"] > 0 for point in grid.points])
    return result.metrics, lagrangian


@pytest.mark.slow
def test_ppo_lagrangian_stays_below_limit_that_ppo_exceeds(ppo_runs):
    metrics, lagrangian = ppo_runs
    assert metrics["episode_cost"].shape == (2 * SEEDS, CONFIG.num_updates)
    # num_steps == max_steps: every update finished one episode per environment, so no metric is NaN
    assert np.all(np.isfinite(metrics["episode_cost"])) and np.all(metrics["episodes_finished"] == CONFIG.num_envs)
    cost = _final(metrics["episode_cost"])
    episode_return = _final(metrics["episode_return"])
    initial_return = np.asarray(metrics["episode_return"])[:, 0]  # the untrained policy's first episode
    ppo_cost, lag_cost = cost[~lagrangian], cost[lagrangian]
    lag_return = episode_return[lagrangian]
    summary = dict(ppo_cost=ppo_cost, lag_cost=lag_cost, lag_return=lag_return, initial_return=initial_return)

    assert ppo_cost.mean() > COST_LIMIT, summary  # unconstrained: above the limit
    assert lag_cost.mean() < COST_LIMIT, summary
    # ... while still driving towards the goals: net progress, better than the untrained policy
    assert lag_return.mean() > initial_return.mean() + 0.1, summary
    # the constraint is what separates them: PPO's multiplier is exactly 0, PPO-Lag's was raised
    multiplier = np.asarray(metrics["multiplier"])
    np.testing.assert_array_equal(multiplier[~lagrangian], 0.0)
    assert np.all(multiplier[lagrangian].max(axis=-1) > 1.0), multiplier[lagrangian]
