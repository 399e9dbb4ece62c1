"""jaxsafe's GRPO against TRL's ``GRPOTrainer``: the same tiny model, weights, task and hyperparameters.

Three parts, each side by side in one run (the torch side runs in a subprocess of the transformers venv,
``--hf-python``, default ``.venv-hf/bin/python``; create it with
``python3 -m venv .venv-hf && .venv-hf/bin/pip install /opt/wheels/torch-2.13.0+cpu-*.whl transformers trl``;
torch and trl are never a jaxsafe dependency):

1. **One batch, exact loss terms** (``--part batch``). jaxsafe samples one batch from the SFT base policy of
   ``first_guess`` (4 prompts x a group of 8, H = 8 tokens); the policy being optimised is the base policy after
   one jaxsafe GRPO step (so ratios differ from 1 and clipping is exercised), the "old" log-probs are the sampler's
   and the KL reference is the base policy. TRL's own code then scores the same completions (our reward function
   through its reward path, its group advantages for every ``scale_rewards``) and evaluates its ``compute_loss``
   for every ``loss_type`` x ``scale_rewards`` x ``beta in {0, 0.04}``, on the same weights exported to
   transformers. Reported: advantage differences, the loss from each side's own model, and jaxsafe's
   :func:`~jaxsafe.llm.losses.grpo_loss` evaluated on TRL's torch log-probs (isolating the loss formula from the
   two models' float differences).
2. **Learning curves** (``--part curves``): ``--iterations`` GRPO iterations on both sides from the same base
   weights (8 prompts x 8, H = 8, dapo, group scaling, AdamW lr 1e-3, no gradient clipping, no KL), ``--seeds``
   seeds each; mean reward (= pass@1 within H, binary reward) per iteration.
3. **Throughput** (``--part throughput``, a quiet machine only): GRPO iterations per second and generated tokens
   per second on both sides at the same group size, completion length and batch.

Both sides sample from the full vocabulary (TRL cannot restrict the sampler to the response alphabet), with
``+`` (never a response token of first_guess) as the EOS token on both sides (jaxsafe: ``stop_tokens``).

    .venv/bin/python benchmarks/grpo_trl.py --part batch curves
    .venv/bin/python benchmarks/grpo_trl.py --part throughput      # quiet machine

Writes ``benchmarks/results/grpo_trl.{json,md}`` (+ ``grpo_trl.png``, the curves).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TASK = "first_guess"
GROUP, BATCH_PROMPTS, HORIZON = 8, 4, 8
CURVE_PROMPTS, LEARNING_RATE = 8, 1e-3
CLIP_EPS, BETA_KL = 0.2, 0.04
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALES = ("group", "batch", "none")
#: (beta, KL ratio correction = TRL's use_bias_correction_kl) combinations compared
COMBOS = ((0.0, False), (BETA_KL, True), (BETA_KL, False))


def combo_key(loss_type, scale, beta, correction) -> str:
    return f"{loss_type}/{scale}/beta={beta:g}" + ("" if beta == 0 else ("/kl*ratio" if correction else "/kl"))


#: first_guess's vocabulary as words (the tokenizer of the transformers side): ids 0..23.
PAD_ID, EOS_ID = 0, 3


def vocabulary(vocab_size: int) -> list[str]:
    from jaxsafe.llm.tasks import first_guess as fg

    words = ["<pad>", "<bos>", "=", "+"] + [f"L{i}" for i in range(fg.MAX_LEVELS)]
    words += [f"d{i}" for i in range(vocab_size - fg.DIGIT_OFFSET)]
    assert len(words) == vocab_size
    return words


# ----------------------------------------------------------------------------- JAX side


def jax_problem():
    from jaxsafe.llm import grpo_experiment as experiment

    problem = experiment.make_problem(TASK, reward="binary")
    return problem._replace(vocab_mask=None, stop_tokens=(EOS_ID,), pad_token=PAD_ID)


def jax_batch(workdir: Path) -> dict:
    """Sample one batch, take one GRPO step, export base and stepped weights; jaxsafe's advantages and losses."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxsafe.llm import convert, grpo, losses

    problem = jax_problem()
    graphdef, base = problem.graphdef, problem.params
    lm_config = nnx.merge(graphdef, base).config
    prompts = problem.prompt_tokens[:BATCH_PROMPTS]
    prompts = jnp.repeat(prompts, GROUP, axis=0)
    out = grpo.sample_group(graphdef, base, prompts, jax.random.PRNGKey(3), HORIZON, None, 1.0, (EOS_ID,), PAD_ID)
    plen = prompts.shape[1]
    responses, mask = out.response_tokens, out.response_mask[:, plen:]
    rewards = problem.reward_fn(prompts, responses, mask)[:, 0]
    # the optimised policy: the base policy after one GRPO step (dapo, group scaling) on this batch at lr 1e-2
    config = grpo.GRPOConfig(group_size=GROUP, prompts_per_batch=BATCH_PROMPTS, max_new_tokens=HORIZON,
                             num_iterations=1)
    advantages = losses.group_advantages(rewards.reshape(BATCH_PROMPTS, GROUP), "group").reshape(-1)

    def objective(params):
        logprobs = grpo.policy_token_logprobs(graphdef, params, out.sequences, out.attention_mask)[:, plen:]
        return losses.grpo_loss(logprobs, out.response_logprobs, advantages, mask, loss_type="dapo").loss

    grads = jax.grad(objective)(base)
    from jaxsafe.llm import train as train_lib

    policy, _ = train_lib.adamw_update(grads, train_lib.ADAM.init(base), base, 1e-2)
    del config
    convert.save_hf_checkpoint(lm_config, base, workdir / "base")
    convert.save_hf_checkpoint(lm_config, policy, workdir / "policy")
    logprobs = grpo.policy_token_logprobs(graphdef, policy, out.sequences, out.attention_mask)[:, plen:]
    reference = grpo.policy_token_logprobs(graphdef, base, out.sequences, out.attention_mask)[:, plen:]
    result = {"advantages": {}, "loss": {}}
    for scale in SCALES:
        adv = losses.group_advantages(rewards.reshape(BATCH_PROMPTS, GROUP), scale).reshape(-1)
        result["advantages"][scale] = np.asarray(adv).tolist()
        for loss_type in LOSS_TYPES:
            for beta, correction in COMBOS:
                value = losses.grpo_loss(logprobs, out.response_logprobs, adv, mask, loss_type=loss_type,
                                         clip_eps=CLIP_EPS, beta=beta, reference_logprobs=reference,
                                         max_completion_length=HORIZON, kl_ratio_correction=correction)
                result["loss"][combo_key(loss_type, scale, beta, correction)] = float(value.loss)
    np.savez(workdir / "batch.npz", prompts=np.asarray(prompts), responses=np.asarray(responses),
             mask=np.asarray(mask), old_logprobs=np.asarray(out.response_logprobs),
             jax_logprobs=np.asarray(logprobs), jax_reference=np.asarray(reference), rewards=np.asarray(rewards))
    result["rewards"] = np.asarray(rewards).tolist()
    result["clip_fraction"] = float(losses.grpo_loss(logprobs, out.response_logprobs, advantages, mask).clip_fraction)
    result["active_tokens"] = int(np.asarray(mask).sum())
    return result


def jax_loss_on(logprobs, old, reference, mask, rewards) -> dict:
    """jaxsafe's loss formula on given (torch) log-probs, for every combination."""
    import jax.numpy as jnp

    from jaxsafe.llm import losses

    out = {}
    for scale in SCALES:
        adv = losses.group_advantages(jnp.asarray(rewards).reshape(BATCH_PROMPTS, GROUP), scale).reshape(-1)
        for loss_type in LOSS_TYPES:
            for beta, correction in COMBOS:
                out[combo_key(loss_type, scale, beta, correction)] = float(losses.grpo_loss(
                    jnp.asarray(logprobs), jnp.asarray(old), adv, jnp.asarray(mask), loss_type=loss_type,
                    clip_eps=CLIP_EPS, beta=beta, reference_logprobs=jnp.asarray(reference),
                    max_completion_length=HORIZON, kl_ratio_correction=correction).loss)
    return out


def jax_curves(iterations: int, seeds: int) -> dict:
    import jax
    import numpy as np

    from jaxsafe.llm import grpo

    problem = jax_problem()
    config = grpo.GRPOConfig(group_size=GROUP, prompts_per_batch=CURVE_PROMPTS, max_new_tokens=HORIZON,
                             num_iterations=iterations)
    hparams = config.default_hparams()
    train = jax.jit(jax.vmap(grpo.make_train(config, problem), in_axes=(0, None)))
    start = time.perf_counter()
    result = train(jax.random.split(jax.random.PRNGKey(0), seeds), hparams)
    reward = np.asarray(result.metrics["mean_reward"])
    return {"mean_reward": reward.tolist(), "seconds_with_compile": time.perf_counter() - start}


def jax_throughput(iterations: int, model_name: str, workdir: Path) -> dict:
    """GRPO iterations / s and generated tokens / s (compilation excluded) on the tiny first_guess model or a
    llama-160m-shaped model on first_guess's prompts (random weights, same vocabulary)."""
    import jax
    import numpy as np
    from flax import nnx

    from jaxsafe.llm import convert, grpo, model

    problem = jax_problem()
    lm_config = nnx.merge(problem.graphdef, problem.params).config
    if model_name == "llama-160m":  # llama-160m's blocks with the task's 24-token vocabulary, random weights
        lm_config = model.preset("llama-160m", vocab_size=lm_config.vocab_size, max_seq_len=64)
        graphdef, params = model.init_params(lm_config, jax.random.PRNGKey(0))
        problem = problem._replace(graphdef=graphdef, params=params)
    convert.save_hf_checkpoint(lm_config, problem.params, workdir / f"throughput-{model_name}")
    # beta = 0, so TRL loads no reference model; log_kl=False skips jaxsafe's reference pass too (equal work).
    config = grpo.GRPOConfig(group_size=GROUP, prompts_per_batch=CURVE_PROMPTS, max_new_tokens=HORIZON,
                             num_iterations=iterations, log_kl=False)
    grpo.check_problem(config, problem)

    @jax.jit
    def train(key, hparams, params):  # the base params as an argument, not a literal of the program
        with jax.ensure_compile_time_eval():  # the build-time reward probe runs eagerly on concrete arrays
            run = grpo.make_train(config, problem._replace(params=params))
        return run(key, hparams)

    hparams = config.default_hparams()
    jax.block_until_ready(train(jax.random.PRNGKey(0), hparams, problem.params).metrics)  # compile
    start = time.perf_counter()
    metrics = jax.block_until_ready(train(jax.random.PRNGKey(1), hparams, problem.params).metrics)
    seconds = time.perf_counter() - start
    tokens = float(np.asarray(metrics["tokens_generated"]).sum())
    return {"iterations_per_s": iterations / seconds, "tokens_per_s": tokens / seconds, "seconds": seconds,
            "tokens": tokens}


# ----------------------------------------------------------------------------- report


def write_report(payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "grpo_trl.json").write_text(json.dumps(payload, indent=2) + "\n")
    env = payload["environment"]
    lines = ["# jaxsafe GRPO vs TRL GRPOTrainer (same model, weights, task, hyperparameters)", "",
             f"Task {TASK} (SFT base policy, binary reward, full vocabulary, EOS `+`), group {GROUP}, H = {HORIZON}. "
             f"jax {env.get('jax')}, torch {env.get('torch')}, transformers {env.get('transformers')}, trl "
             f"{env.get('trl')}; 1-minute load average {env.get('load_average')}. Generated by "
             "`benchmarks/grpo_trl.py`.", ""]
    batch = payload.get("batch")
    if batch:
        lines += [f"## One batch ({BATCH_PROMPTS} prompts x {GROUP}, {batch['jax']['active_tokens']} active tokens, "
                  f"clip fraction {batch['jax']['clip_fraction']:.3f})", "",
                  "Advantages (max |jaxsafe - TRL|): " + ", ".join(
                      f"{s} {batch['advantage_max_abs_diff'][s]:.2e}" for s in SCALES), "",
                  "`kl*ratio`: the k3 term times the importance ratio (jaxsafe `kl_ratio_correction=True`, TRL "
                  "`use_bias_correction_kl=True`, TRL 1.16's default); `kl`: plain k3 (jaxsafe's default, TRL with "
                  "`use_bias_correction_kl=False`).", "",
                  "| loss_type / scale_rewards / beta | jaxsafe | TRL | abs diff | jaxsafe formula on TRL's log-probs "
                  "| abs diff |", "|---|---:|---:|---:|---:|---:|"]
        for key, value in batch["jax"]["loss"].items():
            trl_value, on_torch = batch["trl"]["loss"][key], batch["jax_formula_on_torch_logprobs"][key]
            lines.append(f"| {key} | {value:.7f} | {trl_value:.7f} | {abs(value - trl_value):.1e} | {on_torch:.7f} | "
                         f"{abs(on_torch - trl_value):.1e} |")
        lines += ["", f"Token log-probs, jaxsafe vs transformers on the same weights: max abs diff "
                      f"{batch['logprob_max_abs_diff']:.1e}.", ""]
    curves = payload.get("curves")
    if curves:
        import numpy as np

        jx = np.asarray(curves["jax"]["mean_reward"])
        pt = np.asarray(curves["trl"]["mean_reward"])
        lines += [f"## Learning curves ({curves['iterations']} iterations, {curves['seeds']} seeds, "
                  f"{CURVE_PROMPTS} prompts x {GROUP})", "",
                  "| iteration | jaxsafe mean reward (seed mean) | TRL mean reward (seed mean) |", "|---:|---:|---:|"]
        for i in range(jx.shape[1]):
            lines.append(f"| {i + 1} | {jx[:, i].mean():.3f} | {pt[:, i].mean():.3f} |")
        span = max(1, jx.shape[1] // 4)
        lines += ["", f"First -> last quarter: jaxsafe {jx[:, :span].mean():.3f} -> {jx[:, -span:].mean():.3f}, "
                      f"TRL {pt[:, :span].mean():.3f} -> {pt[:, -span:].mean():.3f}.", ""]
    throughput = payload.get("throughput")
    if throughput:
        lines += ["## Throughput (GRPO iterations on CPU, compilation / warm-up excluded)", "",
                  "| model | jaxsafe it/s | TRL it/s | jaxsafe tokens/s | TRL tokens/s | jaxsafe / TRL |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, row in throughput.items():
            jx, pt = row["jax"], row["trl"]
            lines.append(f"| {name} | {jx['iterations_per_s']:.2f} | {pt['iterations_per_s']:.2f} | "
                         f"{jx['tokens_per_s']:.0f} | {pt['tokens_per_s']:.0f} | "
                         f"{jx['iterations_per_s'] / pt['iterations_per_s']:.2f} |")
        lines.append("")
    (RESULTS / "grpo_trl.md").write_text("\n".join(lines))
    print("\n".join(lines))


def plot_curves(curves: dict) -> None:
    import numpy as np

    from jaxsafe import plotting

    plt = plotting._pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, label in (("jax", "jaxsafe"), ("trl", "TRL GRPOTrainer")):
        values = np.asarray(curves[name]["mean_reward"])
        x = np.arange(1, values.shape[1] + 1)
        line, = ax.plot(x, values.mean(0), "o-", label=label)
        ax.fill_between(x, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("GRPO iteration")
    ax.set_ylabel("mean reward (pass@1 within H)")
    ax.set_title(f"{TASK}, group {GROUP}, H = {HORIZON}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "grpo_trl.png", dpi=110)
    plt.close(fig)


def run_worker(hf_python: str, *args) -> dict:
    proc = subprocess.run([hf_python, str(ROOT / "benchmarks" / "grpo_trl_torch.py"), *map(str, args)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"torch worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["batch", "curves"], choices=["batch", "curves", "throughput"])
    parser.add_argument("--hf-python", default=str(ROOT / ".venv-hf" / "bin" / "python"))
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--throughput-iterations", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["tiny", "llama-160m"], choices=["tiny", "llama-160m"])
    args = parser.parse_args(argv)
    import jax
    import numpy as np

    previous = RESULTS / "grpo_trl.json"
    payload = json.loads(previous.read_text()) if previous.exists() else {}
    loads = [round(os.getloadavg()[0], 2)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        versions = None
        if "batch" in args.part:
            jax_result = jax_batch(workdir)
            trl_result = run_worker(args.hf_python, "batch", workdir, HORIZON, GROUP, BATCH_PROMPTS, CLIP_EPS, BETA_KL)
            versions = trl_result.pop("versions")
            data = np.load(workdir / "batch.npz")
            torch_logprobs = np.asarray(trl_result.pop("logprobs"))
            torch_reference = np.asarray(trl_result.pop("reference_logprobs"))
            mask = data["mask"].astype(bool)
            payload["batch"] = {
                "jax": jax_result, "trl": trl_result,
                "advantage_max_abs_diff": {s: float(np.max(np.abs(np.asarray(jax_result["advantages"][s]) -
                                                                  np.asarray(trl_result["advantages"][s]))))
                                           for s in SCALES},
                "logprob_max_abs_diff": float(np.max(np.abs(np.where(mask, data["jax_logprobs"] - torch_logprobs,
                                                                     0.0)))),
                "jax_formula_on_torch_logprobs": jax_loss_on(torch_logprobs, data["old_logprobs"], torch_reference,
                                                             mask, data["rewards"])}
        if "curves" in args.part:
            jax_result = jax_curves(args.iterations, args.seeds)
            from flax import nnx

            from jaxsafe.llm import convert

            problem = jax_problem()
            convert.save_hf_checkpoint(nnx.merge(problem.graphdef, problem.params).config, problem.params,
                                       workdir / "base")
            trl_result = run_worker(args.hf_python, "curves", workdir, HORIZON, GROUP, CURVE_PROMPTS, CLIP_EPS,
                                    LEARNING_RATE, args.iterations, args.seeds)
            versions = trl_result.pop("versions")
            payload["curves"] = {"iterations": args.iterations, "seeds": args.seeds, "jax": jax_result,
                                 "trl": trl_result}
            plot_curves(payload["curves"])
        if "throughput" in args.part:
            payload["throughput"] = {}
            for name in args.models:
                loads.append(round(os.getloadavg()[0], 2))
                jax_result = jax_throughput(args.throughput_iterations, name, workdir)
                loads.append(round(os.getloadavg()[0], 2))
                trl_result = run_worker(args.hf_python, "throughput", workdir / f"throughput-{name}", HORIZON, GROUP,
                                        CURVE_PROMPTS, CLIP_EPS, LEARNING_RATE, args.throughput_iterations)
                versions = trl_result.pop("versions")
                payload["throughput"][name] = {"jax": jax_result, "trl": trl_result}
    loads.append(round(os.getloadavg()[0], 2))
    payload["environment"] = {**(versions or payload.get("environment", {})), "jax": jax.__version__,
                              "python": platform.python_version(), "cpus": os.cpu_count(), "load_average": loads}
    write_report(payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
