"""Tokenizer adapter over the Hugging Face ``tokenizers`` library.

:func:`load_tokenizer` reads ``tokenizer.json`` (a model directory or the file itself);
:func:`word_level_tokenizer` builds a whitespace word-level tokenizer for synthetic
tasks with the same library, so both go through one code path (:class:`TextTokenizer`).

:meth:`TextTokenizer.encode_pairs` turns prompt/response texts (no chat template) into
right-padded arrays ``tokens [B, T]``, ``attention_mask``, ``prompt_mask`` and
``response_mask`` — the layout :func:`jaxsafe.llm.losses.sequence_logprobs` consumes.
Nothing is silently truncated: a pair longer than ``max_length`` raises unless
``truncate=True`` (then the prompt loses tokens from its left, and the response from its
right only if the response alone does not fit).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers

TOKENIZER_FILE = "tokenizer.json"


class EncodedPairs(NamedTuple):
    """Right-padded arrays [B, T] (numpy): tokens int32, attention_mask, prompt_mask, response_mask bool."""

    tokens: np.ndarray
    attention_mask: np.ndarray
    prompt_mask: np.ndarray
    response_mask: np.ndarray


@dataclasses.dataclass(frozen=True)
class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with the ids jaxsafe needs.

    pad_id: id used for padding (required). bos_id: prepended to every prompt if set.
    eos_id: appended to every response if set (and ``add_eos``).
    """

    tokenizer: Tokenizer
    pad_id: int
    bos_id: int | None = None
    eos_id: int | None = None

    def __post_init__(self):
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"TextTokenizer.{name}: must be in [0, {self.vocab_size}), got {value}")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token: {token!r} is not in the vocabulary")
        return token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        try:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        except Exception as error:  # WordLevel without an unknown token raises for unknown words
            unknown = [word for word, _ in self._pre_tokenize(text)
                       if self.tokenizer.token_to_id(word) is None]
            raise ValueError(f"text: word(s) {unknown[:5]} not in the vocabulary of a tokenizer without an "
                             f"unknown token ({error})") from error

    def _pre_tokenize(self, text):
        pre = self.tokenizer.pre_tokenizer
        return pre.pre_tokenize_str(text) if pre is not None else [(text, (0, len(text)))]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; ids outside ``[0, vocab_size)`` raise ``ValueError``."""
        ids = [int(i) for i in np.asarray(ids).ravel()]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids: token id(s) {bad[:5]} outside the vocabulary [0, {self.vocab_size})")
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def encode_prompts(self, prompts: Sequence[str], max_length: int, truncate: bool = False):
        """Left-padded prompts for generation: ``(tokens [B, P] int32, mask [B, P] bool)``."""
        encoded = []
        for index, text in enumerate(prompts):
            ids = self._prompt_ids(text)
            if len(ids) > max_length:
                if not truncate:
                    raise ValueError(f"prompts[{index}]: {len(ids)} tokens exceed max_length={max_length} "
                                     "(pass truncate=True to keep the last tokens)")
                ids = ids[-max_length:]
            encoded.append(ids)
        length = max(len(ids) for ids in encoded)
        tokens = np.full((len(encoded), length), self.pad_id, np.int32)
        mask = np.zeros((len(encoded), length), bool)
        for row, ids in enumerate(encoded):
            if ids:
                tokens[row, length - len(ids):] = ids
                mask[row, length - len(ids):] = True
        return tokens, mask

    def _prompt_ids(self, text: str) -> list[int]:
        return ([self.bos_id] if self.bos_id is not None else []) + self.encode(text)

    def encode_pairs(self, prompts: Sequence[str], responses: Sequence[str], max_length: int, *,
                     truncate: bool = False, add_eos: bool = True, pad_to_max_length: bool = False
                     ) -> EncodedPairs:
        """Prompt/response pairs -> right-padded :class:`EncodedPairs`.

        max_length: the context length (tokens per row), >= 2. The width T is the longest
        pair, or ``max_length`` with ``pad_to_max_length``.
        """
        if len(prompts) != len(responses) or not prompts:
            raise ValueError(f"responses: need one response per prompt (>= 1), got {len(responses)} for "
                             f"{len(prompts)} prompts")
        if max_length < 2:
            raise ValueError(f"max_length: must be >= 2, got {max_length}")
        rows = []
        for index, (prompt, response) in enumerate(zip(prompts, responses)):
            prompt_ids = self._prompt_ids(prompt)
            eos = [self.eos_id] if add_eos and self.eos_id is not None else []
            response_ids = self.encode(response) + eos
            if not prompt_ids:
                raise ValueError(f"prompts[{index}]: empty prompt (the first response token needs a context)")
            if len(prompt_ids) + len(response_ids) > max_length:
                if not truncate:
                    raise ValueError(f"prompts[{index}]: prompt ({len(prompt_ids)} tokens) + response "
                                     f"({len(response_ids)} tokens) exceed max_length={max_length}; "
                                     "pass truncate=True to truncate")
                response_ids = response_ids[: max_length - 1]
                prompt_ids = prompt_ids[len(prompt_ids) - (max_length - len(response_ids)):]
            rows.append((prompt_ids, response_ids))
        width = max_length if pad_to_max_length else max(len(p) + len(r) for p, r in rows)
        tokens = np.full((len(rows), width), self.pad_id, np.int32)
        prompt_mask = np.zeros((len(rows), width), bool)
        response_mask = np.zeros((len(rows), width), bool)
        for row, (prompt_ids, response_ids) in enumerate(rows):
            n_prompt, n_total = len(prompt_ids), len(prompt_ids) + len(response_ids)
            tokens[row, :n_total] = prompt_ids + response_ids
            prompt_mask[row, :n_prompt] = True
            response_mask[row, n_prompt:n_total] = True
        return EncodedPairs(tokens, prompt_mask | response_mask, prompt_mask, response_mask)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (into ``path`` if it is a directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        self.tokenizer.save(str(path))
        return path


def _special_id(tokenizer: Tokenizer, token: str | None, name: str) -> int | None:
    if token is None:
        return None
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"{name}: {token!r} is not in the tokenizer vocabulary")
    return token_id


def load_tokenizer(path: str | os.PathLike, *, pad_token: str | None = None, bos_token: str | None = None,
                   eos_token: str | None = None, pad_id: int | None = None) -> TextTokenizer:
    """A :class:`TextTokenizer` from ``tokenizer.json`` (a file, or a model directory holding one).

    pad_token / pad_id: the padding id (pad_id defaults to the eos id, else 0).
    """
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"path: {file} does not exist (need a tokenizer.json)")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as error:
        raise ValueError(f"path: {file} is not a valid tokenizer.json ({error})") from error
    bos_id = _special_id(tokenizer, bos_token, "bos_token")
    eos_id = _special_id(tokenizer, eos_token, "eos_token")
    if pad_token is not None:
        pad_id = _special_id(tokenizer, pad_token, "pad_token")
    if pad_id is None:
        pad_id = eos_id if eos_id is not None else 0
    return TextTokenizer(tokenizer, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)


def word_level_tokenizer(words: Sequence[str], *, pad_token: str = "<pad>", bos_token: str | None = "<bos>",
                         eos_token: str | None = "<eos>", unk_token: str | None = None) -> TextTokenizer:
    """A whitespace word-level tokenizer: special tokens first (pad, bos, eos, unk), then ``words``.

    Without ``unk_token`` an unknown word raises ``ValueError`` when encoding.
    """
    specials = [t for t in (pad_token, bos_token, eos_token, unk_token) if t is not None]
    vocab_list = specials + [w for w in words if w not in specials]
    if len(set(vocab_list)) != len(vocab_list):
        raise ValueError("words: contains duplicates")
    if any(not w or any(c.isspace() for c in w) for w in vocab_list):
        raise ValueError("words: every word must be non-empty and contain no whitespace")
    vocab = {word: i for i, word in enumerate(vocab_list)}
    model = models.WordLevel(vocab, unk_token=unk_token) if unk_token else models.WordLevel(vocab)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(specials)
    return TextTokenizer(tokenizer, pad_id=vocab[pad_token],
                         bos_id=vocab.get(bos_token) if bos_token else None,
                         eos_id=vocab.get(eos_token) if eos_token else None)
