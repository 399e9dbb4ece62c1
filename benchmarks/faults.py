"""Fault injection: does a run survive kill -9, damaged checkpoints, a full disk and NaNs, and resume bit-identically?

Each trial runs the chunked runner in a child process on the constrained-bandit example learner (8 lanes, one
checkpoint per 2 updates, so a good share of the wall time is spent writing checkpoints), injects one fault, then
resumes to the end and compares every lane's final state and every metrics row with an uninterrupted reference run.

    python benchmarks/faults.py                 # 20 trials of each fault (a few minutes)
    python benchmarks/faults.py --trials 5      # quicker

Writes ``benchmarks/results/faults.{json,md}``: per fault, trials, survived, bit-identical resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SETUP = ("import sys, warnings; warnings.simplefilter('ignore'); from jaxsafe import cli, runner; "
         "from jaxsafe.examples import constrained_bandit as cb; cb.register(); ")
TRAIN = ["train", "bandit_lag", "--problem", "three_arms", "--seeds", "4", "--set", "num_updates=200",
         "--set", "cost_limit=0.35", "--chunks", "100", "--quiet"]


def child(code: str, *args: str, limit_bytes: int | None = None) -> subprocess.Popen:
    """A child Python process running ``code`` (after the common setup), optionally with a file-size limit."""
    def limit():
        if limit_bytes is not None:
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-c", SETUP + code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})


def cli_child(argv: list[str], **kwargs) -> subprocess.Popen:
    return child("sys.exit(cli.main(sys.argv[1:]))", *argv, **kwargs)


def finish(out: Path) -> tuple[int, str]:
    proc = cli_child(["train", "--resume", "--out", str(out), "--quiet"])
    stdout, stderr = proc.communicate(timeout=600)
    return proc.returncode, stderr


def final_state(out: Path):
    """Every lane's newest checkpoint and all metrics rows (read in a child, so this process never starts JAX)."""
    code = ("import json, numpy as np, jax; from jaxsafe.logging import RunDir; "
            "r = runner.restore_run(sys.argv[1]); "
            "print(json.dumps({'step': r.checkpoint_step, 'state': [np.asarray(x).tolist() for x in "
            "jax.tree.leaves(r.state)], 'rows': RunDir(sys.argv[1], must_exist=True).read_metrics()}))")
    proc = child(code, str(out))
    stdout, stderr = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(stderr[-2000:])
    return json.loads(stdout.strip().splitlines()[-1])


def damage_newest(out: Path) -> None:
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    for path in (out / "checkpoints" / str(steps[-1])).rglob("d/*"):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def run_trials(trials: int, seed: int, root: Path) -> dict:
    rng = random.Random(seed)
    reference_dir = root / "reference"
    start = time.perf_counter()
    proc = cli_child(TRAIN + ["--out", str(reference_dir)])
    proc.communicate(timeout=600)
    reference_seconds = time.perf_counter() - start
    reference = final_state(reference_dir)
    results = {}

    def record(fault, survived, identical, note=""):
        entry = results.setdefault(fault, {"trials": 0, "survived": 0, "bit_identical": 0, "notes": []})
        entry["trials"] += 1
        entry["survived"] += int(survived)
        entry["bit_identical"] += int(identical)
        if note and len(entry["notes"]) < 5:
            entry["notes"].append(note)

    def compare(out):
        state = final_state(out)
        return state["state"] == reference["state"] and state["rows"] == reference["rows"]

    for trial in range(trials):
        # 1. kill -9 at a random moment (start-up, training, or in the middle of a checkpoint write)
        out = root / f"kill-{trial}"
        proc = cli_child(TRAIN + ["--out", str(out)])
        time.sleep(rng.uniform(0.2, reference_seconds))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        code, stderr = finish(out) if (out / "config.json").exists() else (None, "")
        if code is None:  # killed before it wrote config.json: a new run into the (empty or absent) directory
            shutil.rmtree(out, ignore_errors=True)
            proc = cli_child(TRAIN + ["--out", str(out)])
            proc.communicate(timeout=600)
            code = proc.returncode
        record("kill -9 at a random moment", code == 0, code == 0 and compare(out), stderr.strip()[-200:])

        # 2. the newest checkpoint damaged (flipped bytes): fall back to the previous one
        out = root / f"damaged-{trial}"
        stop = rng.randint(2, 90)
        proc = child(f"runner.run_training(runner.make_spec('bandit_lag', 'three_arms', seeds=4, num_chunks=100, "
                     f"overrides={{'num_updates': 200, 'cost_limit': 0.35}}), sys.argv[1], progress=False, "
                     f"stop_after_chunks={stop})", str(out))
        proc.communicate(timeout=600)
        damage_newest(out)
        code, stderr = finish(out)
        record("damaged newest checkpoint", code == 0, code == 0 and compare(out), stderr.strip()[-200:])

        # 3. a full disk (a file-size limit) at a random point: a clean stop, then a resume once there is room
        out = root / f"full-{trial}"
        limit = rng.choice([2_000, 8_000, 20_000, 60_000])
        proc = cli_child(TRAIN + ["--out", str(out)], limit_bytes=limit)
        _, stderr = proc.communicate(timeout=600)
        clean = proc.returncode in (0, 2, 3) and "Traceback" not in stderr
        code, resume_err = finish(out) if (out / "config.json").exists() else (1, "no config.json written")
        record("full disk (RLIMIT_FSIZE)", clean and code == 0, clean and code == 0 and compare(out),
               (stderr.strip().splitlines() or [""])[-1][:200])

        # 4. a NaN injected at a chosen update and lane: the run stops naming both
        update, lane_limit = rng.randint(0, 199), rng.choice([0.2, 0.35, 0.5])
        out = root / f"nan-{trial}"
        code_nan = (
            "import jax.numpy as jnp\n"
            "from typing import NamedTuple\n"
            "from jaxsafe.learner import TrainParts\n"
            "from jaxsafe.algorithms import register_algorithm\n"
            "class S(NamedTuple):\n    params: object\n    inner: object\n    count: object\n"
            "def parts(config, problem):\n"
            "    base = cb.make_train_parts(config, problem)\n"
            "    def init(k, h):\n        i = base.init(k, h); return S(i.params, i, jnp.zeros((), jnp.int32))\n"
            "    def update(s, h):\n"
            "        i, m = base.update(s.inner, h)\n"
            f"        bad = (s.count == {update}) & (h.cost_limit == jnp.float32({lane_limit}))\n"
            "        return S(i.params, i, s.count + 1), dict(m, nonfinite=m['nonfinite'] | bad)\n"
            "    return TrainParts(init, update, base.num_updates, 1)\n"
            "register_algorithm(cb.ALGORITHM._replace(name='bandit_nan', make_train_parts=parts))\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
        proc = child(code_nan, "sweep", "bandit_nan", "--problem", "three_arms", "--grid", "cost_limit=0.2,0.35,0.5",
                     "--set", "num_updates=200", "--chunks", "20", "--quiet", "--out", str(out))
        _, stderr = proc.communicate(timeout=600)
        named = f"update {update} " in stderr and f"'cost_limit': {lane_limit}" in stderr
        record("NaN at a chosen update and lane", proc.returncode == 3 and named, proc.returncode == 3 and named,
               stderr.strip()[-200:] if not named else "")
        print(f"trial {trial + 1}/{trials}: " + ", ".join(f"{k}: {v['survived']}/{v['trials']}"
                                                           for k, v in results.items()), flush=True)
    return {"reference_seconds": reference_seconds, "faults": results}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS), help="where faults.{json,md} go")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        report = run_trials(args.trials, args.seed, Path(tmp))
    report.update(trials_per_fault=args.trials, seed=args.seed, learner="bandit_lag (docs/adding_a_method.md), "
                  "4 seeds, 200 updates, a checkpoint every 2 updates")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Fault injection ({args.trials} trials per fault, seed {args.seed})", "",
             f"Learner: {report['learner']}. A trial survives when the run stops cleanly (no traceback) where a fault "
             "is meant to stop it, and then resumes to the end; bit-identical means every lane's final state and "
             "every metrics row equal the uninterrupted reference run.", "",
             "| fault | trials | survived | bit-identical |", "|---|---:|---:|---:|"]
    for fault, entry in report["faults"].items():
        lines.append(f"| {fault} | {entry['trials']} | {entry['survived']} | {entry['bit_identical']} |")
    (out / "faults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
