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
from nanograd.backend import array_module, generator
from nanograd.ops.rotary import rotary_tables

from .errors import UserError
from .kvcache import KVCache


def next_token_loss(logits: Tensor, targets: Any) -> Tensor | None:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T): the two share B*T rows."""
    if targets is None:
        return None
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))


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
    # True: attention, LayerNorm and GELU each run as one fused op with a hand-written backward
    # (nanograd/ops/). False: as the lecture writes them, from Tensor ops (the reference: slower,
    # the same numbers, though dropout draws other masks; tests/test_gpt.py checks the two agree).
    fused: bool = True
    # True: no position embeddings; attention turns each head's queries and keys by angles that
    # grow with the position (rotary embeddings, RoFormer), so that it sees how far apart two
    # tokens are (nanograd/ops/rotary.py)
    rotary: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rotary and (self.n_embd // self.n_head) % 2:
            raise UserError(f"rotary embeddings turn pairs of channels: the head size n_embd / n_head "
                            f"({self.n_embd // self.n_head}) must be even")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.fused = config.fused
        self.rotary = config.rotary
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        # tril[t, s]: position t may look at position s (s <= t)
        self.tril = np.tril(np.ones((config.block_size, config.block_size), dtype=bool))

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.c_attn(x)  # (B, T, 3C): the queries, keys and values of every head at once
        if self.fused:  # the same computation as attend() below, as one op
            dropout_p = self.dropout if self.training else 0.0
            y = F.self_attention(qkv, self.n_head, is_causal=True, dropout_p=dropout_p,
                                 rotary=self.rotary)  # (B, T, C)
        else:
            y = self.attend(qkv)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)

    def attend(self, qkv: Tensor) -> Tensor:
        """Multi-head causal self-attention, as the lecture writes it: qkv (B, T, 3C) -> (B, T, C)."""
        B, T, C3 = qkv.shape
        C, nh = C3 // 3, self.n_head
        hs = C // nh
        q, k, v = qkv[:, :, :C], qkv[:, :, C : 2 * C], qkv[:, :, 2 * C :]  # (B, T, C) each
        # each head gets its own hs channels: (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)
        q = q.reshape(B, T, nh, hs).transpose(1, 2)
        k = k.reshape(B, T, nh, hs).transpose(1, 2)
        v = v.reshape(B, T, nh, hs).transpose(1, 2)
        if self.rotary:  # each position's queries and keys turned by its angles
            cos, sin = rotary_tables(array_module(q.data), T, hs, q.dtype)  # (T, hs/2) each
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T): query t . key s
        att = F.masked_fill(att, ~self.tril[:T, :T], float("-inf"))  # no looking ahead
        att = F.softmax(att, axis=-1)  # (B, nh, T, T): each row a weighting of positions 0..t
        att = self.attn_dropout(att)
        y = att @ v  # (B, nh, T, T) @ (B, nh, T, hs) -> (B, nh, T, hs): the weighted values
        return y.transpose(1, 2).reshape(B, T, C)  # heads side by side again: (B, T, C)


def rotate(x: Tensor, cos: Any, sin: Any) -> Tensor:
    """Rotary embeddings as RoFormer writes them, for x (B, nh, T, hs): channel pair i,
    (x1, x2) = (x[i], x[hs/2 + i]), turned by position t's angle, cos and sin (T, hs/2)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]  # (B, nh, T, hs/2) each
    return F.concat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)  # (B, nh, T, hs)


def gelu(x: Tensor) -> Tensor:
    """GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + (math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)).tanh())


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        self.fused = config.fused
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)  # (B, T, 4C)
        h = F.gelu(h) if self.fused else gelu(h)  # (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class LayerNorm(nn.LayerNorm):
    """nanograd's LayerNorm (one fused op), or with fused=False the lecture's computation."""

    def __init__(self, config: GPTConfig):
        super().__init__(config.n_embd, bias=config.bias)
        self.fused = config.fused

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return super().forward(x)
        mean = x.mean(-1, keepdims=True)  # (B, T, 1)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)  # (B, T, 1): biased, as PyTorch's
        xhat = (x - mean) / (var + self.eps).sqrt()  # (B, T, C): mean 0, variance 1 in each row
        y = xhat * self.weight  # (B, T, C) * (C,)
        return y if self.bias is None else y + self.bias


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    The residual path carries x through unchanged, so gradients reach early layers directly;
    normalising before each sublayer (GPT-2) rather than after keeps that path clean.
    """

    def __init__(self, config: GPTConfig):
        self.ln_1 = LayerNorm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class Transformer(nn.Module):
    def __init__(self, config: GPTConfig):
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        if not config.rotary:  # (rotary embeddings put the positions into attention instead)
            self.wpe = nn.Embedding(config.block_size, config.n_embd)  # position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config)


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

    def forward(self, idx: Any, targets: Any = None) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) ids -> logits (B, T, V), and the mean cross-entropy if targets are given."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        if not self.config.rotary:
            x = x + self.transformer.wpe(np.arange(T))  # (B, T, C) + (T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        x = self.transformer.ln_f(x)  # (B, T, C)
        logits = self._head(x)  # (B, T, V)
        return logits, next_token_loss(logits, targets)

    def _head(self, x: Tensor) -> Tensor:
        """(..., C) -> logits (..., V); with tied weights, x @ wte^T scores x against every token."""
        if self.config.tie_weights:
            return x @ self.transformer.wte.weight.transpose(0, 1)  # (..., C) @ (C, V)
        return self.lm_head(x)

    def _head_array(self, x: Any) -> Any:
        """The same on a plain array (for gpt.kvcache)."""
        if self.config.tie_weights:
            return x @ self.transformer.wte.weight.data.T
        return x @ self.lm_head.weight.data

    # ---- generation ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def new_cache(self) -> KVCache:
        return KVCache(self)

    def next_logits(self, idx: np.ndarray, cache: KVCache | None) -> Tensor:
        """Logits (B, V) for the token after idx (B, t); see gpt.sampling.stream. Without a
        cache, a full forward pass over the last block_size tokens; with one, see gpt.kvcache."""
        if cache is None:
            logits, _ = self.forward(idx[:, -self.config.block_size :])
            return logits[:, -1, :]
        return Tensor(cache.next_logits(idx))

    def generate(self, idx: Any, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 rng: np.random.Generator | None = None, use_cache: bool = True) -> np.ndarray:
        """idx (B, t) continued by max_new_tokens sampled tokens: (B, t + max_new_tokens)."""
        from .sampling import generate

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, rng=rng, use_cache=use_cache)
