"""Shared network blocks.

* :mod:`~jaxsafe.nn.transformer` — the causal transformer core (attention with GQA and a KV cache, MLP, norms,
  RoPE, the final norm) that takes embeddings ``[B, T, D]``; the language model and the decision transformers
  are "their embeddings + this core + their heads".
"""
