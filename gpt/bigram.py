"""The bigram language model: the next character depends only on the current one.

The whole model is one table of V x V numbers: row i holds the logits (unnormalised log
probabilities) of every character that may follow character i. Training fills in the table
from counts, in effect; the lecture starts here before giving the model any context.

Shapes: B = batch, T = time, V = vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nanograd import Tensor, nn
from nanograd import functional as F

from . import sampling


class BigramLanguageModel(nn.Module):
    def __init__(self, vocab_size: int, fused: bool = True):
        self.vocab_size = vocab_size
        self.fused = fused  # the loss from pair counts (True) or as the lecture takes it (False)
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)
        # Small logits give a near-uniform first guess, so the untrained loss is ln(V)
        # (PyTorch's N(0, 1) default would start near ln(V) + 0.5).
        self.token_embedding_table.weight.data *= 0.01

    def forward(self, idx: Any, targets: Any = None) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) ids -> logits (B, T, V), and the mean cross-entropy if targets are given."""
        logits = self.token_embedding_table(idx)  # (B, T, V)
        if targets is None:
            return logits, None
        if self.fused:
            # The same loss and gradient from the table: positions that read one character
            # share its row of logits, so one log softmax per row read (at most V, not B*T)
            # and the counts of (character, next character) pairs suffice (docs/03-bigram.md).
            return logits, F.embedding_cross_entropy(idx, self.token_embedding_table.weight, targets)
        B, T, V = logits.shape  # as the lecture: one row of logits per position, B*T of them
        return logits, F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))

    def new_cache(self) -> None:
        return None  # only the last token matters: there is nothing to cache

    def next_logits(self, idx: np.ndarray, cache: None) -> Tensor:
        return self.token_embedding_table(idx[:, -1])  # (B, V)

    def generate(self, idx: Any, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 rng: np.random.Generator | None = None, use_cache: bool = True) -> np.ndarray:
        """idx (B, t) continued by max_new_tokens sampled tokens: (B, t + max_new_tokens).
        (The same arguments as GPT.generate; there is nothing to cache.)"""
        return sampling.generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, rng=rng, use_cache=use_cache)
