"""nanograd.functional (import as F): the ops a GPT needs, as functions of tensors.

Each function checks its arguments and hands the arrays to one op in nanograd/ops, where the
forward and the hand-written backward sit side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import backend, ops
from .function import broadcast_shape
from .tensor import Tensor


def _array(x: Any, like: Tensor) -> Any:
    """Plain data (ids, masks, targets) as an array on the same device as `like`."""
    data = x.data if isinstance(x, Tensor) else x
    return backend.array_module(like.data).asarray(data)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along axis; stable for any logits."""
    return ops.Softmax.apply(x, axis=axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along axis; stable for any logits."""
    return ops.LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits: Tensor, targets: Any) -> Tensor:
    """Mean negative log-likelihood of integer targets (N,) under softmax(logits (N, V))."""
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, V), got shape {logits.shape}")
    targets = _array(targets, logits)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integers, got {targets.dtype}")
    if logits.shape[0] == 0:
        raise ValueError("cross_entropy: no rows (the mean of no losses is undefined)")
    return ops.CrossEntropy.apply(logits, targets=targets)


def embedding(idx: Any, weight: Tensor) -> Tensor:
    """The rows of weight (V, C) picked by integer ids of any shape: idx.shape + (C,)."""
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be a (V, C) table, got shape {weight.shape}")
    idx = _array(idx, weight)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got {idx.dtype}")
    return ops.Embedding.apply(weight, idx=idx)


def embedding_cross_entropy(idx: Any, weight: Tensor, targets: Any) -> Tensor:
    """cross_entropy(embedding(idx, weight), targets) for a table weight (R, V) of logits:
    idx and targets share a shape. One log softmax per row that idx reads instead of one per
    position (see ops.EmbeddingCrossEntropy): the bigram model's loss. It pays where ids
    repeat (N positions reading few rows); its memory grows with (rows read) x V."""
    if weight.ndim != 2:
        raise ValueError(f"embedding_cross_entropy: weight must be an (R, V) table, got shape {weight.shape}")
    idx, targets = _array(idx, weight), _array(targets, weight)
    if idx.dtype.kind not in "iu" or targets.dtype.kind not in "iu":
        raise TypeError(f"embedding_cross_entropy: ids and targets must be integers, got {idx.dtype}, {targets.dtype}")
    if idx.size == 0:
        raise ValueError("embedding_cross_entropy: no ids (the mean of no losses is undefined)")
    return ops.EmbeddingCrossEntropy.apply(weight, idx=idx, targets=targets)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise the last axis to mean 0, variance 1, then scale by weight and shift by bias."""
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"layer_norm: the last axis of x must hold some numbers, got shape {x.shape}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and param.shape != x.shape[-1:]:
            raise ValueError(f"layer_norm: {name} of shape {param.shape} for input {x.shape}")
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return ops.LayerNorm.apply(*inputs, eps=eps)


def gelu(x: Tensor) -> Tensor:
    """GELU with the tanh approximation, as in GPT-2."""
    return ops.Gelu.apply(x)


def relu(x: Tensor) -> Tensor:
    return ops.Relu.apply(x)


def dropout(x: Tensor, p: float, training: bool = True, rng: Any = None) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity in eval."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    return ops.Dropout.apply(x, p=p, rng=rng or backend.generator(x.device))


def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    return ops.Concat.apply(*tensors, axis=axis)


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    return ops.Stack.apply(*tensors, axis=axis)


def where(cond: Any, a: Tensor | float, b: Tensor | float) -> Tensor:
    """a where cond is true, else b (cond: a boolean array or tensor, broadcastable)."""
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else Tensor(a)  # (two numbers: float32)
    a, b = like._lift(a), like._lift(b)
    cond = _array(cond, like).astype(bool)
    broadcast_shape(cond.shape, broadcast_shape(a.shape, b.shape, "where"), "where")
    return ops.Where.apply(a, b, cond=cond)


def masked_fill(x: Tensor, mask: Any, value: float) -> Tensor:
    """x with `value` wherever mask is true (mask broadcasts against x)."""
    return where(mask, value, x)


def _dropout_rng(op: str, dropout_p: float, rng: Any, device: str) -> Any:
    """The generator the attention weights' dropout draws from (None without dropout): rng,
    or the device's own."""
    if not 0 <= dropout_p < 1:
        raise ValueError(f"{op}: dropout_p must be in [0, 1), got {dropout_p}")
    return (rng or backend.generator(device)) if dropout_p > 0 else None


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, *, dropout_p: float = 0.0,
                                 is_causal: bool = False, rng: Any = None) -> Tensor:
    """softmax(query key^T / sqrt(hs)) value for (B, nh, T, hs) inputs, with PyTorch's names
    and defaults: is_causal masks each query's future, dropout_p drops attention weights
    (pass 0 when not training). PyTorch's attn_mask and scale are not offered: the options
    are keyword-only, so that no argument is taken in a meaning PyTorch gives another."""
    q, k, v = query, key, value
    if q.ndim != 4 or k.shape != v.shape or q.shape[:2] + q.shape[3:] != k.shape[:2] + k.shape[3:]:
        raise ValueError(
            f"attention: query {q.shape}, key {k.shape}, value {v.shape}: expected (B, nh, T, hs) with key, value alike"
        )
    if is_causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"attention: causal with more queries ({q.shape[2]}) than keys ({k.shape[2]})")
    rng = _dropout_rng("attention", dropout_p, rng, q.device)
    return ops.ScaledDotProductAttention.apply(q, k, v, is_causal=is_causal, dropout_p=dropout_p, rng=rng)


def self_attention(qkv: Tensor, n_head: int, *, dropout_p: float = 0.0, is_causal: bool = False,
                   rng: Any = None, rotary: bool = False) -> Tensor:
    """Multi-head attention on a fused projection qkv (B, T, 3C) -> (B, T, C): the same result
    as splitting q, k, v into n_head heads and calling scaled_dot_product_attention (same
    options), as one op. rotary: the queries and keys turned by rotary position embeddings
    first (nanograd/ops/rotary.py), position 0 at the first of the T."""
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head):
        raise ValueError(f"self_attention: qkv {qkv.shape} is not (B, T, 3C) with C divisible by {n_head} heads")
    head_size = qkv.shape[-1] // (3 * n_head)
    if rotary and head_size % 2:
        raise ValueError(f"self_attention: rotary embeddings need an even head size, got {head_size}")
    rng = _dropout_rng("self_attention", dropout_p, rng, qkv.device)
    return ops.SelfAttention.apply(qkv, n_head=n_head, is_causal=is_causal, dropout_p=dropout_p, rng=rng,
                                   rotary=rotary)
