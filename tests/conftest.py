"""Test-wide settings: a persistent compilation cache (reruns skip XLA compiles) and CPU determinism."""

import os

import jax

jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
