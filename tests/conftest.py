"""Test-wide settings: a persistent compilation cache (reruns skip XLA compiles) and CPU determinism."""

import os

import jaxsafe  # noqa: F401  (first: sets the XLA CPU flags jaxsafe needs before JAX creates its backend)

import jax

jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
