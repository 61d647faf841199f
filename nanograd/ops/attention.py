"""Scaled dot-product attention, the transformer's fused op: y = softmax(q k^T / sqrt(hs)) v,
with an optional causal mask and dropout on the weights, and its backward worked out by hand.
gpt/model.py (CausalSelfAttention.attend) writes the same computation from Tensor ops.

Shapes: B = batch, nh = heads, hs = head size, Tq queries and Tk keys (Tk > Tq when the
earlier keys come from a cache), T = time and C = channels in SelfAttention's (B, T, 3C).
"""

from __future__ import annotations

import functools
import math

from ..backend import array_module, device_of
from ..function import Function
from .nn import _keep_mask, _row_sum
from .rotary import rotary_tables, rotate


@functools.lru_cache(maxsize=64)  # every layer and step asks for the same few: 3% of a baby rank's step
def _future_mask(xp, Tq: int, Tk: int, dtype):
    """(Tq, Tk): -inf where key j is in query i's future, j > i + Tk - Tq (Tk > Tq when the
    earlier keys come from a cache, and the queries are the newest positions), 0 elsewhere.
    Added to the scores, it is masked_fill in one pass. Shared between calls: never write to it."""
    return xp.where(xp.triu(xp.ones((Tq, Tk), dtype=bool), k=Tk - Tq + 1), -xp.inf, 0).astype(dtype)


QUERY_CHUNK = 64  # queries per chunk of causal attention on the CPU (see ScaledDotProductAttention)


def _query_chunks(Tq: int, Tk: int, chunked: bool) -> list[tuple[int, int, int]]:
    """(start, stop, keys) for each chunk q[start:stop] of the queries, or one chunk for all.
    Query i sees keys j <= i + Tk - Tq, so a chunk's last query, stop - 1, sees the first
    stop + Tk - Tq keys."""
    if not chunked:
        return [(0, Tq, Tk)]
    return [(start, min(start + QUERY_CHUNK, Tq), min(start + QUERY_CHUNK, Tq) + Tk - Tq)
            for start in range(0, Tq, QUERY_CHUNK)]


class ScaledDotProductAttention(Function):
    """y = softmax(q k^T / sqrt(hs) + mask) v for q (B, nh, Tq, hs), k and v (B, nh, Tk, hs).

    With is_causal=True, query i may look at keys j <= i + (Tk - Tq): its own position and
    the past (the mask is -inf on the future). With dropout_p > 0 the weights are dropped as
    in GPT-2: y = (att * keep) @ v, keep = Bernoulli(1 - p) / (1 - p).
    Forward keeps att (B, nh, Tq, Tk), the weights after softmax. Backward:
        dv = (att * keep)^T @ dy
        datt = (dy @ v^T) * keep
        dscores = att * (datt - sum_j(datt * att))     (softmax backward; masked att are 0)
        dq = dscores @ k / sqrt(hs),   dk = dscores^T @ q / sqrt(hs)

    On the CPU, causal attention runs in chunks of QUERY_CHUNK queries (_attention_forward
    and _attention_backward on each): a chunk sees no key after its last query, so the
    scores there, all masked, are never computed, and a chunk's scores stay in the cache.
    Dropout then draws one mask per chunk, so the same seed gives other masks than on a GPU,
    where attention runs in one piece.
    """

    def forward(self, q, k, v, is_causal=False, dropout_p=0.0, rng=None):
        xp = array_module(q)
        Tq, Tk = q.shape[-2], k.shape[-2]
        self.scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
        self.q, self.k, self.v = q, k, v
        # in chunks: about 5% of a video step, T 256 (benchmarks/RESULTS.md)
        self.chunks = _query_chunks(Tq, Tk, is_causal and device_of(q) == "cpu")
        self.att, self.keep, ys = [], [], []  # per chunk: (B, nh, rows, keys), the same, (B, nh, rows, hs)
        for start, stop, keys in self.chunks:
            y, att, keep = _attention_forward(q[..., start:stop, :], k[..., :keys, :], v[..., :keys, :],
                                              self.scale, is_causal, dropout_p, rng)
            ys.append(y)
            self.att.append(att)
            self.keep.append(keep)
        return ys[0] if len(ys) == 1 else xp.concatenate(ys, axis=-2)  # (B, nh, Tq, hs)

    def backward(self, dy):
        xp = array_module(dy)
        q, k, v = self.q, self.k, self.v
        if len(self.chunks) == 1:  # all the queries in one piece: its gradients are the whole ones
            return _attention_backward(q, k, v, self.att[0], self.keep[0], dy, self.scale)
        dq_chunks, dk, dv = [], xp.zeros_like(k), xp.zeros_like(v)
        for (start, stop, keys), att, keep in zip(self.chunks, self.att, self.keep):
            dq_chunk, dk_part, dv_part = _attention_backward(q[..., start:stop, :], k[..., :keys, :], v[..., :keys, :],
                                                             att, keep, dy[..., start:stop, :], self.scale)
            dq_chunks.append(dq_chunk)
            dk[..., :keys, :] += dk_part  # each chunk adds its queries' part to the keys it sees
            dv[..., :keys, :] += dv_part
        return xp.concatenate(dq_chunks, axis=-2), dk, dv  # dq (B, nh, Tq, hs)


EXP_SAFE_RANGE = 60.0  # e^-60 ~ 1e-26: far inside float32's normal range, which ends near e^-87


def _overall_max_if_narrow(scores):
    """The overall max of the scores if they all lie within EXP_SAFE_RANGE below it, else None.

    Softmax may subtract any shift before exp; each row's max keeps every exp in (0, 1]. Where
    the scores span less than EXP_SAFE_RANGE, one number is as safe (every exp in [e^-60, 1])
    and costs one pass instead of a max per row: about 5% of a baby rank's step
    (benchmarks/RESULTS.md). A row far below the overall max is then rounded less finely
    (x - max in float32 at up to 60 rather than near 0): a relative error up to about
    60 x 6e-8 = 4e-6 in its weights (tests/test_functional.py). CPU only (on a GPU, reading
    the range back would wait for the device), and not in float16, where e^-60 is 0.
    """
    if device_of(scores) != "cpu" or scores.size == 0 or scores.dtype.itemsize < 4:
        return None
    top = scores.max()
    return top if scores.min() > top - EXP_SAFE_RANGE else None  # (top - scores.min() could overflow)


def _attention_forward(q, k, v, scale, is_causal, dropout_p, rng):
    """Attention of queries q (B, nh, Tq, hs) on the keys k and values v (B, nh, Tk, hs) they
    see: returns y (B, nh, Tq, hs), att and the dropout's keep (None without), (B, nh, Tq, Tk)."""
    xp = array_module(q)
    Tq, Tk = q.shape[-2], k.shape[-2]
    scores = (q * scale) @ k.swapaxes(-1, -2)  # (B, nh, Tq, hs) @ (B, nh, hs, Tk) -> (B, nh, Tq, Tk)
    top = _overall_max_if_narrow(scores)  # taken before the mask, whose -inf would widen the range
    if is_causal:
        scores += _future_mask(xp, Tq, Tk, scores.dtype)  # -inf on the future: exp(-inf) = 0, no weight there
    scores -= scores.max(axis=-1, keepdims=True) if top is None else top  # so that no exp overflows
    att = xp.exp(scores, out=scores)  # (B, nh, Tq, Tk) softmax over the keys, in the scores' memory
    att /= _row_sum(att)
    keep = _keep_mask(rng, att, dropout_p) if dropout_p > 0 else None  # (B, nh, Tq, Tk)
    y = (att if keep is None else att * keep) @ v  # (B, nh, Tq, Tk) @ (B, nh, Tk, hs) -> (B, nh, Tq, hs)
    return y, att, keep


def _attention_backward(q, k, v, att, keep, dy, scale):
    """The gradients (dq, dk, dv) of _attention_forward, from dy (B, nh, Tq, hs)."""
    attd = att if keep is None else att * keep  # (B, nh, Tq, Tk) forward: y = attd @ v
    dv = attd.swapaxes(-1, -2) @ dy  # (B, nh, Tk, Tq) @ (B, nh, Tq, hs) -> (B, nh, Tk, hs)
    dattd = dy @ v.swapaxes(-1, -2)  # (B, nh, Tq, hs) @ (B, nh, hs, Tk) -> (B, nh, Tq, Tk)
    datt = dattd if keep is None else dattd * keep  # forward: attd = att * keep
    dscores = datt  # (B, nh, Tq, Tk) forward: att = softmax(scores), so (in datt's memory, used up here)
    dscores -= _row_sum(datt * att)
    dscores *= att  # dscores = att * (datt - sum_j(datt * att))
    dq = (dscores @ k) * scale  # (B, nh, Tq, Tk) @ (B, nh, Tk, hs) -> (B, nh, Tq, hs)
    dk = (dscores.swapaxes(-1, -2) @ q) * scale  # (B, nh, Tk, Tq) @ (B, nh, Tq, hs) -> (B, nh, Tk, hs)
    return dq, dk, dv


def _split_heads(x, n_head: int):
    """(B, T, C) -> (B, nh, T, hs): a view, one head per slice of hs channels."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def _merge_heads(x):
    """(B, nh, T, hs) -> (B, T, C): the heads side by side again (a copy)."""
    B, nh, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


class SelfAttention(ScaledDotProductAttention):
    """Multi-head self-attention on a fused projection: qkv (B, T, 3C) -> y (B, T, C).

    The same attention as ScaledDotProductAttention, with the split into heads and the merge
    back done on arrays instead of graph ops:
        q, k, v = qkv split into three (B, T, C), each viewed as (B, nh, T, hs)
        y = attention(q, k, v) (B, nh, T, hs), merged back to (B, T, C)
    As separate graph ops, each of the three slices of qkv would allocate a full (B, T, 3C)
    gradient in its backward; here dq, dk, dv are joined into one (B, T, 3C) array.

    With rotary=True the queries and keys are first turned by their positions' angles
    (ops/rotary.py), and dq, dk turned back in the backward.
    """

    def forward(self, qkv, n_head, is_causal=False, dropout_p=0.0, rng=None, rotary=False):
        B, T, C3 = qkv.shape
        C = C3 // 3
        self.n_head = n_head
        q, k, v = (_split_heads(qkv[..., i * C : (i + 1) * C], n_head) for i in range(3))  # (B, nh, T, hs) each
        self.rotary = rotary_tables(array_module(qkv), T, C // n_head, qkv.dtype) if rotary else None
        if self.rotary:
            q, k = rotate(q, *self.rotary), rotate(k, *self.rotary)
        return _merge_heads(super().forward(q, k, v, is_causal, dropout_p, rng))  # (B, T, C)

    def backward(self, dy):
        B, T, C = dy.shape
        dq, dk, dv = super().backward(_split_heads(dy, self.n_head))  # (B, nh, T, hs) each
        if self.rotary:
            dq, dk = rotate(dq, *self.rotary, sign=-1), rotate(dk, *self.rotary, sign=-1)
        dqkv = array_module(dy).empty((B, T, 3 * C), dtype=dy.dtype)
        for i, d in enumerate((dq, dk, dv)):
            _split_heads(dqkv[..., i * C : (i + 1) * C], self.n_head)[...] = d  # its third of dqkv
        return (dqkv,)  # (B, T, 3C)
