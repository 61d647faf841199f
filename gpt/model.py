"""GPT: a decoder-only transformer (GPT-2's architecture) built on nanograd.

Shapes: B = batch, T = time (context length), C = channels (n_embd), V = vocabulary,
nh = number of heads, hs = head size (C / nh).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nanograd import Tensor, nn
from nanograd import functional as F
from nanograd.backend import generator

from .bigram import next_token_loss
from .errors import UserError


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64  # the longest context the model can see
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms
    tie_weights: bool = True  # lm_head reuses the token embedding (as GPT-2)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")


class KVCache:
    """The keys and values of the tokens generated so far, one (k, v) pair per layer.

    With it, each new token runs the network on one position and attends to the cached
    past, instead of recomputing the whole context.
    """

    def __init__(self, n_layer: int):
        self.n_layer = n_layer
        self.reset()

    def reset(self, start: int = 0) -> None:
        self.layers: list[tuple[Tensor, Tensor] | None] = [None] * self.n_layer
        self.start = start  # index in the whole sequence of the first cached token
        self.length = 0  # tokens cached

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's k, v (B, nh, T, hs); return all of them (B, nh, length + T, hs)."""
        past = self.layers[layer]
        if past is not None:
            k, v = F.concat([past[0], k], axis=2), F.concat([past[1], v], axis=2)
        self.layers[layer] = (k, v)
        return k, v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, T, C = x.shape  # batch, time, channels
        qkv = self.c_attn(x)  # (B, T, 3C)
        if cache is None:  # training and plain forward: one fused op, see F.self_attention
            dropout = self.dropout if self.training else 0.0
            y = F.self_attention(qkv, self.n_head, causal=True, dropout=dropout)  # (B, T, C)
        else:  # generation: the same attention, step by step, over cached keys and values
            nh, hs = self.n_head, C // self.n_head
            qkv = qkv.reshape(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
            k, v = cache.extend(layer, qkv[1], qkv[2])  # (B, nh, past + T, hs)
            y = F.scaled_dot_product_attention(qkv[0], k, v, causal=True)  # (B, nh, T, hs)
            y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, nh, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.c_fc(x))  # (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    The residual path carries x through unchanged, so gradients reach early layers directly;
    normalising before each sublayer (GPT-2) rather than after keeps that path clean.
    """

    def __init__(self, config: GPTConfig):
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class Transformer(nn.Module):
    def __init__(self, config: GPTConfig):
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        self.config = config
        self.transformer = Transformer(config)
        if not config.tie_weights:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's initialisation: weights N(0, 0.02), biases 0, LayerNorm weights 1.

        Each block adds two projections (attn.c_proj, mlp.c_proj) into the residual stream, so
        its variance grows with depth; those are scaled down by 1/sqrt(2 n_layer) (GPT-2 paper,
        section 2.3) to keep the stream's scale steady.
        """
        rng = generator("cpu")
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                p.data[...] = rng.normal(0.0, proj_std, p.shape)
            elif p.ndim == 2:  # the other Linear weights and the embeddings
                p.data[...] = rng.normal(0.0, 0.02, p.shape)
            elif name.endswith(".bias"):
                p.data[...] = 0  # LayerNorm weights (1-D) keep their 1s

    def forward(
        self, idx: Any, targets: Any = None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) ids -> logits (B, T, V), and the mean cross-entropy if targets are given."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        wte, wpe = self.transformer.wte, self.transformer.wpe
        positions = np.arange(start, start + T)  # (T,)
        x = self.transformer.drop(wte(idx) + wpe(positions))  # (B, T, C) + (T, C) -> (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)  # (B, T, C)
        if cache is not None:
            cache.length += T
        x = self.transformer.ln_f(x)  # (B, T, C)
        logits = self._head(x)  # (B, T, V)
        return logits, next_token_loss(logits, targets)

    def _head(self, x: Tensor) -> Tensor:
        """(..., C) -> logits (..., V); with tied weights, x @ wte^T scores x against every token."""
        if self.config.tie_weights:
            return x @ self.transformer.wte.weight.transpose(0, 1)  # (..., C) @ (C, V)
        return self.lm_head(x)

    # ---- generation ------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layer)

    def next_logits(self, idx: np.ndarray, cache: KVCache | None) -> Tensor:
        """Logits (B, V) for the token after idx (B, t); see gpt.sampling.stream.

        Without a cache: a full forward pass over the last block_size tokens. With one: only
        the tokens not yet cached go through the network. When the context outgrows
        block_size, the cache restarts from the last block_size // 2 tokens (one forward
        pass), so the model then sees between half and all of its window; the position
        embeddings leave no exact cheaper way to slide the window.
        """
        block = self.config.block_size
        if cache is None:
            logits, _ = self.forward(idx[:, -block:])
            return logits[:, -1, :]
        total = idx.shape[1]
        if cache.length == 0:  # first call: fill the cache with the last block_size tokens
            cache.start = max(0, total - block)
        elif total - cache.start > block:  # window full: restart from its second half
            cache.reset(start=total - block // 2)
        logits, _ = self.forward(idx[:, cache.start + cache.length :], cache=cache)
        return logits[:, -1, :]

    def generate(self, idx: Any, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 rng: np.random.Generator | None = None, use_cache: bool = True) -> np.ndarray:
        """idx (B, t) continued by max_new_tokens sampled tokens: (B, t + max_new_tokens)."""
        from .sampling import generate

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, rng=rng, use_cache=use_cache)
