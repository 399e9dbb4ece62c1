"""Behaviour-ladder collection and its card; DSRL's HDF5 layout (squeezed [N, 1] fields, bad keys)."""

import jax
import numpy as np
import pytest

from jaxsafe.offline import collect
from jaxsafe.offline.dataset import concatenate, episode_returns, from_dsrl_fields, load_hdf5

TINY_PPO = dict(num_envs=2, num_steps=8, total_steps=32, num_epochs=1, num_minibatches=1, hidden=(8,))


@pytest.fixture(scope="module")
def ladder():
    return collect.collect_ladder("SafeCartPole", jax.random.PRNGKey(0), 3, cost_limits=[0.0, 5.0],
                                  train_overrides=TINY_PPO, max_steps=12)


def test_ladder_collects_every_behaviour_and_describes_it(ladder, tmp_path):
    data, card = ladder
    assert [(b["cost_limit"], b["noisy"]) for b in card["behaviours"]] == [(0.0, False), (0.0, True), (5.0, False),
                                                                           (5.0, True)]
    assert card["num_episodes"] == data.num_episodes == 12 and len(card["episode_behaviour"]) == 12
    assert card["episode_behaviour"] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    returns, costs = episode_returns(data)
    assert card["return_range"] == [float(returns.min()), float(returns.max())]
    assert card["cost_range"] == [float(costs.sum(-1).min()), float(costs.sum(-1).max())]
    assert card["num_steps"] == data.num_steps <= 12 * 12 and card["task"] == "SafeCartPole"
    path = collect.save_card(card, tmp_path / "d.npz")
    assert path.name == "d.json" and collect.load_card(tmp_path / "d.npz") == card
    with pytest.raises(FileExistsError):
        collect.save_card(card, tmp_path / "d.npz")
    with pytest.raises(ValueError, match="algorithm"):
        collect.train_ladder("SafeCartPole", [1.0], algorithm="bc_all")


def dsrl_fields():
    """Two episodes of DSRL's layout: [N, 1] rewards, float 0/1 end markers, one cost of shape [N]."""
    n = 5
    obs = np.arange(2 * n, dtype=np.float64).reshape(n, 2)
    return dict(observations=obs, next_observations=obs + 1, actions=np.zeros((n, 1)),
                rewards=np.arange(n, dtype=np.float64)[:, None], costs=np.array([0, 1, 0, 1, 1.0]),
                terminals=np.array([0, 0, 1, 0, 0.0]), timeouts=np.array([0, 0, 0, 0, 1.0])[:, None])


def test_dsrl_fields_are_squeezed_and_cast_and_bad_ones_refused():
    data = from_dsrl_fields(dsrl_fields())
    assert data.rewards.shape == (5,) and data.rewards.dtype == np.float32 and data.terminals.dtype == np.bool_
    np.testing.assert_array_equal(data.returns_to_go, [3, 3, 2, 7, 4])
    np.testing.assert_array_equal(data.costs_to_go[:, 0], [1, 1, 0, 2, 1])
    with pytest.raises(ValueError, match="'timeouts' is missing"):
        from_dsrl_fields({k: v for k, v in dsrl_fields().items() if k != "timeouts"})
    with pytest.raises(ValueError, match="'terminals' must hold booleans"):
        from_dsrl_fields({**dsrl_fields(), "terminals": np.full(5, 0.5)})
    with pytest.raises(ValueError, match="'actions' must have shape"):
        from_dsrl_fields({**dsrl_fields(), "actions": np.zeros((4, 1))})
    with pytest.raises(ValueError, match="last episode has no end"):
        from_dsrl_fields({**dsrl_fields(), "timeouts": np.zeros(5)})
    both = concatenate([data, data])
    assert both.num_episodes == 4
    np.testing.assert_array_equal(both.returns_to_go, np.tile(data.returns_to_go, 2))


def test_load_hdf5_reads_a_dsrl_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "tiny.hdf5"
    with h5py.File(path, "w") as handle:
        for name, value in dsrl_fields().items():
            handle[name] = value
        handle["extra"] = np.zeros(3)
    data = load_hdf5(path)
    expected = from_dsrl_fields(dsrl_fields())
    for name in data._fields:
        np.testing.assert_array_equal(getattr(data, name), getattr(expected, name))
    with h5py.File(tmp_path / "bad.hdf5", "w") as handle:
        handle["rewards"] = np.zeros(3)
    with pytest.raises(ValueError, match="'observations' is missing"):
        load_hdf5(tmp_path / "bad.hdf5")


def test_from_transitions_still_refuses_nan_through_concatenate():
    good = from_dsrl_fields(dsrl_fields())
    bad = good._replace(rewards=np.array([np.nan, 1, 2, 3, 4], np.float32))
    with pytest.raises(ValueError, match="'rewards' has non-finite"):
        concatenate([good, bad])


def test_dataset_figure_colours_episodes_by_behaviour(ladder, tmp_path, monkeypatch):
    from jaxsafe.cli import main
    from jaxsafe.offline.dataset import save_npz
    from jaxsafe import plotting

    data, card = ladder
    drawn = {}
    original = plotting.plot_plane

    def spy(path, front, groups, threshold=None, **kwargs):
        drawn.update(front=front, groups=groups, threshold=threshold)
        return original(path, front, groups, threshold, **kwargs)

    monkeypatch.setattr(plotting, "plot_plane", spy)
    path = save_npz(data, tmp_path / "ladder.npz")
    collect.save_card(card, path)
    assert main(["offline", "plot", str(path), "--thresholds", "2,4"]) == 0
    assert (tmp_path / "ladder.png").stat().st_size > 0
    assert list(drawn["groups"]) == ["ppo_lag d=0", "ppo_lag d=0 noisy", "ppo_lag d=5", "ppo_lag d=5 noisy"]
    returns, costs = episode_returns(data)
    np.testing.assert_array_equal(drawn["groups"]["ppo_lag d=5"][0], returns[6:9])  # behaviour 2's episodes
    np.testing.assert_array_equal(drawn["groups"]["ppo_lag d=5"][1], costs.sum(-1)[6:9])
    assert drawn["threshold"] == [2.0, 4.0] and drawn["front"][0].shape == (100,)
    with pytest.raises(SystemExit):  # a figure is never overwritten (the CLI names the file and exits)
        main(["offline", "plot", str(path)])
