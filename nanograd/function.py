"""The base class of every differentiable op, and the one place that undoes broadcasting.

An op is a subclass of `Function` with two methods on raw arrays (NumPy or CuPy):

    forward(self, *arrays, **options) -> array     saves on `self` what backward needs
    backward(self, grad) -> tuple of arrays         dL/d(input) for each input, None if unneeded

`Function.apply` runs forward and, when a gradient is wanted, records the op in the graph.
Backward may return a gradient in the broadcast (output) shape; the engine sums it back to
the input's shape with `unbroadcast`, so no op has to repeat that logic.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import backend

if TYPE_CHECKING:
    from .tensor import Tensor

_grad_enabled = True


class no_grad:
    """Context manager (and decorator) in which no graph is recorded: for evaluation and sampling.

    `with no_grad():`, `@no_grad()` and `@no_grad` all work.
    """

    def __new__(cls, fn: Any = None):
        if fn is not None:  # @no_grad without parentheses: fn is the function it decorates
            return cls()(fn)
        return super().__new__(cls)

    def __init__(self) -> None:
        self._previous: list[bool] = []  # a stack, so one instance can be entered again inside itself

    def __enter__(self) -> None:
        global _grad_enabled
        self._previous.append(_grad_enabled)
        _grad_enabled = False

    def __exit__(self, *exc: object) -> None:
        global _grad_enabled
        _grad_enabled = self._previous.pop()

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


def is_grad_enabled() -> bool:
    return _grad_enabled


_op_seconds: collections.Counter[str] | None = None  # filled inside profile()


@contextlib.contextmanager
def profile() -> Iterator[collections.Counter[str]]:
    """Time every op that runs inside this block. Yields a Counter of seconds by "Op.forward"
    and "Op.backward", summed over calls:

        with nanograd.profile() as seconds:
            loss = model(x, y)[1]
            loss.backward()
        print(seconds.most_common(5))

    What it does not see: the engine's own work between ops (adding up gradients, copying
    them into the leaves), and ops in other processes (the other MPI ranks). A profile
    opened inside another takes its ops away from the outer one. One profile is active per
    process, for every thread. On a GPU each op first waits for the work queued before it,
    then for its own kernels, so that the times are its work's rather than its launch's (and
    the run is slower while it is profiled)."""
    global _op_seconds
    previous, _op_seconds = _op_seconds, collections.Counter()
    try:
        yield _op_seconds
    finally:
        _op_seconds = previous


def run_op(method: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """method(*args, **kwargs), an op's forward or backward. The engine calls every op through
    here, so that profile() sees them all while the rest of the time nothing pays but one
    check."""
    if _op_seconds is None:
        return method(*args, **kwargs)
    backend.wait_for(args)  # on a GPU, earlier work must not count as this op's
    start = time.perf_counter()
    result = method(*args, **kwargs)
    backend.wait_for(result)
    _op_seconds[f"{type(method.__self__).__name__}.{method.__name__}"] += time.perf_counter() - start
    return result


class Function:
    """One differentiable op. Subclasses define forward and backward; see the module docstring."""

    parents: tuple[Tensor, ...] = ()
    needs_grad: tuple[bool, ...] = ()
    tensor_class: type[Tensor]  # set by tensor.py, which imports this module (not the reverse)

    def forward(self, *arrays: Any, **options: Any) -> Any:
        raise NotImplementedError

    def backward(self, grad: Any) -> tuple[Any, ...]:
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs: Tensor, **options: Any) -> Tensor:
        """Run the op on tensors; link the result into the graph if any input needs a gradient."""
        fn = cls()
        fn.needs_grad = tuple(t.requires_grad for t in inputs)
        out = run_op(fn.forward, *(t.data for t in inputs), **options)
        if _grad_enabled and any(fn.needs_grad):
            fn.parents = inputs
            return cls.tensor_class._from_op(out, fn)
        return cls.tensor_class(out)


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...], op: str) -> tuple[int, ...]:
    """NumPy's broadcasting rule, with an error that names both shapes."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        m = a[-i] if i <= len(a) else 1
        n = b[-i] if i <= len(b) else 1
        if m != n and m != 1 and n != 1:
            raise ValueError(f"{op}: shapes {a} and {b} cannot be broadcast together")
        out.append(max(m, n) if m != 1 and n != 1 else m * n)  # a size-1 axis takes the other's size (0 too)
    return tuple(reversed(out))


def unbroadcast(grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum a gradient over the axes that broadcasting added or stretched, back to `shape`.

    If the forward pass broadcast x of shape (3, 1) against (2, 3, 4), every element of x was
    used 2 * 4 times, so its gradient is the sum of the output gradient over those copies.
    """
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    # the axes where the input had size 1 and the output more (counted in grad's axes)
    stretched = tuple(lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    if not stretched:  # only added leading axes: a bias (C,) added to (B, T, C)
        return backend.sum_leading_axes(grad, lead)
    return grad.sum(axis=tuple(range(lead)) + stretched, keepdims=True).reshape(shape)
