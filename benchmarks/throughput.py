"""Throughput of jaxsafe's environments, PPO-Lagrangian training and vmapped sweeps, side by side in one run.

Measures, on SafeCartPole and SafePendulum with the same number of environments:

1. env steps per second of a random-action rollout (the upper bound: environment only);
2. env steps per second of PPO-Lagrangian training;
3. an 8-seed (``--seeds``) vmapped sweep against 8 single runs one after another (same total work).

and, when a rejax virtualenv is available (``--rejax-python``, default ``.venv-rejax/bin/python``), rejax's PPO on
gymnax CartPole-v1 with the same environments, rollout length, epochs and minibatches, next to jaxsafe's PPO on
SafeCartPole (the same CartPole dynamics plus a cost). rejax 0.1.3 needs ``gymnax<1.0``, so it runs in its own venv::

    python3 -m venv .venv-rejax && .venv-rejax/bin/pip install rejax==0.1.3 "gymnax<1.0"

Every timing is of a second call of an already compiled function (compile time is reported separately).
Writes ``benchmarks/results/throughput.json`` and ``throughput.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe import envs, sweep
from jaxsafe.rl import ppo

RESULTS = Path(__file__).parent / "results"

REJAX_SCRIPT = """
import json, sys, time, jax
from rejax import PPO
num_envs, num_steps, epochs, minibatches, total = (int(v) for v in sys.argv[1:6])
algo = PPO.create(env="CartPole-v1", num_envs=num_envs, num_steps=num_steps, num_epochs=epochs,
                  num_minibatches=minibatches, total_timesteps=total, eval_freq=total, learning_rate=3e-4)
train = jax.jit(algo.train)
t = time.perf_counter(); jax.block_until_ready(train(jax.random.PRNGKey(0))); first = time.perf_counter() - t
t = time.perf_counter(); jax.block_until_ready(train(jax.random.PRNGKey(1))); second = time.perf_counter() - t
print(json.dumps({"first_call_s": first, "seconds": second, "steps": total, "sps": total / second}))
"""


def timed(fn, *args):
    """(compile+first call seconds, steady seconds) of a jitted function."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return first, time.perf_counter() - start


def random_rollout_sps(env_name: str, num_envs: int, num_steps: int) -> dict:
    env, params = envs.make(env_name)
    vec = envs.wrap_for_training(env, num_envs)
    space = env.action_space(params)

    @jax.jit
    def rollout(key):
        state, timestep = vec.reset(key, params)

        def body(carry, k):
            state, cost = carry
            a_key, s_key = jax.random.split(k)
            action = jax.vmap(space.sample)(jax.random.split(a_key, num_envs))
            state, timestep = vec.step(s_key, state, action, params)
            return (state, cost + timestep.cost.sum()), None

        (_, cost), _ = jax.lax.scan(body, (state, 0.0), jax.random.split(key, num_steps))
        return cost

    first, seconds = timed(rollout, jax.random.PRNGKey(0))
    steps = num_envs * num_steps
    return {"steps": steps, "seconds": seconds, "sps": steps / seconds, "first_call_s": first}


def ppo_config(num_envs, num_steps, total_steps, multiplier="lagrangian"):
    return ppo.PPOConfig(num_envs=num_envs, num_steps=num_steps, total_steps=total_steps, num_epochs=4,
                         num_minibatches=8, multiplier=multiplier)


def training_sps(env_name: str, config: ppo.PPOConfig) -> dict:
    train = jax.jit(ppo.make_train(config, envs.make(env_name)))
    first, seconds = timed(train, jax.random.PRNGKey(0), config.default_hparams())
    steps = config.num_updates * config.batch_size
    return {"steps": steps, "seconds": seconds, "sps": steps / seconds, "first_call_s": first}


def sweep_vs_sequential(env_name: str, config: ppo.PPOConfig, seeds: int) -> dict:
    train = ppo.make_train(config, envs.make(env_name))
    grid = sweep.make_grid(config.default_hparams(), seeds=seeds)
    vmapped = jax.jit(jax.vmap(train))
    first_v, seconds_v = timed(vmapped, grid.keys, grid.hparams)
    single = jax.jit(train)
    jax.block_until_ready(single(grid.keys[0], sweep.lane(grid.hparams, 0)))  # compile once
    start = time.perf_counter()
    for lane in range(seeds):
        jax.block_until_ready(single(grid.keys[lane], sweep.lane(grid.hparams, lane)))
    seconds_s = time.perf_counter() - start
    steps = seeds * config.num_updates * config.batch_size
    return {"seeds": seeds, "steps": steps, "vmapped_seconds": seconds_v, "sequential_seconds": seconds_s,
            "vmapped_sps": steps / seconds_v, "sequential_sps": steps / seconds_s, "speedup": seconds_s / seconds_v,
            "vmapped_first_call_s": first_v}


def rejax_sps(python: str, num_envs, num_steps, epochs, minibatches, total) -> dict | None:
    if not Path(python).exists():
        return None
    proc = subprocess.run([python, "-c", REJAX_SCRIPT, *map(str, (num_envs, num_steps, epochs, minibatches, total))],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"rejax failed: {proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=64)
    parser.add_argument("--updates", type=int, default=24, help="PPO updates per timed training run")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rejax-python", default=".venv-rejax/bin/python")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    total = args.num_envs * args.num_steps * args.updates
    results = {"machine": {"platform": platform.platform(), "processor": platform.machine(),
                           "devices": [str(d) for d in jax.devices()], "jax": jax.__version__},
               "settings": {"num_envs": args.num_envs, "num_steps": args.num_steps, "num_epochs": 4,
                            "num_minibatches": 8, "total_steps": total, "seeds": args.seeds}, "envs": {}}
    for env_name in ("SafeCartPole", "SafePendulum"):
        config = ppo_config(args.num_envs, args.num_steps, total)
        row = {"random_rollout": random_rollout_sps(env_name, args.num_envs, 1000),
               "ppo_lag_training": training_sps(env_name, config),
               "sweep": sweep_vs_sequential(env_name, config, args.seeds)}
        results["envs"][env_name] = row
        print(env_name, json.dumps({k: round(v["sps"] if "sps" in v else v["speedup"], 2) for k, v in row.items()}))

    jaxsafe_ppo = training_sps("SafeCartPole", ppo_config(args.num_envs, args.num_steps, total, multiplier="none"))
    rejax = rejax_sps(args.rejax_python, args.num_envs, args.num_steps, 4, 8, total)
    results["vs_rejax"] = {"jaxsafe_ppo": jaxsafe_ppo, "rejax_ppo": rejax,
                           "ratio": jaxsafe_ppo["sps"] / rejax["sps"] if rejax else None}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Throughput (env steps per second, CPU)",
        "",
        f"{args.num_envs} environments x {args.num_steps} steps per update, 4 epochs, 8 minibatches, "
        f"{total:,} steps per timed run; devices: {', '.join(results['machine']['devices'])}. "
        "Generated by `benchmarks/throughput.py`; timings are of a second (compiled) call.",
        "",
        f"| environment | random rollout | PPO-Lag training | {args.seeds} seeds vmapped | {args.seeds} seeds one by one "
        "| vmapped / sequential |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for env_name, row in results["envs"].items():
        s = row["sweep"]
        lines.append(f"| {env_name} | {row['random_rollout']['sps']:,.0f} | {row['ppo_lag_training']['sps']:,.0f} | "
                     f"{s['vmapped_sps']:,.0f} | {s['sequential_sps']:,.0f} | {s['speedup']:.2f}x |")
    lines += ["", "## PPO against rejax 0.1.3 (CartPole dynamics, same settings)", ""]
    if rejax:
        lines += ["| library | env steps/s | first call (compile + run) s |", "|---|---:|---:|",
                  f"| jaxsafe PPO (SafeCartPole) | {jaxsafe_ppo['sps']:,.0f} | {jaxsafe_ppo['first_call_s']:.1f} |",
                  f"| rejax PPO (CartPole-v1) | {rejax['sps']:,.0f} | {rejax['first_call_s']:.1f} |",
                  "", f"jaxsafe / rejax throughput ratio: **{results['vs_rejax']['ratio']:.2f}**"]
    else:
        lines.append(f"rejax was not run (no interpreter at {args.rejax_python}); see the module docstring.")
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
