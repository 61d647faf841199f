"""The same models in PyTorch, written here for the side-by-side benchmarks (never imported by
nanograd or gpt). Architecture, initialisation and parameter names mirror gpt/model.py and
gpt/bigram.py, so that weights can be copied across and the losses compared."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpt.model import GPTConfig
from nanograd import backend
from nanograd.ops.rotary import rotary_tables


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rotary = None
        if config.rotary:  # the angles gpt/model.py uses (nanograd.ops.rotary), (T, hs/2) each
            tables = rotary_tables(np, config.block_size, config.n_embd // config.n_head, np.float32)
            self.rotary = tuple(torch.from_numpy(table.copy()) for table in tables)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.rotary is not None:
            cos, sin = (table[:T].to(x.device) for table in self.rotary)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embeddings, as gpt/model.py's rotate: x (B, nh, T, hs), cos and sin (T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TorchGPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **({} if config.rotary else {"wpe": nn.Embedding(config.block_size, config.n_embd)}),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        for name, p in self.named_parameters():  # GPT-2 initialisation, as gpt/model.py
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * config.n_layer))
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.wte(idx)
        if not self.config.rotary:
            x = x + t.wpe(torch.arange(idx.shape[1], device=idx.device))
        x = t.drop(x)
        for block in t.h:
            x = block(x)
        logits = self.lm_head(t.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


class TorchBigram(nn.Module):
    """The lecture's bigram: a lookup, then cross_entropy. With counts=True, the loss is taken
    from the table and the (character, next character) counts instead, as gpt/bigram.py
    takes it (F.embedding_cross_entropy): the same number, by the other route."""

    def __init__(self, vocab_size: int, counts: bool = False):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)
        nn.init.normal_(self.token_embedding_table.weight, 0.0, 0.01)
        self.counts = counts

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.counts:
            V = self.token_embedding_table.num_embeddings
            pairs = torch.bincount((idx * V + targets).reshape(-1), minlength=V * V).view(V, V)
            log_probs = F.log_softmax(self.token_embedding_table.weight, dim=1)  # (V, V)
            return -(pairs * log_probs).sum() / idx.numel()
        logits = self.token_embedding_table(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def copy_weights(nanograd_model: Any, torch_model: nn.Module) -> None:
    """Load a nanograd model's weights into the torch model of the same configuration.

    The names match by construction. nanograd's Linear computes x @ W with W (in, out); torch's
    computes x @ W.T with W (out, in): those weights are transposed. Square ones (c_proj) would
    load silently untransposed, so Linear weights are found by module type, not by shape.
    """
    linear = {f"{name}.weight" for name, m in torch_model.named_modules() if isinstance(m, nn.Linear)}
    state, ours = torch_model.state_dict(), nanograd_model.state_dict()  # NumPy copies, even from a GPU
    for name, value in ours.items():
        state[name] = torch.from_numpy(np.ascontiguousarray(value.T if name in linear else value))
    if "lm_head.weight" in state and "lm_head.weight" not in ours:
        # tied weights: nanograd has no lm_head parameter, torch's lm_head.weight is wte's tensor
        state["lm_head.weight"] = state["transformer.wte.weight"]
    torch_model.load_state_dict(state)


def check_same_loss(nanograd_model: Any, torch_model: nn.Module, x: np.ndarray, y: np.ndarray,
                    device: str = "cpu", tol: float = 1e-4) -> float:
    """Copy the weights across and assert both models give the same loss on one batch
    (validate before timing: a fast wrong model is no result). Returns the loss.
    Both models are left in training mode; dropout is off (eval) for the comparison."""
    copy_weights(nanograd_model, torch_model)
    nanograd_model.eval()
    torch_model.eval()
    ours = nanograd_model(backend.to_device(x, device), backend.to_device(y, device))[1].item()
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)).item()
    nanograd_model.train()
    torch_model.train()
    if abs(ours - theirs) > tol:
        raise AssertionError(f"the models disagree: nanograd loss {ours:.6f}, torch loss {theirs:.6f}")
    return ours
