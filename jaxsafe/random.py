"""Counter-based random words for hot loops: one threefry draw keys a cheap integer hash of each entry's index.

Threefry (``jax.random``) costs 20 rounds per pair of 32-bit words. Where a program needs many words per step and
their use is statistical only (dropout masks, layout candidates sampled inside every auto-reset), a threefry draw
of one or two words keys :func:`hash32` applied to a counter instead: elementwise, so XLA fuses it into its
consumer. Callers: :func:`jaxsafe.nn.transformer.dropout_bits`, :func:`jaxsafe.envs.navigation.uniform_points`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["hash32"]


def hash32(x: jax.Array) -> jax.Array:
    """C. Wellons' "lowbias32" integer hash, uint32 -> uint32: two xorshift-multiply rounds, full avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)
