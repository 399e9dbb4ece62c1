"""OGSRL: offline guarded safe RL (Yan, Shen et al., NeurIPS 2025) on SepsisSim, with true-simulator scoring.

The pipeline (see ``docs/ogsrl.md``)::

    task = build_task(seed=42, num_patients=1000)            # clinicians' data, 60/20/20 split by patient,
                                                             # KDE guardian, 1-NN train/eval models
    env = model_env(task, guarded=True)                      # the learned model as a SafeEnv: costs
                                                             # [SpO2 < 92, urine < 0.5, OOD]
    parts = make_multi_cpo_train_parts(config, env)          # CPO with one constraint per cost
    result = train_from_parts(parts)(key, hparams)
    metrics = evaluate(task, act, key)                       # MCR, AIR, ME, ACP, unsafe-state changes; model and truth

Methods (:data:`METHODS`, :func:`train_method`):

* ``gmb_cpo``: guarded model-based CPO. Rollouts in the 1-NN model (train copy) from training initial states;
  three cost constraints (SpO2, urine, the guardian's OOD indicator), each with its own limit. The OOD indicator is
  a *separate* cost, as the paper formulates Problem GSRL, not the official code's folded negative cost.
* ``mb_cpo``: the same without the guardian constraint (its OOD limit is +inf in effect; the OOD rate is still
  measured).
* ``gmb_trpo``: TRPO in the model with OOD as a penalty (reward -25 and an absorbing state on an OOD step, as the
  official code's guarded rollout), physiological costs unconstrained. Runs on :mod:`jaxsafe.rl.cpo`'s
  ``trpo_lag`` with a zero, frozen multiplier (plain TRPO).
* ``bc``: behaviour cloning (:mod:`jaxsafe.offline.baselines`) of the clinicians on the training split.
* ``cql`` / ``gcql``: DDPG-style conservative Q-learning (:mod:`jaxsafe.offline.cql`) on the training split's
  transitions (reward only, as the paper's CQL), and GCQL, whose bootstrap targets at guardian-flagged
  ``(s', pi(s'))`` are a large negative constant.

``MethodSettings.dynamics`` picks the model the model-based learners train in: ``"knn"`` (the paper's 1-NN
lookup) or ``"ensemble"`` (a probabilistic ensemble, :mod:`jaxsafe.offline.ensemble`, fitted by
:func:`with_ensemble`). Evaluation (ME) always uses the 1-NN eval model, as the paper.

CPO with several costs: :func:`jaxsafe.rl.trust_region.multi_constraint_cpo_step_from_solves` solves ``max g.x``
s.t. ``0.5 x.Hx <= delta`` and ``c_j + b_j.x <= 0`` for every ``j`` exactly, by enumerating the active sets of
the dual (``2^K`` faces), with a recovery step when no point of the trust region satisfies them all. With ``K = 1``
it is CPO's step (:func:`jaxsafe.rl.trust_region.cpo_step_from_solves`; tests/rl/test_trust_region.py checks it).

Policies everywhere see the state min-max normalised with the training split's statistics (the guardian's
normaliser) and output SepsisSim's action in ``[-1, 1]^2``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsafe import constraints, losses
from jaxsafe.envs import sepsis
from jaxsafe.envs.core import SafeEnv, spaces
from jaxsafe.learner import TrainParts, train_from_parts
from jaxsafe.offline import baselines, cql, ensemble as ens, guardian as guard
from jaxsafe.offline.dataset import TrajectoryDataset, collect_dataset
from jaxsafe.policy import stateless
from jaxsafe.rl import cpo, trust_region
from jaxsafe.rl.ppo import (ActorCriticParams, check_cost_limit, compute_advantages, env_problem, make_act,
                            make_on_policy)
from jaxsafe.types import TimeStep

__all__ = ["PAPER_SEEDS", "METHODS", "SepsisTask", "build_task", "clinician_dataset", "split_by_patient",
           "ModelEnv", "model_env", "multi_constraint_cpo_step", "make_multi_cpo_train_parts", "MethodSettings",
           "train_method", "evaluate", "policy_metrics", "soc_metrics", "simulate", "state_embedding"]

PAPER_SEEDS = (40, 42, 44, 54, 64)
METHODS = ("gmb_cpo", "mb_cpo", "gmb_trpo", "bc", "cql", "gcql")
OBS_DIM, ACTION_DIM = len(sepsis.OBS_NAMES), 2
N_PHYS_COSTS = len(sepsis.COST_NAMES)
COST_NAMES = sepsis.COST_NAMES + ("ood",)
UNCONSTRAINED = 1e6  # the OOD limit that leaves MB-CPO's guardian cost unconstrained (never active)


# ------------------------------------------------------------------------------------------------ clinicians' data


def clinician_dataset(key, num_patients: int, env_params: sepsis.SepsisParams | None = None,
                      noise: float = 1.0) -> tuple[TrajectoryDataset, np.ndarray]:
    """``num_patients`` SepsisSim episodes of the rule-based standard of care (:func:`sepsis.clinician_action`) as
    a DSRL-format dataset, and ``died [N]`` (the terminal steps whose reward is the death penalty)."""
    env = sepsis.SepsisSim()
    params = env.default_params if env_params is None else env_params
    if not float(params.death_penalty) > 20.0:
        raise ValueError(f"SepsisParams.death_penalty must be > 20 (the largest SOFA-like score) so that death steps "
                         f"are recognisable from their reward, got {params.death_penalty}")
    policy = stateless(lambda obs, k: sepsis.clinician_action(obs, k, noise))
    dataset = collect_dataset(env, params, policy, key, num_patients, int(params.max_steps))
    died = dataset.terminals & (dataset.rewards <= -float(params.death_penalty) + 1e-3)
    return dataset, np.asarray(died)


def split_by_patient(dataset: TrajectoryDataset, seed: int, fractions=(0.6, 0.2, 0.2)) -> dict[str, np.ndarray]:
    """``{"train", "validation", "test"}`` step masks ``[N]``: episodes (patients) shuffled with ``seed`` and cut
    60/20/20."""
    episodes = dataset.num_episodes
    order = np.random.default_rng(seed).permutation(episodes)
    cuts = np.cumsum([int(round(f * episodes)) for f in fractions[:-1]])
    groups = np.split(order, cuts)
    return {name: np.isin(dataset.episode_ids, group) for name, group in zip(("train", "validation", "test"), groups)}


class SepsisTask(NamedTuple):
    """Everything the learners and metrics share (arrays are numpy / jax; built by :func:`build_task`)."""

    dataset: TrajectoryDataset
    died: np.ndarray  # [N] bool
    splits: dict  # name -> [N] bool step mask
    guardian: guard.Guardian  # fitted on the training split's (s, a)
    model_train: guard.NearestNeighbourModel  # 1-NN over the training split (learning)
    model_eval: guard.NearestNeighbourModel  # 1-NN over all data (evaluation only)
    initial_train: np.ndarray  # [E_train, OBS_DIM] raw first observations
    initial_test: np.ndarray
    env_params: sepsis.SepsisParams
    seed: int
    ensemble: Any = None  # ens.EnsembleModel over the training split (see with_ensemble), or None

    @property
    def state_normaliser(self) -> guard.Normaliser:
        """The state part of the guardian's (s, a) normaliser: what policies see."""
        n = self.guardian.normaliser
        return guard.Normaliser(n.low[:OBS_DIM], n.high[:OBS_DIM])


def _first_steps(dataset: TrajectoryDataset, mask: np.ndarray) -> np.ndarray:
    first = np.concatenate([[True], dataset.episode_ids[1:] != dataset.episode_ids[:-1]])
    return np.asarray(dataset.observations)[first & mask]


def build_task(seed: int = 42, num_patients: int = 1000, bandwidth: float = guard.DEFAULT_BANDWIDTH,
               percentile: float = guard.DEFAULT_PERCENTILE, guardian_kind: str = "kde", knn_k: int = 5,
               dataset: TrajectoryDataset | None = None, died: np.ndarray | None = None,
               env_params: sepsis.SepsisParams | None = None) -> SepsisTask:
    """Clinicians' data (generated from ``seed`` unless ``dataset``/``died`` are given), the split, the guardian
    and the two 1-NN models.

    Raises:
      ValueError: bad guardian settings (bandwidth <= 0, percentile outside (0, 100)), or a dataset whose state or
        action dimension is not SepsisSim's (9 and 2).
    """
    guard._check_guardian_args(float(bandwidth), float(percentile), guardian_kind, knn_k)
    env_params = sepsis.SepsisSim().default_params if env_params is None else env_params
    if dataset is None:
        dataset, died = clinician_dataset(jax.random.PRNGKey(seed), num_patients, env_params)
    obs_shape, action_shape = np.shape(dataset.observations)[1:], np.shape(dataset.actions)[1:]
    if obs_shape != (OBS_DIM,) or action_shape != (ACTION_DIM,):
        raise ValueError(f"dataset: the sepsis-sim task needs observations [N, {OBS_DIM}] ({', '.join(sepsis.OBS_NAMES)}) "
                         f"and actions [N, {ACTION_DIM}] (fluid, vasopressor), got observations [N, "
                         f"{', '.join(map(str, obs_shape))}] and actions [N, {', '.join(map(str, action_shape))}]")
    if dataset.n_costs != N_PHYS_COSTS:
        raise ValueError(f"dataset: the sepsis-sim task has {N_PHYS_COSTS} costs {list(sepsis.COST_NAMES)}, the "
                         f"dataset has {dataset.n_costs}")
    died = np.zeros(dataset.num_steps, bool) if died is None else np.asarray(died, bool)
    splits = split_by_patient(dataset, seed)
    train = splits["train"]
    obs, actions = np.asarray(dataset.observations), np.asarray(dataset.actions)
    guardian = guard.fit_guardian(obs[train], actions[train], bandwidth, percentile, guardian_kind, knn_k)

    def model(mask):
        return guard.fit_nearest_neighbour(obs[mask], actions[mask], np.asarray(dataset.next_observations)[mask],
                                           dataset.rewards[mask], dataset.costs[mask], dataset.terminals[mask],
                                           died[mask], guardian.normaliser)

    everything = np.ones(dataset.num_steps, bool)
    return SepsisTask(dataset, died, splits, guardian, model(train), model(everything),
                      _first_steps(dataset, train), _first_steps(dataset, splits["test"]), env_params, int(seed))


#: Dynamics models a learner can train in (``MethodSettings.dynamics``): the paper's 1-NN lookup, or the ensemble.
DYNAMICS = ("knn", "ensemble")
#: Ensemble outcome classes of a step: 0 continue, 1 death, 2 discharge (terminal without death).
OUTCOME_CONTINUE, OUTCOME_DEATH, OUTCOME_DISCHARGE = 0, 1, 2


def ensemble_training_data(task: SepsisTask, mask: np.ndarray | None = None):
    """``(inputs, targets, labels)`` of the ensemble: normalised ``(s, a)`` (the guardian's normaliser), the change
    of the normalised state, and the step's outcome class (continue / death / discharge); training split by
    default."""
    mask = task.splits["train"] if mask is None else mask
    data = task.dataset
    obs, actions = np.asarray(data.observations)[mask], np.asarray(data.actions)[mask]
    next_obs = np.asarray(data.next_observations)[mask]
    norm = task.state_normaliser
    inputs = np.asarray(task.guardian.normaliser(jnp.concatenate([jnp.asarray(obs), jnp.asarray(actions)], 1)))
    targets = np.asarray(norm(jnp.asarray(next_obs)) - norm(jnp.asarray(obs)))
    died, terminal = task.died[mask], np.asarray(data.terminals)[mask]
    labels = np.where(died, OUTCOME_DEATH, np.where(terminal, OUTCOME_DISCHARGE, OUTCOME_CONTINUE)).astype(np.int32)
    return inputs, targets, labels


def with_ensemble(task: SepsisTask, config: ens.EnsembleConfig = ens.EnsembleConfig(), key=None) -> SepsisTask:
    """``task`` with a probabilistic ensemble fitted on its training split (``key`` defaults to
    ``fold_in(PRNGKey(task.seed), 11)``)."""
    key = jax.random.fold_in(jax.random.PRNGKey(task.seed), 11) if key is None else key
    inputs, targets, labels = ensemble_training_data(task)
    model, _ = ens.fit_ensemble(key, config, inputs, targets, labels, num_classes=3)
    return task._replace(ensemble=model)


# ------------------------------------------------------------------------------------------------ the model as an env


class ModelEnvState(NamedTuple):
    obs: jax.Array  # raw state [OBS_DIM]
    frozen: jax.Array  # bool: an OOD step froze the episode (penalty mode)
    time: jax.Array


class ModelEnv(SafeEnv):
    """The learned model of a :class:`SepsisTask` as a :class:`~jaxsafe.envs.core.SafeEnv` (the E-CMDP).

    Observations are the normalised state; actions SepsisSim's. With a
    :class:`~jaxsafe.offline.guardian.NearestNeighbourModel` each step looks up the nearest dataset transition of
    ``(s, a)``: its next state, reward, physiological costs and terminal flag. With an
    :class:`~jaxsafe.offline.ensemble.EnsembleModel` a member is drawn per step, the next normalised state is
    sampled from its Gaussian (clipped to ``[-1.5, 1.5]``) and the outcome (continue / death / discharge) from its
    softmax; the reward and costs are :func:`sepsis.observed_reward_and_costs` of the sampled state (known functions
    of the observation, as in SepsisSim). Costs are ``[SpO2, urine, OOD]`` with ``OOD = g(s, a)`` of the guardian. With ``ood_penalty`` set (GMB-TRPO), an OOD step instead gets that
    reward and freezes the state, and every later step of the episode gets the penalty too (the official code's
    guarded rollout). ``info``: ``ood``, ``died``, ``disagreement`` (the ensemble's; 0 for the 1-NN model).
    """

    n_costs = N_PHYS_COSTS + 1

    def __init__(self, model: guard.NearestNeighbourModel, guardian: guard.Guardian, initial_states,
                 state_normaliser: guard.Normaliser, max_steps: int = 20, ood_penalty: float | None = None,
                 death_penalty: float = 100.0):
        if not isinstance(model, (guard.NearestNeighbourModel, ens.EnsembleModel)):
            raise ValueError(f"ModelEnv: model must be a NearestNeighbourModel or an EnsembleModel, got "
                             f"{type(model).__name__}")
        self.model, self.guardian = model, guardian
        self.death_penalty = float(death_penalty)
        self.initial_states = jnp.asarray(initial_states, jnp.float32)
        self.state_normaliser = state_normaliser
        self.max_steps = int(max_steps)
        self.ood_penalty = ood_penalty

    @property
    def name(self) -> str:
        return "SepsisModel"

    @property
    def default_params(self):
        return None

    def observation_space(self, params):
        return spaces.Box(-1.5, 1.5, (OBS_DIM,), jnp.float32)

    def action_space(self, params):
        return spaces.Box(-1.0, 1.0, (ACTION_DIM,), jnp.float32)

    def _info(self, ood, died, disagreement=0.0):
        return {"ood": jnp.asarray(ood, bool), "died": jnp.asarray(died, bool),
                "disagreement": jnp.asarray(disagreement, jnp.float32)}

    def _transition(self, key, obs, action):
        """``(next_obs, reward, phys_cost [2], terminated, died, disagreement)`` of the learned model."""
        if isinstance(self.model, guard.NearestNeighbourModel):
            index = guard.nearest_index(self.model, obs[None], action[None])[0]
            m = self.model
            return (m.next_states[index], m.rewards[index], m.costs[index], m.terminals[index], m.died[index],
                    jnp.zeros((), jnp.float32))
        x = self.guardian.normaliser(jnp.concatenate([obs, action]))
        delta, outcome, _ = ens.sample(self.model, key, x)
        next_obs = self.state_normaliser.inverse(jnp.clip(self.state_normaliser(obs) + delta, -1.5, 1.5))
        died = outcome == OUTCOME_DEATH
        reward, phys_cost = sepsis.observed_reward_and_costs(next_obs, died, self.death_penalty)
        return next_obs, reward, phys_cost, outcome != OUTCOME_CONTINUE, died, ens.disagreement(self.model, x)

    def reset(self, key, params):
        obs = self.initial_states[jax.random.randint(key, (), 0, self.initial_states.shape[0])]
        false = jnp.zeros((), bool)
        state = ModelEnvState(obs, false, jnp.zeros((), jnp.int32))
        return state, TimeStep(self.state_normaliser(obs), jnp.zeros(()), jnp.zeros((self.n_costs,)), false, false,
                               self._info(false, false))

    def step(self, key, state: ModelEnvState, action, params):
        action = jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0)
        ood = guard.guardian_flags(self.guardian, state.obs[None], action[None])[0]
        next_obs, reward, phys_cost, terminated, died, disagreement = self._transition(key, state.obs, action)
        if self.ood_penalty is not None:
            penalised = ood | state.frozen
            next_obs = jnp.where(penalised, state.obs, next_obs)
            reward = jnp.where(penalised, self.ood_penalty, reward)
            terminated, died = terminated & ~penalised, died & ~penalised
            frozen = penalised
        else:
            frozen = state.frozen
        time = state.time + 1
        truncated = (time >= self.max_steps) & ~terminated
        cost = jnp.concatenate([phys_cost, ood.astype(jnp.float32)[None]])
        new_state = ModelEnvState(next_obs, frozen, time)
        return new_state, TimeStep(self.state_normaliser(next_obs), reward.astype(jnp.float32), cost, terminated,
                                   truncated, self._info(ood, died, disagreement))


def model_env(task: SepsisTask, which: str = "train", ood_penalty: float | None = None,
              initial: str = "train", dynamics: str = "knn") -> ModelEnv:
    """The train (learning) or eval (all data) model of ``task`` as a :class:`ModelEnv`, starting from the
    training or test split's initial states. ``dynamics``: ``"knn"`` (the paper's 1-NN lookup) or ``"ensemble"``
    (``task.ensemble``, fitted on the training split by :func:`with_ensemble`; training copy only)."""
    if dynamics not in DYNAMICS:
        raise ValueError(f"dynamics must be one of {list(DYNAMICS)}, got {dynamics!r}")
    if dynamics == "ensemble":
        if which != "train":
            raise ValueError("dynamics='ensemble' has a training copy only (it is fitted on the training split); "
                             "evaluation uses the 1-NN eval model")
        if task.ensemble is None:
            raise ValueError("dynamics='ensemble' needs a task with a fitted ensemble: task = with_ensemble(task) "
                             "(or build_task(...) then with_ensemble)")
        model = task.ensemble
    else:
        model = task.model_train if which == "train" else task.model_eval
    starts = task.initial_train if initial == "train" else task.initial_test
    return ModelEnv(model, task.guardian, starts, task.state_normaliser, int(task.env_params.max_steps),
                    ood_penalty, float(task.env_params.death_penalty))


# ------------------------------------------------------------------------------------------------ CPO, several costs

#: The multi-constraint CPO step lives in :mod:`jaxsafe.rl.trust_region` (one way to solve the CPO subproblem).
multi_constraint_cpo_step = trust_region.multi_constraint_cpo_step_from_solves
CASE_RECOVERY = trust_region.CASE_INFEASIBLE_RECOVERY


def make_multi_cpo_train_parts(config: cpo.CPOConfig, env: SafeEnv | tuple, env_params: Any = None) -> TrainParts:
    """CPO with one trust-region constraint per cost (GMB-CPO, MB-CPO) on any safe environment.

    The contract and the hyperparameters are :mod:`jaxsafe.rl.cpo`'s (``CPOConfig(method="cpo")``,
    ``config.default_hparams(n_costs)`` with a ``cost_limit`` per cost); the rollout, GAE, Fisher products, CG
    and line search are the shared ones. Only the step differs: :func:`multi_constraint_cpo_step` with
    ``c_j = (J_cj - limit_j) / L`` (CPO's per-step scaling), and a line search that requires every cost surrogate
    not to rise by more than its ``max(-c_j, 0)``.
    """
    env, env_params = env_problem(env, env_params)
    if config.method != "cpo":
        raise ValueError(f"make_multi_cpo_train_parts: CPOConfig.method must be 'cpo', got {config.method!r}")
    n_costs = env.n_costs
    setup = make_on_policy(config, env, env_params)
    actor, critic, cost_critic, collect = setup.actor, setup.critic, setup.cost_critic, setup.collect
    critic_optimizer = optax.scale_by_adam()
    minibatch_size = config.batch_size // config.critic_minibatches

    def per_cost(x):  # [...] for one cost -> [..., 1]
        return x[..., None] if n_costs == 1 else x

    def init(key, hparams):
        check_cost_limit(hparams, env)
        params, env_state, obs, key = setup.init(key)
        return cpo.CPOState(params, critic_optimizer.init((params.critic, params.cost_critic)),
                            constraints.none().init(hparams, (n_costs,)), env_state, obs, key,
                            jnp.zeros((), jnp.int32))

    def critic_loss(critic_params, batch):
        obs, value_target, cost_target = batch
        value_loss = losses.value_loss(critic.apply(critic_params[0], obs), value_target)
        prediction = per_cost(cost_critic.apply(critic_params[1], obs))
        cost_loss = jax.vmap(losses.value_loss, in_axes=-1)(prediction, cost_target).sum()
        return value_loss + cost_loss, (value_loss, cost_loss)

    def update(state, hparams):
        check_cost_limit(hparams, env)
        rollout = collect(state.params, state.env_state, state.obs, state.key)
        traj, stats, key = rollout.traj, rollout.stats, rollout.key
        limits = jnp.reshape(hparams.cost_limit, (n_costs,))
        measured = constraints.measured_or_limit(jnp.reshape(stats.episode_cost, (n_costs,)), limits)
        advantages, value_targets, cost_advantages, cost_targets = compute_advantages(traj, hparams)
        advantages = losses.standardise(advantages)
        cost_advantages = jax.vmap(losses.centre, in_axes=-1, out_axes=-1)(per_cost(cost_advantages))
        flat = jax.tree.map(lambda x: x.reshape((config.batch_size,) + x.shape[2:]),
                            (traj.obs, traj.action, traj.log_prob, advantages, cost_advantages, value_targets,
                             per_cost(cost_targets)))
        obs, action, old_log_prob, advantage, cost_advantage, value_target, cost_target = flat

        flat_actor, unflatten = trust_region.flatten(state.params.actor)
        old_dist = actor.apply(jax.lax.stop_gradient(state.params.actor), obs)

        def surrogates(flat_params):  # (reward surrogate, [K] cost surrogates)
            ratio = jnp.exp(actor.apply(unflatten(flat_params), obs).log_prob(action) - old_log_prob)
            return (ratio * advantage).mean(), (ratio[:, None] * cost_advantage).mean(0)

        def mean_kl(flat_params):
            return old_dist.kl_divergence(actor.apply(unflatten(flat_params), obs)).mean()

        reward_grad = jax.grad(lambda p: surrogates(p)[0])(flat_actor)
        cost_grads = jax.jacrev(lambda p: surrogates(p)[1])(flat_actor)  # [K, P]
        fvp = trust_region.make_fisher_vector_product(mean_kl, flat_actor, hparams.damping)
        solve = lambda v: trust_region.conjugate_gradient(fvp, v, config.cg_iters)  # noqa: E731
        length = jnp.where(jnp.isnan(stats.episode_length), 1.0, jnp.maximum(stats.episode_length, 1.0))
        constraint_values = (measured - limits) / length
        step = trust_region.multi_constraint_cpo_step_from_solves(
            reward_grad, cost_grads, constraint_values, solve(reward_grad), jax.vmap(solve)(cost_grads),
            hparams.target_kl)
        safe_step = jnp.where(jnp.all(jnp.isfinite(step.step)), step.step, 0.0)
        allowed = jnp.maximum(-constraint_values, 0.0)
        cost_before = surrogates(flat_actor)[1]

        def worst_excess(flat_params):  # <= 0 iff every cost surrogate rose by at most its allowance
            return jnp.max(surrogates(flat_params)[1] - cost_before - allowed)

        search = trust_region.backtracking_line_search(
            flat_actor, safe_step, lambda p: surrogates(p)[0], mean_kl, hparams.target_kl, worst_excess,
            -worst_excess(flat_actor), step.case != CASE_RECOVERY, backtrack_ratio=hparams.line_search_decay,
            max_backtracks=config.line_search_steps)

        def minibatch_step(carry, batch):
            critic_params, opt_state = carry
            grads, (value_loss, cost_loss) = jax.grad(critic_loss, has_aux=True)(critic_params, batch)
            updates, opt_state = critic_optimizer.update(grads, opt_state, critic_params)
            updates = jax.tree.map(lambda u: -hparams.critic_learning_rate * u, updates)
            return (optax.apply_updates(critic_params, updates), opt_state), (value_loss, cost_loss)

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, config.batch_size)
            batches = jax.tree.map(lambda x: x[order].reshape((config.critic_minibatches, minibatch_size)
                                                              + x.shape[1:]), (obs, value_target, cost_target))
            return jax.lax.scan(minibatch_step, carry, batches)

        key, epoch_key = jax.random.split(key)
        (critic_params, critic_opt_state), (value_loss, cost_loss) = jax.lax.scan(
            epoch, ((state.params.critic, state.params.cost_critic), state.critic_opt_state),
            jax.random.split(epoch_key, config.critic_epochs))
        params = ActorCriticParams(unflatten(search.params), *critic_params)
        new_state = cpo.CPOState(params, critic_opt_state, state.constraint, rollout.env_state, rollout.obs, key,
                                 state.update_step + 1)
        metrics = dict(env_steps=new_state.update_step * config.batch_size, episode_return=stats.episode_return,
                       episode_cost=jnp.reshape(stats.episode_cost, (n_costs,)), episode_length=stats.episode_length,
                       step_cost=per_cost(traj.cost).mean((0, 1)), constraint_value=constraint_values,
                       case=step.case, cost_multiplier=step.cost_multiplier, accepted=search.accepted,
                       step_fraction=search.step_fraction, approx_kl=search.kl, value_loss=value_loss.mean(),
                       cost_value_loss=cost_loss.mean(),
                       nonfinite=~(jnp.isfinite(value_loss.mean()) & jnp.all(jnp.isfinite(search.params))))
        return new_state, metrics

    return TrainParts(init, update, config.num_updates, config.batch_size)


# ------------------------------------------------------------------------------------------------ methods


class MethodSettings(NamedTuple):
    """What :func:`train_method` needs beyond the task (defaults: a CPU-sized version of the paper's)."""

    updates: int = 300  # policy updates (paper: 20,000 epochs)
    num_envs: int = 32  # simulated episodes per update (paper: 32)
    hidden: tuple = (64, 64)  # paper: 128, 128
    cost_limits: tuple = (1.0, 1.0)  # per physiological cost, in unsafe steps per 20-step episode
    ood_limit: float = 0.5  # OOD steps per episode (paper's COST_LIMIT 0.5)
    ood_penalty: float = -25.0  # GMB-TRPO's reward on an OOD step (the official code's KDE penalty)
    target_kl: float = 0.01
    bc_updates: int = 2000
    dynamics: str = "knn"  # the model the model-based learners train in: "knn" (the paper's) or "ensemble"
    cql_updates: int = 5000  # CQL / GCQL gradient steps (batch 256)
    cql_alpha: float = 1.0
    gcql_ood_target: float = -20.0  # GCQL's bootstrap value at a flagged pair (rewards scaled by 0.1: -200 unscaled)


def _cpo_config(settings: MethodSettings, method: str) -> cpo.CPOConfig:
    steps = int(settings.num_envs) * 20
    return cpo.CPOConfig(num_envs=int(settings.num_envs), num_steps=20, total_steps=steps * int(settings.updates),
                         hidden=tuple(settings.hidden), method=method, cg_iters=10, line_search_steps=30,
                         critic_epochs=2, critic_minibatches=4)


def check_cost_limits(settings: MethodSettings) -> None:
    """``ValueError`` unless there is one limit per physiological cost (and every limit is >= 0)."""
    limits = tuple(settings.cost_limits)
    if len(limits) != N_PHYS_COSTS:
        raise ValueError(f"cost_limits must have {N_PHYS_COSTS} entries, one per physiological cost "
                         f"{list(sepsis.COST_NAMES)} (the OOD limit is ood_limit), got {len(limits)}: {list(limits)}")
    if settings.dynamics not in DYNAMICS:
        raise ValueError(f"MethodSettings.dynamics must be one of {list(DYNAMICS)}, got {settings.dynamics!r}")
    if any(not np.isfinite(v) or v < 0 for v in limits + (settings.ood_limit,)):
        raise ValueError(f"cost_limits and ood_limit must be finite and >= 0, got {list(limits)} and "
                         f"{settings.ood_limit}")


class TrainedPolicy(NamedTuple):
    method: str
    act: Callable  # act(normalised_obs, key) -> action, deterministic
    params: Any
    curves: dict  # metric -> [updates, ...] numpy


def normalised_training_data(task: SepsisTask) -> TrajectoryDataset:
    """The training split with observations (and next observations) normalised as policies see them."""
    norm = task.state_normaliser
    data = task.dataset._replace(
        observations=np.asarray(norm(jnp.asarray(task.dataset.observations))),
        next_observations=np.asarray(norm(jnp.asarray(task.dataset.next_observations))))
    return jax.tree.map(lambda x: x[task.splits["train"]], data)


def guardian_ood_fn(task: SepsisTask) -> Callable:
    """``ood_fn(normalised_obs [B, 9], action [B, 2]) -> [B] bool``: the task's guardian on policy inputs."""
    norm = task.state_normaliser
    return lambda obs, action: guard.guardian_flags(task.guardian, norm.inverse(obs), action)


def _train_cql(task: SepsisTask, method: str, key, settings: MethodSettings) -> TrainedPolicy:
    data = normalised_training_data(task)
    config = cql.CQLConfig(hidden=tuple(settings.hidden), num_updates=int(settings.cql_updates),
                           guarded=method == "gcql")
    problem = cql.GuardedDataset(data, guardian_ood_fn(task))
    hparams = config.default_hparams().replace(cql_alpha=jnp.float32(settings.cql_alpha),
                                               ood_target=jnp.float32(settings.gcql_ood_target)).validate()
    result = jax.jit(train_from_parts(cql.make_train_parts(config, problem)))(key, hparams)
    act_fn = cql.make_act(config, problem)
    params = result.params
    act = lambda obs, k: act_fn(params, obs, k, True)  # noqa: E731
    return TrainedPolicy(method, act, params, {k: np.asarray(v) for k, v in result.metrics.items()})


def train_method(task: SepsisTask, method: str, key, settings: MethodSettings = MethodSettings()) -> TrainedPolicy:
    """Train one of :data:`METHODS` on ``task`` and return its deterministic policy and learning curves."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    check_cost_limits(settings)
    if method == "bc":
        train = task.splits["train"]
        data = task.dataset._replace(observations=np.asarray(task.state_normaliser(
            jnp.asarray(task.dataset.observations))))
        data = jax.tree.map(lambda x: x[train], data)
        config = baselines.BCConfig(hidden=tuple(settings.hidden), num_updates=int(settings.bc_updates),
                                    batch_size=256)
        result = jax.jit(train_from_parts(baselines.make_train_parts(config, data)))(key, config.default_hparams())
        policy = baselines.make_policy(config, data, result.params, -1.0, 1.0)
        act = lambda obs, k: policy.step(None, obs, k)[1]  # noqa: E731
        return TrainedPolicy(method, act, result.params, {k: np.asarray(v) for k, v in result.metrics.items()})
    if method in ("cql", "gcql"):
        return _train_cql(task, method, key, settings)
    ood_cost_limit = settings.ood_limit if method == "gmb_cpo" else UNCONSTRAINED
    limits = jnp.asarray(tuple(settings.cost_limits) + (ood_cost_limit,), jnp.float32)
    if method == "gmb_trpo":
        env = model_env(task, "train", ood_penalty=settings.ood_penalty, dynamics=settings.dynamics)
        config = _cpo_config(settings, "trpo_lag")
        hparams = config.default_hparams(env.n_costs).replace(cost_limit=limits, multiplier_lr=0.0,
                                                              initial_multiplier=0.0)
        parts = cpo.make_train_parts(config, env, None)
    else:
        env = model_env(task, "train", dynamics=settings.dynamics)
        config = _cpo_config(settings, "cpo")
        hparams = config.default_hparams(env.n_costs).replace(cost_limit=limits)
        parts = make_multi_cpo_train_parts(config, env, None)
    hparams = hparams.replace(target_kl=jnp.float32(settings.target_kl), damping=jnp.float32(1.0)).validate()
    result = jax.jit(train_from_parts(parts))(key, hparams)
    act_fn = make_act(config, env, None)
    params = result.params
    act = lambda obs, k: act_fn(params, obs, k, True)  # noqa: E731
    return TrainedPolicy(method, act, params, {k: np.asarray(v) for k, v in result.metrics.items()})


# ------------------------------------------------------------------------------------------------ metrics


class Simulated(NamedTuple):
    """``E`` episodes of ``T`` steps of a policy (leading axes ``[E, T]``)."""

    obs: np.ndarray  # raw states the policy acted on
    actions: np.ndarray
    costs: np.ndarray  # [E, T, 2] physiological
    ood: np.ndarray  # guardian flags of (s, a)
    died: np.ndarray
    valid: np.ndarray
    rewards: np.ndarray


def simulate(env: SafeEnv, env_params, act_raw: Callable, key, num_episodes: int, num_steps: int,
             task: SepsisTask) -> Simulated:
    """Roll out ``act_raw(raw_obs, key) -> action`` in SepsisSim or a :class:`ModelEnv`; guardian flags of each
    visited pair. Raw observations are recovered from a ModelEnv's normalised ones."""
    is_model = isinstance(env, ModelEnv)
    to_raw = task.state_normaliser.inverse if is_model else (lambda o: o)

    def episode(k):
        k_reset, k_run = jax.random.split(k)
        state, ts = env.reset(k_reset, env_params)

        def body(carry, step_key):
            state, obs, alive = carry
            k_act, k_env = jax.random.split(step_key)
            raw = to_raw(obs)
            action = jnp.clip(act_raw(raw, k_act), -1.0, 1.0)
            state, ts = env.step(k_env, state, action, env_params)
            ood = guard.guardian_flags(task.guardian, raw[None], action[None])[0]
            out = (raw, action, ts.cost[:N_PHYS_COSTS], ood, ts.info["died"], alive, ts.reward)
            alive = alive & ~(ts.terminated | ts.truncated)
            return (state, ts.obs, alive), out

        _, out = jax.lax.scan(body, (state, ts.obs, jnp.ones((), bool)), jax.random.split(k_run, num_steps))
        return out

    out = jax.jit(jax.vmap(episode))(jax.random.split(key, num_episodes))
    return Simulated(*[np.asarray(x) for x in out])


def _rollout_summary(sim: Simulated) -> dict:
    valid = sim.valid
    steps = max(valid.sum(), 1)
    dose_scale = np.asarray([sepsis.MAX_FLUID_L / 2.0, sepsis.MAX_VASO / 2.0])
    jumps = np.abs(np.diff(sim.actions, axis=1)) * dose_scale  # [E, T-1, 2] in litres, mcg/kg/min
    both = valid[:, 1:] & valid[:, :-1]
    acp = (jumps * both[..., None]).sum((0, 1)) / max(both.sum(), 1)
    return {
        "mortality": float((sim.died & valid).any(1).mean()),
        "unsafe_spo2_rate": float((sim.costs[..., 0] * valid).sum() / steps),
        "unsafe_urine_rate": float((sim.costs[..., 1] * valid).sum() / steps),
        "ood_rate": float((sim.ood & valid).sum() / steps),
        "return": float((sim.rewards * valid).sum(1).mean()),
        "acp_fluid_l": float(acp[0]),
        "acp_vaso": float(acp[1]),
    }


def soc_metrics(task: SepsisTask, key, num_episodes: int = 1000) -> dict:
    """The standard of care: model-side numbers from the test split's data (as the paper), true ones from
    running the clinician policy in SepsisSim."""
    test = task.splits["test"]
    data = task.dataset
    ids = data.episode_ids[test]
    valid_steps = max(test.sum(), 1)
    actions = np.asarray(data.actions)[test]
    same_episode = ids[1:] == ids[:-1]
    dose_scale = np.asarray([sepsis.MAX_FLUID_L / 2.0, sepsis.MAX_VASO / 2.0])
    acp = (np.abs(np.diff(actions, axis=0)) * dose_scale)[same_episode].mean(0)
    ood = np.asarray(guard.guardian_flags(task.guardian, np.asarray(data.observations)[test], actions))
    model = {"mortality": float(np.isin(np.unique(ids), ids[task.died[test]]).mean()),
             "unsafe_spo2_rate": float(data.costs[test, 0].sum() / valid_steps),
             "unsafe_urine_rate": float(data.costs[test, 1].sum() / valid_steps),
             "ood_rate": float(ood.mean()), "acp_fluid_l": float(acp[0]), "acp_vaso": float(acp[1])}
    sim = simulate(sepsis.SepsisSim(), task.env_params, lambda o, k: sepsis.clinician_action(o, k), key,
                   num_episodes, int(task.env_params.max_steps), task)
    return {"model": model, "true": _rollout_summary(sim)}


def policy_metrics(task: SepsisTask, act: Callable, key, num_episodes: int = 1000, epsilon: float = 0.2) -> dict:
    """The paper's metrics of a policy ``act(normalised_obs, key)``, in the eval model and in the true simulator.

    * ``mcr``: share of test steps with ``|pi(s) - a_SoC|_2 < epsilon`` (action units of ``[-1, 1]^2``).
    * ``air``: among test steps whose state has SpO2 < 92 % or urine < 0.5 mL/kg/h, the share where the policy's
      summed dose (fluid + vasopressor, action units) exceeds the clinicians' dose of the previous step.
    * ``model``: ME (mortality of eval-model rollouts of 20 steps from test initial states), ACP per dose, unsafe
      SpO2 / urine step rates and their % change vs SoC's data, OOD rate. ``true``: the same from SepsisSim.
    """
    norm = task.state_normaliser
    act_raw = lambda o, k: act(norm(o), k)  # noqa: E731
    test = task.splits["test"]
    data = task.dataset
    obs, actions = np.asarray(data.observations)[test], np.asarray(data.actions)[test]
    ids = data.episode_ids[test]
    policy_actions = np.asarray(jax.jit(jax.vmap(act))(norm(jnp.asarray(obs)),
                                                       jax.random.split(key, obs.shape[0])))
    mcr = float((np.linalg.norm(policy_actions - actions, axis=1) < epsilon).mean())
    previous = np.concatenate([np.full((1, ACTION_DIM), -1.0), actions[:-1]])
    previous[np.concatenate([[True], ids[1:] != ids[:-1]])] = -1.0
    v = sepsis.vitals(obs)
    unsafe = (np.asarray(v["spo2"]) < sepsis.SPO2_THRESHOLD) | (np.asarray(v["urine_output"]) < sepsis.URINE_THRESHOLD)
    increase = policy_actions.sum(1) > previous.sum(1)
    air = float(increase[unsafe].mean()) if unsafe.any() else float("nan")
    k_model, k_true = jax.random.split(jax.random.fold_in(key, 1))
    steps = int(task.env_params.max_steps)
    model = _rollout_summary(simulate(model_env(task, "eval", initial="test"), None, act_raw, k_model, num_episodes,
                                      steps, task))
    true = _rollout_summary(simulate(sepsis.SepsisSim(), task.env_params, act_raw, k_true, num_episodes, steps,
                                     task))
    return {"mcr": mcr, "air": air, "model": model, "true": true}


def with_changes(metrics: dict, soc: dict) -> dict:
    """Add ``*_change_pct`` (unsafe-state % change vs SoC) to a policy's ``model`` and ``true`` blocks."""
    out = {**metrics}
    for side in ("model", "true"):
        block = dict(metrics[side])
        for name in ("unsafe_spo2_rate", "unsafe_urine_rate"):
            base = soc[side][name]
            block[name.replace("_rate", "_change_pct")] = float(100.0 * (block[name] - base) / base) if base else 0.0
        out[side] = block
    return out


def evaluate(task: SepsisTask, act: Callable, key, num_episodes: int = 1000, soc: dict | None = None) -> dict:
    """:func:`policy_metrics` with the unsafe-state changes against :func:`soc_metrics` (computed if not given)."""
    soc = soc_metrics(task, jax.random.fold_in(key, 7), num_episodes) if soc is None else soc
    return with_changes(policy_metrics(task, act, key, num_episodes), soc)


def state_embedding(states: dict[str, np.ndarray], normaliser: guard.Normaliser) -> dict[str, np.ndarray]:
    """A 2-D PCA embedding (fitted on all groups together) of each group's normalised states ``[n, OBS_DIM]``:
    our stand-in for the paper's t-SNE plots (deterministic, no extra dependency)."""
    normed = {name: np.asarray(normaliser(jnp.asarray(x))) for name, x in states.items()}
    stacked = np.concatenate(list(normed.values()))
    mean = stacked.mean(0)
    _, _, vt = np.linalg.svd(stacked - mean, full_matrices=False)
    return {name: (x - mean) @ vt[:2].T for name, x in normed.items()}


# ------------------------------------------------------------------------------------------------ ICU-Sepsis (exact)

ICU_DEATH, ICU_SURVIVAL, ICU_ABSORBING = 713, 714, 715
ICU_COST_NAMES = ("high_vasopressor", "high_sofa_state")
ICU_EXTRA_HINT = "pip install 'jaxsafe[icu]' (or: pip install icu-sepsis)"


class ICUSepsis(NamedTuple):
    """The ICU-Sepsis MDP (Choudhary et al. 2024; 716 states, 25 actions) in jaxsafe's tabular convention."""

    mdp: Any  # exact.TabularMDP: terminal = {death, survival, absorbing}, reward = P(survival | s, a)
    clinician_policy: np.ndarray  # [S, A]
    sofa: np.ndarray  # [S]


def load_icu_sepsis(sofa_threshold: float = 10.0) -> ICUSepsis:
    """Read the ``icu-sepsis`` package's ``dynamics.npz`` (its files only: the package, which needs gym, is not
    imported) as a :class:`~jaxsafe.exact.tabular.TabularMDP` with two **synthetic** costs: a high vasopressor
    dose (vasopressor bin >= 3 of 5, with action ``= 5 * fluid_bin + vasopressor_bin``) and being in a state whose
    SOFA score is ``>= sofa_threshold``.

    Raises:
      ValueError: the optional extra is not installed (says how to install it).
    """
    import importlib.util
    from pathlib import Path

    from jaxsafe.exact.tabular import TabularMDP

    spec = importlib.util.find_spec("icu_sepsis")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"task 'icu-sepsis' needs the optional icu-sepsis package, which is not installed: "
                         f"{ICU_EXTRA_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "envs" / "assets" / "dynamics.npz"
    if not path.is_file():
        raise ValueError(f"icu-sepsis is installed but {path} is missing; reinstall it: {ICU_EXTRA_HINT}")
    data = np.load(path, allow_pickle=False)
    transitions = np.asarray(data["tx_mat"], np.float64)
    rewards = (transitions * np.asarray(data["r_mat"], np.float64)).sum(-1)
    sofa = np.asarray(data["sofa_scores"], np.float64)
    num_states, num_actions = rewards.shape
    terminal = np.zeros(num_states, bool)
    terminal[[ICU_DEATH, ICU_SURVIVAL, ICU_ABSORBING]] = True
    transitions[terminal] = 0.0
    rewards[terminal] = 0.0
    high_vaso = np.broadcast_to((np.arange(num_actions) % 5 >= 3).astype(np.float64), (num_states, num_actions))
    high_sofa = np.broadcast_to((sofa >= sofa_threshold).astype(np.float64)[:, None], (num_states, num_actions))
    costs = np.stack([high_vaso, high_sofa], -1) * (~terminal)[:, None, None]
    initial = np.asarray(data["d_0"], np.float64)
    mdp = TabularMDP(transitions, rewards, costs, initial / initial.sum(), terminal)
    return ICUSepsis(mdp, np.asarray(data["expert_policy"], np.float64), sofa)


def sample_tabular_episodes(transitions, policy, initial, terminal, key: int, num_episodes: int,
                            max_steps: int = 50) -> np.ndarray:
    """``[S, A, S]`` transition counts of ``num_episodes`` episodes of ``policy`` in a tabular MDP (numpy)."""
    rng = np.random.default_rng(key)
    num_states, num_actions = policy.shape
    counts = np.zeros((num_states, num_actions, num_states))
    totals = policy.sum(1, keepdims=True)
    policy_cdf = np.cumsum(np.where(totals > 0, policy / np.where(totals > 0, totals, 1.0), 1.0 / num_actions), 1)
    transition_cdf = np.cumsum(transitions, 2)
    states = rng.choice(num_states, num_episodes, p=initial)
    alive = ~terminal[states]
    for _ in range(max_steps):
        if not alive.any():
            break
        s = states[alive]
        a = np.minimum((policy_cdf[s] < rng.random((s.size, 1))).sum(1), num_actions - 1)
        nxt = np.minimum((transition_cdf[s, a] < rng.random((s.size, 1))).sum(1), num_states - 1)
        np.add.at(counts, (s, a, nxt), 1.0)
        states[alive] = nxt
        alive[alive] = ~terminal[nxt]
    return counts


def estimate_tabular_mdp(counts, true_mdp, min_count: int = 5):
    """The count-based E-CMDP and the OOD flags ``N(s, a) < min_count``: ``(mdp_hat, flagged [S, A])``.

    ``T_hat = counts / N(s, a)``; a pair is flagged when it was tried fewer than ``min_count`` times in a state
    where some other action was tried at least that often; a pair never tried falls back to the state's pooled transitions over the actions
    tried there (a state never visited goes to death). The reward is the estimated survival probability of the
    step; the costs are the synthetic ones of the true MDP (known functions of ``(s, a)``), plus a third,
    ``1[(s, a) flagged]``, the OOD cost of the guarded problem.
    """
    from jaxsafe.exact.tabular import TabularMDP

    counts = np.asarray(counts, np.float64)
    pair = counts.sum(2)
    state_total = pair.sum(1)
    pooled = np.where(state_total[:, None] > 0, counts.sum(1) / np.maximum(state_total, 1)[:, None], 0.0)
    pooled[state_total == 0, ICU_DEATH] = 1.0
    transitions = np.where(pair[..., None] > 0, counts / np.maximum(pair, 1)[..., None], pooled[:, None, :])
    terminal = np.asarray(true_mdp.terminal, bool)
    transitions[terminal] = 0.0
    rare = pair < min_count
    # A pair is flagged when it is rare although its state has a well-supported action: the guard is about
    # actions the data do not support, and a state none of whose actions is supported cannot be avoided there.
    flagged = rare & ~rare.all(1, keepdims=True) & ~terminal[:, None]
    costs = np.concatenate([np.asarray(true_mdp.costs), flagged[..., None].astype(np.float64)], -1)
    rewards = transitions[:, :, ICU_SURVIVAL].copy()
    return TabularMDP(transitions, rewards, costs, np.asarray(true_mdp.initial), terminal), flagged


def _survival(mdp, policy, steps: int = 500) -> float:
    """Probability of reaching the survival state within ``steps`` steps (undiscounted)."""
    policy_transitions = np.einsum("sa,sat->st", policy, np.asarray(mdp.transitions, np.float64))
    live = ~np.asarray(mdp.terminal, bool)
    dist = np.asarray(mdp.initial, np.float64).copy()
    survived = 0.0
    for _ in range(steps):
        step = dist @ policy_transitions
        survived += step[ICU_SURVIVAL]
        dist = step * live
    return float(survived)


def icu_sepsis_track(seed: int = 42, num_episodes: int = 20_000, min_count: int = 5, gamma: float = 0.99,
                     ood_limit: float = 0.0, icu: ICUSepsis | None = None, with_oracle: bool = True) -> dict:
    """The exact guarded-vs-unguarded comparison on ICU-Sepsis (see the module docstring of ``docs/ogsrl.md``).

    Clinicians' data (``num_episodes`` episodes of the package's clinician policy) give the count model and the
    flags. Both problems maximise the model's discounted survival reward subject to the synthetic costs staying at
    the clinicians' (model) values; the guarded one adds ``E[sum gamma^t 1[flagged]] <= ood_limit``. Solved exactly
    by :func:`jaxsafe.exact.tabular.solve_constrained_mdp`, then each policy is scored in the model and in the true
    MDP. Returns ``{name: {model_value, true_value, survival, ood_mass, cost_values_true}}`` for
    ``clinicians``, ``unguarded``, ``guarded`` and (``with_oracle``) the true constrained optimum ``oracle``.
    """
    from jaxsafe.exact.tabular import evaluate_policy, solve_constrained_mdp

    icu = load_icu_sepsis() if icu is None else icu
    true = icu.mdp
    counts = sample_tabular_episodes(np.asarray(true.transitions), icu.clinician_policy, np.asarray(true.initial),
                                     np.asarray(true.terminal), seed, num_episodes)
    model, flagged = estimate_tabular_mdp(counts, true, min_count)
    clinician = icu.clinician_policy
    clinician_model = evaluate_policy(model, clinician, gamma)
    limits = np.asarray(clinician_model.cost_values, np.float64)[:2] + 1e-6
    unguarded = solve_constrained_mdp(model._replace(costs=model.costs[..., :2]), gamma, limits)
    guarded = solve_constrained_mdp(model, gamma, np.concatenate([limits, [ood_limit]]))
    oracle = solve_constrained_mdp(true, gamma, limits) if with_oracle else None
    true3 = true._replace(costs=model.costs)  # true dynamics, with the OOD indicator as a third cost

    def score(policy):
        in_true = evaluate_policy(true3, policy, gamma)
        in_model = evaluate_policy(model, policy, gamma)
        occupancy_flagged = float(in_true.cost_values[2])
        return {"model_value": float(in_model.value), "true_value": float(in_true.value),
                "survival": _survival(true, np.asarray(policy)), "ood_mass": occupancy_flagged,
                "cost_values_true": [float(v) for v in np.asarray(in_true.cost_values)[:2]],
                "cost_values_model": [float(v) for v in np.asarray(in_model.cost_values)[:2]]}

    policies = [("clinicians", clinician), ("unguarded", unguarded.policy), ("guarded", guarded.policy)]
    policies += [("oracle", oracle.policy)] if with_oracle else []
    out = {name: score(policy) for name, policy in policies}
    out["settings"] = {"seed": seed, "num_episodes": num_episodes, "min_count": min_count, "gamma": gamma,
                       "ood_limit": ood_limit, "cost_limits": limits.tolist(),
                       "flagged_pairs": int(flagged.sum()), "pairs": int((~np.asarray(true.terminal)).sum() * 25),
                       "guarded_flagged_occupancy_model": float((guarded.occupancy * flagged).sum()),
                       "unguarded_flagged_occupancy_model": float((unguarded.occupancy * flagged).sum())}
    return out


# ------------------------------------------------------------------------------------------------ one seed, end to end

CURVE_METRICS = ("episode_return", "episode_cost")


def visited_states(task: SepsisTask, act: Callable, key, num_episodes: int = 100) -> np.ndarray:
    """``[n, OBS_DIM]`` raw SepsisSim states visited by ``act(normalised_obs, key)`` (the embedding panels)."""
    norm = task.state_normaliser
    sim = simulate(sepsis.SepsisSim(), task.env_params, lambda o, k: act(norm(o), k), key, num_episodes,
                   int(task.env_params.max_steps), task)
    return sim.obs[sim.valid]


def run_method(task: SepsisTask, method: str, settings: MethodSettings, train_key, eval_key, soc: dict,
               eval_episodes: int = 1000, embedding_episodes: int = 100) -> dict:
    """Train one method on ``task`` and score it: ``{"metrics", "curves", "visited"}`` (numpy / Python values).
    The embedding rollouts use ``fold_in(PRNGKey(task.seed), 3)`` for every method (the same patients)."""
    trained = train_method(task, method, train_key, settings)
    metrics = evaluate(task, trained.act, eval_key, eval_episodes, soc)
    curves = {name: np.asarray(trained.curves[name]).tolist() for name in CURVE_METRICS if name in trained.curves}
    visited = visited_states(task, trained.act, jax.random.fold_in(jax.random.PRNGKey(task.seed), 3),
                             embedding_episodes)
    return {"metrics": metrics, "curves": curves, "visited": visited}


def run_sepsis_seed(seed: int, num_patients: int = 1000, settings: MethodSettings = MethodSettings(),
                    methods=METHODS, eval_episodes: int = 1000, guardian_kind: str = "kde",
                    bandwidth: float = guard.DEFAULT_BANDWIDTH, percentile: float = guard.DEFAULT_PERCENTILE,
                    embedding_episodes: int = 100) -> dict:
    """Build the task of ``seed`` (data, split, guardian, models), train ``methods``, score each and the
    standard of care. Returns ``{"soc", "methods": {name: metrics}, "curves": {name: {metric: list}},
    "visited": {name: [n, OBS_DIM] true-simulator states}}`` (numpy / Python values). Method ``m`` trains with
    ``fold_in(PRNGKey(seed), 100 + METHODS.index(m))`` and is scored with ``200 + ...``, whatever else runs."""
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    check_cost_limits(settings)
    task = build_task(seed, num_patients, bandwidth, percentile, guardian_kind)
    if settings.dynamics == "ensemble":
        task = with_ensemble(task)
    key = jax.random.PRNGKey(seed)
    soc = soc_metrics(task, jax.random.fold_in(key, 1), eval_episodes)
    out = {"soc": soc, "methods": {}, "curves": {}, "visited": {}}
    clinicians = simulate(sepsis.SepsisSim(), task.env_params, lambda o, k: sepsis.clinician_action(o, k),
                          jax.random.fold_in(key, 3), embedding_episodes, int(task.env_params.max_steps), task)
    out["visited"]["clinicians"] = clinicians.obs[clinicians.valid]
    for method in methods:
        i = METHODS.index(method)
        cell = run_method(task, method, settings, jax.random.fold_in(key, 100 + i), jax.random.fold_in(key, 200 + i),
                          soc, eval_episodes, embedding_episodes)
        out["methods"][method], out["curves"][method], out["visited"][method] = (cell["metrics"], cell["curves"],
                                                                                 cell["visited"])
    out["normaliser"] = task.state_normaliser
    return out


def plot_embedding(path, visited: dict, normaliser: guard.Normaliser, title: str = ""):
    """Scatter of :func:`state_embedding` of each group's visited states (the paper's t-SNE panels)."""
    from pathlib import Path

    from jaxsafe import plotting

    plt = plotting._pyplot()
    embedded = state_embedding(visited, normaliser)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, points in embedded.items():
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.4, label=name)
    ax.set_xlabel("PC 1 of normalised state")
    ax.set_ylabel("PC 2")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, markerscale=3)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------------------------ registry hooks


def make_model_problem(name: str, **overrides) -> ModelEnv:
    """The problem space of the registered ``gmb_cpo`` / ``mb_cpo``: ``sepsis-sim`` is the training 1-NN model of
    :func:`build_task` (overrides ``seed``, ``num_patients``, ``bandwidth``, ``percentile``, ``guardian_kind``)."""
    return model_env(_problem_task(name, "OGSRL problem", overrides), "train")


def _problem_task(name: str, kind: str, overrides: dict):
    """:func:`build_task` for a registered problem name, its overrides checked first (ValueError naming them)."""
    if name != "sepsis-sim":
        raise ValueError(f"unknown {kind} {name!r}; available: sepsis-sim")
    allowed = ("seed", "num_patients", "bandwidth", "percentile", "guardian_kind")
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"sepsis-sim: unknown override(s) {unknown}; allowed: {list(allowed)}")
    return build_task(**overrides)


def describe_model_problems() -> dict[str, str]:
    return {"sepsis-sim": "the 1-NN model of SepsisSim clinicians' data (costs SpO2, urine, OOD)"}


def make_data_problem(name: str, **overrides) -> cql.GuardedDataset:
    """The problem space of the registered ``cql`` / ``gcql``: ``sepsis-sim`` is the training split of
    :func:`build_task`'s clinicians' data (normalised observations) with the task's guardian as the OOD test
    (overrides as :func:`make_model_problem`)."""
    task = _problem_task(name, "OGSRL data problem", overrides)
    return cql.GuardedDataset(normalised_training_data(task), guardian_ood_fn(task))


def describe_data_problems() -> dict[str, str]:
    return {"sepsis-sim": "SepsisSim clinicians' data (training split) with the KDE guardian as the OOD test"}


def _hparams_with_ood_limit(ood_limit: float):
    def default_hparams(config, env):
        limits = jnp.asarray(tuple(MethodSettings().cost_limits) + (ood_limit,), jnp.float32)
        return config.default_hparams(env.n_costs).replace(cost_limit=limits, target_kl=jnp.float32(0.01),
                                                           damping=jnp.float32(1.0))

    return default_hparams


#: ``default_hparams(config, env)`` of the registered learners: limits [1, 1, 0.5] (guarded) / OOD unconstrained.
gmb_cpo_hparams = _hparams_with_ood_limit(MethodSettings().ood_limit)
mb_cpo_hparams = _hparams_with_ood_limit(UNCONSTRAINED)
