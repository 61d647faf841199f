"""Turning next-token logits into text: temperature, top-k, top-p, and the generation loop.

Sampling is a weighted die: softmax(logits / temperature) gives each token's probability,
and one token is drawn. Top-k keeps only the k likeliest tokens; top-p (nucleus) keeps the
smallest set whose probabilities add up to p. Both cut off the long tail of unlikely tokens.
Before either, a byte-level tokenizer's mask takes out the tokens that would break the
UTF-8 of the text so far (gpt.utf8).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from nanograd import no_grad

from .errors import UserError
from .utf8 import Utf8Mask


class LanguageModel(Protocol):
    vocab_size: int

    def next_logits(self, idx: np.ndarray, cache: Any) -> Any:
        """Logits (B, V) for the token after idx (B, t), advancing `cache` if one is given."""

    def new_cache(self) -> Any:
        """A fresh generation cache (None if the model keeps none)."""


def check_options(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  max_new_tokens: int = 0) -> None:
    """The sampling options, for probabilities and stream, and for gpt.sample's flags before it
    loads a checkpoint: a one-line UserError for a value out of range."""
    if not temperature >= 0:  # (nan too)
        raise UserError(f"temperature must be 0 or more (0: always the likeliest), got {temperature}")
    if top_k is not None and top_k <= 0:
        raise UserError(f"top_k must be positive, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be 0 or more, got {max_new_tokens}")


def probabilities(
    logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """The distribution to sample from: softmax(logits / temperature), cut by top-k and top-p.

    logits (B, V) -> probabilities (B, V), rows summing to 1. Temperature 0 is the limit of
    ever smaller temperatures: all the probability on the likeliest token (the first of equal
    ones), so sampling becomes greedy decoding, the same text for every seed. allowed (B, V),
    where given, says which tokens may be drawn at all (gpt.utf8): the others get logit -inf,
    so probability 0 whatever the other options.
    """
    check_options(temperature, top_k, top_p)
    logits = logits.astype(np.float64)  # (B, V)
    if allowed is not None:
        logits[~allowed] = -np.inf
    if temperature == 0:
        greedy = np.zeros_like(logits)
        np.put_along_axis(greedy, logits.argmax(axis=-1)[:, None], 1.0, axis=-1)
        return greedy
    # shift before dividing: the max becomes 0 and the rest <= 0, so even a tiny temperature
    # gives 0 or -inf (never inf - inf = nan)
    with np.errstate(over="ignore"):  # a tiny temperature sends the rest to -inf, as intended
        logits = (logits - logits.max(axis=-1, keepdims=True)) / temperature  # (B, V)
    if top_k is not None:
        k = min(top_k, logits.shape[-1])
        kth = np.partition(logits, -k, axis=-1)[:, -k, None]  # (B, 1) the k-th largest logit
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits)  # the max is still 0: top-k keeps the largest logit
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, axis=-1)  # (B, V) likeliest first
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # keep a token if the tokens before it add up to less than p (the first always stays)
        keep_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def default_prompt(tokenizer: Any) -> str:
    """What generation starts from when given nothing: a newline, as a line of the play
    begins; a character vocabulary without one starts from its first character."""
    chars = getattr(tokenizer, "chars", None)  # (a byte-level BPE encodes every text)
    return "\n" if chars is None or "\n" in chars else chars[0]


def sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row of probs (B, V): inverse-CDF sampling with one uniform draw per row."""
    cdf = np.cumsum(probs, axis=-1)  # (B, V)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]  # (B, 1) in [0, total): below the last cdf
    # (B,) the first index whose cdf exceeds u. A token of probability 0 adds nothing to the
    # cdf, so it is never that index, even at a draw of exactly 0
    return (cdf <= u).sum(axis=-1).astype(np.int64)


def stream(
    model: LanguageModel,
    idx: np.ndarray,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
    use_cache: bool = True,
    utf8_mask: Utf8Mask | None = None,
) -> Iterator[np.ndarray]:
    """Yield max_new_tokens new tokens (B,) one at a time, continuing idx (B, t).

    utf8_mask: a byte-level tokenizer's (its .utf8_mask), so that only tokens that keep the
    bytes valid UTF-8 are drawn, and the last ones finish the last character; None draws
    from every token (a character tokenizer's tokens are whole characters)."""
    rng = rng if rng is not None else np.random.default_rng()
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"idx must hold integer token ids, got {idx.dtype}")
    if idx.ndim != 2 or 0 in idx.shape:
        raise ValueError(f"idx must hold token ids of shape (B, t) with B, t >= 1, got shape {idx.shape}")
    check_options(max_new_tokens=max_new_tokens)  # (probabilities checks the others)
    idx = idx.astype(np.int64, copy=False)  # (a copy only for other integer types)
    if idx.min() < 0 or idx.max() >= model.vocab_size:  # (NumPy would wrap a negative id round)
        raise ValueError(f"idx must hold token ids in [0, {model.vocab_size}), got {idx.min()} to {idx.max()}")
    if utf8_mask is not None and utf8_mask.vocab_size != model.vocab_size:
        raise ValueError(f"the UTF-8 mask is for {utf8_mask.vocab_size} tokens, the model has {model.vocab_size}")
    cache = model.new_cache() if use_cache else None
    states = utf8_mask.start(idx) if utf8_mask is not None else None  # (B,) where the prompts end
    for step in range(max_new_tokens):
        with no_grad():  # (inside the loop: a generator's body runs outside any decorator)
            logits = model.next_logits(idx, cache)  # (B, V)
        allowed = utf8_mask.allowed(states, max_new_tokens - 1 - step) if utf8_mask is not None else None
        probs = probabilities(np.asarray(logits.numpy()), temperature, top_k, top_p, allowed)
        nxt = sample(probs, rng)  # (B,)
        if utf8_mask is not None:
            states = utf8_mask.advance(states, nxt)
        idx = np.concatenate([idx, nxt[:, None]], axis=1)  # (B, t + 1)
        yield nxt


def generate(model: LanguageModel, idx: np.ndarray, max_new_tokens: int, **options: Any) -> np.ndarray:
    """idx (B, t) followed by max_new_tokens sampled tokens: (B, t + max_new_tokens)."""
    new = list(stream(model, idx, max_new_tokens, **options))  # (stream checks idx)
    idx = np.asarray(idx, dtype=np.int64)
    return np.concatenate([idx] + [t[:, None] for t in new], axis=1) if new else idx


def text_pieces(tokenizer: Any, tokens: Iterable[np.ndarray], stop: str | None = None,
                prompt: str = "") -> Iterator[str]:
    """The text of the tokens (1,) as they come after the prompt, ending just after the first
    `stop` that they complete.

    A BPE token may end inside a character's UTF-8 bytes: those bytes wait for the rest of
    the character (stream's UTF-8 mask sees that it comes; bytes from elsewhere that never
    form one come out as U+FFFD). A token may also hold several characters, so `stop` is
    looked for across the tokens, not at their ends."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    keep = len(stop) - 1 if stop else 0  # the end of the text so far that a stop can span
    recent = prompt[max(0, len(prompt) - keep):]
    for token in tokens:
        piece = decoder.decode(tokenizer.token_bytes(int(token[0])))
        if stop:
            found = (recent + piece).find(stop)
            if found >= 0:
                yield piece[: found + len(stop) - len(recent)]
                return
            recent = (recent + piece)[max(0, len(recent) + len(piece) - keep):]
        yield piece
    yield decoder.decode(b"", final=True)
