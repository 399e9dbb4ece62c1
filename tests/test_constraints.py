import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import constraints
from jaxsafe.rl.cpo import CPOHParams
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


# ------------------------------------------------------------------------------------------- two costs, elementwise


def test_lagrangian_two_costs_each_cost_its_own_multiplier():
    handler = constraints.lagrangian()
    h = hp(multiplier_lr=0.5, initial_multiplier=0.25)
    state = handler.init(h, (2,))
    np.testing.assert_array_equal(state.multiplier, [0.25, 0.25])
    limit = jnp.array([1.0, 10.0])
    state = handler.update(state, jnp.array([3.0, 4.0]), limit, h)
    # cost 0 violated by 2: 0.25 + 0.5 * 2 = 1.25; cost 1 satisfied by 6: max(0, 0.25 - 3) = 0
    np.testing.assert_allclose(state.multiplier, [1.25, 0.0], rtol=1e-6)
    state = handler.update(state, jnp.array([0.5, 12.0]), limit, h)
    # cost 0 now satisfied by 0.5: 1.25 - 0.25 = 1.0; cost 1 violated by 2: 0 + 1 = 1.0
    np.testing.assert_allclose(state.multiplier, [1.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(state.previous_cost, [0.5, 12.0])


def test_pid_two_costs_hand_values():
    handler = constraints.pid_lagrangian()
    h = hp(pid_kp=0.1, pid_ki=0.01, pid_kd=0.5, initial_multiplier=0.0)
    state = handler.init(h, (2,))
    state = handler.update(state, jnp.array([35.0, 5.0]), jnp.array([25.0, 10.0]), h)
    # cost 0 as in the scalar test: 18.6; cost 1: e = -5, I = 0, D = max(0, 5 - 0) = 5: m = -0.5 + 0 + 2.5 = 2.0
    np.testing.assert_allclose(state.multiplier, [18.6, 2.0], rtol=1e-6)
    np.testing.assert_allclose(state.integral, [0.1, 0.0], rtol=1e-6)


def test_none_and_margin_and_fixed_two_costs():
    h = CPOHParams(initial_multiplier=2.5, margin_lr=0.1, multiplier_lr=7.0).as_arrays()
    cost, limit = jnp.array([30.0, 0.0]), jnp.array([25.0, 1.0])
    none = constraints.none()
    state = none.update(none.init(h, (2,)), cost, limit, h)
    np.testing.assert_array_equal(state.multiplier, [0.0, 0.0])  # ignores initial_multiplier and the violation
    margin = constraints.learned_margin()
    state = margin.init(h, (2,))
    np.testing.assert_array_equal(state.multiplier, [0.0, 0.0])  # starts at 0, not initial_multiplier
    state = margin.update(state, cost, limit, h)
    np.testing.assert_allclose(state.multiplier, [0.5, 0.0], rtol=1e-6)  # margin_lr, not multiplier_lr
    fixed = constraints.fixed_penalty()
    state = fixed.update(fixed.init(h, (2,)), cost, limit, h)
    np.testing.assert_array_equal(state.multiplier, [2.5, 2.5])


def test_measured_or_limit_per_cost():
    measured = jnp.array([jnp.nan, 3.0])
    np.testing.assert_array_equal(constraints.measured_or_limit(measured, jnp.array([1.0, 2.0])), [1.0, 3.0])


def test_lagrangian_adam_is_one_adam_step_on_the_dual_loss_then_projected():
    """OmniSafe's rule: torch.optim.Adam (defaults) on -m (J_c - limit), clamped at 0; optax.adam is the same
    update, so it is the reference (each cost its own multiplier)."""
    import jax
    import optax

    handler = constraints.lagrangian_adam()
    h = hp(multiplier_lr=0.035, initial_multiplier=0.001)
    limit = jnp.array([25.0, 10.0])
    costs = np.random.default_rng(0).uniform(0.0, 160.0, size=(40, 2)).astype(np.float32)
    costs[:5] = 160.0  # a burst far above the limit, then mixed
    state = handler.init(h, (2,))
    reference, opt = jnp.full((2,), 0.001), optax.adam(0.035, b1=0.9, b2=0.999, eps=1e-8)
    opt_state = opt.init(reference)
    for cost in costs:
        state = handler.update(state, jnp.asarray(cost), limit, h)
        gradient = jax.grad(lambda m: jnp.sum(-m * (cost - limit)))(reference)
        step, opt_state = opt.update(gradient, opt_state)
        reference = jnp.maximum(reference + step, 0.0)
        np.testing.assert_allclose(np.asarray(state.multiplier), np.asarray(reference), rtol=1e-5, atol=1e-7)
    # the first step moves by multiplier_lr whatever the excess: 5 steps of +135 raise it by about 5 * 0.035
    first = handler.update(handler.init(h), jnp.float32(160.0), jnp.float32(25.0), h)
    np.testing.assert_allclose(float(first.multiplier), 0.001 + 0.035, rtol=1e-5)
    plain = constraints.lagrangian().update(constraints.lagrangian().init(h), jnp.float32(160.0), jnp.float32(25.0), h)
    np.testing.assert_allclose(float(plain.multiplier), 0.001 + 0.035 * 135.0, rtol=1e-5)


def test_only_the_adam_rule_carries_moments():
    """The other handlers' states keep exactly their three fields (their checkpoints are unchanged)."""
    import jax

    h = hp()
    for name in ("none", "lagrangian", "pid", "fixed", "margin"):
        state = constraints.make_handler(name).init(h)
        assert type(state) is constraints.MultiplierState and len(jax.tree.leaves(state)) == 3, name
    state = constraints.make_handler("lagrangian_adam").init(h, (2,))
    assert type(state) is constraints.AdamMultiplierState and state.multiplier.shape == (2,)
