"""Elementwise ops. Inputs may broadcast; the engine reduces each gradient to its input's shape.

Each backward multiplies the incoming gradient g = dL/dz by the local derivative dz/dx.
"""

from __future__ import annotations

from ..backend import array_module
from ..function import Function


class Add(Function):
    """z = a + b.   dL/da = g,  dL/db = g."""

    def forward(self, a, b):
        return a + b

    def backward(self, g):
        return g, g


class Sub(Function):
    """z = a - b.   dL/da = g,  dL/db = -g."""

    def forward(self, a, b):
        return a - b

    def backward(self, g):
        return g, -g if self.needs_grad[1] else None


class Mul(Function):
    """z = a * b.   dL/da = g * b,  dL/db = g * a."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        return (g * self.b if self.needs_grad[0] else None,
                g * self.a if self.needs_grad[1] else None)


class Div(Function):
    """z = a / b.   dL/da = g / b,  dL/db = -g * a / b^2 = -g * z / b."""

    def forward(self, a, b):
        self.b = b
        self.z = a / b
        return self.z

    def backward(self, g):
        da = g / self.b if self.needs_grad[0] else None
        db = -g * self.z / self.b if self.needs_grad[1] else None
        return da, db


class Neg(Function):
    """z = -x.   dL/dx = -g."""

    def forward(self, x):
        return -x

    def backward(self, g):
        return (-g,)


class Pow(Function):
    """z = x ** p for a constant number p.   dL/dx = g * p * x^(p-1)   (0 for p = 0: z is constant)."""

    def forward(self, x, exponent):
        self.x, self.p = x, exponent
        return x**exponent

    def backward(self, g):
        if self.p == 0:
            return (array_module(g).zeros_like(self.x),)
        return (g * self.p * self.x ** (self.p - 1),)


class Exp(Function):
    """z = exp(x).   dL/dx = g * z   (exp is its own derivative, so reuse the output)."""

    def forward(self, x):
        self.z = array_module(x).exp(x)
        return self.z

    def backward(self, g):
        return (g * self.z,)


class Log(Function):
    """z = log(x).   dL/dx = g / x."""

    def forward(self, x):
        self.x = x
        return array_module(x).log(x)

    def backward(self, g):
        return (g / self.x,)


class Tanh(Function):
    """z = tanh(x).   dL/dx = g * (1 - z^2)."""

    def forward(self, x):
        self.z = array_module(x).tanh(x)
        return self.z

    def backward(self, g):
        return (g * (1 - self.z * self.z),)


class Sqrt(Function):
    """z = sqrt(x).   dL/dx = g / (2 z)."""

    def forward(self, x):
        self.z = array_module(x).sqrt(x)
        return self.z

    def backward(self, g):
        return (g / (2 * self.z),)


class Relu(Function):
    """z = max(x, 0).   dL/dx = g where x > 0, else 0."""

    def forward(self, x):
        self.positive = x > 0
        return array_module(x).maximum(x, x.dtype.type(0))  # (not x * positive: -inf * 0 is nan)

    def backward(self, g):
        return (g * self.positive,)


class Where(Function):
    """z = a where cond else b (cond: a boolean array, no gradient).

    dL/da = g where cond, else 0;   dL/db = g where not cond, else 0.
    """

    def forward(self, a, b, cond):
        self.cond = cond
        return array_module(a).where(cond, a, b)

    def backward(self, g):
        xp = array_module(g)
        zero = xp.zeros((), dtype=g.dtype)
        da = xp.where(self.cond, g, zero) if self.needs_grad[0] else None
        db = xp.where(self.cond, zero, g) if self.needs_grad[1] else None
        return da, db
