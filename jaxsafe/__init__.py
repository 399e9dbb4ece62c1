"""jaxsafe: a JAX-native, functional library for safe reinforcement learning and safety alignment."""

import os as _os

# XLA's CPU runtime can deadlock (every worker idle, the caller blocked forever) on vmapped programs with nested
# loops, such as a grid of PPO learners, when its concurrency-optimised thunk scheduler runs on few cores; measured
# here on jaxlib 0.10.2 with 2 cores, where turning the scheduler off removed the hang. The flag only affects the
# CPU backend and must be set before JAX creates it, so it is added here unless the user chose a value.
_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _FLAG not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = f"{_os.environ.get('XLA_FLAGS', '')} {_FLAG}=false".strip()

__version__ = "0.1.0"
