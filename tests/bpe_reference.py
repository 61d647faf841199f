"""The plain BPE that gpt.bpe must agree with: recount every pair of every chunk at each merge,
and encode by replaying every merge in rank order. Far too slow for a real corpus; its only job
is to be obviously right. Used by tests/test_bpe.py and benchmarks/tokenizer_speed.py.

It shares gpt.bpe's pre-split (split_chunks) and tie rule (highest count, then smallest pair),
and nothing else.
"""

from __future__ import annotations

from collections import Counter

from gpt.bpe import split_chunks

N_BYTES = 256


def chunk_counts(text: str) -> dict[bytes, int]:
    """Each distinct chunk of text as UTF-8 bytes (lone surrogates allowed), with its count."""
    return dict(Counter(chunk.encode("utf-8", "surrogatepass") for chunk in split_chunks(text)))


def merge(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    """Every non-overlapping occurrence of pair, taken left to right, replaced by new."""
    out = []
    i = 0
    while i < len(ids):
        if tuple(ids[i:i + 2]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def naive_merges(counts: dict[bytes, int], n_merges: int) -> list[tuple[int, int]]:
    """Up to n_merges merges; each step counts all pairs of all chunks from scratch."""
    words = [list(chunk) for chunk in counts]
    freqs = list(counts.values())
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges:
        pair_counts: Counter[tuple[int, int]] = Counter()
        for word, freq in zip(words, freqs):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        words = [merge(word, best, N_BYTES + len(merges)) for word in words]
        merges.append(best)
    return merges


def naive_train(text: str, vocab_size: int) -> list[tuple[int, int]]:
    """The merges of a vocabulary of vocab_size tokens (fewer if the pairs run out)."""
    return naive_merges(chunk_counts(text), vocab_size - N_BYTES)


def naive_encode(merges: list[tuple[int, int]], text: str) -> list[int]:
    """The ids of text: every chunk's bytes, with all merges applied in rank order."""
    ids = []
    for chunk in split_chunks(text):
        chunk_ids = list(chunk.encode("utf-8", "surrogatepass"))
        for rank, pair in enumerate(merges):
            chunk_ids = merge(chunk_ids, pair, N_BYTES + rank)
        ids += chunk_ids
    return ids
