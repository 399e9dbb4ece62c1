"""The transformers + TRL side of ``benchmarks/grpo_trl.py`` (run by it with the ``.venv-hf`` interpreter).

Never imports jax. Reads the checkpoints and the batch the JAX side wrote and prints one JSON line.

    python grpo_trl_torch.py batch WORKDIR HORIZON GROUP PROMPTS CLIP BETA
    python grpo_trl_torch.py curves WORKDIR HORIZON GROUP PROMPTS CLIP LR ITERATIONS SEEDS
    python grpo_trl_torch.py throughput CHECKPOINT HORIZON GROUP PROMPTS CLIP LR ITERATIONS
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np

# first_guess's layout (jaxsafe.llm.tasks.first_guess): PAD BOS = + , 4 level tokens, then the residues
PAD, BOS, EQUALS, PLUS, LEVEL_OFFSET, DIGIT_OFFSET = 0, 1, 2, 3, 4, 8
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALES = ("group", "batch", "none")


def words(vocab_size):
    return ["<pad>", "<bos>", "=", "+"] + [f"L{i}" for i in range(4)] + [f"d{i}" for i in range(vocab_size - 8)]


def make_tokenizer(vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words(vocab_size))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="+", bos_token="<bos>",
                                   unk_token="<pad>")


def prompt_text(ids, vocab_size):
    w = words(vocab_size)
    return " ".join(w[i] for i in ids)


def binary_reward(prompts, completions, completion_ids, answer, **kwargs):
    """1 if the answer token is among the completion's tokens (first_guess's verifier, binary form)."""
    return [float(a in ids) for ids, a in zip(completion_ids, answer)]


def grpo_args(out_dir, horizon, group, prompts, clip, lr, beta=0.0, loss_type="dapo", scale="group", steps=1, seed=0):
    from trl import GRPOConfig

    return GRPOConfig(output_dir=out_dir, per_device_train_batch_size=prompts * group, num_generations=group,
                      max_completion_length=horizon, learning_rate=lr, beta=beta, loss_type=loss_type,
                      scale_rewards=scale, epsilon=clip, temperature=1.0, top_k=0, top_p=1.0, max_steps=steps,
                      logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                      max_grad_norm=0.0, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                      adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, seed=seed, data_seed=seed,
                      gradient_accumulation_steps=1, num_iterations=1, disable_tqdm=True, log_completions=False,
                      dataloader_num_workers=0)


def versions():
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "torch_threads": torch.get_num_threads()}


def run_batch(workdir, horizon, group, n_prompts, clip, beta):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    data = np.load(os.path.join(workdir, "batch.npz"))
    policy = AutoModelForCausalLM.from_pretrained(os.path.join(workdir, "policy"), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(workdir, "base"), dtype=torch.float32).eval()
    vocab_size = policy.config.vocab_size
    tokenizer = make_tokenizer(vocab_size)
    prompts, responses, mask = data["prompts"], data["responses"], data["mask"].astype(bool)
    completions = [responses[i][mask[i]].tolist() for i in range(len(responses))]
    sampler_logprobs = [data["old_logprobs"][i][mask[i]].tolist() for i in range(len(responses))]
    rows = [{"prompt": prompt_text(p, vocab_size), "answer": int(p[2])} for p in prompts]
    dataset = Dataset.from_list(rows[::group])

    def rollout(prompt_list, trainer):  # the JAX side's completions, in TRL's order (each prompt G times)
        assert len(prompt_list) == len(rows)
        return {"prompt_ids": [p.tolist() for p in prompts], "completion_ids": completions,
                "logprobs": sampler_logprobs}

    with tempfile.TemporaryDirectory() as out:
        args = grpo_args(out, horizon, group, n_prompts, clip, 1e-3, beta=beta)
        trainer = GRPOTrainer(model=policy, reward_funcs=binary_reward, args=args, train_dataset=dataset,
                              processing_class=tokenizer, rollout_func=rollout)
        from trl.trainer import grpo_trainer as trl_grpo

        # the KL reference is the base policy (TRL would load the policy's own checkpoint), with TRL's fused head
        trl_grpo.add_fused_lm_head(base, temperature=args.temperature, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)
        trainer.ref_model = base
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.train()
        result = {"advantages": {}, "loss": {}}
        per_scale = {}
        for scale in SCALES:
            trainer.scale_rewards = scale
            trainer.beta = beta
            inputs = trainer._generate_and_score_completions([dict(r) for r in rows])
            per_scale[scale] = inputs
            result["advantages"][scale] = inputs["advantages"].tolist()
        width = per_scale["group"]["completion_ids"].shape[1]
        old = torch.zeros((len(rows), width))
        for i, lp in enumerate(sampler_logprobs):
            old[i, :len(lp)] = torch.tensor(lp)
        with torch.no_grad():
            ids = torch.cat([per_scale["group"]["prompt_ids"], per_scale["group"]["completion_ids"]], 1)
            attn = torch.cat([per_scale["group"]["prompt_mask"], per_scale["group"]["completion_mask"]], 1)
            logprobs = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, width)[0]
            reference = per_scale["group"]["ref_per_token_logps"]
        for scale in SCALES:
            inputs = dict(per_scale[scale])
            inputs["old_per_token_logps"] = old
            for loss_type in LOSS_TYPES:
                for b, correction in ((0.0, False), (beta, True), (beta, False)):
                    trainer.loss_type, trainer.beta = loss_type, b
                    trainer.args.use_bias_correction_kl = correction
                    with torch.no_grad():
                        value = trainer._compute_loss(trainer.model, inputs)
                    key = f"{loss_type}/{scale}/beta={b:g}" + ("" if b == 0 else ("/kl*ratio" if correction else "/kl"))
                    result["loss"][key] = float(value)

    def padded(x):
        out = np.zeros(responses.shape, np.float32)
        out[:, :x.shape[1]] = x.numpy()
        return out

    result["logprobs"] = padded(logprobs).tolist()
    result["reference_logprobs"] = padded(reference).tolist()
    result["completion_mask_equal"] = bool((per_scale["group"]["completion_mask"].numpy().astype(bool)
                                            == mask[:, :width]).all() and not mask[:, width:].any())
    result["versions"] = versions()
    return result


def first_guess_dataset(vocab_size, n_prompts):
    from datasets import Dataset

    rows = [{"prompt": prompt_text([BOS, LEVEL_OFFSET + 1, DIGIT_OFFSET + a, EQUALS], vocab_size),
             "answer": DIGIT_OFFSET + a} for a in range(vocab_size - DIGIT_OFFSET)]
    del n_prompts
    return Dataset.from_list(rows)


def run_curves(workdir, horizon, group, n_prompts, clip, lr, iterations, seeds):
    import torch
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    rewards = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(os.path.join(workdir, "base"), dtype=torch.float32)
        tokenizer = make_tokenizer(model.config.vocab_size)
        with tempfile.TemporaryDirectory() as out:
            trainer = GRPOTrainer(model=model, reward_funcs=binary_reward,
                                  args=grpo_args(out, horizon, group, n_prompts, clip, lr, steps=iterations,
                                                 seed=seed),
                                  train_dataset=first_guess_dataset(model.config.vocab_size, n_prompts),
                                  processing_class=tokenizer)
            trainer.train()
            rewards.append([h["reward"] for h in trainer.state.log_history if "reward" in h][:iterations])
    return {"mean_reward": rewards, "versions": versions()}


def run_throughput(checkpoint, horizon, group, n_prompts, clip, lr, iterations):
    import torch
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    tokenizer = make_tokenizer(model.config.vocab_size)
    with tempfile.TemporaryDirectory() as out:
        trainer = GRPOTrainer(model=model, reward_funcs=binary_reward,
                              args=grpo_args(out, horizon, group, n_prompts, clip, lr, steps=iterations + 1),
                              train_dataset=first_guess_dataset(model.config.vocab_size, n_prompts),
                              processing_class=tokenizer)
        stamps = []

        from transformers import TrainerCallback

        class Stamp(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                stamps.append(time.perf_counter())

        trainer.add_callback(Stamp())
        trainer.train()
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    seconds = stamps[-1] - stamps[0]  # the first iteration is the warm-up
    prompt_tokens = 4 * n_prompts * group
    generated = (tokens[-1] - tokens[0]) - prompt_tokens * iterations
    return {"iterations_per_s": iterations / seconds, "tokens_per_s": generated / seconds, "seconds": seconds,
            "tokens": generated, "versions": versions()}


def main():
    warnings.filterwarnings("ignore")
    mode, path, *rest = sys.argv[1:]
    if mode == "batch":
        horizon, group, prompts, clip, beta = int(rest[0]), int(rest[1]), int(rest[2]), float(rest[3]), float(rest[4])
        result = run_batch(path, horizon, group, prompts, clip, beta)
    elif mode == "curves":
        result = run_curves(path, int(rest[0]), int(rest[1]), int(rest[2]), float(rest[3]), float(rest[4]),
                            int(rest[5]), int(rest[6]))
    else:
        result = run_throughput(path, int(rest[0]), int(rest[1]), int(rest[2]), float(rest[3]), float(rest[4]),
                                int(rest[5]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
