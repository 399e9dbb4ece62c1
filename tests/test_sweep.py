"""Grids: construction, validation, and sharding across (host-simulated) devices."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import sweep
from jaxsafe.rl.ppo import PPOHParams


def test_grid_product_and_points():
    grid = sweep.make_grid(PPOHParams().as_arrays(), seeds=2, cost_limit=[1.0, 2.0, 3.0], learning_rate=[1e-3])
    assert grid.size == 6 and grid.swept == ("cost_limit", "learning_rate")
    assert [p["seed"] for p in grid.points] == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(grid.hparams.cost_limit, [1, 2, 3, 1, 2, 3])
    np.testing.assert_allclose(grid.hparams.gamma, 0.99)
    assert grid.hparams.gamma.shape == (6,)
    np.testing.assert_array_equal(grid.keys[0], grid.keys[1])  # same seed, same key
    assert not np.array_equal(grid.keys[0], grid.keys[3])


def test_grid_errors():
    with pytest.raises(ValueError, match="valid fields"):
        sweep.make_grid(PPOHParams(), seeds=1, cost_limt=[1.0])
    with pytest.raises(ValueError, match="no values"):
        sweep.make_grid(PPOHParams(), seeds=1, cost_limit=[])
    with pytest.raises(ValueError, match="seeds"):
        sweep.make_grid(PPOHParams(), seeds=[])


def test_pad_to_multiple():
    tree = {"a": jnp.arange(5)}
    np.testing.assert_array_equal(sweep.pad_to_multiple(tree, 5, 4)["a"], [0, 1, 2, 3, 4, 4, 4, 4])
    assert sweep.pad_to_multiple(tree, 5, 5)["a"].shape == (5,)


SHARDED = textwrap.dedent("""
    import jax, numpy as np
    from jaxsafe import envs, sweep
    from jaxsafe.rl import ppo
    assert len(jax.devices()) == 4, jax.devices()
    env, params = envs.make("SafeGridWorld", max_steps=10)
    config = ppo.PPOConfig(num_envs=2, num_steps=8, total_steps=32, num_minibatches=2, hidden=(8,))
    grid = sweep.make_grid(config.default_hparams(), seeds=3, cost_limit=[1.0, 2.0])  # 6 lanes on 4 devices
    train = ppo.make_train(config, env, params)
    keys, hparams = sweep.shard_grid((grid.keys, grid.hparams), grid.size)
    assert len(keys.sharding.device_set) == 4 and keys.shape[0] == 8
    result = sweep.run_grid(train, grid)
    assert result.metrics["episode_cost"].shape[0] == 6
    for lane in (0, 5):
        alone = jax.jit(train)(grid.keys[lane], sweep.lane(grid.hparams, lane))
        np.testing.assert_allclose(result.metrics["total_loss"][lane], alone.metrics["total_loss"], rtol=1e-5)
    print("OK")
""")


def test_grid_sharded_over_four_host_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
