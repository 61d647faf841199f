"""Module: a container of parameters and sub-modules, found through its attributes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A tensor that a Module trains: always requires a gradient; float32 unless given a dtype."""

    def __init__(self, data: Any, dtype: Any = None):
        super().__init__(data, requires_grad=True, dtype=dtype)


class Module:
    """Base class of layers and models.

    Parameters and sub-modules are ordinary attributes; `named_parameters()` finds them by
    walking the attributes in the order they were set, giving dotted names such as
    'transformer.h.0.attn.c_attn.weight'. A parameter shared by two modules (tied weights) is
    listed once, under the first name that reaches it.
    """

    training: bool = True

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def _own_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield name, value

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        stack: list[tuple[str, Module]] = [("", self)]
        while stack:  # depth first, in attribute order
            prefix, module = stack.pop(0)
            for name, p in module._own_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield prefix + name, p
            stack[:0] = [(f"{prefix}{name}.", child) for name, child in module.named_children()]

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def modules(self) -> Iterator[Module]:
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, device: str) -> Module:
        """Move every parameter (and gradient) to 'cpu' or 'cuda', in place."""
        device = backend.check_device(device)
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            if p.grad is not None:
                p.grad = backend.to_device(p.grad, device)
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter as a NumPy array (a copy), by dotted name."""
        return {name: p.numpy().copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays into the parameters, in place; names and shapes must match exactly."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, p in params.items():
            value = state[name]
            if isinstance(value, Tensor):  # e.g. from dict(other.named_parameters())
                value = value.data
            elif not hasattr(value, "shape"):  # nested lists
                value = np.asarray(value, dtype=p.dtype)
            if tuple(value.shape) != p.shape:
                raise ValueError(
                    f"load_state_dict: {name} has shape {tuple(value.shape)} in the state, "
                    f"{p.shape} in the model"
                )
            # write into the existing array: an optimizer may hold views of it
            p.data[...] = backend.to_device(np.asarray(value) if p.device == "cpu" else value, p.device)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError
