"""jaxsafe: a JAX-native, functional library for safe reinforcement learning and safety alignment.

Every learner is a pure ``train(key, hparams)`` built by the one contract of `jaxsafe.learner` (a static
config, traceable hparams with range rules, ``make_train_parts(config, problem)``), so a grid of seeds and
hparams is one vmapped, sharded program (`jaxsafe.sweep`), and `jaxsafe.runner` gives every method registered
in `jaxsafe.algorithms` checkpoints, resume and progress; the ``jaxsafe`` command (`jaxsafe.cli`) runs them.

## Where things are

* the contract and shared primitives: `jaxsafe.learner`, `jaxsafe.algorithms`, `jaxsafe.constraints`,
  `jaxsafe.losses`, `jaxsafe.policy`, `jaxsafe.types`, `jaxsafe.validation`, `jaxsafe.exact`
* safe environments and tasks: `jaxsafe.envs`
* online safe RL (PPO, PPO-Lagrangian, PID-Lagrangian, CPO, TRPO-Lagrangian, flipping policies): `jaxsafe.rl`
* bi-level RL (BC-HG): `jaxsafe.bilevel`
* offline safe RL (datasets, CDT, BCQ-Lag, CQL, PLS, OGSRL, MGDT and MTRO): `jaxsafe.offline`
* language models and alignment (SACPO, Safe-RLHF, TSDI, poisoning, GRPO and the relative budget, IAMA):
  `jaxsafe.nn`, `jaxsafe.llm`
* sweeps, long runs and their files: `jaxsafe.sweep`, `jaxsafe.distributed`, `jaxsafe.runner`,
  `jaxsafe.checkpoint`, `jaxsafe.logging`, `jaxsafe.plotting`

## Guides

The guides are in the repository's ``docs/`` folder (linked here at its GitHub address):

* [the paper map](https://github.com/jaxsafe/jaxsafe/blob/main/docs/papers.md): for each of the ten papers,
  the module, command, benchmark, notebook, claim and measured result
* [adding a method](https://github.com/jaxsafe/jaxsafe/blob/main/docs/adding_a_method.md)
* [sweeps over several processes and hosts](https://github.com/jaxsafe/jaxsafe/blob/main/docs/distributed.md)
* [the safety task suite](https://github.com/jaxsafe/jaxsafe/blob/main/docs/safety_suite.md)
* [flipping policies (chance constraints)](https://github.com/jaxsafe/jaxsafe/blob/main/docs/flipping.md)
* [bi-level RL with BC-HG](https://github.com/jaxsafe/jaxsafe/blob/main/docs/bilevel.md)
* [offline safe RL](https://github.com/jaxsafe/jaxsafe/blob/main/docs/offline.md)
* [PLS](https://github.com/jaxsafe/jaxsafe/blob/main/docs/pls.md)
* [OGSRL](https://github.com/jaxsafe/jaxsafe/blob/main/docs/ogsrl.md)
* [MTRO](https://github.com/jaxsafe/jaxsafe/blob/main/docs/mtro.md)
* [language models](https://github.com/jaxsafe/jaxsafe/blob/main/docs/llm.md)
* [SACPO and P-SACPO](https://github.com/jaxsafe/jaxsafe/blob/main/docs/sacpo.md)
* [TSDI](https://github.com/jaxsafe/jaxsafe/blob/main/docs/tsdi.md)
* [label-flipping poisoning](https://github.com/jaxsafe/jaxsafe/blob/main/docs/poisoning.md)
* [GRPO and the relative budget](https://github.com/jaxsafe/jaxsafe/blob/main/docs/grpo.md)
* [IAMA](https://github.com/jaxsafe/jaxsafe/blob/main/docs/iama.md)
"""

import os as _os

# XLA's CPU runtime can deadlock (every worker idle, the caller blocked forever) on vmapped programs with nested
# loops, such as a grid of PPO learners, when its concurrency-optimised thunk scheduler runs on few cores; measured
# here on jaxlib 0.10.2 with 2 cores, where turning the scheduler off removed the hang. The flag only affects the
# CPU backend and must be set before JAX creates it, so it is added here unless the user chose a value.
_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _FLAG not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = f"{_os.environ.get('XLA_FLAGS', '')} {_FLAG}=false".strip()

__version__ = "0.1.0"
