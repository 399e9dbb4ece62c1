"""Trajectory datasets: hand-computed returns-to-go, collection from rollouts, exact .npz round trips, bad files."""

import jax
import numpy as np
import pytest

from jaxsafe import envs
from jaxsafe.evaluate import rollout_episodes
from jaxsafe.offline import dataset as ds
from jaxsafe.policy import stateless


def two_episodes():
    """Episode 0: 3 steps ending in a terminal state; episode 1: 2 steps ending in a timeout. Two costs."""
    return dict(
        observations=np.arange(10, dtype=np.float32).reshape(5, 2),
        next_observations=np.arange(2, 12, dtype=np.float32).reshape(5, 2),
        actions=np.array([0, 1, 2, 3, 0], np.int32),
        rewards=np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32),
        costs=np.array([[1, 0], [0, 1], [1, 1], [0, 0], [2, 0]], np.float32),
        terminals=np.array([False, False, True, False, False]),
        timeouts=np.array([False, False, False, False, True]),
    )


def test_returns_to_go_hand_values_on_two_episodes():
    data = ds.from_transitions(**two_episodes())
    np.testing.assert_array_equal(data.episode_ids, [0, 0, 0, 1, 1])
    assert data.episode_ids.dtype == np.int32 and data.num_episodes == 2 and data.n_costs == 2
    # undiscounted, and never across the episode boundary: 1+2+3, 2+3, 3 | 4+5, 5
    np.testing.assert_array_equal(data.returns_to_go, [6.0, 5.0, 3.0, 9.0, 5.0])
    np.testing.assert_array_equal(data.costs_to_go, [[2, 2], [1, 2], [1, 1], [2, 0], [2, 0]])
    np.testing.assert_array_equal(data.mask, True)
    returns, costs = ds.episode_returns(data)
    np.testing.assert_array_equal(returns, [6.0, 9.0])
    np.testing.assert_array_equal(costs, [[2, 2], [2, 0]])
    # DSRL's one-cost layout [N] becomes [N, 1]
    one = ds.from_transitions(**{**two_episodes(), "costs": np.array([1, 0, 1, 0, 2], np.float32)})
    np.testing.assert_array_equal(one.costs_to_go[:, 0], [2, 1, 1, 2, 2])


@pytest.mark.parametrize("field,value,match", [
    ("costs", np.zeros((4, 2), np.float32), r"'costs' must have shape \[N, n_costs\] = \[5, 2\], got \[4, 2\]"),
    ("costs", np.zeros((5, 2, 1), np.float32), "'costs' must have shape"),
    ("next_observations", np.zeros((5, 3), np.float32), "'next_observations' must have shape"),
    ("terminals", np.zeros(5, np.float32), "'terminals' must be a bool array"),
    ("rewards", np.array([1.0, np.nan, 3.0, 4.0, 5.0], np.float32), "'rewards' has non-finite"),
    ("timeouts", np.zeros(5, bool), "last episode has no end"),
])
def test_from_transitions_rejects_bad_fields(field, value, match):
    with pytest.raises(ValueError, match=match):
        ds.from_transitions(**{**two_episodes(), field: value})


def random_gridworld_policy():
    return stateless(lambda obs, key: jax.random.randint(key, (), 0, 4))


@pytest.mark.parametrize("name,overrides,max_steps,end", [
    ("ChanceBandit", {}, 3, "terminals"),  # one-step episodes that terminate
    ("ChancePoint2D", {"max_steps": 6}, 6, "timeouts"),  # truncated by the environment's time limit
    ("ChancePoint2D", {"max_steps": 9}, 4, "timeouts"),  # cut by the collection's max_steps
])
def test_collect_dataset_matches_the_rollout(name, overrides, max_steps, end):
    env, params = envs.make(name, **overrides)
    low, high = env.action_space(params).low, env.action_space(params).high
    policy = stateless(lambda obs, key: jax.random.uniform(key, env.action_space(params).shape, minval=low,
                                                           maxval=high))
    key, episodes = jax.random.PRNGKey(0), 6
    data = ds.collect_dataset(env, params, policy, key, episodes, max_steps)
    rollouts = jax.jit(lambda k: rollout_episodes(env, params, policy, k, episodes, max_steps))(key)
    assert data.num_episodes == episodes
    np.testing.assert_array_equal(np.bincount(data.episode_ids), np.asarray(rollouts.lengths))
    returns, costs = ds.episode_returns(data)
    np.testing.assert_allclose(returns, rollouts.returns, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(costs.sum(-1), rollouts.costs, rtol=1e-5, atol=1e-6)
    ends = np.flatnonzero(data.terminals | data.timeouts)
    np.testing.assert_array_equal(ends, np.cumsum(np.asarray(rollouts.lengths)) - 1)  # one end per episode, last
    assert getattr(data, end)[ends].all()
    # each step's next observation is the following step's observation inside an episode
    inside = np.flatnonzero(~(data.terminals | data.timeouts))
    np.testing.assert_array_equal(data.next_observations[inside], data.observations[inside + 1])


@pytest.fixture()
def collected():
    env, params = envs.make("SafeGridWorld")
    return ds.collect_dataset(env, params, random_gridworld_policy(), jax.random.PRNGKey(1), 4, 15)


def test_npz_round_trip_is_exact_and_never_overwrites(collected, tmp_path):
    path = ds.save_npz(collected, tmp_path / "grid")
    assert path.name == "grid.npz"
    loaded = ds.load_npz(path)
    for name in ds.TrajectoryDataset._fields:
        a, b = getattr(collected, name), getattr(loaded, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        ds.save_npz(loaded, path)
    assert path.read_bytes() == before
    # the collected actions are the gridworld's integer actions
    assert collected.actions.dtype.kind == "i" and collected.costs.shape[1] == 1


def _write(path, **fields):
    with open(path, "wb") as handle:
        np.savez(handle, **fields)
    return path


def test_load_rejects_bad_files_naming_the_field(collected, tmp_path):
    fields = {**collected._asdict(), "format_version": np.int32(ds.FORMAT_VERSION)}
    missing = {k: v for k, v in fields.items() if k != "rewards"}
    with pytest.raises(ValueError, match="'rewards' is missing"):
        ds.load_npz(_write(tmp_path / "missing.npz", **missing))
    with pytest.raises(ValueError, match="'costs_to_go' must have shape"):
        ds.load_npz(_write(tmp_path / "shape.npz", **{**fields, "costs_to_go": fields["costs_to_go"][:-1]}))
    with pytest.raises(ValueError, match="'format_version' must be 1, got 7"):
        ds.load_npz(_write(tmp_path / "version.npz", **{**fields, "format_version": np.int32(7)}))
    with pytest.raises(ValueError, match="'format_version' is missing"):
        ds.load_npz(_write(tmp_path / "unversioned.npz", **collected._asdict()))
    with pytest.raises(ValueError, match="not a jaxsafe dataset file"):  # object arrays would need pickle
        ds.load_npz(_write(tmp_path / "pickled.npz", **{**fields, "rewards": np.array([{"a": 1}], object)}))
    with pytest.raises(ValueError, match="unknown dataset fields"):
        ds.load_npz(_write(tmp_path / "extra.npz", **fields, extra=np.zeros(3)))


def test_collect_validates_counts():
    env, params = envs.make("SafeGridWorld")
    with pytest.raises(ValueError, match="num_episodes"):
        ds.collect_dataset(env, params, random_gridworld_policy(), jax.random.PRNGKey(0), 0, 10)
    with pytest.raises(ValueError, match="max_steps"):
        ds.collect_dataset(env, params, random_gridworld_policy(), jax.random.PRNGKey(0), 2, 2.5)
