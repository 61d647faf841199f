"""Fused neural-network ops: each is one forward/backward pair with its gradient worked out by
hand, instead of a chain of primitive ops. Fewer, larger array operations are faster, and
numerically safer: softmax and cross-entropy subtract each row's max before exp, so that no
exp overflows, whatever the logits. (Attention, the largest, has a module of its own:
ops/attention.py.)

Shapes: B = batch, T = time (sequence), C = channels, V = vocabulary, N = rows (B*T);
R = rows of a table of logits, U = the rows of it that a batch reads.
"""

from __future__ import annotations

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
