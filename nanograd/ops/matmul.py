"""Matrix product with batching: (..., n, k) @ (..., k, m) -> (..., n, m)."""

from __future__ import annotations

import math

from ..function import Function, broadcast_shape


def _swap_last(x):
    return x.swapaxes(-1, -2)


def _rows(x):
    """(..., k) -> (N, k): all leading axes as rows of one matrix, so BLAS runs one big GEMM
    (NumPy would otherwise loop over the leading axes, one small product each)."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (not -1: k may be 0)


class MatMul(Function):
    """z = a @ b.   dL/da = g @ b^T,   dL/db = a^T @ g   (^T swaps the last two axes).

    Shapes: a (..., n, k), b (..., k, m), g (..., n, m). A 1-D operand is treated as a row
    (a) or a column (b) vector, as in NumPy. When b is a plain matrix (a Linear weight, k x m)
    and a is batched (B, T, k), dL/db sums over every row of every batch: one
    (k, B*T) @ (B*T, m) product instead of B products and a sum.
    """

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: both operands need at least one axis")
        k_a, k_b = a.shape[-1], b.shape[-2] if b.ndim > 1 else b.shape[0]
        if k_a != k_b:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align ({k_a} != {k_b})")
        if a.ndim > 2 and b.ndim > 2:
            try:
                broadcast_shape(a.shape[:-2], b.shape[:-2], "matmul")
            except ValueError:
                raise ValueError(f"matmul: the batch axes of {a.shape} and {b.shape} do not broadcast") from None
        self.a_was_vector, self.b_was_vector = a.ndim == 1, b.ndim == 1
        self.a = a[None, :] if a.ndim == 1 else a  # (n, k) with n = 1
        self.b = b[:, None] if b.ndim == 1 else b  # (k, m) with m = 1
        if a.ndim > 2 and b.ndim == 2:  # (B, T, k) @ (k, m): one (B*T, k) @ (k, m) product
            return (_rows(a) @ b).reshape(a.shape[:-1] + b.shape[-1:])
        return a @ b

    def backward(self, g):
        a, b = self.a, self.b
        if self.a_was_vector and self.b_was_vector:
            g = g.reshape(1, 1)  # a dot product: its scalar as a 1 x 1 matrix
        elif self.a_was_vector:
            g = g[..., None, :]  # put back the n = 1 axis
        elif self.b_was_vector:
            g = g[..., None]  # put back the m = 1 axis
        da = db = None
        if self.needs_grad[0]:
            if b.ndim == 2 and g.ndim > 2:  # one (N, m) @ (m, k) product over all rows
                da = (_rows(g) @ b.T).reshape(g.shape[:-1] + b.shape[:1])
            else:
                da = g @ _swap_last(b)  # (..., n, m) @ (..., m, k) -> (..., n, k)
            if self.a_was_vector:
                da = da[..., 0, :]
        if self.needs_grad[1]:
            if b.ndim == 2:  # (k, N) @ (N, m) over all N = rows of all batches
                db = _rows(a).T @ _rows(g)
            else:
                db = _swap_last(a) @ g  # (..., k, n) @ (..., n, m) -> (..., k, m)
            if self.b_was_vector:
                db = db[..., 0]
        return da, db
