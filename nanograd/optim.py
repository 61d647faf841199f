"""Optimizers (SGD, AdamW, Muon), gradient clipping and the cosine learning-rate schedule.

AdamW keeps each parameter group (of one dtype) in flat arrays: the weights, whose views
become the parameters' .data, the two moments, the gathered gradient and a scratch buffer.
One update is then a handful of vectorised array operations over all the weights at once,
instead of a Python loop of small ones per tensor.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable
from typing import Any

from . import backend
from .nn.module import Parameter


def _groups(params: Iterable[Any], defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """Normalise a list of parameters, or of {'params': [...], **options} dicts, to groups."""
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(params[0], dict):
        params = [{"params": params}]
    groups = []
    for group in params:
        group = {**defaults, **group, "params": list(group["params"])}
        for p in group["params"]:
            if not isinstance(p, Parameter) and not getattr(p, "requires_grad", False):
                raise TypeError("optimizer parameters must be tensors that require a gradient")
        groups.append(group)
    return groups


class Optimizer:
    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self.groups = _groups(params, defaults)

    @property
    def params(self) -> list[Parameter]:
        return [p for g in self.groups for p in g["params"]]

    @property
    def lr(self) -> float:
        return self.groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for g in self.groups:
            g["lr"] = value

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


class SGD(Optimizer):
    """p -= lr * v, with v = momentum * v + (g + weight_decay * p)  (v = g without momentum)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.velocity: dict[int, Any] = {}

    def step(self) -> None:
        for group in self.groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + group["weight_decay"] * p.data if group["weight_decay"] else p.grad
                if group["momentum"]:
                    v = self.velocity.get(id(p))
                    v = g.copy() if v is None else group["momentum"] * v + g
                    self.velocity[id(p)] = g = v
                p.data -= group["lr"] * g


class _FlatGroup:
    """One parameter group stored in flat arrays of one length: the weights (`data`, which
    each p.data views), the moments m and v, the gradients gathered at each step (`grad`) and
    a `scratch` buffer."""

    def __init__(self, params: list[Parameter]):
        self.params = params
        xp = backend.array_module(params[0].data)
        self.sizes = [p.size for p in params]
        self.starts = [0, *itertools.accumulate(self.sizes)]  # p_i lies at data[starts[i]:starts[i + 1]]
        self.data = xp.concatenate([p.data.reshape(-1) for p in params])
        self.m, self.v = xp.zeros_like(self.data), xp.zeros_like(self.data)
        self.grad, self.scratch = xp.empty_like(self.data), xp.empty_like(self.data)
        self._view_params()

    def _view_params(self) -> None:
        self.views = [self.data[start:end].reshape(p.shape)
                      for p, start, end in zip(self.params, self.starts, self.starts[1:])]
        for p, view in zip(self.params, self.views):
            p.data = view

    def adopt_replaced_data(self) -> None:
        """A parameter whose .data was replaced (p.data = new array, a custom initialisation)
        no longer views the flat buffer, and the updates would miss it: its new values are
        copied in, and it views the buffer again."""
        for p, view in zip(self.params, self.views):
            if p.data is view:
                continue
            if p.data.shape != view.shape or backend.device_of(p.data) != backend.device_of(view):
                raise ValueError(f"AdamW: a parameter's .data became a {backend.device_of(p.data)} array of shape "
                                 f"{p.data.shape}, where it was {backend.device_of(view)} {view.shape}; "
                                 "make the optimizer after changing the model's device or shapes")
            view[...] = p.data
            p.data = view

    def gather_grads(self) -> None:
        """Every parameter's gradient into `grad` (zeros for a parameter without one)."""
        xp = backend.array_module(self.data)
        xp.concatenate([p.grad.reshape(-1) if p.grad is not None else xp.zeros(n, self.data.dtype)
                        for p, n in zip(self.params, self.sizes)], out=self.grad)

    def slices_without_grad(self) -> list[slice]:
        """Where in the flat buffer the parameters that got no gradient this step lie."""
        return [slice(start, end) for p, start, end in zip(self.params, self.starts, self.starts[1:])
                if p.grad is None]


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019):

        p -= lr * weight_decay * p                       (decay, not part of the gradient)
        m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
        p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    Groups may set their own weight_decay, e.g. 0 for biases and LayerNorm weights (1-D).
    A parameter whose .grad is None is left alone (no decay, no moment update), as in PyTorch.
    One difference from PyTorch: t counts the optimizer's steps, not each parameter's, so a
    parameter that missed steps gets other bias corrections than in PyTorch after them
    (smaller steps after a few missed, larger after many; no parameter of the models here
    ever misses one).
    Create the optimizer after moving the model to its device: it takes over the arrays (and
    takes in new values of a parameter whose .data is replaced later).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        # one flat buffer per group and dtype: joining float32 and float64 would upcast
        self.flat = [(g, _FlatGroup([p for p in g["params"] if p.dtype == dtype]))
                     for g in self.groups for dtype in dict.fromkeys(p.dtype for p in g["params"])]
        self.t = 0

    def step(self) -> None:
        """One update of every parameter that has a gradient: the whole flat buffer of each
        group is updated, then the parameters without a gradient are put back."""
        self.t += 1
        for group, flat in self.flat:
            flat.adopt_replaced_data()
            skipped = [(s, flat.data[s].copy(), flat.m[s].copy(), flat.v[s].copy())
                       for s in flat.slices_without_grad()]
            flat.gather_grads()
            beta1, beta2 = group["betas"]
            # block by block, so that the update's dozen passes find each block still in cache
            update = functools.partial(_adamw_update, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                       wd=group["weight_decay"], t=self.t)
            backend.in_blocks(update, flat.data, flat.m, flat.v, flat.grad, flat.scratch)
            for s, data, m, v in skipped:
                flat.data[s], flat.m[s], flat.v[s] = data, m, v

    def state_dict(self) -> dict[str, Any]:
        """Moments as NumPy arrays and the step count: enough to resume exactly."""
        state: dict[str, Any] = {"t": self.t}
        for i, (_, flat) in enumerate(self.flat):
            state[f"group{i}.m"] = backend.to_numpy(flat.m)
            state[f"group{i}.v"] = backend.to_numpy(flat.v)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        for i, (_, flat) in enumerate(self.flat):
            for name in ("m", "v"):
                value = state[f"group{i}.{name}"]
                if value.shape != flat.m.shape:
                    raise ValueError(f"optimizer state group{i}.{name}: shape {value.shape}, expected {flat.m.shape}")
                getattr(flat, name)[...] = backend.to_device(value, backend.device_of(flat.m))


def _adamw_update(data, m, v, g, scratch, *, lr, beta1, beta2, eps, wd, t) -> None:
    """One AdamW update of matching flat arrays, in place (g is overwritten; scratch is spare)."""
    xp = backend.array_module(data)
    if wd:
        data *= 1 - lr * wd
    m *= beta1
    m += xp.multiply(g, 1 - beta1, out=scratch)  # m = beta1 m + (1 - beta1) g
    v *= beta2
    g *= g
    g *= 1 - beta2
    v += g  # v = beta2 v + (1 - beta2) g^2
    denom = xp.multiply(v, 1 / (1 - beta2**t), out=scratch)
    xp.sqrt(denom, out=denom)
    denom += eps  # sqrt(v / (1 - beta2^t)) + eps
    step = xp.divide(m, denom, out=scratch)
    step *= lr / (1 - beta1**t)
    data -= step


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic (a, b, c), as torch.optim.Muon's
NS_EPS = 1e-7


def orthogonalize(G: Any, steps: int = 5) -> Any:
    """Newton-Schulz's approximation of U V^T for each matrix G = U S V^T of a stack (k, m, n):
    the matrix with G's singular vectors and every singular value near 1 (in about 0.7-1.2
    after 5 steps, by design of the coefficients: steeper near 0, not exact at 1).

        X = G / ||G||_F                      (every singular value in [0, 1])
        repeat: A = X X^T,  X = a X + (b A + c A A) X

    Each step maps each singular value s to a s + b s^3 + c s^5. X is the wide way round
    (m <= n), so that A is the smaller Gram matrix."""
    xp = backend.array_module(G)
    a, b, c = NS_COEFFICIENTS
    tall = G.shape[-2] > G.shape[-1]
    X = G.swapaxes(-1, -2) if tall else G  # (k, m, n), m <= n
    X = X / xp.maximum(xp.sqrt((X * X).sum(axis=(-2, -1), keepdims=True)), NS_EPS)
    for _ in range(steps):
        A = X @ X.swapaxes(-1, -2)  # (k, m, m)
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.swapaxes(-1, -2) if tall else X


class Muon(Optimizer):
    """Muon, MomentUm Orthogonalized by Newton-Schulz (Keller Jordan et al., 2024), for the 2-D
    weights of the hidden layers (embeddings, the head and 1-D parameters stay with AdamW):

        p -= lr * weight_decay * p                                  (decoupled, as AdamW's)
        b = momentum b + (1 - momentum) g                           (the momentum buffer)
        u = momentum b + (1 - momentum) g      (with the new b; Nesterov's look ahead)
        p -= lr * sqrt(max(1, fan_out / fan_in)) * orthogonalize(u)

    The update has every singular value near 1: all directions of the weight move at the same
    rate, where an averaged gradient is dominated by a few. The sqrt keeps the update's size
    per element alike for wide and tall matrices. These are torch.optim.Muon's rules
    (adjust_lr_fn "original"); fan_in and fan_out are a Linear weight's (in, out) shape here.

    The matrices of one shape are orthogonalized together, as one stack (a batched matmul). On
    several ranks (world: a nanograd.distributed.World) each rank orthogonalizes its share of
    every stack, and an Allreduce per stack sums the shares (zeros elsewhere): the same update
    on every rank.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 ns_steps: int = 5, world: Any = None):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        for p in self.params:
            if p.ndim != 2:
                raise ValueError(f"Muon updates 2-D weights only, got a parameter of shape {p.shape}")
        self.ns_steps, self.world = ns_steps, world
        self.buffers = [backend.array_module(p.data).zeros_like(p.data) for p in self.params]

    def step(self) -> None:
        params = self.params
        settings = [g for g in self.groups for _ in g["params"]]  # each parameter's group
        with_grad = [i for i, p in enumerate(params) if p.grad is not None]
        looks_ahead = {}
        for i in with_grad:
            momentum, g, b = settings[i]["momentum"], params[i].grad, self.buffers[i]
            b *= momentum
            b += (1 - momentum) * g
            looks_ahead[i] = momentum * b + (1 - momentum) * g
        for i, update in self._orthogonalized(looks_ahead).items():
            p, lr, wd = params[i], settings[i]["lr"], settings[i]["weight_decay"]
            if wd:
                p.data *= 1 - lr * wd
            p.data -= (lr * math.sqrt(max(1.0, p.shape[1] / p.shape[0]))) * update

    def _orthogonalized(self, updates: dict[int, Any]) -> dict[int, Any]:
        """orthogonalize() of each parameter's update, stacked by shape (and shared out over
        the ranks)."""
        rank, size = (self.world.rank, self.world.size) if self.world is not None else (0, 1)
        stacks: dict[tuple, list[int]] = {}
        for i, u in updates.items():
            stacks.setdefault((u.shape, u.dtype), []).append(i)
        result = {}
        for indices in stacks.values():
            xp = backend.array_module(updates[indices[0]])
            stack = xp.stack([updates[i] for i in indices])  # (k, m, n)
            lo, hi = len(indices) * rank // size, len(indices) * (rank + 1) // size  # this rank's share
            out = xp.zeros_like(stack)
            if hi > lo:
                out[lo:hi] = orthogonalize(stack[lo:hi], self.ns_steps)
            if size > 1:
                out = self.world.all_sum(out)
            result.update(zip(indices, out))
        return result

    def state_dict(self) -> dict[str, Any]:
        """The momentum buffers, as NumPy arrays: muon.0, muon.1, ... in the parameters' order."""
        return {f"muon.{i}": backend.to_numpy(b) for i, b in enumerate(self.buffers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, b in enumerate(self.buffers):
            value = state.get(f"muon.{i}")
            if value is None or value.shape != b.shape:
                raise ValueError(f"optimizer state muon.{i}: expected a momentum buffer of shape {b.shape}, got "
                                 f"{'none' if value is None else value.shape}")
            b[...] = backend.to_device(value, backend.device_of(b))


class Optimizers:
    """Several optimizers stepped as one, each over its own parameters (Muon for the matrices,
    AdamW for the rest). Setting lr scales every optimizer's learning rate alike: each keeps
    its own peak, relative to the first one's."""

    def __init__(self, *optimizers: Any):
        self.optimizers = optimizers
        self.peaks = [o.lr for o in optimizers]

    @property
    def lr(self) -> float:
        return self.optimizers[0].lr

    @lr.setter
    def lr(self, value: float) -> None:
        for optimizer, peak in zip(self.optimizers, self.peaks):
            optimizer.lr = value * peak / self.peaks[0] if self.peaks[0] else 0.0

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {k: v for optimizer in self.optimizers for k, v in optimizer.state_dict().items()}  # (distinct names)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for optimizer in self.optimizers:
            optimizer.load_state_dict(state)


def clip_grad_norm(params: Iterable[Parameter], max_norm: float) -> float:
    """Scale all gradients together so that their global L2 norm is at most max_norm.

    Returns the norm before clipping (log it: a rising norm warns of divergence early).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = backend.array_module(grads[0])
    # one sum of squares per tensor (a dot product: one pass, no temporary g * g), added up in
    # float64 where they are, and read back once: a float() per tensor would make a GPU
    # finish all its queued work once per parameter
    total = math.sqrt(float(sum(xp.vdot(g, g).astype(xp.float64) for g in grads)))
    if math.isinf(total):  # a float32 sum of squares overflows (above 3e38) before finite gradients do
        total = math.sqrt(float(sum(xp.vdot(g64, g64) for g64 in (g.astype(xp.float64) for g in grads))))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= scale
    return total


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up from 0 to max_lr over warmup_steps, then cosine decay to min_lr at
    max_steps, and min_lr after that (the schedule of GPT-2/3 training, as in nanoGPT)."""
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)
