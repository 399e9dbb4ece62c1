"""LLM throughput: jaxsafe (JAX/Flax) vs Hugging Face transformers + torch, same CPU, one run.

For each model (a ``tiny`` llama and a ``llama-160m``-shaped llama, both randomly
initialised) the script measures, side by side:

* generation: greedy, batch 4, 32-token prompts, 32 new tokens, KV cache, no early stop;
  throughput = generated tokens / s.
* DPO training step: batch of 4 preference pairs of 64 tokens; one policy forward +
  backward over the 8 concatenated sequences, one reference forward, AdamW update;
  throughput = (8 * 64) tokens / s.

Both sides use the SAME weights: the jaxsafe params are exported with
``jaxsafe.llm.convert.save_hf_checkpoint`` and loaded by ``LlamaForCausalLM.from_pretrained``.
Compilation / warm-up runs are excluded; each number is the median of timed repeats. Both sides update in
place: torch's AdamW mutates its tensors, and the jaxsafe step donates its params and optimiser state
(``train.make_train_step(..., donate=True)``); the frozen reference is a separate copy on both sides (torch
loads a second model) and is an argument of the compiled step, not a literal (``train.BoundLoss``).

The ratio is only meaningful on a quiet machine. The 1-minute load average is recorded before each side and after
the run (``load_average`` in the JSON), but it counts this benchmark's own previous side too (a quiet run reads
about 1.2-1.5 on 2 CPUs); the quiet test is therefore the number of *other* runnable tasks, sampled from
``/proc/loadavg`` at the same moments (``other_running``), and the report calls the machine busy when that
exceeded 0.5 per CPU.

How it runs: start it with the main venv (``.venv/bin/python benchmarks/llm_throughput.py``).
The JAX side runs in-process; the torch side runs in a subprocess started with the
transformers venv (``--torch-python``, default ``.venv-hf/bin/python``; create it with
``python3 -m venv .venv-hf && .venv-hf/bin/pip install torch==2.13.0 transformers safetensors numpy``),
which does not import jax. The two sides run one after the other, not concurrently. On a GPU machine JAX takes the
GPU by default and ``--torch-device cuda`` puts the torch side there too (each timed call ends with a device sync).
Writes ``benchmarks/results/llm_throughput.{json,md}`` (``--out-name`` changes the stem; ``--no-donate`` turns off
the DPO step's buffer donation to measure what it buys).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GEN = dict(batch=4, prompt_length=32, new_tokens=32)
DPO = dict(pairs=4, seq_length=64, prompt_length=16)
MODELS = {
    "tiny": dict(preset="tiny", overrides=dict(vocab_size=512, max_seq_len=128), repeats=5),
    "llama-160m": dict(preset="llama-160m", overrides=dict(max_seq_len=128), repeats=3),
}


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(vocab_size):
    import numpy as np

    rng = np.random.default_rng(0)
    prompts = rng.integers(3, vocab_size, (GEN["batch"], GEN["prompt_length"])).astype(np.int32)
    sequences = rng.integers(3, vocab_size, (2 * DPO["pairs"], DPO["seq_length"])).astype(np.int32)
    return prompts, sequences


# ----------------------------------------------------------------------------- JAX side


def run_jax(name, spec, checkpoint_dir, donate=True):
    import jax
    import jax.numpy as jnp
    import optax

    from jaxsafe.llm import convert, generate, losses, model, train

    config = model.preset(spec["preset"], **spec["overrides"])
    graphdef, params = model.init_params(config, jax.random.PRNGKey(0))
    convert.save_hf_checkpoint(config, params, checkpoint_dir)
    prompts, sequences = _inputs(config.vocab_size)
    prompts, sequences = jnp.asarray(prompts), jnp.asarray(sequences)
    sampling = generate.SamplingConfig(GEN["new_tokens"], temperature=0.0)
    prompt_mask = jnp.ones(prompts.shape, bool)

    def run_generation():
        jax.block_until_ready(generate.generate(graphdef, params, prompts, prompt_mask, jax.random.PRNGKey(0),
                                                sampling).sequences)

    start = time.perf_counter()
    run_generation()
    generation_compile = time.perf_counter() - start
    generation_seconds = _median_seconds(run_generation, spec["repeats"])

    half = DPO["pairs"]
    response_mask = jnp.zeros(sequences.shape, bool).at[:, DPO["prompt_length"]:].set(True)
    ones = jnp.ones(sequences.shape, bool)
    batch = losses.PreferenceBatch(sequences[:half], ones[:half], response_mask[:half], sequences[half:],
                                   ones[half:], response_mask[half:])
    optimizer = optax.adamw(1e-5)
    reference = jax.tree.map(jnp.copy, params)  # the frozen reference: its own buffers (params are donated)
    step = train.make_train_step(train.dpo_loss_fn(graphdef, reference), optimizer, donate=donate)
    state = {"params": jax.tree.map(jnp.copy, params)}
    state["opt_state"] = optimizer.init(state["params"])
    hparams = losses.DPOHParams(jnp.float32(0.1))

    def run_step():
        state["params"], state["opt_state"], metrics = step(state["params"], state["opt_state"],
                                                            batch, hparams)
        jax.block_until_ready(metrics["loss"])

    start = time.perf_counter()
    run_step()
    dpo_compile = time.perf_counter() - start
    dpo_seconds = _median_seconds(run_step, spec["repeats"])
    return dict(n_params=model.count_params(params),
                generation_tokens_per_s=GEN["batch"] * GEN["new_tokens"] / generation_seconds,
                dpo_tokens_per_s=2 * DPO["pairs"] * DPO["seq_length"] / dpo_seconds,
                generation_compile_s=generation_compile, dpo_compile_s=dpo_compile,
                generation_s=generation_seconds, dpo_step_s=dpo_seconds)


# ----------------------------------------------------------------------------- torch side


def run_torch(checkpoint_dir, repeats, device="cpu"):
    import numpy as np
    import torch
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32,
                                                          attn_implementation="sdpa").to(device)
    reference = transformers.LlamaForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32,
                                                              attn_implementation="sdpa").to(device)
    reference.eval()
    prompts, sequences = (torch.from_numpy(a.astype(np.int64)).to(device)
                          for a in _inputs(model.config.vocab_size))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run_generation():
        with torch.no_grad():
            model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=GEN["new_tokens"],
                           min_new_tokens=GEN["new_tokens"], do_sample=False, eos_token_id=None,
                           pad_token_id=0)
        sync()

    model.eval()
    run_generation()
    generation_seconds = _median_seconds(run_generation, repeats)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    response_mask = torch.zeros(sequences.shape, dtype=torch.bool, device=device)
    response_mask[:, DPO["prompt_length"]:] = True
    half = DPO["pairs"]

    def sequence_logps(net, tokens):
        log_probs = torch.log_softmax(net(tokens).logits[:, :-1].float(), dim=-1)
        picked = torch.gather(log_probs, 2, tokens[:, 1:, None])[..., 0]
        return (picked * response_mask[:, 1:]).sum(-1)

    def run_step():
        with torch.no_grad():
            ref = sequence_logps(reference, sequences)
        policy = sequence_logps(model, sequences)
        margin = 0.1 * ((policy[:half] - ref[:half]) - (policy[half:] - ref[half:]))
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync()

    run_step()
    dpo_seconds = _median_seconds(run_step, repeats)
    return dict(generation_tokens_per_s=GEN["batch"] * GEN["new_tokens"] / generation_seconds,
                dpo_tokens_per_s=2 * DPO["pairs"] * DPO["seq_length"] / dpo_seconds,
                generation_s=generation_seconds, dpo_step_s=dpo_seconds, torch=torch.__version__,
                transformers=transformers.__version__, torch_threads=torch.get_num_threads(),
                device=device)


# ----------------------------------------------------------------------------- report


def write_report(results, environment, stem="llm_throughput"):
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"generation": GEN, "dpo": DPO, "environment": environment, "results": results}
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        f"# LLM throughput: jaxsafe vs transformers + torch ({environment.get('jax_backend', 'cpu').upper()}, "
        "same weights)",
        "",
        f"Generation: greedy, batch {GEN['batch']}, prompt {GEN['prompt_length']}, {GEN['new_tokens']} new "
        f"tokens. DPO step: {DPO['pairs']} pairs x {DPO['seq_length']} tokens (policy fwd+bwd, reference fwd, "
        "AdamW; " + ("both sides update in place)." if environment.get("donate", True) else
                     "jaxsafe without buffer donation, --no-donate)."),
        f"Machine: {environment['machine']}; {environment['cpus']} CPUs; jax {environment['jax']}, torch "
        f"{environment['torch']}, transformers {environment['transformers']}. Generated by "
        "`benchmarks/llm_throughput.py`.",
        "",
        f"1-minute load average before each side and at the end: {environment['load_average']} (it includes this "
        f"benchmark's previous side); other runnable tasks at those moments: {environment.get('other_running')}"
        + (" -- NOT a quiet machine: the ratios are not a measurement." if environment["busy"] else
           " (quiet: at most 0.5 per CPU)."),
        "",
        "| model | params | workload | jaxsafe tokens/s | torch tokens/s | jaxsafe / torch | "
        "jaxsafe compile s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        jx, pt = row["jax"], row["torch"]
        for workload, key, compile_key in (("generation", "generation_tokens_per_s", "generation_compile_s"),
                                           ("DPO step", "dpo_tokens_per_s", "dpo_compile_s")):
            lines.append(f"| {name} | {jx['n_params']:,} | {workload} | {jx[key]:.1f} | {pt[key]:.1f} | "
                         f"{jx[key] / pt[key]:.2f} | {jx[compile_key]:.1f} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _other_running() -> int:
    """Runnable tasks on the machine other than this process (``/proc/loadavg``'s running count minus one; 0 where
    the file does not exist)."""
    try:
        with open("/proc/loadavg") as f:
            return max(int(f.read().split()[3].split("/")[0]) - 1, 0)
    except (OSError, IndexError, ValueError):
        return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch-python", default=str(ROOT / ".venv-hf" / "bin" / "python"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--torch-worker",
                        help=argparse.SUPPRESS)  # internal: checkpoint dir for the torch side
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--no-donate", action="store_true",
                        help="the jaxsafe DPO step without buffer donation (to measure what donation buys)")
    parser.add_argument("--out-name", default="llm_throughput", help="results file stem under benchmarks/results")
    parser.add_argument("--torch-device", default="cpu",
                        help="torch's device (cpu, or cuda beside JAX's GPU backend); JAX uses its default backend")
    args = parser.parse_args()
    if args.torch_worker:
        print(json.dumps(run_torch(args.torch_worker, args.repeats, args.torch_device)))
        return

    import jax

    results, loads, others = {}, [], []

    def sample():
        loads.append(round(os.getloadavg()[0], 2))
        others.append(_other_running())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            spec = MODELS[name]
            checkpoint_dir = os.path.join(tmp, name)
            sample()
            print(f"[{name}] jaxsafe ... (load {loads[-1]}, other runnable tasks {others[-1]})", flush=True)
            jax_result = run_jax(name, spec, checkpoint_dir, donate=not args.no_donate)
            sample()
            print(f"[{name}] torch ... (load {loads[-1]}, other runnable tasks {others[-1]})", flush=True)
            worker = subprocess.run([args.torch_python, __file__, "--torch-worker", checkpoint_dir,
                                     "--repeats", str(spec["repeats"]), "--torch-device", args.torch_device],
                                    capture_output=True, text=True, check=False)
            if worker.returncode != 0:
                sys.exit(f"torch worker failed:\n{worker.stderr[-3000:]}")
            torch_result = json.loads(worker.stdout.strip().splitlines()[-1])
            results[name] = {"jax": jax_result, "torch": torch_result}
    environment = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                   "jax_backend": jax.default_backend(), "torch_device": args.torch_device,
                   "cpus": os.cpu_count(),
                   "jax": jax.__version__, "python": platform.python_version(),
                   "torch": results[args.models[0]]["torch"]["torch"],
                   "transformers": results[args.models[0]]["torch"]["transformers"],
                   "load_average": loads + [round(os.getloadavg()[0], 2)],
                   "other_running": others + [_other_running()]}
    environment["busy"] = max(environment["other_running"]) > 0.5 * (os.cpu_count() or 1)
    environment["donate"] = not args.no_donate
    write_report(results, environment, args.out_name)


if __name__ == "__main__":
    main()
