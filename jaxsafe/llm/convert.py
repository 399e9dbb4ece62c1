"""Hugging Face checkpoints <-> jaxsafe decoders (Llama, Qwen2, GPT-2 families).

A Hugging Face model directory holds ``config.json`` and either ``model.safetensors``
or shards listed in ``model.safetensors.index.json``. :func:`load_hf_checkpoint` reads
one into ``(LMConfig, graphdef, params)``; :func:`save_hf_checkpoint` writes one back
(float32, loadable by ``transformers``' ``from_pretrained``).

Layout differences handled here (and nowhere else):

* ``torch.nn.Linear`` stores ``weight`` as [out, in]; ``nnx.Linear`` stores ``kernel`` as
  [in, out], so Llama/Qwen2 projections are transposed.
* GPT-2 uses ``Conv1D`` ([in, out], no transpose) and a fused ``c_attn`` of width 3D that
  is split into q/k/v projections (and concatenated back on export).
* Tied models usually omit ``lm_head.weight``; if present it must equal the embedding.
* Known non-parameter buffers (rotary ``inv_freq``, GPT-2 ``attn.bias`` causal masks)
  are ignored; any other unexpected tensor is an error.

Every problem raises :class:`CheckpointError` (a ``ValueError``) naming the file and/or
tensor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxsafe.llm.model import Decoder, LMConfig

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "gpt2")

_HF_ACTIVATION = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
_EXPORT_ACTIVATION = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_new"}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}


class CheckpointError(ValueError):
    """A Hugging Face checkpoint that cannot be read or does not match its config."""


# ----------------------------------------------------------------------------- config


def _rope_theta(hf: dict, default: float) -> float:
    """rope theta from a v4 (``rope_theta``/``rope_scaling``) or v5 (``rope_parameters``) config."""
    rope_parameters = hf.get("rope_parameters") or {}
    rope_scaling = hf.get("rope_scaling") or {}
    rope_type = rope_parameters.get("rope_type") or rope_scaling.get("rope_type") or rope_scaling.get("type")
    if rope_type not in (None, "default"):
        raise CheckpointError(f"config.json: rope type {rope_type!r} is not supported "
                              "(only 'default' rotary)")
    return float(rope_parameters.get("rope_theta", hf.get("rope_theta", default)))


def config_from_hf(hf: dict) -> LMConfig:
    """An :class:`LMConfig` from a parsed HF ``config.json`` dict."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"config.json: model_type {model_type!r} (architectures "
                              f"{hf.get('architectures')}) is not supported; "
                              f"supported: {SUPPORTED_MODEL_TYPES}")

    def field(name, default=None):
        if name not in hf and default is None:
            raise CheckpointError(f"config.json: missing field {name!r} for model_type {model_type!r}")
        value = hf.get(name, default)
        return default if value is None else value

    if model_type == "gpt2":
        activation = field("activation_function", "gelu_new")
        if activation not in _HF_ACTIVATION:
            raise CheckpointError(f"config.json: activation_function {activation!r} not supported")
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
            raise CheckpointError("config.json: GPT-2 attention scaling options scale_attn_weights=False or "
                                  "scale_attn_by_inverse_layer_idx=True are not supported")
        d_model = int(field("n_embd"))
        kwargs = dict(family="gpt2", vocab_size=int(field("vocab_size")), d_model=d_model,
                      n_layers=int(field("n_layer")), n_heads=int(field("n_head")),
                      d_ff=int(hf.get("n_inner") or 4 * d_model), max_seq_len=int(field("n_positions")),
                      norm_eps=float(field("layer_norm_epsilon", 1e-5)),
                      tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                      activation=_HF_ACTIVATION[activation])
    else:
        activation = field("hidden_act", "silu")
        if _HF_ACTIVATION.get(activation) != "silu":
            raise CheckpointError(f"config.json: hidden_act {activation!r} not supported for {model_type} "
                                  "(need silu)")
        if model_type == "qwen2" and hf.get("use_sliding_window", False):
            raise CheckpointError("config.json: use_sliding_window=True is not supported")
        n_heads = int(field("num_attention_heads"))
        kwargs = dict(family=model_type, vocab_size=int(field("vocab_size")),
                      d_model=int(field("hidden_size")),
                      n_layers=int(field("num_hidden_layers")), n_heads=n_heads,
                      n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
                      head_dim=hf.get("head_dim"), d_ff=int(field("intermediate_size")),
                      max_seq_len=int(field("max_position_embeddings")),
                      norm_eps=float(field("rms_norm_eps", 1e-6)), rope_theta=_rope_theta(hf, 10000.0),
                      tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
        if model_type == "llama":
            attention_bias = bool(hf.get("attention_bias", False))
            kwargs.update(qkv_bias=attention_bias, attn_out_bias=attention_bias,
                          mlp_bias=bool(hf.get("mlp_bias", False)))
    try:
        return LMConfig(**kwargs)
    except ValueError as error:
        raise CheckpointError(f"config.json: {error}") from error


def config_to_hf(config: LMConfig) -> dict:
    """A HF ``config.json`` dict for ``config`` (raises if HF cannot express it)."""
    family = config.family
    if family == "gpt2":
        if not (config.qkv_bias and config.attn_out_bias and config.mlp_bias):
            raise CheckpointError("export: gpt2 checkpoints always have biases; config has a bias flag False")
        if config.n_kv_heads != config.n_heads or config.head_dim * config.n_heads != config.d_model:
            raise CheckpointError("export: gpt2 needs n_kv_heads == n_heads and "
                                  "head_dim * n_heads == d_model")
        return dict(architectures=[_ARCHITECTURES[family]], model_type="gpt2", vocab_size=config.vocab_size,
                    n_embd=config.d_model, n_layer=config.n_layers, n_head=config.n_heads,
                    n_inner=config.d_ff,
                    n_positions=config.max_seq_len, layer_norm_epsilon=config.norm_eps,
                    activation_function=_EXPORT_ACTIVATION[config.activation],
                    tie_word_embeddings=config.tie_embeddings, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0,
                    scale_attn_weights=True, dtype="float32")
    if config.activation != "silu":
        raise CheckpointError(f"export: {family} checkpoints need activation 'silu', "
                              f"got {config.activation!r}")
    out = dict(architectures=[_ARCHITECTURES[family]], model_type=family, vocab_size=config.vocab_size,
               hidden_size=config.d_model, num_hidden_layers=config.n_layers,
               num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
               head_dim=config.head_dim, intermediate_size=config.d_ff,
               max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
               rope_theta=config.rope_theta,
               rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
               hidden_act="silu", tie_word_embeddings=config.tie_embeddings, attention_dropout=0.0,
               dtype="float32")
    if family == "llama":
        if config.qkv_bias != config.attn_out_bias:
            raise CheckpointError("export: llama's attention_bias covers q/k/v and o; config has "
                                  f"qkv_bias={config.qkv_bias}, attn_out_bias={config.attn_out_bias}")
        out.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    elif (config.qkv_bias, config.attn_out_bias, config.mlp_bias) != (True, False, False):
        raise CheckpointError("export: qwen2 needs qkv_bias=True, attn_out_bias=False, mlp_bias=False")
    return out


# ----------------------------------------------------------------------------- tensor mapping


@dataclasses.dataclass(frozen=True)
class _TensorMap:
    """One HF tensor <-> one or more jaxsafe leaves (paths into the pure params dict)."""

    hf_name: str
    paths: tuple[tuple, ...]
    to_jax: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]


def _copy(name, path):
    return _TensorMap(name, (path,), lambda a: (a,), lambda a: a)


def _transposed(name, path):
    return _TensorMap(name, (path,), lambda a: (a.T,), lambda a: a.T)


def _fused_qkv(name, paths):
    return _TensorMap(name, paths, lambda a: tuple(np.split(a, 3, axis=-1)),
                      lambda q, k, v: np.concatenate([q, k, v], axis=-1))


def _tensor_maps(config: LMConfig, prefix: str = "") -> list[_TensorMap]:
    """The complete list of parameter tensors of a checkpoint for ``config``."""
    maps = []
    if config.family == "gpt2":
        p = prefix
        maps += [_copy(f"{p}wte.weight", ("embed", "embedding")),
                 _copy(f"{p}wpe.weight", ("position_embed", "embedding")),
                 _copy(f"{p}ln_f.weight", ("core", "final_norm", "scale")),
                 _copy(f"{p}ln_f.bias", ("core", "final_norm", "bias"))]
        for i in range(config.n_layers):
            h, b = f"{p}h.{i}.", ("core", "blocks", i)
            attn = [b + ("attn", proj) for proj in ("q_proj", "k_proj", "v_proj")]
            maps += [
                _copy(h + "ln_1.weight", b + ("attn_norm", "scale")),
                _copy(h + "ln_1.bias", b + ("attn_norm", "bias")),
                _fused_qkv(h + "attn.c_attn.weight", tuple(a + ("kernel",) for a in attn)),
                _fused_qkv(h + "attn.c_attn.bias", tuple(a + ("bias",) for a in attn)),
                _copy(h + "attn.c_proj.weight", b + ("attn", "o_proj", "kernel")),
                _copy(h + "attn.c_proj.bias", b + ("attn", "o_proj", "bias")),
                _copy(h + "ln_2.weight", b + ("mlp_norm", "scale")),
                _copy(h + "ln_2.bias", b + ("mlp_norm", "bias")),
                _copy(h + "mlp.c_fc.weight", b + ("mlp", "up_proj", "kernel")),
                _copy(h + "mlp.c_fc.bias", b + ("mlp", "up_proj", "bias")),
                _copy(h + "mlp.c_proj.weight", b + ("mlp", "down_proj", "kernel")),
                _copy(h + "mlp.c_proj.bias", b + ("mlp", "down_proj", "bias")),
            ]
        if not config.tie_embeddings:
            maps.append(_transposed("lm_head.weight", ("lm_head", "kernel")))
        return maps

    maps += [_copy("model.embed_tokens.weight", ("embed", "embedding")),
             _copy("model.norm.weight", ("core", "final_norm", "scale"))]
    for i in range(config.n_layers):
        h, b = f"model.layers.{i}.", ("core", "blocks", i)
        maps += [_copy(h + "input_layernorm.weight", b + ("attn_norm", "scale")),
                 _copy(h + "post_attention_layernorm.weight", b + ("mlp_norm", "scale"))]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            maps.append(_transposed(h + f"self_attn.{proj}.weight", b + ("attn", proj, "kernel")))
            if (config.attn_out_bias if proj == "o_proj" else config.qkv_bias):
                maps.append(_copy(h + f"self_attn.{proj}.bias", b + ("attn", proj, "bias")))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            maps.append(_transposed(h + f"mlp.{proj}.weight", b + ("mlp", proj, "kernel")))
            if config.mlp_bias:
                maps.append(_copy(h + f"mlp.{proj}.bias", b + ("mlp", proj, "bias")))
    if not config.tie_embeddings:
        maps.append(_transposed("lm_head.weight", ("lm_head", "kernel")))
    return maps


_IGNORED_BUFFERS = re.compile(r"(^|\.)(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)$")


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


# ----------------------------------------------------------------------------- safetensors files


def _read_safetensors_file(path: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors of one file (``names`` or all), as numpy arrays; errors name the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: safetensors file does not exist")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            available = set(handle.keys())
            if names is None:
                names = sorted(available)
            missing = [name for name in names if name not in available]
            if missing:
                raise CheckpointError(f"{path}: tensor(s) {missing[:5]} listed in the index are not in "
                                      "this file")
            return {name: handle.get_tensor(name) for name in names}
    except CheckpointError:
        raise
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: malformed or truncated safetensors file "
                              f"({type(error).__name__}: {error})"
                              ) from error


def read_safetensors_dir(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a model directory (single file, index + shards, or loose ``*.safetensors``)."""
    model_dir = Path(model_dir)
    index_path = model_dir / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({error})") from error
        by_file: dict[str, list[str]] = {}
        for name, file_name in weight_map.items():
            by_file.setdefault(file_name, []).append(name)
        tensors = {}
        for file_name, names in sorted(by_file.items()):
            tensors.update(_read_safetensors_file(model_dir / file_name, names))
        return tensors
    if (model_dir / SINGLE_FILE).is_file():
        return _read_safetensors_file(model_dir / SINGLE_FILE)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no {SINGLE_FILE}, {INDEX_FILE} or *.safetensors file")
    tensors = {}
    for path in files:
        for name, array in _read_safetensors_file(path).items():
            if name in tensors:
                raise CheckpointError(f"{path}: tensor {name!r} also appears in another shard")
            tensors[name] = array
    return tensors


# ----------------------------------------------------------------------------- params


def params_from_hf_tensors(config: LMConfig, tensors: dict[str, np.ndarray], source: str = "checkpoint"):
    """``(graphdef, params)`` for ``config`` filled from HF-named ``tensors`` (float32)."""
    model = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, abstract = nnx.split(model)
    pure = nnx.to_pure_dict(abstract)

    prefix = ""
    if config.family == "gpt2" and any(name.startswith("transformer.") for name in tensors):
        prefix = "transformer."
    maps = _tensor_maps(config, prefix)
    missing = [m.hf_name for m in maps if m.hf_name not in tensors]
    if missing:
        more = " ..." if len(missing) > 8 else ""
        raise CheckpointError(f"{source}: missing tensor(s) {missing[:8]}{more}")
    expected_names = {m.hf_name for m in maps}
    extra = []
    for name in tensors:
        if name in expected_names or _IGNORED_BUFFERS.search(name):
            continue
        if name == "lm_head.weight" and config.tie_embeddings:
            embedding_name = f"{prefix}wte.weight" if config.family == "gpt2" else "model.embed_tokens.weight"
            embedding = tensors[embedding_name]
            if not np.array_equal(np.asarray(tensors[name], np.float32), np.asarray(embedding, np.float32)):
                raise CheckpointError(f"{source}: tensor 'lm_head.weight' differs from the embedding "
                                      "although tie_word_embeddings=True")
            continue
        extra.append(name)
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor(s) {sorted(extra)[:8]} for a {config.family} "
                              f"model with {config.n_layers} layers")

    for m in maps:
        array = np.asarray(tensors[m.hf_name])
        if not (np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"):
            raise CheckpointError(f"{source}: tensor {m.hf_name!r} has non-float dtype {array.dtype}")
        expected_shapes = [_get(pure, path).shape for path in m.paths]
        hf_shape = m.to_hf(*[np.zeros(s, np.float32) for s in expected_shapes]).shape
        if array.shape != hf_shape:
            raise CheckpointError(f"{source}: tensor {m.hf_name!r} has shape {array.shape}, "
                                  f"expected {hf_shape}")
        for path, value in zip(m.paths, m.to_jax(array.astype(np.float32))):
            _set(pure, path, jnp.asarray(value))
    nnx.replace_by_pure_dict(abstract, pure)
    return graphdef, abstract


def params_to_hf_tensors(config: LMConfig, params) -> dict[str, np.ndarray]:
    """HF-named float32 numpy tensors for ``params`` (the inverse of :func:`params_from_hf_tensors`)."""
    pure = nnx.to_pure_dict(params)
    prefix = "transformer." if config.family == "gpt2" else ""
    tensors = {}
    for m in _tensor_maps(config, prefix):
        try:
            leaves = [np.asarray(_get(pure, path), np.float32) for path in m.paths]
        except KeyError as error:
            raise CheckpointError(f"export: params have no leaf {error} needed for tensor "
                                  f"{m.hf_name!r}") from error
        tensors[m.hf_name] = np.ascontiguousarray(m.to_hf(*leaves))
    return tensors


# ----------------------------------------------------------------------------- directories


def load_hf_checkpoint(model_dir: str | os.PathLike):
    """Read a HF model directory: ``(config, graphdef, params)``.

    Raises :class:`CheckpointError` for an unsupported architecture, a missing or
    malformed file, and missing / unexpected / mis-shaped tensors (each error names it).
    """
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: file does not exist")
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path}: invalid JSON ({error})") from error
    config = config_from_hf(hf_config)
    graphdef, params = params_from_hf_tensors(config, read_safetensors_dir(model_dir), source=str(model_dir))
    return config, graphdef, params


def save_hf_checkpoint(config: LMConfig, params, out_dir: str | os.PathLike,
                       max_shard_bytes: int | None = None) -> list[Path]:
    """Write ``config.json`` and float32 safetensors for ``params`` into ``out_dir``.

    With ``max_shard_bytes`` the tensors are split over ``model-0000i-of-0000n.safetensors``
    files plus ``model.safetensors.index.json`` (HF's sharded layout). Returns the files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(config)
    tensors = params_to_hf_tensors(config, params)
    (out_dir / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    written = [out_dir / CONFIG_FILE]
    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(tensors, str(out_dir / SINGLE_FILE), metadata=metadata)
        return written + [out_dir / SINGLE_FILE]
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes: must be >= 1, got {max_shard_bytes}")
    shards: list[dict[str, np.ndarray]] = [{}]
    shard_bytes = 0
    for name, array in tensors.items():
        if shard_bytes and shard_bytes + array.nbytes > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = array
        shard_bytes += array.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / file_name), metadata=metadata)
        written.append(out_dir / file_name)
        weight_map.update({name: file_name for name in shard})
    index = {"metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))},
             "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written + [out_dir / INDEX_FILE]
