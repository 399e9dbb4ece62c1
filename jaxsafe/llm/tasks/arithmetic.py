"""Modular addition with verifiable answers: ``a + b mod p``.

Vocabulary: ``PAD BOS EOS PLUS EQUALS`` then one token per residue ``0 .. p-1`` (token
id ``DIGIT_OFFSET + d``). A prompt is ``[BOS, a, PLUS, b, EQUALS]``; the answer is the
single token of ``(a + b) mod p``. :func:`verify` checks a response exactly (first
response token must be the right residue); :func:`answer_logprobs` enumerates the
model's probability of every residue, so expected accuracy is exact
(:func:`exact_accuracy`) rather than estimated by sampling.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.llm import model as model_lib
from jaxsafe.llm.losses import masked_log_softmax

PAD, BOS, EOS, PLUS, EQUALS = 0, 1, 2, 3, 4
DIGIT_OFFSET = 5
PROMPT_LENGTH = 5


@dataclasses.dataclass(frozen=True)
class ModularAddition:
    """Task ``a + b mod modulus`` with ``modulus`` in [2, 97]."""

    modulus: int = 7

    def __post_init__(self):
        if not (isinstance(self.modulus, int) and 2 <= self.modulus <= 97):
            raise ValueError(f"ModularAddition.modulus: must be an integer in [2, 97], got {self.modulus!r}")

    @property
    def vocab_size(self) -> int:
        return DIGIT_OFFSET + self.modulus

    def digit_token(self, digit):
        return DIGIT_OFFSET + digit

    def answer_vocab_mask(self) -> jax.Array:
        """[V] bool: the residue tokens."""
        return jnp.arange(self.vocab_size) >= DIGIT_OFFSET


def all_problems(task: ModularAddition):
    """``(a [p*p], b [p*p])``: every pair of operands."""
    a, b = np.meshgrid(np.arange(task.modulus), np.arange(task.modulus), indexing="ij")
    return jnp.asarray(a.ravel(), jnp.int32), jnp.asarray(b.ravel(), jnp.int32)


def prompts(task: ModularAddition, a, b) -> jax.Array:
    """Prompt tokens [B, 5] for operands a, b [B]."""
    a, b = jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32)
    ones = jnp.ones_like(a)
    return jnp.stack([BOS * ones, task.digit_token(a), PLUS * ones, task.digit_token(b), EQUALS * ones], axis=1)


def answers(task: ModularAddition, a, b) -> jax.Array:
    """Correct answer tokens [B]."""
    return task.digit_token((jnp.asarray(a) + jnp.asarray(b)) % task.modulus)


def verify(task: ModularAddition, prompt_tokens, response_tokens) -> jax.Array:
    """Exact verifier [B] (float 0/1): the first response token is ``(a + b) mod p``.

    prompt_tokens [B, 5] as built by :func:`prompts` (not padded); response_tokens [B, N >= 1].
    """
    a = prompt_tokens[:, 1] - DIGIT_OFFSET
    b = prompt_tokens[:, 3] - DIGIT_OFFSET
    return (response_tokens[:, 0] == answers(task, a, b)).astype(jnp.float32)


def answer_logprobs(graphdef, params, task: ModularAddition, prompt_tokens, restrict_to_digits: bool = True):
    """``log p(residue d | prompt)`` [B, p] for every residue (next token after ``EQUALS``).

    With ``restrict_to_digits`` the distribution is renormalised over residue tokens (the
    policy used with a digit-only logit processor); otherwise it is the model's full-vocab
    probability of each residue token.
    """
    logits = model_lib.logits(graphdef, params, prompt_tokens)[:, -1]
    mask = task.answer_vocab_mask() if restrict_to_digits else None
    return masked_log_softmax(logits, mask)[:, DIGIT_OFFSET:]


def exact_accuracy(task: ModularAddition, answer_logprob_table, a, b) -> jax.Array:
    """Expected accuracy of sampling one answer: ``mean_i p(correct_i | prompt_i)``."""
    correct = (jnp.asarray(a) + jnp.asarray(b)) % task.modulus
    return jnp.mean(jnp.exp(jnp.take_along_axis(answer_logprob_table, correct[:, None], axis=1)[:, 0]))


def sft_corpus(task: ModularAddition, a, b):
    """A :class:`jaxsafe.llm.train.TokenCorpus` of ``prompt + [answer, EOS]`` (loss on the answer and EOS)."""
    from jaxsafe.llm.train import TokenCorpus

    tokens = jnp.concatenate([prompts(task, a, b), answers(task, a, b)[:, None],
                              jnp.full((len(a), 1), EOS, jnp.int32)], axis=1)
    loss_mask = jnp.zeros(tokens.shape, bool).at[:, PROMPT_LENGTH:].set(True)
    return TokenCorpus(tokens, jnp.ones(tokens.shape, bool), loss_mask)
