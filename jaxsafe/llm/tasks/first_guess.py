"""The first-correct-guess task: a hidden answer per prompt, a stream of guesses, T = the first correct one.

Vocabulary: ``PAD BOS EQUALS PLUS``, one difficulty token per level (``LEVEL_OFFSET + level``), then one token
per residue ``0 .. modulus-1`` (``DIGIT_OFFSET + d``). A prompt is ``[BOS, level, t, EQUALS]``: it names its answer
``t`` (the base policy reads it and uses it with probability ``p_level``; a prompt that needs arithmetic, e.g.
``(a + b) mod modulus``, is the same task for the theory but takes a tiny decoder thousands of SFT steps on a
shared CPU, so the answer is named). A response is a stream of residue tokens (candidates); the verifier accepts
the first candidate equal to ``t`` and ``T`` is its 1-based position (``T = H + 1`` if no candidate within the
budget ``H`` is correct).

The base policy is made by SFT on traces in which every guess is, independently, the answer with probability
``success_probs[level]`` and otherwise a uniformly drawn wrong residue (:func:`base_traces`), so under the base
policy ``T ~ Geometric(p_level)`` and ``E[T] = 1 / p_level`` exactly (:func:`success_probabilities` gives the
per-prompt ``p`` for the exact tabular layer of :mod:`jaxsafe.llm.budget`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

PAD, BOS, EQUALS, PLUS = 0, 1, 2, 3
LEVEL_OFFSET = 4
MAX_LEVELS = 4
DIGIT_OFFSET = LEVEL_OFFSET + MAX_LEVELS
PROMPT_LENGTH = 4


@dataclasses.dataclass(frozen=True)
class FirstGuessTask:
    """``modulus`` residues (in [2, 64]); ``success_probs[level]`` in (0, 1) is the base policy's per-guess success
    probability at difficulty ``level`` (at most :data:`MAX_LEVELS` levels)."""

    modulus: int = 16
    success_probs: tuple[float, ...] = (0.5, 0.25, 0.125, 0.0625)

    def __post_init__(self):
        if not (isinstance(self.modulus, int) and 2 <= self.modulus <= 64):
            raise ValueError(f"FirstGuessTask.modulus must be an integer in [2, 64], got {self.modulus!r}")
        probs = tuple(float(p) for p in self.success_probs)
        if not 1 <= len(probs) <= MAX_LEVELS or not all(0 < p < 1 for p in probs):
            raise ValueError(f"FirstGuessTask.success_probs must be 1 to {MAX_LEVELS} values in (0, 1), "
                             f"got {self.success_probs!r}")
        object.__setattr__(self, "success_probs", probs)

    @property
    def vocab_size(self) -> int:
        return DIGIT_OFFSET + self.modulus

    @property
    def prompt_length(self) -> int:
        return PROMPT_LENGTH

    def answer_vocab_mask(self) -> jax.Array:
        """[V] bool: the residue tokens (the response alphabet)."""
        return jnp.arange(self.vocab_size) >= DIGIT_OFFSET


def all_prompts(task: FirstGuessTask, levels=None) -> jax.Array:
    """Every prompt ``[N, 4]`` of the given levels (default all), level slowest, then the answer."""
    levels = range(len(task.success_probs)) if levels is None else levels
    rows = [[BOS, LEVEL_OFFSET + level, DIGIT_OFFSET + a, EQUALS] for level in levels for a in range(task.modulus)]
    return jnp.asarray(np.asarray(rows, np.int32))


def answers(task: FirstGuessTask, prompt_tokens) -> jax.Array:
    """Answer tokens [B] of prompts [B, 4]."""
    del task
    return prompt_tokens[:, 2]


def levels(prompt_tokens) -> jax.Array:
    """Difficulty level [B] of prompts [B, 4]."""
    return prompt_tokens[:, 1] - LEVEL_OFFSET


def success_probabilities(task: FirstGuessTask, prompt_tokens) -> jax.Array:
    """The base policy's per-guess success probability [B] (by construction of its SFT traces)."""
    return jnp.asarray(task.success_probs, jnp.float32)[levels(prompt_tokens)]


def first_success_positions(task: FirstGuessTask, prompt_tokens, responses, response_mask):
    """``(T [B] int32, solved [B] bool)``: the 1-based position of the first correct candidate, ``H + 1`` if none.

    responses [B, H] tokens, response_mask [B, H] bool (tokens outside the mask never count).
    """
    horizon = responses.shape[1]
    hits = (responses == answers(task, prompt_tokens)[:, None]) & response_mask.astype(bool)
    solved = jnp.any(hits, axis=1)
    positions = jnp.where(solved, jnp.argmax(hits, axis=1) + 1, horizon + 1)
    return positions.astype(jnp.int32), solved


def base_traces(task: FirstGuessTask, key: jax.Array, prompt_tokens, length: int):
    """SFT traces ``[B, 4 + length]`` (a :class:`jaxsafe.llm.train.TokenCorpus`, loss on the response): each
    guess is the answer with probability ``p_level``, else a uniformly drawn wrong residue."""
    from jaxsafe.llm.train import TokenCorpus

    batch = prompt_tokens.shape[0]
    correct_key, wrong_key = jax.random.split(key)
    answer = answers(task, prompt_tokens)[:, None] - DIGIT_OFFSET
    correct = jax.random.uniform(correct_key, (batch, length)) < success_probabilities(task, prompt_tokens)[:, None]
    offset = jax.random.randint(wrong_key, (batch, length), 1, task.modulus)  # a wrong residue, uniformly
    guesses = jnp.where(correct, answer, (answer + offset) % task.modulus) + DIGIT_OFFSET
    tokens = jnp.concatenate([prompt_tokens, guesses.astype(jnp.int32)], axis=1)
    loss_mask = jnp.zeros(tokens.shape, bool).at[:, PROMPT_LENGTH:].set(True)
    return TokenCorpus(tokens, jnp.ones(tokens.shape, bool), loss_mask)
