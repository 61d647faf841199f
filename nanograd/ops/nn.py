"""Fused neural-network ops: each is one forward/backward pair with its gradient worked out by
hand, instead of a chain of primitive ops. Fewer, larger array operations are faster, and
numerically safer: softmax, cross-entropy and attention shift their inputs before exp, by
each row's max, or by one overall max where the values span less than EXP_SAFE_RANGE.

Shapes: B = batch, T = time (sequence), C = channels, V = vocabulary, N = rows (B*T),
nh = heads, hs = head size; in attention Tq queries and Tk keys (rows and keys: one chunk's);
R = rows of a table of logits, U = the rows of it that a batch reads.
"""

from __future__ import annotations

import functools
import math

from ..backend import array_module, device_of, filled, in_blocks, scatter_add_rows, sum_leading_axes
from ..function import Function


def _row_sum(x, scale=1.0):
    """scale * the sum over the last axis, keeping it as size 1: (..., n) -> (..., 1).

    Written as a matrix-vector product with a vector of `scale`s, because BLAS does it several
    times faster than NumPy's reduction along a short last axis (a hot spot in LayerNorm and
    attention, which reduce rows of 64 to 512 numbers).
    """
    return (x @ filled(array_module(x), x.shape[-1], scale, x.dtype))[..., None]


def _row_mean(x):
    return _row_sum(x, 1.0 / x.shape[-1])


EXP_SAFE_RANGE = 60.0  # e^-60 ~ 1e-26: far inside float32's normal range, which ends near e^-87


def _overall_max_if_narrow(x):
    """The overall max of x if every value of x lies within EXP_SAFE_RANGE below it, else None.

    Softmax and log-sum-exp subtract a shift from each row before exp, so that no exp
    overflows; any shift gives the same result. The row's max is safe for any input, but on
    the CPU a max over each short row, and a subtraction broadcast row by row, cost several
    times one pass over the array. When x spans less than EXP_SAFE_RANGE, one number is as
    safe: every exp(x - max) then lies in [e^-60, 1], so nothing overflows and nothing
    underflows. It is a little less exact: x - max is rounded to float32 at up to 60, not at
    the distance to the row's own max, so a row far below the overall max carries a relative
    error up to about 60 x 6e-8 = 4e-6 in its probabilities and an absolute one as large in
    its log-probabilities (tests/test_functional.py). The range is 60 because attention
    scores need it: in the trained baby model they spanned 34-67 per call (median 45), so 77%
    of the calls take the one-number path at 60 and none would at 30; cross-entropy's logits
    span about 20. Always None on a GPU, where testing the range would wait for the device,
    and in float16, where e^-60 underflows to 0.
    """
    if device_of(x) != "cpu" or x.size == 0 or x.dtype.itemsize < 4:  # float16: e^-60 underflows
        return None
    top = x.max()
    return top if x.min() > top - EXP_SAFE_RANGE else None  # (top - x.min() could overflow)


def _exp_shift(x, axis):
    """What softmax subtracts from x before exp: the overall max where x is narrow (a scalar),
    else the max along `axis` (keeping it as size 1)."""
    top = _overall_max_if_narrow(x)
    return x.max(axis=axis, keepdims=True) if top is None else top


def _softmax(x, axis):
    """exp(x) / sum(exp(x)), computed as exp(x - shift) so that no exp overflows (_exp_shift)."""
    xp = array_module(x)
    e = xp.exp(x - _exp_shift(x, axis))
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
    """y = log softmax(x) = x - logsumexp(x), logsumexp(x) = m + log sum exp(x - m) for any shift m
    (here _exp_shift: the max, so that no exp overflows).

    dL/dx_i = g_i - softmax(x)_i * sum_j g_j.
    """

    def forward(self, x, axis=-1):
        xp = array_module(x)
        self.axis = axis
        shifted = x - _exp_shift(x, axis)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        self.y = y
        return y

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
    """(shifted, log sum exp, probabilities) of rows of logits (N, V): what a cross-entropy
    needs. shifted = logits - _exp_shift (at most 0, so exp cannot overflow), (N, V);
    log p = shifted - log sum exp, with log sum exp (N,); probabilities softmax(logits) (N, V)."""
    xp = array_module(logits)
    shifted = logits - _exp_shift(logits, axis=1)  # (N, V)
    probs = xp.exp(shifted)  # (N, V) exp(shifted), normalised below
    sum_exp = _row_sum(probs)  # (N, 1)
    log_sum_exp = xp.log(sum_exp[:, 0])  # (N,)
    probs /= sum_exp
    return shifted, log_sum_exp, probs


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
        shifted, log_sum_exp, self.probs = _softmax_rows(logits)  # probs reused by backward
        # log p_target = shifted_target - log sum exp(shifted), averaged over the N rows
        loss = (log_sum_exp.sum() - shifted[xp.arange(N), targets].sum()) / N
        return loss.astype(logits.dtype)

    def backward(self, g):
        xp = array_module(g)
        N = self.probs.shape[0]
        scale = g / N
        dlogits = self.probs * scale  # (N, V) a new array: probs stay for another backward
        dlogits[xp.arange(N), self.targets] -= scale
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
    with no (N, V) logits and no scatter-add: a batch of the bigram preset (N 256) reads
    28-52 of the 65 rows of tiny shakespeare's table (median 41, over a run's 3000 batches).
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
        # the rows read: shifted (U, V), log sum exp (U,), softmax (U, V) reused by backward
        shifted, log_sum_exp, self.probs = _softmax_rows(weight[self.read])
        # -sum_n log p[idx_n, t_n] = sum_a n_a log sum exp(shifted_a) - sum_n shifted[idx_n, t_n]
        loss = (self.row_counts @ log_sum_exp - shifted.reshape(-1)[self.pairs].sum()) / len(rows)
        return loss.astype(weight.dtype)

    def backward(self, g):
        xp = array_module(g)
        U, V = self.probs.shape
        pair_counts = xp.bincount(self.pairs, minlength=U * V).reshape(U, V)  # (U, V) K[a, v]
        dread = self.probs * self.row_counts[:, None]  # (U, V) n_a p_a
        dread -= pair_counts.astype(dread.dtype)  # (a float copy: subtracting int64 is slower)
        dread *= g / len(self.pairs)
        dweight = xp.zeros((self.table_rows, V), dtype=dread.dtype)  # (R, V)
        dweight[self.read] = dread
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
        self.xhat, self.weight = xp.empty_like(x), weight  # (..., C)
        self.rstd = xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)  # (..., 1)
        y = xp.empty_like(x)  # (..., C)
        _layer_norm_forward(x, self.xhat, self.rstd, y, weight, bias, eps)
        return y

    def backward(self, g):
        xp = array_module(g)
        dx, scratch = xp.empty_like(g), xp.empty_like(g)  # (..., C)
        dweight, dbias = _layer_norm_backward(g, self.xhat, self.rstd, dx, scratch, self.weight)
        dbias = dbias if len(self.needs_grad) > 2 else None
        return (dx, dweight, dbias)[: len(self.needs_grad)]


def _layer_norm_forward(x, xhat, rstd, y, weight, bias, eps):
    """LayerNorm forward on rows x (..., C), writing xhat, rstd and y in place."""
    xp = array_module(x)
    xp.subtract(x, _row_mean(x), out=xhat)  # (..., C) x - mean: centred (xhat's buffer, scaled below)
    xp.multiply(xhat, xhat, out=y)  # (..., C) squares (y's buffer is free until the end)
    var = _row_mean(y)  # (..., 1) biased variance, as PyTorch
    var += eps
    xp.divide(1, xp.sqrt(var, out=var), out=rstd)  # (..., 1) rstd = 1 / sqrt(var + eps)
    xhat *= rstd  # (..., C) xhat = (x - mean) * rstd
    xp.multiply(xhat, weight, out=y)  # (..., C) * (C,)
    if bias is not None:
        y += bias  # (..., C) + (C,)


def _layer_norm_backward(g, xhat, rstd, dx, scratch, weight):
    """LayerNorm backward: dx in place; returns (dw, db), each (C,). The buffers do double
    duty: dx holds dxhat before it becomes dL/dx, scratch holds each product in turn."""
    xp = array_module(g)
    xp.multiply(g, xhat, out=scratch)  # (..., C) g * xhat
    dweight = sum_leading_axes(scratch, g.ndim - 1)  # (C,)
    dbias = sum_leading_axes(g, g.ndim - 1)  # (C,)
    dxhat = xp.multiply(g, weight, out=dx)  # (..., C) dxhat = g * w, in dx's buffer
    xp.multiply(dxhat, xhat, out=scratch)  # (..., C) dxhat * xhat
    mean_dxhat_xhat = _row_mean(scratch)  # (..., 1) taken before dx (= dxhat) changes below
    dx -= _row_mean(dxhat)  # (..., C) - mean(dxhat): the path through the mean
    dx -= xp.multiply(xhat, mean_dxhat_xhat, out=scratch)  # (..., C) - xhat mean(dxhat xhat): through the variance
    dx *= rstd  # (..., C) * (..., 1)
    return dweight, dbias


GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


class Gelu(Function):
    """GELU, tanh approximation (as GPT-2): y = x h, h = 0.5 (1 + tanh(u)), u = c (x + a x^3),
    with c = sqrt(2 / pi) and a = 0.044715.

    dy/dx = h + x dh/dx,   dh/dx = 0.5 (1 - tanh(u)^2) du/dx = 2 h (1 - h) du/dx,
    du/dx = c (1 + 3 a x^2)   (with tanh(u) = 2h - 1, so 1 - tanh(u)^2 = 4 h (1 - h)).

    This op runs on the largest activations in the model (B, T, 4C), so both passes work in
    place on preallocated buffers instead of allocating a temporary per arithmetic step, and
    forward keeps h rather than tanh(u): y is then one product, and the backward two passes
    shorter. On the CPU both run block by block (backend.in_blocks), so that each of their
    eight or nine passes finds its block still in cache: at (12, 64, 512), forward 0.64 ->
    0.50 ms and backward 0.85 -> 0.51 ms (no change measured at a worker's (6, 64, 512)).
    """

    def forward(self, x):
        xp = array_module(x)
        self.x, self.h, y = x, xp.empty_like(x), xp.empty_like(x)
        in_blocks(_gelu_forward, x, self.h, y)
        return y

    def backward(self, g):
        xp = array_module(g)
        dx, scratch = xp.empty_like(g), xp.empty_like(g)
        in_blocks(_gelu_backward, self.x, self.h, g, dx, scratch)
        return (dx,)


def _gelu_forward(x, h, y):
    """h = 0.5 (1 + tanh(c (x + a x^3))) and y = x h, written into h and y."""
    xp = array_module(x)
    xp.multiply(x, x, out=h)
    h *= GELU_A * GELU_C
    h += GELU_C
    h *= x  # u = c (x + a x^3)
    xp.tanh(h, out=h)
    h += 1
    h *= 0.5
    xp.multiply(x, h, out=y)


def _gelu_backward(x, h, g, dx, scratch):
    """dx = g * (h + 2 x h (1 - h) du/dx), written into dx."""
    xp = array_module(x)
    du2 = xp.multiply(x, x, out=scratch)
    du2 *= 6 * GELU_A * GELU_C
    du2 += 2 * GELU_C  # 2 du/dx = 2 c (1 + 3 a x^2)
    xp.subtract(1, h, out=dx)
    dx *= h
    dx *= du2
    dx *= x  # x dh/dx = 2 x h (1 - h) du/dx
    dx += h  # dy/dx
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


@functools.lru_cache(maxsize=64)
def _causal_mask(xp, Tq: int, Tk: int, dtype):
    """(Tq, Tk) additive mask: 0 where query i may see key j (j <= i + Tk - Tq), -inf elsewhere.

    Adding it is one pass over the scores, cheaper than boolean indexing. It is cached because
    every layer and step reuses the same few: one per chunk of queries (T / QUERY_CHUNK on the
    CPU), so maxsize must be at least that count (64 chunks: T up to 4096, in one dtype).
    """
    future = xp.triu(xp.ones((Tq, Tk), dtype=bool), k=Tk - Tq + 1)
    return xp.where(future, -xp.inf, 0).astype(dtype)


class ScaledDotProductAttention(Function):
    """y = softmax(q k^T / sqrt(hs) + mask) v for q (B, nh, Tq, hs), k and v (B, nh, Tk, hs).

    With causal=True, query i may look at keys j <= i + (Tk - Tq): its own position and the
    past (Tk > Tq when earlier keys come from a cache). With dropout p > 0 the weights are
    dropped as in GPT-2: y = (att * keep) @ v, keep = Bernoulli(1 - p) / (1 - p).
    Forward keeps att (B, nh, Tq, Tk). Backward, with attd = att * keep (att if p = 0):
        dv = attd^T @ dy
        datt = (dy @ v^T) * keep
        ds = att * (datt - sum_j(datt * att))     (the softmax backward; masked att are 0)
        dq = ds @ k / sqrt(hs),   dk = ds^T @ q / sqrt(hs)

    On the CPU, causal attention over long sequences runs in chunks of QUERY_CHUNK queries: a
    chunk sees no key after its last query, so the scores there (all masked) are never
    computed. At T = 512 that skips 44% of the (T, T) scores; dk and dv add up each chunk's
    part. Dropout then draws one mask per chunk, so the same seed gives other masks than on a
    GPU, where attention runs in one piece (chunks would cost kernel launches there, and have
    not been measured).
    """

    def forward(self, q, k, v, causal=True, dropout=0.0, rng=None):
        y = array_module(q).empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)  # (B, nh, Tq, hs)
        self._attend(q, k, v, y, causal, dropout, rng)
        return y

    def backward(self, dy):
        xp = array_module(dy)
        dq, dk, dv = xp.empty_like(self.q), xp.empty_like(self.k), xp.empty_like(self.v)
        self._attend_backward(dy, dq, dk, dv)
        return dq, dk, dv

    def _attend(self, q, k, v, y, causal, dropout, rng):
        """The forward pass, writing the output into y (which may be a strided view). Keeps
        for the backward: q, k, v, the scale, the chunks, and per chunk att and keep."""
        xp = array_module(q)
        B, nh, Tq, hs = q.shape
        self.scale = q.dtype.type(1.0 / math.sqrt(hs))
        self.q, self.k, self.v = q, k, v
        self.chunks = _query_chunks(Tq, k.shape[-2], causal and device_of(q) == "cpu")
        self.att, self.keep = [], []  # per chunk, (B, nh, rows, keys) each; keep None without dropout
        for start, stop, keys in self.chunks:
            rows = stop - start
            att = xp.empty((B, nh, rows, keys), dtype=q.dtype)  # (B, nh, rows, keys)
            keep = _keep_mask(rng, att, dropout) if dropout > 0 else None  # (B, nh, rows, keys)
            # a single query is the newest position and sees every key: its mask would be all
            # zeros, and (the keys grow by one at each KV-cached token) a new entry in the cache
            mask = _causal_mask(xp, rows, keys, q.dtype) if causal and rows > 1 else None  # (rows, keys)
            _attention_forward(q[..., start:stop, :],  # (B, nh, rows, hs)
                               k[..., :keys, :], v[..., :keys, :],  # (B, nh, keys, hs) each
                               att, y[..., start:stop, :], keep, self.scale, mask)
            self.att.append(att)
            self.keep.append(keep)

    def _attend_backward(self, dy, dq, dk, dv):
        """The backward pass, writing into dq, dk, dv (which may be strided views). Each chunk
        writes its own rows of dq. The last chunk sees every key, so it runs first and writes
        all of dk and dv; the chunks before it see a prefix of the keys and add to it."""
        last = len(self.chunks) - 1
        for i in range(last, -1, -1):
            start, stop, keys = self.chunks[i]
            _attention_backward(self.q[..., start:stop, :], self.k[..., :keys, :], self.v[..., :keys, :],
                                self.att[i], self.keep[i], dy[..., start:stop, :],
                                dq[..., start:stop, :], dk[..., :keys, :], dv[..., :keys, :], add=i < last)
        dq *= self.scale  # the scores were (q k^T) / sqrt(hs): the same factor on both gradients
        dk *= self.scale


QUERY_CHUNK = 64  # queries per chunk of causal attention on the CPU (see ScaledDotProductAttention)


def _query_chunks(Tq: int, Tk: int, chunked: bool) -> list[tuple[int, int, int]]:
    """(start, stop, keys) for each chunk q[start:stop] of the queries, or one chunk for all.
    Query i sees keys j <= i + Tk - Tq, so a chunk's last query, stop - 1, sees the first
    stop + Tk - Tq keys."""
    if not chunked or Tq <= QUERY_CHUNK:
        return [(0, Tq, Tk)]
    chunks = []
    for start in range(0, Tq, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, Tq)
        chunks.append((start, stop, stop + Tk - Tq))
    return chunks


def _attention_forward(q, k, v, att, y, keep, scale, mask):
    """Attention forward for queries q against the keys they see: fills att (B, nh, Tq, Tk)
    and y (B, nh, Tq, hs), Tq and Tk being a chunk's rows and keys."""
    xp = array_module(q)
    xp.matmul(q * scale, k.swapaxes(-1, -2), out=att)  # (B, nh, Tq, hs) @ (B, nh, hs, Tk) -> (B, nh, Tq, Tk)
    overall_max = _overall_max_if_narrow(att)  # taken before the mask: its -inf would widen the range
    if overall_max is not None:  # one pass shifts by it and adds the mask (-inf on the future: exp gives 0)
        att += (-overall_max) if mask is None else (mask - overall_max)
    else:  # a wide range: the max of each row, over the keys its query sees
        if mask is not None:
            att += mask
        att -= att.max(axis=-1, keepdims=True)
    xp.exp(att, out=att)
    att /= _row_sum(att)
    xp.matmul(att if keep is None else att * keep, v, out=y)  # (B, nh, Tq, Tk) @ (B, nh, Tk, hs) -> (B, nh, Tq, hs)


def _attention_backward(q, k, v, att, keep, dy, dq, dk, dv, *, add):
    """Attention backward: fills dq (B, nh, Tq, hs), and dk, dv (B, nh, Tk, hs) from dy
    (B, nh, Tq, hs); with add=True, adds to dk and dv instead (another chunk wrote them).
    dq and dk come out without the forward's 1/sqrt(hs), which the caller applies once."""
    attd = att if keep is None else att * keep  # (B, nh, Tq, Tk): the weights that multiplied v
    _matmul_into(attd.swapaxes(-1, -2), dy, dv, add)  # (B, nh, Tk, Tq) @ (B, nh, Tq, hs) -> (B, nh, Tk, hs)
    datt = dy @ v.swapaxes(-1, -2)  # (B, nh, Tq, hs) @ (B, nh, hs, Tk) -> (B, nh, Tq, Tk)
    if keep is not None:
        datt *= keep
    ds = datt  # ds = att * (datt - rowsum(datt * att)), in datt's buffer
    ds -= _row_sum(datt * att)  # (B, nh, Tq, 1)
    ds *= att
    array_module(q).matmul(ds, k, out=dq)  # (B, nh, Tq, Tk) @ (B, nh, Tk, hs) -> (B, nh, Tq, hs)
    _matmul_into(ds.swapaxes(-1, -2), q, dk, add)  # (B, nh, Tk, Tq) @ (B, nh, Tq, hs) -> (B, nh, Tk, hs)


def _matmul_into(a, b, out, add):
    """out = a @ b, or out += a @ b when add (another chunk already wrote part of out, and
    matmul's out= cannot accumulate)."""
    if add:
        out += a @ b
    else:
        array_module(a).matmul(a, b, out=out)


class SelfAttention(ScaledDotProductAttention):
    """Multi-head self-attention on a fused projection: qkv (B, T, 3C) -> y (B, T, C).

    The same attention as ScaledDotProductAttention, with the split into heads and the merge
    back done as array views instead of graph ops:
        q, k, v = qkv viewed as (B, T, 3, nh, hs) -> (3, B, nh, T, hs)
        y (B, T, C) viewed as (B, T, nh, hs) -> (B, nh, T, hs) receives attention(q, k, v)
    As separate graph ops, each of the three slices of qkv would allocate a full (B, T, 3C)
    gradient in its backward; here dq, dk, dv are written straight into one (B, T, 3C) array.
    """

    def forward(self, qkv, n_head, causal=True, dropout=0.0, rng=None):
        xp = array_module(qkv)
        B, T, C3 = qkv.shape
        self.n_head, hs = n_head, C3 // 3 // n_head
        heads = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        y = xp.empty((B, T, n_head, hs), dtype=qkv.dtype)  # heads side by side, as (B, T, C)
        self._attend(heads[0], heads[1], heads[2], y.transpose(0, 2, 1, 3), causal, dropout, rng)
        return y.reshape(B, T, C3 // 3)

    def backward(self, dy):
        xp = array_module(dy)
        B, T, C = dy.shape
        nh, hs = self.n_head, C // self.n_head
        dqkv = xp.empty((B, T, 3, nh, hs), dtype=dy.dtype)
        dheads = dqkv.transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs) view of dqkv
        dy_heads = dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        self._attend_backward(dy_heads, dheads[0], dheads[1], dheads[2])
        return (dqkv.reshape(B, T, 3 * C),)
