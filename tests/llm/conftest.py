"""Shared fixtures: one tiny decoder per session so compiled functions are reused."""

import jax
import pytest

from jaxsafe.llm import model as model_lib


@pytest.fixture(scope="session")
def tiny_config():
    return model_lib.preset("tiny", vocab_size=32, max_seq_len=32)


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """(graphdef, params) of a random tiny llama (GQA 4/2, tied embeddings)."""
    return model_lib.init_params(tiny_config, jax.random.PRNGKey(0))


# Jitted views of the functional API (graphdef is static), shared by all tests.
jit_logits = jax.jit(model_lib.logits, static_argnums=0)
jit_apply = jax.jit(model_lib.apply, static_argnums=0)
jit_hidden_states = jax.jit(model_lib.hidden_states, static_argnums=0)
jit_scores = jax.jit(model_lib.scores, static_argnums=0)
