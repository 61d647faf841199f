"""Tensor: an array plus the graph links that reverse-mode autodiff needs.

A tensor made by an op remembers that op (`_ctx`, a Function holding its input tensors).
`backward()` sorts the graph so that every tensor comes before the tensors it was made
from, then walks it once, calling each op's backward and adding the results into its
inputs' gradients. Only leaf tensors (made by the user, such as parameters) keep `.grad`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import backend
from .function import Function, broadcast_shape, run_op, unbroadcast


class Tensor:
    """An n-dimensional array (NumPy or CuPy) that can record the ops applied to it.

    Tensor(data, requires_grad=False, dtype=None): a floating array keeps its dtype (float64
    stays float64, as gradient checks need); Python numbers and lists become float32; integer
    arrays stay integer (token ids) but cannot require a gradient. An array of the right dtype
    is used as it is, not copied (as torch.from_numpy): an optimizer that updates .data in
    place, such as SGD, changes the caller's array too.
    """

    __array_priority__ = 1000  # so that `ndarray * Tensor` calls Tensor.__rmul__

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None):
        if isinstance(data, Tensor):
            data = data.data
        xp = backend.array_module(data)
        if dtype is not None:
            data = xp.asarray(data, dtype=dtype)
        elif isinstance(data, (xp.ndarray, np.generic)):
            data = xp.asarray(data)
        else:  # Python numbers and (nested) lists
            data = np.asarray(data, dtype=np.float32)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(
                f"only floating-point tensors can require a gradient, got dtype {data.dtype}"
            )
        self.data = data
        self.requires_grad = requires_grad
        self.grad: Any = None
        self._ctx: Function | None = None  # the op that made this tensor (None for a leaf)
        self._freed = False  # set once backward has released the op that made this tensor

    @classmethod
    def _from_op(cls, data: Any, ctx: Function) -> Tensor:
        out = cls(data)
        out.requires_grad = True
        out._ctx = ctx
        return out

    # ---- array-like attributes -------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    device = property(lambda self: backend.device_of(self.data))

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def item(self) -> float:
        return self.data.item()

    def __float__(self) -> float:
        return float(self.item())

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """np.asarray(t) and NumPy functions called on t: the data as a NumPy array. Refused for
        a tensor that requires a gradient, which would silently leave the graph (t.numpy()
        says so openly)."""
        if self.requires_grad:
            raise TypeError("a tensor that requires grad does not turn into a NumPy array implicitly: "
                            "use t.numpy() (outside the graph) or nanograd ops")
        array = self.numpy() if dtype is None else self.numpy().astype(dtype, copy=False)
        return array.copy() if copy else array

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU if needed)."""
        return backend.to_numpy(self.data)

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def to(self, device: str) -> Tensor:
        """A copy on 'cpu' or 'cuda' (self if it is already there), as a new leaf: no gradient
        flows back through it to self. (Module.to moves parameters in place instead.)"""
        if backend.check_device(device) == self.device:
            return self
        return Tensor(backend.to_device(self.data, device), requires_grad=self.requires_grad)

    def zero_grad(self) -> None:
        self.grad = None

    # ---- reverse-mode autodiff ---------------------------------------------------------------
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) * grad into the .grad of every leaf that requires one.

        grad defaults to 1 for a scalar. The graph's saved arrays are freed afterwards unless
        retain_graph=True (needed to call backward through the same graph again).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph)")
        xp = backend.array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a grad argument needs a scalar, got shape {self.shape}; "
                    "reduce it first (e.g. .sum()) or pass grad="
                )
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad of shape {grad.shape} for tensor {self.shape}")

        grads = {id(self): grad}  # gradients waiting to be passed down, by tensor
        for node in self._topological_order():
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._freed:
                raise RuntimeError(
                    "backward() through a graph that was already freed: pass retain_graph=True "
                    "to the first backward() to call it twice"
                )
            if node._ctx is None:  # a leaf: keep its gradient (a copy: g may be shared)
                if node.grad is None:
                    node.grad = g.astype(node.dtype, copy=True)
                else:  # an op handed back a wider dtype (float64 for a float32 leaf): keep the leaf's
                    node.grad = (node.grad + g).astype(node.dtype, copy=False)
                continue
            ctx = node._ctx
            parent_grads = run_op(ctx.backward, g)
            if len(parent_grads) != len(ctx.parents):  # (zip would drop the extra ones unseen)
                raise ValueError(f"{type(ctx).__name__}.backward returned {len(parent_grads)} gradients "
                                 f"for {len(ctx.parents)} inputs")
            for parent, pg in zip(ctx.parents, parent_grads):
                if pg is None or not parent.requires_grad:
                    continue
                pg = unbroadcast(pg, parent.shape)
                if pg.shape != parent.shape:
                    raise ValueError(f"{type(ctx).__name__}.backward returned a gradient that sums to shape "
                                     f"{pg.shape} for an input of shape {parent.shape}")
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg
            if not retain_graph:
                node._ctx, node._freed = None, True

    def _topological_order(self) -> list[Tensor]:
        """Every tensor reachable from self, each before the tensors it was made from.

        Iterative depth-first search (a recursive one hits Python's recursion limit on deep
        graphs): a node is emitted after all its inputs, then the list is reversed.
        """
        order: list[Tensor] = []
        visited: set[int] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            node, inputs_done = stack.pop()
            if inputs_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            if node._ctx is not None:
                stack.extend((p, False) for p in node._ctx.parents if p.requires_grad)
        return order[::-1]

    # ---- operators (the ops themselves live in nanograd/ops) ---------------------------------
    def _lift(self, other: Any) -> Tensor:
        """Python numbers take this tensor's dtype, so float32 stays float32; so do NumPy scalars
        with a floating tensor (`x / mask.sum()` divides by an np.int64, which NumPy would let
        turn float32 into float64). An integer tensor times a Python float is float, not
        truncated; with a NumPy scalar it follows NumPy's promotion (nothing wraps round)."""
        if isinstance(other, Tensor):
            return other
        xp = backend.array_module(self.data)
        floating = xp.issubdtype(self.dtype, xp.floating)
        if isinstance(other, (int, float)) or (floating and isinstance(other, (np.integer, np.floating))):
            keeps_dtype = floating or isinstance(other, int)
            return Tensor(xp.asarray(other, dtype=self.dtype if keeps_dtype else xp.float32))
        return Tensor(xp.asarray(other))

    def _binary(self, op: type[Function], other: Any, name: str, reverse: bool = False) -> Tensor:
        a, b = (self._lift(other), self) if reverse else (self, self._lift(other))
        broadcast_shape(a.shape, b.shape, name)
        return op.apply(a, b)

    def __add__(self, other: Any) -> Tensor:
        return self._binary(ops.Add, other, "add")

    def __radd__(self, other: Any) -> Tensor:
        return self._binary(ops.Add, other, "add", reverse=True)

    def __sub__(self, other: Any) -> Tensor:
        return self._binary(ops.Sub, other, "sub")

    def __rsub__(self, other: Any) -> Tensor:
        return self._binary(ops.Sub, other, "sub", reverse=True)

    def __mul__(self, other: Any) -> Tensor:
        return self._binary(ops.Mul, other, "mul")

    def __rmul__(self, other: Any) -> Tensor:
        return self._binary(ops.Mul, other, "mul", reverse=True)

    def __truediv__(self, other: Any) -> Tensor:
        return self._binary(ops.Div, other, "div")

    def __rtruediv__(self, other: Any) -> Tensor:
        return self._binary(ops.Div, other, "div", reverse=True)

    def __matmul__(self, other: Any) -> Tensor:
        return ops.MatMul.apply(self, self._lift(other))

    def __rmatmul__(self, other: Any) -> Tensor:
        return ops.MatMul.apply(self._lift(other), self)

    def __neg__(self) -> Tensor:
        return ops.Neg.apply(self)

    def __pow__(self, exponent: float) -> Tensor:
        if not isinstance(exponent, (int, float)):
            raise TypeError("Tensor ** exponent: the exponent must be a Python number")
        return ops.Pow.apply(self, exponent=exponent)

    def __getitem__(self, index: Any) -> Tensor:
        parts = index if isinstance(index, tuple) else (index,)
        parts = tuple(p.data if isinstance(p, Tensor) else p for p in parts)
        return ops.GetItem.apply(self, index=parts if isinstance(index, tuple) else parts[0])

    # ---- elementwise functions ---------------------------------------------------------------
    def exp(self) -> Tensor:
        return ops.Exp.apply(self)

    def log(self) -> Tensor:
        return ops.Log.apply(self)

    def tanh(self) -> Tensor:
        return ops.Tanh.apply(self)

    def relu(self) -> Tensor:
        return ops.Relu.apply(self)

    def sqrt(self) -> Tensor:
        return ops.Sqrt.apply(self)

    # ---- reductions --------------------------------------------------------------------------
    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        total = self.sum(axis=axis, keepdims=keepdims)  # (NumPy checks the axes)
        count = self.data.size // total.data.size if total.data.size else 1  # numbers per mean
        return total * (1.0 / count if count else math.nan)  # the mean of nothing is nan, as in NumPy

    def max(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return ops.Max.apply(self, axis=axis, keepdims=keepdims)

    # ---- shape -------------------------------------------------------------------------------
    def reshape(self, *shape: int) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ops.Reshape.apply(self, shape=shape)

    def view(self, *shape: int) -> Tensor:
        return self.reshape(*shape)

    def permute(self, *axes: int) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return ops.Permute.apply(self, axes=axes)

    def transpose(self, a: int = -2, b: int = -1) -> Tensor:
        """Swap two axes (the last two by default)."""
        axes = list(range(self.ndim))
        try:
            axes[a], axes[b] = axes[b], axes[a]
        except IndexError:
            raise ValueError(f"transpose: a tensor of shape {self.shape} has no axes {a} and {b}") from None
        return self.permute(*axes)

    @property
    def T(self) -> Tensor:
        """The last two axes swapped (a matrix's transpose; PyTorch's .mT for more axes); a 0-d or
        1-D tensor is its own transpose."""
        return self.transpose() if self.ndim >= 2 else self


Function.tensor_class = Tensor
from . import ops  # noqa: E402  (ops import Function, which this module also uses)
