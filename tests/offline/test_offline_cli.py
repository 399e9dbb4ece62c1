"""``jaxsafe offline train|eval`` end to end on a tiny ChancePoint2D dataset with a card; collect refuses to
overwrite."""

import jax
import pytest

from jaxsafe import envs
from jaxsafe.cli import main
from jaxsafe.offline import collect
from jaxsafe.offline.dataset import collect_dataset, episode_returns, save_npz
from jaxsafe.offline.evaluation import evaluate_run
from jaxsafe.policy import stateless


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    env, params = envs.make("ChancePoint2D", max_steps=6)
    space = env.action_space(params)
    policy = stateless(lambda obs, key: jax.random.uniform(key, space.shape, minval=space.low, maxval=space.high))
    data = collect_dataset(env, params, policy, jax.random.PRNGKey(0), 8, 6)
    path = save_npz(data, tmp_path_factory.mktemp("offline") / "point.npz")
    returns, costs = episode_returns(data)
    collect.save_card(dict(task="ChancePoint2D", max_steps=6, return_range=[float(returns.min()),
                                                                            float(returns.max())]), path)
    return path


def test_offline_train_then_eval_with_dsrl_metrics(data_path, tmp_path, capsys):
    out = tmp_path / "run"
    # the same training program as the best-checkpoint test below (its compilation is cached once)
    code = main(["offline", "train", "bc_safe", "--data", str(data_path), "--set", "num_updates=6", "--set",
                 "batch_size=8", "--set", "hidden=8", "--set", "cost_limit=100", "--out", str(out), "--quiet",
                 "--chunks", "3"])
    assert code == 0
    rows = evaluate_run(out, episodes=4, task="ChancePoint2D")
    assert len(rows) == 1 and rows[0]["threshold"] == 100.0 and rows[0]["checkpoint_step"] >= 1
    row = rows[0]
    assert row["cost"] == pytest.approx(row["episode_cost"] / 100.0) and row["safe"] == (row["cost"] <= 1.0)
    assert main(["offline", "eval", str(out), "--episodes", "2"]) == 0  # the card names the task
    assert "norm. reward" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an unknown task is refused
        main(["offline", "eval", str(out), "--episodes", "2", "--task", "NoSuchTask"])


def test_offline_collect_refuses_an_existing_file(data_path):
    with pytest.raises(SystemExit):
        main(["offline", "collect", "ChancePoint2D", "--episodes", "1", "--out", str(data_path)])


def test_best_checkpoint_is_chosen_by_online_rollouts_over_every_kept_chunk(data_path, tmp_path):
    out = tmp_path / "run"
    assert main(["offline", "train", "bc_safe", "--data", str(data_path), "--set", "num_updates=6", "--set",
                 "batch_size=8", "--set", "hidden=8", "--set", "cost_limit=100", "--out", str(out), "--quiet",
                 "--chunks", "3", "--keep-checkpoints", "0"]) == 0
    from jaxsafe.runner import checkpoint_steps

    assert checkpoint_steps(out) == [1, 2, 3]  # every chunk's checkpoint kept
    each = [evaluate_run(out, episodes=4, task="ChancePoint2D", checkpoint=step)[0] for step in (1, 2, 3)]
    assert [row["checkpoint_step"] for row in each] == [1, 2, 3]
    best = evaluate_run(out, episodes=4, task="ChancePoint2D", checkpoint="best")[0]
    expected = min(each, key=lambda row: (row["cost"], -row["reward"]))  # OSRL: lowest cost, ties by reward
    assert best["checkpoint_step"] == expected["checkpoint_step"] and best["checkpoints_compared"] == 3
    assert best["cost"] == expected["cost"] and best["reward"] == expected["reward"]
    with pytest.raises(ValueError, match="holds chunks"):
        evaluate_run(out, episodes=2, task="ChancePoint2D", checkpoint=7)
    assert main(["offline", "eval", str(out), "--episodes", "2", "--checkpoint", "best"]) == 0
