"""Fast generation: a key/value cache, and a forward pass over plain arrays that uses it.

Generating token t+1 needs the keys and values of tokens 0..t in every layer. They do not
change once computed, so the cache keeps them in preallocated arrays (n_layer, B, nh, block,
hs) and each new token runs the network on its own position only. This pass calls the
forwards of the ops GPT.forward uses (nanograd.ops: LayerNorm, Gelu, and
ScaledDotProductAttention, whose subclass SelfAttention the model calls on its fused q, k, v)
directly on arrays: no graph, no Tensor wrappers, which is most of the cost at one position.
tests/test_gpt.py checks that its logits equal the full model's.

Shapes: B = batch, T = new positions, C = channels, nh = heads, hs = head size.
"""

from __future__ import annotations

from typing import Any

from nanograd import backend, ops
from nanograd.ops.rotary import rotary_tables, rotate


def _layer_norm(x: Any, ln: Any) -> Any:
    return ops.LayerNorm().forward(x, ln.weight.data, None if ln.bias is None else ln.bias.data, ln.eps)


def _linear(x: Any, layer: Any) -> Any:
    y = x @ layer.weight.data
    return y if layer.bias is None else y + layer.bias.data


class KVCache:
    """The cached keys and values of one generation, and the positions they cover.

    It covers a window of at most block_size tokens of the sequence, starting at `start`.
    When the sequence outgrows it, the window restarts at the last block_size // 2 tokens
    (recomputed in one pass): with learned position embeddings, sliding the window by one
    would change every cached position.
    """

    def __init__(self, model: Any):
        self.model, self.config = model, model.config
        self.k = self.v = None  # (n_layer, B, nh, block, hs), allocated for the batch size seen
        self.start = 0  # index in the sequence of the first cached token
        self.length = 0  # tokens cached

    def next_logits(self, idx: Any) -> Any:
        """Logits (B, V) for the token after idx (B, t): runs only the tokens not yet cached."""
        total, block = idx.shape[1], self.config.block_size
        if self.length == 0:
            self.start = max(0, total - block)
        elif total - self.start > block:
            self.start, self.length = total - max(1, block // 2), 0
        return self._advance(idx[:, self.start + self.length :])[:, -1, :]

    def _advance(self, ids: Any) -> Any:
        """Run new tokens ids (B, T) through the network, caching their keys and values."""
        cfg, t = self.config, self.model.transformer
        B, T = ids.shape
        nh, hs = cfg.n_head, cfg.n_embd // cfg.n_head
        xp = backend.array_module(t.wte.weight.data)
        if self.k is None or self.k.shape[1] != B:
            shape = (cfg.n_layer, B, nh, cfg.block_size, hs)
            self.k, self.v = xp.empty(shape, t.wte.weight.dtype), xp.empty(shape, t.wte.weight.dtype)
        ids = xp.asarray(ids)
        past, end = self.length, self.length + T
        x = t.wte.weight.data[ids]  # (B, T, C)
        if cfg.rotary:  # the angles of positions past to end in the window
            cos, sin = (table[past:end] for table in rotary_tables(xp, cfg.block_size, hs, x.dtype))  # (T, hs/2)
        else:
            x = x + t.wpe.weight.data[past:end]
        for layer, block in enumerate(t.h):
            qkv = _linear(_layer_norm(x, block.ln_1), block.attn.c_attn)  # (B, T, 3C)
            q, k, v = qkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)  # each (B, nh, T, hs)
            if cfg.rotary:
                q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            self.k[layer, :, :, past:end], self.v[layer, :, :, past:end] = k, v
            y = ops.ScaledDotProductAttention().forward(
                q, self.k[layer, :, :, :end], self.v[layer, :, :, :end], is_causal=True)  # (B, nh, T, hs)
            x = x + _linear(y.transpose(0, 2, 1, 3).reshape(B, T, -1), block.attn.c_proj)  # (B, T, C)
            h = ops.Gelu().forward(_linear(_layer_norm(x, block.ln_2), block.mlp.c_fc))  # (B, T, 4C)
            x = x + _linear(h, block.mlp.c_proj)  # (B, T, C)
        self.length = end
        return self.model._head_array(_layer_norm(x, t.ln_f))  # (B, T, V)
