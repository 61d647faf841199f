"""Ops that move elements without changing them: reshape, permute, indexing, concat, stack.

Their backward moves the gradient back to where each element came from.
"""

from __future__ import annotations

from ..backend import array_module, index_add
from ..function import Function


class Reshape(Function):
    """z = x viewed with a new shape.   dL/dx = g reshaped back to x's shape."""

    def forward(self, x, shape):
        self.in_shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view shape {x.shape} as {tuple(shape)}") from None

    def backward(self, g):
        return (g.reshape(self.in_shape),)


class Permute(Function):
    """z = x with its axes reordered: z.shape[i] = x.shape[axes[i]].

    dL/dx = g with the inverse permutation (axes sorted back into place).
    """

    def forward(self, x, axes):
        if sorted(a % x.ndim for a in axes) != list(range(x.ndim)):
            raise ValueError(f"permute: {tuple(axes)} is not a permutation of the {x.ndim} axes")
        self.axes = axes
        return x.transpose(axes)

    def backward(self, g):
        inverse = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inverse[a % len(self.axes)] = i
        return (g.transpose(inverse),)


def _has_array_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(not isinstance(p, (int, slice, type(None), type(Ellipsis))) for p in parts)


class GetItem(Function):
    """z = x[index], for slices, integers and integer arrays.

    dL/dx = zeros with g added at the indexed positions. An integer-array index may pick the
    same element more than once, and each pick adds its share: that case needs an
    unbuffered add (index_add); plain slices never repeat, so assignment is enough.
    """

    def forward(self, x, index):
        if isinstance(index, list):
            index = array_module(x).asarray(index)
        self.in_shape, self.dtype, self.index = x.shape, x.dtype, index
        return x[index]

    def backward(self, g):
        dx = array_module(g).zeros(self.in_shape, dtype=self.dtype)
        if _has_array_index(self.index):
            index_add(dx, self.index, g)
        else:
            dx[self.index] = g
        return (dx,)


class Concat(Function):
    """z = the inputs joined along `axis`.   dL/dx_i = the slice of g that x_i filled."""

    def forward(self, *xs, axis=0):
        self.axis = axis
        self.splits = [x.shape[axis] for x in xs]
        return array_module(*xs).concatenate(xs, axis=axis)

    def backward(self, g):
        xp = array_module(g)
        bounds = [sum(self.splits[: i + 1]) for i in range(len(self.splits) - 1)]
        return tuple(xp.split(g, bounds, axis=self.axis))


class Stack(Function):
    """z = the inputs stacked along a new `axis`.   dL/dx_i = g taken at index i of that axis."""

    def forward(self, *xs, axis=0):
        self.axis = axis
        return array_module(*xs).stack(xs, axis=axis)

    def backward(self, g):
        xp = array_module(g)
        return tuple(xp.take(g, i, axis=self.axis) for i in range(g.shape[self.axis]))
