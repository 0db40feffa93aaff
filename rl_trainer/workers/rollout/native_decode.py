"""One decode step (one new token per row, on a KV cache) of a Llama-layout decoder, without transformers' per-call
machinery: `actor_rollout_ref.rollout.native_decode`.

A Hugging Face forward of one token spends about 5 ms on a CPU in work that does not depend on the batch: building
the 4-D attention mask, dispatching the cache and the attention implementation, keyword plumbing and output
classes. At 128 decode steps a generation that is a third of the step time on the standard benchmark
(docs/performance.md). This step runs the model's own modules (embedding, rotary embedding, norms, projections,
MLPs, head) in the decoder's order and writes only the glue: the rotary embedding of q and k (transformers' own
`apply_rotary_pos_emb` of the model's module), the cache write, and attention as one
`scaled_dot_product_attention` over the key/value heads (`enable_gqa`) with a boolean padding mask. The result is
the model's forward up to float rounding (tests/workers/test_rollout_hf.py compares logits and greedy tokens).

Only architectures whose decoder layer is exactly that are accepted (`unsupported_reason`); for any other model the
rollout runs transformers' forward (`native_decode: null`), or refuses to start (`native_decode: true`).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

# Decoder layer: x + o_proj(attn(rope(q_proj(norm(x))), rope(k_proj(..)), v_proj(..))), then x + mlp(norm(x)).
LLAMA_LAYOUT = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why `model` cannot use the native decode step, or None when it can."""
    name = type(model).__name__
    if name not in LLAMA_LAYOUT:
        return f"{name} is not one of the Llama-layout decoders it implements ({', '.join(LLAMA_LAYOUT)})"
    config = model.config
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return f"{name} has {sorted(layer_types)} layers; only full attention is implemented"
    if getattr(config, "pretraining_tp", 1) != 1:
        return f"{name} has pretraining_tp={config.pretraining_tp}"
    if getattr(sys.modules[type(model).__module__], "apply_rotary_pos_emb", None) is None:
        return f"{type(model).__module__} has no apply_rotary_pos_emb"
    return None


class NativeDecodeStep:
    """`step(tokens, attention_mask, position_ids, cache) -> logits (rows, V)`: the model's forward for one new token
    per row, whose keys and values are appended to `cache` (a transformers Cache, one layer per decoder layer).

    tokens (rows,), attention_mask (rows, cached + 1) with 1 on every position the row attends to (its prompt, its
    response so far and the new token), position_ids (rows,).
    """

    def __init__(self, model: torch.nn.Module):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(reason)
        self.model = model
        self.decoder = model.model
        self.rope = sys.modules[type(model).__module__].apply_rotary_pos_emb

    def __call__(self, tokens: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache) -> torch.Tensor:
        rows = tokens.shape[0]
        x = self.decoder.embed_tokens(tokens[:, None])  # (rows, 1, hidden)
        cos, sin = self.decoder.rotary_emb(x, position_ids[:, None])
        mask = attention_mask.bool()[:, None, None, :]  # (rows, 1, 1, keys): True = attend
        for layer, cache_layer in zip(self.decoder.layers, cache.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
            q, k = self.rope(q, k, cos, sin)
            keys, values = cache_layer.update(k, v)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling,
                                                 enable_gqa=q.shape[1] != keys.shape[1])
            x = x + attn.o_proj(out.transpose(1, 2).reshape(rows, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.lm_head(self.decoder.norm(x[:, -1]))
