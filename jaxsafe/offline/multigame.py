"""Multi-game offline data for the Multi-Game Decision Transformer (:mod:`jaxsafe.offline.mgdt`) and MTRO.

Two suites of gymnax games, each game a :class:`GameSpec`:

* ``"minatar"``: Asterix, Breakout, Freeway, Seaquest, SpaceInvaders (10x10 images with 4, 4, 7, 10, 6 channels;
  5, 3, 3, 6, 4 actions). Observations are cast to float32 (gymnax gives bool for some games), episodes are cut at
  ``max_steps`` (1000; Freeway's own 2500 is cut to 1000 at CPU size), no sticky actions (gymnax's default).
* ``"mini"``: the cheaper miniature suite of vector-observation games with very different return scales: CartPole
  (0..500), Acrobot (-500..0), MountainCar (-200..), Catch (-1..1; its 10x5 image is flattened to 50 numbers).

**Data as DQN-Replay logs it.** :func:`log_ppo_run` trains PPO (:mod:`jaxsafe.rl.ppo`, unconstrained) on a game
and keeps every transition of every rollout the run trained on, from the random initial policy to the last update
(the rollout is recomputed from the state PPO's ``update`` receives, so it is the same data). The per-environment
streams are cut into complete episodes (the unfinished tail of each stream is dropped), so the dataset mixes every
quality the run went through and good episodes are rare. ``next_observations`` are the next step's observation
within an episode and the last observation again at an episode end (PPO's rollout does not keep the terminal
successor; no learner here reads it). MinAtar observations are stored as uint8 (they are 0/1).

:func:`collect_suite` writes one ``.npz`` per game (``save_npz``) plus a JSON card and skips games whose file is
already there, so a long collection resumes per game. :func:`load_suite` reads them back as a :class:`MultiGameData`.
Padding to a shared channel count and action set happens in :mod:`jaxsafe.offline.mgdt`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.envs.core import GymnaxSafeEnv, Wrapper, spaces
from jaxsafe.offline.dataset import TrajectoryDataset, from_transitions, load_npz, save_npz
from jaxsafe.validation import require

__all__ = ["GameSpec", "SUITES", "MINATAR", "MINI", "game_names", "make_game", "MultiGameData", "log_ppo_run",
           "collect_suite", "load_suite", "random_dataset", "random_returns"]


@dataclasses.dataclass(frozen=True)
class GameSpec:
    """A game of a suite: the gymnax id, the episode cap, PPO's settings for the data, the return scale.

    reward_scale: the MGDT reads returns-to-go as ``round(reward_scale * R)`` in its integer bins (MGDT's own
    preprocessing clips Atari rewards to [-1, 1]; the scale plays that part and lets every game's returns fit the
    shared range). obs_kind: "image" ([H, W, C]) or "vector".
    """

    name: str
    gymnax_id: str
    max_steps: int
    reward_scale: float
    obs_kind: str
    ppo_total_steps: int
    ppo_torso: str = "mlp"
    ppo_hidden: tuple = (64, 64)
    ppo_num_envs: int = 16
    ppo_num_steps: int = 64
    ppo_learning_rate: float = 3e-4


_MINATAR_PPO = dict(ppo_torso="flatten", ppo_hidden=(256, 256), ppo_num_envs=64, ppo_num_steps=32,
                    ppo_learning_rate=5e-4)

MINATAR = {spec.name: spec for spec in (
    GameSpec("Asterix", "Asterix-MinAtar", 1000, 1.0, "image", 250_000, **_MINATAR_PPO),
    GameSpec("Breakout", "Breakout-MinAtar", 1000, 1.0, "image", 160_000, **_MINATAR_PPO),
    GameSpec("Freeway", "Freeway-MinAtar", 1000, 1.0, "image", 160_000, **_MINATAR_PPO),
    GameSpec("Seaquest", "Seaquest-MinAtar", 1000, 1.0, "image", 160_000, **_MINATAR_PPO),
    GameSpec("SpaceInvaders", "SpaceInvaders-MinAtar", 1000, 0.5, "image", 160_000, **_MINATAR_PPO),
)}

MINI = {spec.name: spec for spec in (
    GameSpec("CartPole", "CartPole-v1", 500, 0.2, "vector", 60_000),
    GameSpec("Acrobot", "Acrobot-v1", 500, 0.04, "vector", 60_000),
    GameSpec("MountainCar", "MountainCar-v0", 200, 0.1, "vector", 60_000),
    GameSpec("Catch", "Catch-bsuite", 10, 10.0, "vector", 30_000),
)}

#: The suites by name.
SUITES = {"minatar": MINATAR, "mini": MINI}


def game_names(suite: str) -> list[str]:
    """The games of ``suite`` ("minatar" or "mini")."""
    require(suite in SUITES, "suite", f"one of {sorted(SUITES)}", suite)
    return list(SUITES[suite])


def _spec(suite: str, game: str) -> GameSpec:
    games = game_names(suite)
    if game not in games:
        raise ValueError(f"game: unknown {suite} game {game!r}; valid games: {', '.join(games)}")
    return SUITES[suite][game]


class _Float32Obs(Wrapper):
    """Observations as float32, flattened for a vector game (Catch's 10x5 image)."""

    def __init__(self, env, flatten: bool):
        super().__init__(env)
        self._flatten = flatten

    def _obs(self, obs):
        obs = jnp.asarray(obs, jnp.float32)
        return obs.reshape(-1) if self._flatten else obs

    def reset(self, key, params):
        state, timestep = self.env.reset(key, params)
        return state, timestep._replace(obs=self._obs(timestep.obs))

    def step(self, key, state, action, params):
        state, timestep = self.env.step(key, state, action, params)
        return state, timestep._replace(obs=self._obs(timestep.obs))

    def observation_space(self, params):
        shape = self.env.observation_space(params).shape
        shape = (int(np.prod(shape)),) if self._flatten else tuple(shape)
        return spaces.Box(-jnp.inf, jnp.inf, shape, jnp.float32)


def make_game(suite: str, game: str):
    """``(env, env_params)``: the game as a :class:`~jaxsafe.envs.core.SafeEnv` (zero cost), capped at its
    ``max_steps``.

    Raises:
      ValueError: an unknown suite or game (the message lists the valid ones).
    """
    import gymnax

    spec = _spec(suite, game)
    gym_env, gym_params = gymnax.make(spec.gymnax_id)
    params = gym_params.replace(max_steps_in_episode=spec.max_steps)
    env = GymnaxSafeEnv(gym_env, lambda s, a, n, p: jnp.zeros((1,), jnp.float32), name=spec.name,
                        default_params=params)
    flatten = spec.obs_kind == "vector" and len(gym_env.observation_space(params).shape) > 1
    return _Float32Obs(env, flatten), params


class MultiGameData(NamedTuple):
    """One offline dataset per game (native observation shapes and action counts)."""

    suite: str
    games: tuple[str, ...]
    datasets: tuple[TrajectoryDataset, ...]
    num_actions: tuple[int, ...]

    def spec(self, game: str) -> GameSpec:
        return _spec(self.suite, game)


def _streams_to_episodes(obs, actions, rewards, terminated, truncated) -> dict:
    """``[T, E, ...]`` rollout streams -> the fields of complete episodes, environment after environment."""
    fields = {k: [] for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")}
    ends = terminated | truncated
    for env_index in range(ends.shape[1]):
        done = np.flatnonzero(ends[:, env_index])
        if done.size == 0:
            continue
        keep = done[-1] + 1
        o = obs[:keep, env_index]
        nxt = np.concatenate([o[1:], o[-1:]])
        nxt[ends[:keep, env_index]] = o[ends[:keep, env_index]]
        fields["observations"].append(o)
        fields["next_observations"].append(nxt)
        fields["actions"].append(actions[:keep, env_index])
        fields["rewards"].append(rewards[:keep, env_index])
        fields["terminals"].append(terminated[:keep, env_index])
        fields["timeouts"].append(truncated[:keep, env_index] & ~terminated[:keep, env_index])
    if not fields["rewards"]:
        raise ValueError("log_ppo_run: no episode finished in the run (raise total_steps)")
    return {k: np.concatenate(v) for k, v in fields.items()}


def log_ppo_run(suite: str, game: str, key, total_steps: int | None = None, num_envs: int | None = None,
                num_steps: int | None = None, chunk_updates: int = 10, progress=None) -> TrajectoryDataset:
    """Every transition of one PPO training run on ``game`` (see the module docstring) as a dataset.

    ``total_steps``, ``num_envs`` and ``num_steps`` default to the game's ``ppo_*`` settings; PPO runs
    ``total_steps // (num_envs * num_steps)`` updates in jitted chunks of ``chunk_updates``;
    ``progress(done_updates, total_updates, mean_return)`` is called after each chunk (the mean return of the
    episodes that finished in the chunk's last update; NaN when none did). Costs are zero.
    """
    from jaxsafe.rl import ppo

    spec = _spec(suite, game)
    env, env_params = make_game(suite, game)
    total_steps = spec.ppo_total_steps if total_steps is None else int(total_steps)
    config = ppo.PPOConfig(num_envs=spec.ppo_num_envs if num_envs is None else int(num_envs),
                           num_steps=spec.ppo_num_steps if num_steps is None else int(num_steps),
                           total_steps=total_steps, multiplier="none", torso=spec.ppo_torso, hidden=spec.ppo_hidden,
                           activation="relu" if spec.obs_kind == "image" else "tanh", num_minibatches=4,
                           num_epochs=4)
    hparams = config.default_hparams().replace(learning_rate=jnp.float32(spec.ppo_learning_rate))
    parts = ppo.make_train_parts(config, env, env_params)
    setup = ppo.make_on_policy(config, env, env_params)
    as_uint8 = spec.obs_kind == "image"

    def one(state, _):
        rollout = setup.collect(state.params, state.env_state, state.obs, state.key)  # what update trains on
        state, metrics = parts.update(state, hparams)
        traj = rollout.traj
        obs = traj.obs.astype(jnp.uint8) if as_uint8 else traj.obs
        return state, (obs, traj.action, traj.reward, traj.terminated, traj.truncated, metrics["episode_return"])

    chunk = jax.jit(lambda s, n: jax.lax.scan(one, s, None, length=n), static_argnums=1)
    state = parts.init(key, hparams)
    pieces, done = [], 0
    while done < parts.num_updates:
        n = min(chunk_updates, parts.num_updates - done)
        state, out = chunk(state, n)
        out = jax.tree.map(np.asarray, out)
        pieces.append(out[:5])
        done += n
        if progress is not None:
            progress(done, parts.num_updates, float(np.nanmean(out[5][-1:])))
    # [updates, T, E, ...] per chunk -> one [updates * T, E, ...] stream per environment
    obs, actions, rewards, terminated, truncated = (
        np.concatenate([p[i].reshape((-1,) + p[i].shape[2:]) for p in pieces]) for i in range(5))
    fields = _streams_to_episodes(obs, actions.astype(np.int32), rewards.astype(np.float32), terminated, truncated)
    return from_transitions(**fields, costs=np.zeros(fields["rewards"].shape, np.float32),
                            source=f"log_ppo_run({game})")


def random_dataset(suite: str, game: str, key, episodes: int, max_steps: int | None = None,
                   bias: float = 0.0) -> TrajectoryDataset:
    """``episodes`` episodes of a random policy on ``game`` (cheap data for tests and smoke runs).

    With ``bias > 0`` each episode draws its own preferred action and plays it with probability ``bias`` (else a
    uniform action), so the episodes' returns spread more than a uniform policy's.
    """
    from jaxsafe.offline.dataset import collect_dataset
    from jaxsafe.policy import Policy

    spec = _spec(suite, game)
    env, env_params = make_game(suite, game)
    n = int(env.action_space(env_params).n)

    def init(k):
        return jax.random.randint(k, (), 0, n)

    def step(preferred, obs, k):
        coin, uniform = jax.random.split(k)
        action = jnp.where(jax.random.uniform(coin) < bias, preferred, jax.random.randint(uniform, (), 0, n))
        return preferred, action

    steps = spec.max_steps if max_steps is None else int(max_steps)
    dataset = collect_dataset(env, env_params, Policy(init, step), key, episodes, steps)
    return dataset._replace(actions=np.asarray(dataset.actions, np.int32))


def random_returns(suite: str, game: str, key, episodes: int = 32, max_steps: int | None = None) -> np.ndarray:
    """``[episodes]`` returns of the uniformly random policy on ``game`` (the 0 of the normalised score), episodes
    cut at ``max_steps`` (default: the game's cap)."""
    from jaxsafe.evaluate import rollout_episodes
    from jaxsafe.policy import stateless

    spec = _spec(suite, game)
    env, env_params = make_game(suite, game)
    n = int(env.action_space(env_params).n)
    policy = stateless(lambda obs, k: jax.random.randint(k, (), 0, n))
    steps = spec.max_steps if max_steps is None else int(max_steps)
    rollouts = jax.jit(lambda k: rollout_episodes(env, env_params, policy, k, episodes, steps))(key)
    return np.asarray(rollouts.returns)


def _paths(directory: Path, game: str) -> tuple[Path, Path]:
    return directory / f"{game}.npz", directory / f"{game}.json"


def collect_suite(suite: str, directory, seed: int = 0, games=None, total_steps: int | None = None,
                  progress: bool = True) -> dict:
    """Log one PPO run per game of ``suite`` into ``directory/<game>.npz`` (+ ``<game>.json`` card).

    Games whose dataset file exists are skipped (resumable per game). Returns ``{game: card}``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    games = game_names(suite) if games is None else list(games)
    cards = {}
    for index, game in enumerate(games):
        data_path, card_path = _paths(directory, game)
        if data_path.exists() and card_path.exists():
            cards[game] = json.loads(card_path.read_text())
            continue
        start = time.time()
        curve = []

        def report(done, total, mean_return, game=game, curve=curve):
            curve.append([done, mean_return])
            if progress:
                print(f"[{game}] update {done}/{total} return {mean_return:.2f} ({time.time() - start:.0f}s)",
                      flush=True)

        key = jax.random.fold_in(jax.random.PRNGKey(seed), index)
        dataset = log_ppo_run(suite, game, key, total_steps=total_steps, progress=report)
        returns = dataset.returns_to_go[np.concatenate([[True], dataset.episode_ids[1:] != dataset.episode_ids[:-1]])]
        random = random_returns(suite, game, jax.random.fold_in(key, 1))
        card = {"suite": suite, "game": game, "num_steps": dataset.num_steps, "num_episodes": dataset.num_episodes,
                "return_min": float(returns.min()), "return_max": float(returns.max()),
                "return_mean": float(returns.mean()), "random_return": float(random.mean()),
                "seconds": time.time() - start, "seed": seed,
                "ppo_return_curve": [[u, None if np.isnan(r) else r] for u, r in curve],
                "ppo_steps_per_update": _spec(suite, game).ppo_num_envs * _spec(suite, game).ppo_num_steps}
        if data_path.exists():
            data_path.unlink()  # a partial file from an interrupted save (its card was never written)
        save_npz(dataset, data_path)
        card_path.write_text(json.dumps(card, indent=2))
        cards[game] = card
    return cards


def load_suite(suite: str, directory, games=None) -> tuple[MultiGameData, dict]:
    """The datasets written by :func:`collect_suite` and their cards.

    Raises:
      ValueError: a game's dataset is missing (names the game and the file).
    """
    directory = Path(directory)
    games = game_names(suite) if games is None else list(games)
    datasets, cards, actions = [], {}, []
    for game in games:
        data_path, card_path = _paths(directory, game)
        if not (data_path.exists() and card_path.exists()):
            raise ValueError(f"games: no dataset for {game!r} in {directory} (expected {data_path.name}; run "
                             f"collect_suite)")
        datasets.append(load_npz(data_path))
        cards[game] = json.loads(card_path.read_text())
        env, env_params = make_game(suite, game)
        actions.append(int(env.action_space(env_params).n))
    return MultiGameData(suite, tuple(games), tuple(datasets), tuple(actions)), cards


def make_problem(path: str, **overrides) -> MultiGameData:
    """The multi-game problem ``"SUITE:DIR"`` (e.g. ``"mini:runs/mtro_data/mini"``): every game of the suite
    collected in ``DIR`` by :func:`collect_suite` (``SUITE:DIR:Game1,Game2`` for a subset), for
    ``jaxsafe train mgdt --problem ...``.

    Raises:
      ValueError: overrides, a malformed name, an unknown suite or game, or a missing game dataset.
    """
    if overrides:
        raise ValueError(f"multi-game data takes no overrides, got {sorted(overrides)}")
    parts = str(path).split(":")
    if len(parts) not in (2, 3) or parts[0] not in SUITES:
        raise ValueError(f"problem: SUITE:DIR[:GAMES] with SUITE one of {sorted(SUITES)}, got {path!r}")
    games = parts[2].split(",") if len(parts) == 3 else None
    for game in games or ():
        _spec(parts[0], game)
    return load_suite(parts[0], parts[1], games)[0]


def describe_problems() -> dict[str, str]:
    return {"SUITE:DIR[:GAMES]": "multi-game data written by jaxsafe.offline.multigame.collect_suite "
                                 f"(suites: {', '.join(sorted(SUITES))})"}
