"""The tiny two-game problem and MGDT run shared by ``test_mgdt.py`` and ``test_mtro.py``.

Both files read the same data and the same trained lanes, built once per test process (``lru_cache``), so the
MGDT training program is traced and compiled once for the two files (the rest of a file's tests stay tiny).
"""

import functools

import jax
import jax.numpy as jnp

from jaxsafe.offline import mgdt
from jaxsafe.offline import multigame as mg

# Two games whose scores vary within 40 steps (a random Acrobot or MountainCar episode of 40 steps always scores
# -40, i.e. 0 normalised, which would make the IQM of four games the two zeros).
GAMES = ("CartPole", "Catch")
NUM_ACTIONS = (2, 3)
MAX_STEPS = 40
CONFIG = mgdt.MGDTConfig(d_model=16, n_layers=1, n_heads=2, batch_size=16, num_updates=150, warmup_steps=4)
LANES = 2


@functools.lru_cache(maxsize=None)
def data() -> mg.MultiGameData:
    """24 episodes per game of a biased random policy (each episode prefers its own action 60% of the time), capped
    at 40 steps."""
    datasets = [mg.random_dataset("mini", game, jax.random.PRNGKey(i), 24, max_steps=MAX_STEPS, bias=0.6)
                for i, game in enumerate(GAMES)]
    return mg.MultiGameData("mini", GAMES, tuple(datasets), NUM_ACTIONS)


def hparams():
    return CONFIG.default_hparams().replace(learning_rate=jnp.float32(3e-3))


def keys():
    return jax.random.split(jax.random.PRNGKey(0), LANES)


@functools.lru_cache(maxsize=None)
def train():
    """The (unjitted) ``train(key, hparams)`` of the MGDT on :func:`data`."""
    return mgdt.make_train(CONFIG, data())


@functools.lru_cache(maxsize=None)
def lanes():
    """``TrainResult`` of ``LANES`` vmapped seeds (one compiled program)."""
    return jax.jit(jax.vmap(train(), in_axes=(0, None)))(keys(), hparams())
