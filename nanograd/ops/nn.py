"""Fused neural-network ops: each is one forward/backward pair with its gradient worked out by
hand, instead of a chain of primitive ops. Fewer, larger array operations are faster, and
numerically safer: softmax, cross-entropy and attention subtract each row's max before exp,
so that no exp overflows, whatever the logits.

Shapes: B = batch, T = time (sequence), C = channels, V = vocabulary, N = rows (B*T),
nh = heads, hs = head size; in attention Tq queries and Tk keys; R = rows of a table of
logits, U = the rows of it that a batch reads.
"""

from __future__ import annotations

import functools
import math

from ..backend import array_module, device_of, in_blocks, scatter_add_rows, sum_leading_axes
from ..function import Function


def _row_sum(x, scale=1.0):
    """scale * x summed over its last axis, keeping it as size 1: (..., n) -> (..., 1)."""
    # a matrix-vector product: BLAS sums short rows faster than .sum(-1), 3% of a baby rank's step
    return (x @ array_module(x).full(x.shape[-1], scale, dtype=x.dtype))[..., None]


def _row_mean(x):
    """x averaged over its last axis, keeping it as size 1: (..., n) -> (..., 1)."""
    return _row_sum(x, 1.0 / x.shape[-1])


def _minus_max(x, axis):
    """x - its max along axis: at most 0, so that exp cannot overflow (an empty x stays empty,
    where NumPy would refuse the max of an empty row)."""
    return x - x.max(axis=axis, keepdims=True) if x.size else x.copy()


def _softmax(x, axis):
    """exp(x) / sum(exp(x)) along axis, computed as exp(x - max) so that no exp overflows."""
    xp = array_module(x)
    e = xp.exp(_minus_max(x, axis))  # every value in (0, 1]
    return e / e.sum(axis=axis, keepdims=True)


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
    """y = log softmax(x) = x - logsumexp(x), with logsumexp(x) = m + log sum exp(x - m) for
    the row's max m (any shift gives the same value; the max keeps exp from overflowing).

    dL/dx_i = g_i - softmax(x)_i * sum_j g_j.
    """

    def forward(self, x, axis=-1):
        xp = array_module(x)
        self.axis = axis
        shifted = _minus_max(x, axis)
        if x.size == 0:  # nothing to normalise (and log of an empty row's sum, 0, would warn)
            self.y = shifted
            return self.y
        self.y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        return self.y

    def backward(self, g):
        xp = array_module(g)
        return (g - xp.exp(self.y) * g.sum(axis=self.axis, keepdims=True),)


def _check_ids(ids, n: int, what: str) -> None:
    """Raise if some id is outside [0, n): NumPy would wrap a negative id around silently.

    Checked on the CPU only: on the GPU, reading the min and max back to the host would stall
    every step.
    """
    if ids.size and device_of(ids) == "cpu" and (ids.min() < 0 or ids.max() >= n):
        raise ValueError(f"{what}: ids must lie in [0, {n}), got values from {ids.min()} to {ids.max()}")


def _softmax_rows(logits):
    """What a cross-entropy needs from rows of logits (N, V): (shifted, log sum exp, probs).

        shifted = logits - max           (N, V), at most 0, so exp cannot overflow
        log p = shifted - log sum exp    with log sum exp (N,)
        probs = softmax(logits)          (N, V)
    """
    xp = array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)  # (N, V)
    exp = xp.exp(shifted)  # (N, V)
    sum_exp = exp.sum(axis=1)  # (N,)
    probs = exp / sum_exp[:, None]  # (N, V)
    return shifted, xp.log(sum_exp), probs


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
        _check_ids(targets, V, "cross_entropy targets")
        self.targets = targets
        shifted, log_sum_exp, self.probs = _softmax_rows(logits)  # (N, V), (N,), (N, V)
        log_p_target = shifted[xp.arange(N), targets] - log_sum_exp  # (N,)
        return -log_p_target.mean()

    def backward(self, g):
        xp = array_module(g)
        N = self.probs.shape[0]
        dlogits = self.probs.copy()  # (N, V) p (a copy: probs stay for another backward)
        dlogits[xp.arange(N), self.targets] -= 1  # p - onehot(targets)
        dlogits *= g / N
        return (dlogits,)


class Embedding(Function):
    """out[..., :] = weight[idx[...], :] for idx of any shape (ints < V), weight (V, C).

    dL/dweight[v] = sum of g at every position where idx == v. Ids repeat (a letter appears
    many times in a batch), so this is a scatter-add: see backend.scatter_add_rows.
    """

    def forward(self, weight, idx):
        _check_ids(idx, weight.shape[0], "embedding")
        self.idx, self.weight_shape, self.dtype = idx, weight.shape, weight.dtype
        return weight[idx]  # idx.shape + (C,)

    def backward(self, g):
        xp = array_module(g)
        dweight = xp.zeros(self.weight_shape, dtype=self.dtype)  # (V, C)
        scatter_add_rows(dweight, self.idx.reshape(-1), g.reshape(-1, self.weight_shape[1]))
        return (dweight,)


class EmbeddingCrossEntropy(Function):
    """loss = cross_entropy(weight[idx], targets): logits looked up from a table, as in the
    bigram model. weight (R, V), idx and targets of one shape (N ids in all).

    Every position that reads row a has the same logits, so log softmax is taken once per
    row that the ids read (U of them, at most min(R, N)) instead of once per position:
        loss = -(1/N) sum_n logp[idx_n, t_n],   logp = log_softmax of the rows read (U, V)
    and the gradient gathers the positions by row, with counts:
        dL/dweight[a] = g (n_a softmax(weight[a]) - K[a]) / N   (0 for a row no id reads)
    where n_a counts the positions that read row a and K[a, v] those of them whose target is v
    (K for the pair counts of a counting bigram, docs/03-bigram.md; C is taken for channels
    here). The same numbers as an embedding followed by cross_entropy (to float rounding),
    with no (N, V) logits and no scatter-add: a batch of the bigram preset reads fewer rows
    than it has positions (benchmarks/RESULTS.md).
    """

    def forward(self, weight, idx, targets):
        xp = array_module(weight)
        R, V = weight.shape
        if targets.shape != idx.shape:
            raise ValueError(f"embedding_cross_entropy: targets of shape {targets.shape} for ids {idx.shape}")
        _check_ids(idx, R, "embedding_cross_entropy ids")
        _check_ids(targets, V, "embedding_cross_entropy targets")
        rows = idx.reshape(-1).astype(xp.int64, copy=False)  # (N,) (bincount takes no uint64 in NumPy 1.x)
        counts = xp.bincount(rows, minlength=R)  # (R,) n_a
        self.read = counts.nonzero()[0]  # (U,) the rows some position reads
        slot = xp.zeros(R, dtype=xp.int64)
        slot[self.read] = xp.arange(len(self.read))  # (R,) row a -> its place among the rows read
        # (N,) flat index of (idx_n, t_n) in (U, V); int64, which any integer id type fits in
        self.pairs = slot[rows] * V + targets.reshape(-1).astype(xp.int64, copy=False)
        self.row_counts = counts[self.read].astype(weight.dtype)  # (U,) n_a of the rows read
        self.table_rows = R
        shifted, log_sum_exp, self.probs = _softmax_rows(weight[self.read])  # (U, V), (U,), (U, V)
        # -sum_n log p[idx_n, t_n] = sum_a n_a log sum exp(shifted_a) - sum_n shifted[idx_n, t_n]
        loss = (self.row_counts @ log_sum_exp - shifted.reshape(-1)[self.pairs].sum()) / len(rows)
        return loss.astype(weight.dtype)

    def backward(self, g):
        xp = array_module(g)
        U, V = self.probs.shape
        pair_counts = xp.bincount(self.pairs, minlength=U * V).reshape(U, V)  # (U, V) K[a, v], int64
        # (cast to the weights' dtype: float32 - int64 would give float64)
        dread = (self.probs * self.row_counts[:, None] - pair_counts.astype(self.probs.dtype))  # (U, V) n_a p_a - K[a]
        dread *= g / len(self.pairs)
        dweight = xp.zeros((self.table_rows, V), dtype=dread.dtype)  # (R, V)
        dweight[self.read] = dread
        return (dweight,)


class LayerNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis; x (..., C), w and b (C,).

    Forward keeps xhat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps) (one per row), as
    llm.c's layernorm_forward keeps mean and rstd. Backward, with dxhat = g * w:
        dL/dw = sum over rows of g * xhat,   dL/db = sum over rows of g,
        dL/dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    The two subtracted terms are the paths through the row's mean and through its variance.
    """

    def forward(self, x, weight, bias=None, eps=1e-5):
        mean = _row_mean(x)  # (..., 1)
        xc = x - mean  # (..., C) centred
        var = _row_mean(xc * xc)  # (..., 1) biased variance, as PyTorch
        rstd = 1 / array_module(x).sqrt(var + eps)  # (..., 1)
        xhat = xc * rstd  # (..., C) normalised
        self.xhat, self.rstd, self.weight = xhat, rstd, weight
        y = xhat * weight  # (..., C) * (C,)
        return y if bias is None else y + bias

    def backward(self, g):
        xhat, rstd, leading = self.xhat, self.rstd, g.ndim - 1
        dweight = sum_leading_axes(g * xhat, leading)  # (C,)  forward: y = xhat * w + b
        dbias = sum_leading_axes(g, leading) if len(self.needs_grad) > 2 else None  # (C,)
        dxhat = g * self.weight  # (..., C)
        dnorm_mean = _row_mean(dxhat)  # (..., 1) the path through the mean
        dnorm_norm_mean = _row_mean(dxhat * xhat)  # (..., 1) through the variance
        dx = rstd * (dxhat - dnorm_mean - xhat * dnorm_norm_mean)  # (..., C)
        return (dx, dweight, dbias)[: len(self.needs_grad)]


GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


class Gelu(Function):
    """GELU, tanh approximation (as GPT-2): y = 0.5 x (1 + tanh(u)), u = c (x + a x^3),
    with c = sqrt(2 / pi) and a = 0.044715.

    dy/dx = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) du/dx,   du/dx = c (1 + 3 a x^2).
    Forward keeps x and tanh(u) (B, T, 4C).

    This op runs on the largest activations in the model (B, T, 4C). Each formula is written
    as a few in-place passes over preallocated buffers, run block by block (backend.in_blocks)
    so that every pass finds its block still in the cache.
    """

    def forward(self, x):
        xp = array_module(x)
        self.x, self.tanh_u, y = x, xp.empty_like(x), xp.empty_like(x)
        # in place and block by block: about 3% of a video step (benchmarks/RESULTS.md)
        in_blocks(_gelu_forward, x, self.tanh_u, y)
        return y

    def backward(self, g):
        xp = array_module(g)
        dx, du_dx = xp.empty_like(g), xp.empty_like(g)
        in_blocks(_gelu_backward, self.x, self.tanh_u, g, dx, du_dx)
        return (dx,)


def _gelu_forward(x, tanh_u, y):
    """tanh_u = tanh(c (x + a x^3)) and y = 0.5 x (1 + tanh_u), written into tanh_u and y."""
    xp = array_module(x)
    u = xp.multiply(x, x, out=tanh_u)  # x^2
    u *= GELU_C * GELU_A
    u += GELU_C
    u *= x  # u = c (x + a x^3) = x (c + c a x^2)
    xp.tanh(u, out=tanh_u)
    xp.add(tanh_u, 1, out=y)
    y *= x
    y *= 0.5  # y = 0.5 x (1 + tanh(u))


def _gelu_backward(x, tanh_u, g, dx, du_dx):
    """dx = g dy/dx = g (0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) du/dx), written into dx
    (du_dx is a buffer for du/dx)."""
    xp = array_module(x)
    xp.multiply(x, x, out=du_dx)
    du_dx *= 3 * GELU_A * GELU_C
    du_dx += GELU_C  # du/dx = c (1 + 3 a x^2)
    xp.multiply(tanh_u, tanh_u, out=dx)
    xp.subtract(1, dx, out=dx)
    dx *= x
    dx *= du_dx  # x (1 - tanh(u)^2) du/dx
    dx += tanh_u
    dx += 1
    dx *= 0.5  # dy/dx = 0.5 (1 + tanh(u) + x (1 - tanh(u)^2) du/dx)
    dx *= g


def _keep_mask(rng, like, p):
    """Dropout's mask shaped like the array `like`, on its device: 1 / (1 - p) where kept
    (probability 1 - p), 0 where dropped. rng may be a NumPy generator even for a GPU array
    (the numbers are copied over), so a seeded NumPy generator draws the same mask of a given
    shape on either device."""
    uniform = array_module(like).asarray(rng.random(like.shape, dtype=like.dtype))
    return (uniform >= p) * like.dtype.type(1.0 / (1.0 - p))


class Dropout(Function):
    """Inverted dropout: y = x * keep, keep = mask / (1 - p), mask ~ Bernoulli(1 - p) drawn
    from `rng` (_keep_mask makes keep in one piece).

    Scaling the kept values at training time keeps E[y] = x, so evaluation needs no change.
    dL/dx = g * keep.
    """

    def forward(self, x, p, rng):
        self.keep = _keep_mask(rng, x, p)  # (same shape as x)
        return x * self.keep

    def backward(self, g):
        return (g * self.keep,)


@functools.lru_cache(maxsize=64)  # every layer and step asks for the same few: 3% of a baby rank's step
def _future(xp, Tq: int, Tk: int):
    """(Tq, Tk) booleans, True where key j is in query i's future: j > i + Tk - Tq (Tk > Tq
    when the earlier keys come from a cache, and the queries are the newest positions).
    Shared between calls: read it, never write to it."""
    return xp.triu(xp.ones((Tq, Tk), dtype=bool), k=Tk - Tq + 1)


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
        return xp.concatenate(ys, axis=-2)  # (B, nh, Tq, hs)

    def backward(self, dy):
        xp = array_module(dy)
        q, k, v = self.q, self.k, self.v
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
    scores = (q @ k.swapaxes(-1, -2)) * scale  # (B, nh, Tq, hs) @ (B, nh, hs, Tk) -> (B, nh, Tq, Tk)
    top = _overall_max_if_narrow(scores)  # taken before the mask, whose -inf would widen the range
    if is_causal:
        scores = xp.where(_future(xp, Tq, Tk), -xp.inf, scores)  # exp(-inf) = 0: no weight on the future
    shift = scores.max(axis=-1, keepdims=True) if top is None else top  # so that no exp overflows
    att = xp.exp(scores - shift)  # (B, nh, Tq, Tk) softmax over the keys
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
    dscores = att * (datt - _row_sum(datt * att))  # (B, nh, Tq, Tk) forward: att = softmax(scores)
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
    """

    def forward(self, qkv, n_head, is_causal=False, dropout_p=0.0, rng=None):
        C = qkv.shape[-1] // 3
        self.n_head = n_head
        q, k, v = (_split_heads(qkv[..., i * C : (i + 1) * C], n_head) for i in range(3))  # (B, nh, T, hs) each
        return _merge_heads(super().forward(q, k, v, is_causal, dropout_p, rng))  # (B, T, C)

    def backward(self, dy):
        dq, dk, dv = super().backward(_split_heads(dy, self.n_head))  # (B, nh, T, hs) each
        return (array_module(dy).concatenate([_merge_heads(d) for d in (dq, dk, dv)], axis=-1),)  # (B, T, 3C)
