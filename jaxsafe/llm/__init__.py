"""The Flax language-model module: decoder, generation, checkpoints, losses, synthetic tasks.

Submodules (import them directly, e.g. ``from jaxsafe.llm import model, generate``):

* :mod:`~jaxsafe.llm.model` — :class:`LMConfig`, presets, the NNX decoder (token embedding + the shared
  transformer core of :mod:`jaxsafe.nn.transformer` + head), KV cache and the functional API
  (``init_params``, ``apply``, ``logits``, ``hidden_states``).
* :mod:`~jaxsafe.llm.generate` — jitted batched sampling with a logit-processor hook.
* :mod:`~jaxsafe.llm.convert` — Hugging Face Llama / Qwen2 / GPT-2 checkpoints in and out.
* :mod:`~jaxsafe.llm.tokenizer` — ``tokenizers`` adapter and word-level tokenizers.
* :mod:`~jaxsafe.llm.losses` — sequence log-probs, DPO / IPO / KTO, Bradley-Terry.
* :mod:`~jaxsafe.llm.train` — pure jitted SFT / DPO steps and scanned training loops.
* :mod:`~jaxsafe.llm.merge` — weight-space and logit-space model merging.
* :mod:`~jaxsafe.llm.tasks` — synthetic languages with exact oracles.
* :mod:`~jaxsafe.llm.sacpo` / :mod:`~jaxsafe.llm.safe_rlhf` — SACPO (and P-SACPO) and the Safe-RLHF baseline
  on the learner contract; :mod:`~jaxsafe.llm.sacpo_experiment` — their synthetic task, exact evaluation and
  run directory; :mod:`~jaxsafe.llm.registry` — their registry entries (``jaxsafe train sacpo ...``).
"""
