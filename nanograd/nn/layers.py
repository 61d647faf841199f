"""The standard layers: Linear, Embedding, LayerNorm, Dropout, and two containers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from .. import backend
from .. import functional as F
from ..tensor import Tensor
from .module import Module, Parameter


def _uniform(shape: tuple[int, ...], bound: float) -> Parameter:
    rng = backend.generator("cpu")
    return Parameter(rng.uniform(-bound, bound, size=shape).astype("float32"))


class Linear(Module):
    """y = x @ W + b, with W of shape (in, out): (..., in) -> (..., out).

    W is stored (in, out), not PyTorch's (out, in), so the forward is a plain x @ W (and GPT-2
    checkpoints, which store Conv1D weights this way, load without transposing). Initialised
    U(-1/sqrt(in), 1/sqrt(in)) like PyTorch; GPT re-initialises its own.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        bound = 1 / math.sqrt(in_features)
        self.weight = _uniform((in_features, out_features), bound)
        self.bias = _uniform((out_features,), bound) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y


class Embedding(Module):
    """A table of num_embeddings vectors of size dim: ids (...) -> vectors (..., dim)."""

    def __init__(self, num_embeddings: int, dim: int):
        rng = backend.generator("cpu")
        self.weight = Parameter(rng.standard_normal((num_embeddings, dim)).astype("float32"))

    def forward(self, idx: Any) -> Tensor:
        return F.embedding(idx, self.weight)


class LayerNorm(Module):
    """Normalise the last axis, then scale (weight, ones) and shift (bias, zeros)."""

    def __init__(self, dim: int, bias: bool = True, eps: float = 1e-5):
        self.weight = Parameter([1.0] * dim)
        self.bias = Parameter([0.0] * dim) if bias else None
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    def __init__(self, p: float = 0.5):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)


class ModuleList(Module):
    """A list of modules, named '0', '1', ... in parameter names."""

    def __init__(self, modules: Iterable[Module] = ()):
        self._modules = list(modules)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for i, m in enumerate(self._modules):
            yield str(i), m

    def __getitem__(self, i: int) -> Module:
        return self._modules[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules)

    def append(self, module: Module) -> None:
        self._modules.append(module)


class Sequential(ModuleList):
    """Modules applied one after another: Sequential(a, b)(x) == b(a(x))."""

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x: Any) -> Any:
        for m in self._modules:
            x = m(x)
        return x
