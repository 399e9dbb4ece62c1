"""Generate the Hugging Face parity fixtures under ``tests/fixtures/llm_parity/``.

Run ONCE, offline, with a venv that has torch + transformers (the tests themselves
never import them)::

    python3 -m venv .venv-hf
    .venv-hf/bin/pip install torch==2.13.0 transformers safetensors numpy
    .venv-hf/bin/python scripts/make_llm_parity_fixture.py

For each family (llama, qwen2, gpt2) it builds a tiny, randomly initialised
``*ForCausalLM`` / ``GPT2LMHeadModel`` with a fixed seed, re-draws every parameter
(so biases and norm scales are non-trivial and the mapping is really exercised),
saves the model directory (``config.json`` + ``model.safetensors``) and an
``inputs_and_logits.npz`` holding ``tokens``, ``attention_mask``, ``positions`` and the
reference float32 ``logits``. The batch mixes a full row, a left-padded row and a
right-padded row; ``positions = max(cumsum(mask) - 1, 0)`` are passed explicitly so
that padding does not shift positions. A second copy of the llama model is saved with
``max_shard_size`` small enough to produce HF's sharded layout (index + shards).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers

OUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "llm_parity"
SEED = 0
VOCAB = 96
SEQ_LEN = 12


def tiny_models():
    common = dict(vocab_size=VOCAB, attn_implementation="eager")
    llama = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                     rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, **common)
    qwen2 = transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                                     rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=True,
                                     use_sliding_window=False, **common)
    gpt2 = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=None,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                   eos_token_id=0, **common)
    return {"llama": transformers.LlamaForCausalLM(llama), "qwen2": transformers.Qwen2ForCausalLM(qwen2),
            "gpt2": transformers.GPT2LMHeadModel(gpt2)}


def redraw_parameters(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial values everywhere: norm scales near 1, everything else N(0, 0.1^2)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm_scale = ("norm" in name or ".ln_" in name) and name.endswith("weight")
            param.copy_(1.0 + 0.1 * noise if is_norm_scale else 0.1 * noise)


def inputs(generator: torch.Generator):
    tokens = torch.randint(0, VOCAB, (3, SEQ_LEN), generator=generator)
    mask = torch.ones(3, SEQ_LEN, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, -3:] = 0  # right padding
    tokens = tokens * mask  # pad id 0
    positions = torch.clamp(torch.cumsum(mask, dim=-1) - 1, min=0)
    return tokens, mask, positions


def main() -> None:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    manifest = {"torch": torch.__version__, "transformers": transformers.__version__, "seed": SEED, "families": {}}
    for family, model in tiny_models().items():
        redraw_parameters(model, generator)
        model.eval()
        tokens, mask, positions = inputs(generator)
        with torch.no_grad():
            logits = model(input_ids=tokens, attention_mask=mask, position_ids=positions).logits
        family_dir = OUT_DIR / family
        model.save_pretrained(family_dir, safe_serialization=True)
        np.savez(family_dir / "inputs_and_logits.npz", tokens=tokens.numpy().astype(np.int32),
                 attention_mask=mask.numpy().astype(np.int32), positions=positions.numpy().astype(np.int32),
                 logits=logits.numpy().astype(np.float32))
        if family == "llama":
            model.save_pretrained(OUT_DIR / "llama_sharded", safe_serialization=True, max_shard_size="40KB")
        manifest["families"][family] = {"class": type(model).__name__,
                                        "n_params": int(sum(p.numel() for p in model.parameters()))}
    (OUT_DIR / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(f.stat().st_size for f in OUT_DIR.rglob("*") if f.is_file())
    print(f"wrote {OUT_DIR} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
