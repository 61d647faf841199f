"""Reductions: sum and max over some axes (mean is sum times 1/count, in Tensor.mean)."""

from __future__ import annotations

import numbers

from ..backend import array_module
from ..function import Function


def _keep_reduced_axes(g, in_shape, axis, keepdims):
    """Put back the reduced axes as size 1, so g broadcasts against the input (N-d, keepdims)."""
    if keepdims:
        return g
    if axis is None:
        return g.reshape((1,) * len(in_shape))
    axes = (axis,) if isinstance(axis, numbers.Integral) else axis  # (a NumPy integer too)
    axes = sorted(a % len(in_shape) for a in axes)
    shape = list(g.shape)
    for a in axes:
        shape.insert(a, 1)
    return g.reshape(shape)


class Sum(Function):
    """z = sum of x over `axis`.   dL/dx = g copied along the summed axes (every x_i adds 1 * x_i)."""

    def forward(self, x, axis=None, keepdims=False):
        self.in_shape, self.axis, self.keepdims = x.shape, axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, g):
        g = _keep_reduced_axes(g, self.in_shape, self.axis, self.keepdims)
        return (array_module(g).broadcast_to(g, self.in_shape),)


class Max(Function):
    """z = max of x over `axis`.

    dL/dx = g at the position of the maximum, 0 elsewhere; ties share g equally (so the
    gradient is the average of the tied subgradients, as PyTorch's amax does).
    """

    def forward(self, x, axis=None, keepdims=False):
        self.x, self.axis, self.keepdims = x, axis, keepdims
        return x.max(axis=axis, keepdims=keepdims)

    def backward(self, g):
        x = self.x
        z = x.max(axis=self.axis, keepdims=True)
        is_max = x == z
        share = is_max / is_max.sum(axis=self.axis, keepdims=True)
        return (share.astype(x.dtype) * _keep_reduced_axes(g, x.shape, self.axis, self.keepdims),)
