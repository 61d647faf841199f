"""Fused neural-network ops: each is one forward/backward pair with its gradient worked out by
hand, instead of a chain of primitive ops. Fewer, larger array operations are faster, and
numerically safer (the max-shift inside softmax and cross-entropy).

Shapes: B = batch, T = time (sequence), C = channels, V = vocabulary, N = rows (B*T),
nh = heads, hs = head size.
"""

from __future__ import annotations

import functools
import math

from ..backend import array_module, scatter_add_rows
from ..function import Function


def _softmax(x, axis):
    """exp(x) / sum(exp(x)), computed as exp(x - max) so that no exp overflows."""
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


class Softmax(Function):
    """y = softmax(x) along `axis`:  y_i = exp(x_i) / sum_j exp(x_j).

    dL/dx_i = sum_j g_j dy_j/dx_i = y_i (g_i - sum_j g_j y_j)   (from dy_j/dx_i = y_j (d_ij - y_i)).
    """

    def forward(self, x, axis=-1):
        self.axis = axis
        self.y = _softmax(x, axis)
        return self.y

    def backward(self, g):
        y = self.y
        return (y * (g - (g * y).sum(axis=self.axis, keepdims=True)),)


class LogSoftmax(Function):
    """y = log softmax(x) = x - logsumexp(x), with logsumexp(x) = m + log sum exp(x - m), m = max x.

    dL/dx_i = g_i - softmax(x)_i * sum_j g_j.
    """

    def forward(self, x, axis=-1):
        xp = array_module(x)
        self.axis = axis
        shifted = x - x.max(axis=axis, keepdims=True)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        self.y = y
        return y

    def backward(self, g):
        xp = array_module(g)
        return (g - xp.exp(self.y) * g.sum(axis=self.axis, keepdims=True),)


class CrossEntropy(Function):
    """loss = -(1/N) sum_n log softmax(logits_n)[target_n], for logits (N, V), targets (N,) ints.

    Forward keeps p = softmax(logits) (N, V). Backward:
        dL/dlogits = g * (p - onehot(targets)) / N
    the classic fused result: the softmax Jacobian and the log's 1/p cancel.
    """

    def forward(self, logits, targets):
        xp = array_module(logits)
        N, V = logits.shape
        if targets.shape != (N,):
            raise ValueError(f"cross_entropy: targets of shape {targets.shape} for logits {logits.shape}")
        self.targets = targets
        shifted = logits - logits.max(axis=1, keepdims=True)  # (N, V), max 0: exp cannot overflow
        exp = xp.exp(shifted)  # (N, V)
        sum_exp = exp.sum(axis=1)  # (N,)
        rows = xp.arange(N)
        # log p_target = shifted_target - log sum exp(shifted)
        loss = (xp.log(sum_exp) - shifted[rows, targets]).mean()
        exp /= sum_exp[:, None]  # now the probabilities p, reused by backward
        self.probs = exp
        return loss.astype(logits.dtype)

    def backward(self, g):
        xp = array_module(g)
        N = self.probs.shape[0]
        dlogits = self.probs  # (N, V); the forward buffer is ours, so update it in place
        dlogits[xp.arange(N), self.targets] -= 1
        dlogits *= g / N
        self.probs = None
        return (dlogits,)


class Embedding(Function):
    """out[..., :] = weight[idx[...], :] for idx of any shape (ints < V), weight (V, C).

    dL/dweight[v] = sum of g at every position where idx == v. Ids repeat (a letter appears
    many times in a batch), so this is a scatter-add: see backend.scatter_add_rows.
    """

    def forward(self, weight, idx):
        self.idx, self.weight_shape, self.dtype = idx, weight.shape, weight.dtype
        return weight[idx]  # idx.shape + (C,)

    def backward(self, g):
        xp = array_module(g)
        dweight = xp.zeros(self.weight_shape, dtype=self.dtype)  # (V, C)
        scatter_add_rows(dweight, self.idx.reshape(-1), g.reshape(-1, self.weight_shape[1]))
        return (dweight,)


class LayerNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis; x (..., C), w and b (C,).

    Forward keeps xhat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps) (one per row).
    Backward, with dxhat = g * w:
        dL/dw = sum over rows of g * xhat,   dL/db = sum over rows of g,
        dL/dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    The two subtracted terms are the paths through the row's mean and through its variance.
    """

    def forward(self, x, weight, bias=None, eps=1e-5):
        xp = array_module(x)
        xhat = x - x.mean(axis=-1, keepdims=True)  # (..., C) centred; scaled to xhat below
        y = xp.multiply(xhat, xhat)  # (..., C) squares now, the output later
        var = y.mean(axis=-1, keepdims=True)  # (..., 1) biased variance, as PyTorch
        var += eps
        self.rstd = rstd = xp.sqrt(var, out=var)
        xp.divide(1, rstd, out=rstd)  # (..., 1)
        xhat *= rstd  # (..., C)
        self.xhat, self.weight = xhat, weight
        xp.multiply(xhat, weight, out=y)
        if bias is not None:
            y += bias
        return y

    def backward(self, g):
        xp = array_module(g)
        xhat, rstd, C = self.xhat, self.rstd, self.xhat.shape[-1]
        rows, xhat_rows = g.reshape(-1, C), xhat.reshape(-1, C)  # (N, C)
        scratch = rows * xhat_rows  # (N, C)
        dweight = scratch.sum(axis=0)  # (C,)
        dbias = rows.sum(axis=0) if len(self.needs_grad) > 2 else None  # (C,)
        dxhat = g * self.weight  # (..., C)
        scratch = scratch.reshape(g.shape)
        xp.multiply(dxhat, xhat, out=scratch)
        mean_dxhat_xhat = scratch.mean(axis=-1, keepdims=True)  # (..., 1) the path through var
        dx = dxhat  # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), in place
        dx -= dxhat.mean(axis=-1, keepdims=True)  # the path through the mean
        dx -= xp.multiply(xhat, mean_dxhat_xhat, out=scratch)
        dx *= rstd
        return (dx, dweight, dbias)[: len(self.needs_grad)]


GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


class Gelu(Function):
    """GELU, tanh approximation (as GPT-2): y = 0.5 x (1 + t), t = tanh(u), u = c (x + a x^3),
    with c = sqrt(2 / pi) and a = 0.044715.

    dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,   du/dx = c (1 + 3 a x^2).

    This op runs on the largest activations in the model (B, T, 4C), so both passes work in
    place on one or two buffers instead of allocating a temporary array per arithmetic step.
    """

    def forward(self, x):
        xp = array_module(x)
        self.x = x
        t = x * x  # x^2, then turned into t step by step
        t *= GELU_A
        t += 1
        t *= x
        t *= GELU_C  # u = c (x + a x^3)
        self.t = xp.tanh(t, out=t)
        y = t + 1
        y *= x
        y *= 0.5  # y = 0.5 x (1 + t)
        return y

    def backward(self, g):
        x, t = self.x, self.t
        du = x * x
        du *= 3 * GELU_A * GELU_C
        du += GELU_C  # du/dx = c (1 + 3 a x^2)
        local = t * t
        local -= 1
        local *= du
        local *= -0.5
        local *= x  # 0.5 x (1 - t^2) du/dx
        half_1_plus_t = array_module(t).add(t, 1, out=du)  # du's buffer is free again
        half_1_plus_t *= 0.5
        local += half_1_plus_t  # dy/dx
        local *= g
        return (local,)


class Dropout(Function):
    """Inverted dropout: y = x * mask / (1 - p), mask ~ Bernoulli(1 - p), drawn from `rng`.

    Scaling the kept values at training time keeps E[y] = x, so evaluation needs no change.
    dL/dx = g * mask / (1 - p).
    """

    def forward(self, x, p, rng):
        keep = rng.random(x.shape, dtype=x.dtype) >= p
        self.scale = keep * x.dtype.type(1.0 / (1.0 - p))  # (same shape as x)
        return x * self.scale

    def backward(self, g):
        return (g * self.scale,)


@functools.lru_cache(maxsize=16)
def _causal_mask(xp, Tq: int, Tk: int, dtype):
    """(Tq, Tk) additive mask: 0 where query i may see key j (j <= i + Tk - Tq), -inf elsewhere.

    Adding it is one pass over the scores, cheaper than boolean indexing; it is cached
    because every layer and every step uses the same one.
    """
    future = xp.triu(xp.ones((Tq, Tk), dtype=bool), k=Tk - Tq + 1)
    return xp.where(future, -xp.inf, 0).astype(dtype)


class ScaledDotProductAttention(Function):
    """y = softmax(q k^T / sqrt(hs) + mask) v for q (B, nh, Tq, hs), k and v (B, nh, Tk, hs).

    With causal=True, query i may look at keys j <= i + (Tk - Tq): its own position and the
    past (Tk > Tq when earlier keys come from a cache). With dropout p > 0 the weights are
    dropped as in GPT-2: y = (att * mask / (1 - p)) @ v. Forward keeps att (B, nh, Tq, Tk).
    Backward, with s = the scaled scores and attd = the dropped weights (att if p = 0):
        dv = attd^T @ dy
        datt = (dy @ v^T) * mask / (1 - p)
        ds = att * (datt - sum_j(datt * att))     (the softmax backward; masked att are 0)
        dq = ds @ k / sqrt(hs),   dk = ds^T @ q / sqrt(hs)
    """

    def forward(self, q, k, v, causal=True, dropout=0.0, rng=None):
        xp = array_module(q)
        Tq, Tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
        self.scale = q.dtype.type(1.0 / math.sqrt(hs))
        scores = q @ k.swapaxes(-1, -2)  # (B, nh, Tq, hs) @ (B, nh, hs, Tk) -> (B, nh, Tq, Tk)
        scores *= self.scale
        if causal:
            scores += _causal_mask(xp, Tq, Tk, scores.dtype)  # -inf on the future: exp gives 0
        scores -= scores.max(axis=-1, keepdims=True)
        att = xp.exp(scores, out=scores)  # (B, nh, Tq, Tk)
        att /= att.sum(axis=-1, keepdims=True)
        self.q, self.k, self.v, self.att = q, k, v, att
        self.keep = None  # the dropout mask, scaled by 1 / (1 - p)
        if dropout > 0:
            self.keep = (rng.random(att.shape, dtype=att.dtype) >= dropout) * att.dtype.type(1 / (1 - dropout))
            return (att * self.keep) @ v  # (B, nh, Tq, hs)
        return att @ v  # (B, nh, Tq, hs)

    def backward(self, dy):
        q, k, v, att, keep = self.q, self.k, self.v, self.att, self.keep
        dropped = att if keep is None else att * keep  # (B, nh, Tq, Tk)
        dv = dropped.swapaxes(-1, -2) @ dy  # (B, nh, Tk, Tq) @ (B, nh, Tq, hs) -> (B, nh, Tk, hs)
        datt = dy @ v.swapaxes(-1, -2)  # (B, nh, Tq, hs) @ (B, nh, hs, Tk) -> (B, nh, Tq, Tk)
        if keep is not None:
            datt *= keep
        ds = datt  # reuse the buffer: ds = att * (datt - rowsum(datt * att))
        ds -= (datt * att).sum(axis=-1, keepdims=True)
        ds *= att
        ds *= self.scale  # the 1/sqrt(hs) from the forward, applied once for dq and dk
        dq = ds @ k  # (B, nh, Tq, Tk) @ (B, nh, Tk, hs) -> (B, nh, Tq, hs)
        dk = ds.swapaxes(-1, -2) @ q  # (B, nh, Tk, Tq) @ (B, nh, Tq, hs) -> (B, nh, Tk, hs)
        return dq, dk, dv


class SelfAttention(ScaledDotProductAttention):
    """Multi-head self-attention on a fused projection: qkv (B, T, 3C) -> y (B, T, C).

    The same attention as ScaledDotProductAttention (whose forward and backward it calls),
    with the split into heads and the merge back done here on array views:
        q, k, v = qkv viewed as (B, T, 3, nh, hs) -> (3, B, nh, T, hs)
        y = attention(q, k, v) (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)
    As separate graph ops, each of the three slices of qkv would allocate a full (B, T, 3C)
    gradient in its backward; here dq, dk, dv are written into one (B, T, 3C) array.
    """

    def forward(self, qkv, n_head, causal=True, dropout=0.0, rng=None):
        B, T, C3 = qkv.shape
        self.n_head, hs = n_head, C3 // 3 // n_head
        heads = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        y = super().forward(heads[0], heads[1], heads[2], causal, dropout, rng)  # (B, nh, T, hs)
        return y.transpose(0, 2, 1, 3).reshape(B, T, C3 // 3)  # (B, T, C), heads side by side

    def backward(self, dy):
        xp = array_module(dy)
        B, T, C = dy.shape
        nh, hs = self.n_head, C // self.n_head
        dq, dk, dv = super().backward(dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3))  # (B, nh, T, hs)
        dqkv = xp.empty((B, T, 3, nh, hs), dtype=dy.dtype)
        heads = dqkv.transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs) view of dqkv
        heads[0], heads[1], heads[2] = dq, dk, dv
        return (dqkv.reshape(B, T, 3 * C),)
