"""Hugging Face checkpoints: parity with transformers (committed fixture), round trips, errors."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxsafe.llm import convert
from jaxsafe.llm import model as model_lib

from .conftest import jit_logits

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llm_parity"
FAMILIES = ("llama", "qwen2", "gpt2")


@pytest.fixture(scope="module")
def loaded():
    return {family: convert.load_hf_checkpoint(FIXTURES / family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(loaded, family):
    config, graphdef, params = loaded[family]
    assert config.family == family
    reference = np.load(FIXTURES / family / "inputs_and_logits.npz")
    out = jit_logits(graphdef, params, reference["tokens"], reference["positions"],
                     reference["attention_mask"])
    real = reference["attention_mask"].astype(bool)
    error = np.abs(np.asarray(out) - reference["logits"])[real]
    assert error.max() < 1e-4, f"{family}: max abs error {error.max()}"
    assert np.abs(reference["logits"]).max() > 0.5  # the reference is not trivially small


def test_fixture_covers_the_interesting_cases(loaded):
    qwen = loaded["qwen2"][0]
    assert qwen.qkv_bias and qwen.tie_embeddings and qwen.n_kv_heads == 1
    assert loaded["llama"][0].n_kv_heads == 2 and not loaded["llama"][0].tie_embeddings
    assert loaded["qwen2"][0].rope_theta == 1_000_000.0
    qwen_bias = np.asarray(loaded["qwen2"][2]["core"]["blocks"][0]["attn"]["q_proj"]["bias"][...])
    assert np.abs(qwen_bias).max() > 0  # non-trivial biases are exercised


def test_hf_sharded_checkpoint_loads_identically(loaded):
    config, _, params = convert.load_hf_checkpoint(FIXTURES / "llama_sharded")
    assert config == loaded["llama"][0]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded["llama"][2])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip_is_exact(loaded, family, tmp_path):
    config, _, params = loaded[family]
    convert.save_hf_checkpoint(config, params, tmp_path)
    original = load_file(str(FIXTURES / family / "model.safetensors"))
    exported = load_file(str(tmp_path / "model.safetensors"))
    if config.tie_embeddings:
        original.pop("lm_head.weight", None)
    assert sorted(exported) == sorted(original)
    for name in original:
        np.testing.assert_array_equal(exported[name], original[name], err_msg=name)
    config2, _, params2 = convert.load_hf_checkpoint(tmp_path)
    assert config2 == config
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_sharded_export_round_trip(loaded, tmp_path):
    config, _, params = loaded["qwen2"]
    files = convert.save_hf_checkpoint(config, params, tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / convert.INDEX_FILE) in files and len(files) > 3
    _, _, params2 = convert.load_hf_checkpoint(tmp_path)
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_random_model_export_round_trip(tmp_path):
    config = model_lib.preset("tiny-gpt2", vocab_size=32, max_seq_len=16, tie_embeddings=False)
    _, params = model_lib.init_params(config, jax.random.PRNGKey(0))
    convert.save_hf_checkpoint(config, params, tmp_path)
    config2, _, params2 = convert.load_hf_checkpoint(tmp_path)
    assert config2 == config
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- bad inputs


def _copy_fixture(family, tmp_path):
    target = tmp_path / family
    shutil.copytree(FIXTURES / family, target)
    return target


def _edit_tensors(model_dir, edit):
    tensors = load_file(str(model_dir / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(model_dir / "model.safetensors"))


def test_unknown_architecture(tmp_path):
    model_dir = _copy_fixture("llama", tmp_path)
    hf = json.loads((model_dir / "config.json").read_text())
    hf.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (model_dir / "config.json").write_text(json.dumps(hf))
    with pytest.raises(convert.CheckpointError, match="model_type 'mamba'.*MambaForCausalLM"):
        convert.load_hf_checkpoint(model_dir)


def test_unsupported_rope_scaling(tmp_path):
    model_dir = _copy_fixture("llama", tmp_path)
    hf = json.loads((model_dir / "config.json").read_text())
    hf["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}
    (model_dir / "config.json").write_text(json.dumps(hf))
    with pytest.raises(convert.CheckpointError, match="llama3"):
        convert.load_hf_checkpoint(model_dir)


def test_missing_tensor_is_named(tmp_path):
    model_dir = _copy_fixture("llama", tmp_path)
    _edit_tensors(model_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(convert.CheckpointError,
                       match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        convert.load_hf_checkpoint(model_dir)


def test_unexpected_tensor_is_named(tmp_path):
    model_dir = _copy_fixture("qwen2", tmp_path)
    _edit_tensors(model_dir,
                  lambda t: t.update({"model.layers.2.mlp.up_proj.weight": np.zeros((64, 32), np.float32)}))
    with pytest.raises(convert.CheckpointError,
                       match=r"unexpected tensor.*model\.layers\.2\.mlp\.up_proj\.weight"):
        convert.load_hf_checkpoint(model_dir)


def test_shape_mismatch_is_named(tmp_path):
    model_dir = _copy_fixture("gpt2", tmp_path)
    _edit_tensors(model_dir,
                  lambda t: t.update({"transformer.h.0.attn.c_attn.weight": np.zeros((32, 64), np.float32)}))
    with pytest.raises(convert.CheckpointError, match=r"h\.0\.attn\.c_attn\.weight.*\(32, 64\).*\(32, 96\)"):
        convert.load_hf_checkpoint(model_dir)


def test_untied_lm_head_in_tied_model_is_rejected(tmp_path):
    model_dir = _copy_fixture("qwen2", tmp_path)
    _edit_tensors(model_dir, lambda t: t.update({"lm_head.weight": np.ones((96, 32), np.float32)}))
    with pytest.raises(convert.CheckpointError, match="lm_head.weight"):
        convert.load_hf_checkpoint(model_dir)


def test_truncated_safetensors_names_the_file(tmp_path):
    model_dir = _copy_fixture("llama", tmp_path)
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(convert.CheckpointError, match=r"model\.safetensors: malformed or truncated"):
        convert.load_hf_checkpoint(model_dir)


def test_garbage_safetensors_header_names_the_file(tmp_path):
    model_dir = _copy_fixture("gpt2", tmp_path)
    (model_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(convert.CheckpointError, match=r"model\.safetensors: malformed"):
        convert.load_hf_checkpoint(model_dir)


def test_missing_shard_names_the_file(tmp_path):
    model_dir = _copy_fixture("llama_sharded", tmp_path)
    (model_dir / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(convert.CheckpointError, match="model-00002-of-00003.safetensors"):
        convert.load_hf_checkpoint(model_dir)


def test_index_pointing_to_wrong_shard_names_tensor(tmp_path):
    model_dir = _copy_fixture("llama_sharded", tmp_path)
    index = json.loads((model_dir / convert.INDEX_FILE).read_text())
    name = "model.norm.weight"
    current = index["weight_map"][name]
    index["weight_map"][name] = next(f for f in set(index["weight_map"].values()) if f != current)
    (model_dir / convert.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(convert.CheckpointError, match=r"model\.norm\.weight"):
        convert.load_hf_checkpoint(model_dir)


def test_missing_config_and_missing_weights(tmp_path):
    with pytest.raises(convert.CheckpointError, match="config.json"):
        convert.load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text((FIXTURES / "llama" / "config.json").read_text())
    with pytest.raises(convert.CheckpointError, match="no model.safetensors"):
        convert.load_hf_checkpoint(tmp_path)


def test_export_refuses_configs_hf_cannot_express(tmp_path):
    config = model_lib.preset("tiny", vocab_size=32, qkv_bias=True)  # llama: q/k/v bias without o bias
    _, params = model_lib.init_params(config, jax.random.PRNGKey(0))
    with pytest.raises(convert.CheckpointError, match="attention_bias"):
        convert.save_hf_checkpoint(config, params, tmp_path)
