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

**Before and after.** ``--before REV ...`` times PPO on SafeCartPole and PPO-Lagrangian on SafePointGoal1 (its
navigation preset's 40 x 500 rollout) with jaxsafe checked out at each git revision (a temporary ``git worktree``)
next to the working tree, each in its own process, alternating A B A B and keeping each side's best of
``--repeats`` (default 2), so a code change is measured side by side in one run.

Run it on a quiet machine (nothing else running): two ratios stored from a loaded machine did not hold.
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


#: Times one training run in a fresh process with jaxsafe imported from the tree given as argv[1].
TREE_SCRIPT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import jaxsafe, jax
from jaxsafe import envs
from jaxsafe.rl import ppo
assert jaxsafe.__file__.startswith(sys.argv[1]), jaxsafe.__file__
env_name, multiplier = sys.argv[2], sys.argv[3]
num_envs, num_steps, epochs, minibatches, updates = (int(v) for v in sys.argv[4:9])
config = ppo.PPOConfig(num_envs=num_envs, num_steps=num_steps, total_steps=num_envs * num_steps * updates,
                       num_epochs=epochs, num_minibatches=minibatches, multiplier=multiplier)
env, env_params = envs.make(env_name)
train = jax.jit(ppo.make_train(config, env, env_params))  # the signature every revision has
hparams = config.default_hparams()
t = time.perf_counter(); jax.block_until_ready(train(jax.random.PRNGKey(0), hparams)); first = time.perf_counter() - t
t = time.perf_counter(); jax.block_until_ready(train(jax.random.PRNGKey(1), hparams)); second = time.perf_counter() - t
print(json.dumps({"first_call_s": first, "seconds": second, "steps": config.total_steps,
                  "sps": config.total_steps / second}))
"""
#: (label, env, multiplier, num_envs, num_steps, epochs, minibatches, updates) of the before/after workloads.
TREE_WORKLOADS = (
    ("PPO, SafeCartPole (64 x 64)", "SafeCartPole", "none", 64, 64, 4, 8, 24),
    ("PPO-Lag, SafePointGoal1 (40 x 500)", "SafePointGoal1", "lagrangian", 40, 500, 10, 20, 3),
)


def tree_sps(tree: str, workload: tuple) -> dict:
    """One workload of :data:`TREE_WORKLOADS` timed with jaxsafe from ``tree``, in a fresh process."""
    _, env_name, multiplier, *counts = workload
    proc = subprocess.run([sys.executable, "-c", TREE_SCRIPT, tree, env_name, multiplier, *map(str, counts)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"timing in {tree} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def before_after(revisions: list[str], repeats: int) -> dict:
    """Best-of-``repeats`` steps/s of every workload for the working tree and each revision, interleaved."""
    import shutil
    import tempfile

    root = Path(__file__).resolve().parents[1]
    trees, made = {"working tree": str(root)}, []
    for rev in revisions:
        path = tempfile.mkdtemp(prefix=f"jaxsafe-{rev[:12]}-")
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-f", path, rev], check=True,
                       capture_output=True)
        trees[rev] = path
        made.append(path)
    try:
        out = {}
        for workload in TREE_WORKLOADS:
            best: dict[str, dict] = {}
            for _ in range(repeats):
                for label, tree in trees.items():
                    result = tree_sps(tree, workload)
                    if label not in best or result["sps"] > best[label]["sps"]:
                        best[label] = result
                    print(f"{workload[0]} [{label}]: {result['sps']:,.0f} steps/s", flush=True)
            out[workload[0]] = best
        return {"revisions": {rev: subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s", rev],
                                                  capture_output=True, text=True).stdout.strip()[:120]
                              for rev in revisions}, "workloads": out}
    finally:
        for path in made:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", path], capture_output=True)
            shutil.rmtree(path, ignore_errors=True)


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
    parser.add_argument("--before", nargs="*", default=[], metavar="REV",
                        help="git revisions to time beside the working tree (before/after table)")
    parser.add_argument("--repeats", type=int, default=2, help="best-of repeats of each before/after timing")
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
    if args.before:
        results["before_after"] = before_after(args.before, args.repeats)

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
    if "before_after" in results:
        revs = list(results["before_after"]["revisions"])
        lines += ["", "## Before and after (same workloads, jaxsafe at each revision, best of "
                  f"{args.repeats}, interleaved)", "",
                  "| workload | working tree steps/s | " + " | ".join(f"`{r[:10]}` steps/s" for r in revs)
                  + " | " + " | ".join(f"working tree / `{r[:10]}`" for r in revs) + " |",
                  "|---|---:|" + "---:|" * (2 * len(revs))]
        for name, best in results["before_after"]["workloads"].items():
            now = best["working tree"]["sps"]
            lines.append(f"| {name} | {now:,.0f} | " + " | ".join(f"{best[r]['sps']:,.0f}" for r in revs) + " | "
                         + " | ".join(f"{now / best[r]['sps']:.2f}x" for r in revs) + " |")
        lines += [""] + [f"- `{r[:10]}`: {text}" for r, text in results["before_after"]["revisions"].items()]
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
