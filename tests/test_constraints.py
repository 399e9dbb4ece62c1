import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import constraints
from jaxsafe.rl.ppo import PPOHParams


def hp(**kw):
    return PPOHParams(**kw).as_arrays()


def test_lagrangian_rises_while_violated_and_is_projected():
    handler = constraints.lagrangian()
    h = hp(multiplier_lr=0.1, initial_multiplier=0.0)
    state = handler.init(h)
    values = []
    for cost in [30.0, 30.0, 30.0]:  # limit 25: violated by 5 each time
        state = handler.update(state, jnp.float32(cost), jnp.float32(25.0), h)
        values.append(float(state.multiplier))
    np.testing.assert_allclose(values, [0.5, 1.0, 1.5], rtol=1e-6)
    for _ in range(10):  # satisfied by 20: falls and stops at zero
        state = handler.update(state, jnp.float32(5.0), jnp.float32(25.0), h)
    assert float(state.multiplier) == 0.0


def test_pid_lagrangian_hand_values():
    handler = constraints.pid_lagrangian()
    h = hp(pid_kp=0.1, pid_ki=0.01, pid_kd=0.5, initial_multiplier=0.0)
    state = handler.init(h)
    state = handler.update(state, jnp.float32(35.0), jnp.float32(25.0), h)
    # e = 10: I = 0.1; D = max(0, 35 - 0) = 35; m = 0.1*10 + 0.1 + 0.5*35 = 18.6
    np.testing.assert_allclose(float(state.multiplier), 18.6, rtol=1e-6)
    state = handler.update(state, jnp.float32(30.0), jnp.float32(25.0), h)
    # e = 5: I = 0.15; D = max(0, 30 - 35) = 0; m = 0.5 + 0.15 = 0.65
    np.testing.assert_allclose(float(state.multiplier), 0.65, rtol=1e-6)
    state = handler.update(state, jnp.float32(0.0), jnp.float32(25.0), h)
    # e = -25: I = max(0, 0.15 - 0.25) = 0; m = max(0, -2.5 + 0) = 0
    assert float(state.multiplier) == 0.0 and float(state.integral) == 0.0


def test_fixed_penalty_is_constant():
    handler = constraints.fixed_penalty()
    h = hp(initial_multiplier=2.5)
    state = handler.init(h)
    for cost in [100.0, 0.0]:
        state = handler.update(state, jnp.float32(cost), jnp.float32(1.0), h)
        assert float(state.multiplier) == 2.5


def test_unknown_handler_lists_names():
    with pytest.raises(ValueError, match="lagrangian"):
        constraints.make_handler("adam")
