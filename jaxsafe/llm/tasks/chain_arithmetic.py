"""Chain arithmetic with retries: K sub-steps per problem, T = tokens until the last sub-step is solved.

Vocabulary: ``PAD BOS EQUALS PLUS`` then one token per residue (``DIGIT_OFFSET + d``). A prompt is
``[BOS, a_0, PLUS, a_1, PLUS, ..., a_K, EQUALS]``; its chain of partial results is
``s_j = (a_0 + ... + a_j) mod modulus`` for ``j = 1 .. K`` (operands ``a_j``, ``j >= 1``, are non-zero, so
consecutive partial results differ). The partial results are also written in the prompt, after ``EQUALS``
(``[..., EQUALS, s_1, ..., s_K, EQUALS]``): the base policy reads them instead of computing the sums, which would
take a tiny decoder thousands of SFT steps on a shared CPU; the law of T, which is what the theory is about, does
not change.

A response is a stream of residue tokens, read by the verifier as the chain written left to right with
retries: it keeps the current sub-step ``j`` (from 1) and accepts a token equal to ``s_j`` as that sub-step's
result (moving to ``j + 1``); any other token is a failed try of sub-step ``j``. ``T`` is the 1-based position
of the token that completes sub-step ``K`` (``H + 1`` if the budget ends first).

The base policy is made by SFT on traces in which every token is, with probability ``success_prob``, one of
the K partial results drawn uniformly (it has computed them but loses track of the step), and otherwise a
uniformly drawn residue that is no partial result (:func:`base_traces`). Sub-step ``j`` then waits a
``Geometric(p_j)`` number of tokens with ``p_j = success_prob * (multiplicity of s_j) / K``, so ``T`` is a sum
of K geometric waits (a negative binomial for distinct results): the discrete analogue of the
``Gamma(K, rate)`` case study, with ``E[T] = sum_j 1 / p_j`` (:func:`step_success_probabilities`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

PAD, BOS, EQUALS, PLUS = 0, 1, 2, 3
DIGIT_OFFSET = 4


@dataclasses.dataclass(frozen=True)
class ChainTask:
    """``steps`` (K, in [1, 4]) sub-steps over ``modulus`` residues (in [K + 2, 28]); ``success_prob`` in (0, 1)
    is the base policy's chance per token of writing one of the partial results."""

    modulus: int = 7
    steps: int = 2
    success_prob: float = 2.0 / 3.0

    def __post_init__(self):
        if not (isinstance(self.steps, int) and 1 <= self.steps <= 4):
            raise ValueError(f"ChainTask.steps must be an integer in [1, 4], got {self.steps!r}")
        if not (isinstance(self.modulus, int) and self.steps + 2 <= self.modulus <= 28):
            raise ValueError(f"ChainTask.modulus must be an integer in [{self.steps + 2}, 28], got {self.modulus!r}")
        if not 0 < float(self.success_prob) < 1:
            raise ValueError(f"ChainTask.success_prob must be in (0, 1), got {self.success_prob!r}")

    @property
    def vocab_size(self) -> int:
        return DIGIT_OFFSET + self.modulus

    @property
    def prompt_length(self) -> int:
        return 3 * self.steps + 4

    def answer_vocab_mask(self) -> jax.Array:
        """[V] bool: the residue tokens (the response alphabet)."""
        return jnp.arange(self.vocab_size) >= DIGIT_OFFSET


def all_prompts(task: ChainTask, limit: int | None = None, seed: int = 0) -> jax.Array:
    """Prompts ``[N, 3K + 4]``: every operand tuple (``a_0`` any residue, later operands non-zero), or a random
    subset of ``limit`` of them (drawn with ``seed``)."""
    grids = np.meshgrid(np.arange(task.modulus), *[np.arange(1, task.modulus)] * task.steps, indexing="ij")
    operands = np.stack([g.ravel() for g in grids], axis=1)
    if limit is not None and limit < len(operands):
        operands = operands[np.random.default_rng(seed).choice(len(operands), limit, replace=False)]
    rows = np.full((len(operands), task.prompt_length), PLUS, np.int32)
    rows[:, 0], rows[:, -1] = BOS, EQUALS
    width = 2 * task.steps + 3
    rows[:, 1:width - 1:2] = operands + DIGIT_OFFSET
    rows[:, width - 1] = EQUALS
    rows[:, width:-1] = np.cumsum(operands, axis=1)[:, 1:] % task.modulus + DIGIT_OFFSET
    return jnp.asarray(rows)


def partial_results(task: ChainTask, prompt_tokens) -> jax.Array:
    """The chain ``s_1 .. s_K`` as tokens [B, K]."""
    return prompt_tokens[:, 2 * task.steps + 3:-1]


def step_success_probabilities(task: ChainTask, prompt_tokens) -> jax.Array:
    """The base policy's chance ``p_j`` per token of solving sub-step j [B, K] (by construction of its traces)."""
    chain = partial_results(task, prompt_tokens)
    multiplicity = jnp.sum(chain[:, :, None] == chain[:, None, :], axis=2)
    return task.success_prob * multiplicity / task.steps


def first_success_positions(task: ChainTask, prompt_tokens, responses, response_mask):
    """``(T [B] int32, solved [B] bool)``: the position completing the last sub-step, ``H + 1`` if none.

    responses [B, H] tokens, response_mask [B, H] bool (tokens outside the mask never count)."""
    chain = partial_results(task, prompt_tokens)
    batch, horizon = responses.shape

    def step(carry, inputs):
        progress, first = carry
        position, token, valid = inputs
        target = jnp.take_along_axis(chain, jnp.minimum(progress, task.steps - 1)[:, None], axis=1)[:, 0]
        progress = progress + ((token == target) & valid & (progress < task.steps))
        first = jnp.where((progress == task.steps) & (first > horizon), position, first)
        return (progress, first), None

    initial = (jnp.zeros(batch, jnp.int32), jnp.full(batch, horizon + 1, jnp.int32))
    inputs = (jnp.arange(1, horizon + 1, dtype=jnp.int32), responses.T, response_mask.astype(bool).T)
    (_, positions), _ = jax.lax.scan(step, initial, inputs)
    return positions, positions <= horizon


def base_traces(task: ChainTask, key: jax.Array, prompt_tokens, length: int):
    """SFT traces ``[B, 3K + 4 + length]`` (a :class:`jaxsafe.llm.train.TokenCorpus`, loss on the response)."""
    from jaxsafe.llm.train import TokenCorpus

    batch = prompt_tokens.shape[0]
    chain = partial_results(task, prompt_tokens) - DIGIT_OFFSET
    branch_key, pick_key, noise_key = jax.random.split(key, 3)
    use_chain = jax.random.uniform(branch_key, (batch, length)) < task.success_prob
    picked = jnp.take_along_axis(chain, jax.random.randint(pick_key, (batch, length), 0, task.steps), axis=1)
    # noise: uniform over the residues that are no partial result (logits -inf on the chain).
    is_chain = jnp.any(jnp.arange(task.modulus)[None, :, None] == chain[:, None, :], axis=2)  # [B, M]
    noise_logits = jnp.where(is_chain, -jnp.inf, 0.0)[:, None, :]
    noise = jax.random.categorical(noise_key, jnp.broadcast_to(noise_logits, (batch, length, task.modulus)))
    tokens = jnp.concatenate([prompt_tokens, (jnp.where(use_chain, picked, noise) + DIGIT_OFFSET).astype(jnp.int32)],
                             axis=1)
    loss_mask = jnp.zeros(tokens.shape, bool).at[:, task.prompt_length:].set(True)
    return TokenCorpus(tokens, jnp.ones(tokens.shape, bool), loss_mask)
