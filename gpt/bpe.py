"""A byte-level BPE tokenizer: the tokens are byte strings learned from the corpus.

Byte-pair encoding (Sennrich et al., 2016) starts from a base alphabet and repeatedly adds
the most frequent pair of adjacent tokens as a new token, until the vocabulary has the size
asked for. GPT-2 (Radford et al., 2019) applies it to bytes rather than characters: the base
alphabet is the 256 byte values of the UTF-8 encoding, so every text can be encoded and no
token is ever unknown. Merge i joins two existing ids (a, b) into the new id 256 + i; encoding
replays the merges in that order (rank), and decoding concatenates each token's bytes.

Before counting pairs, the text is cut into chunks (words with their leading space, numbers,
runs of punctuation, whitespace) as GPT-2 does, and no merge crosses a chunk boundary.

Two trainers learn the same merges: naive_merges, the algorithm as just stated, and
train_merges, which gets there incrementally, fast enough for a real corpus (tests/test_bpe.py
holds them equal).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from functools import cached_property
from heapq import heapify, heappop, heappush
from math import inf

import numpy as np

from .errors import UserError
from .token_ids import check_ids, smallest_uint
from .utf8 import Utf8Mask

N_BYTES = 256  # the base alphabet: ids 0..255 are the byte values
# Ids are stored in the smallest unsigned dtype that holds the vocabulary, uint32 at most: a
# vocabulary beyond 2**32 would need uint64 ids (twice the memory of every encoded corpus),
# and no corpus that fits in memory has that many distinct pairs to merge.
MAX_VOCAB_SIZE = 2**32

# GPT-2's pre-split pattern, `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
# written for the standard library's `re` so that the project needs no `regex` package. `re`
# has no Unicode property classes: a letter \p{L} becomes [^\W\d_] (a word character that is
# neither a digit nor the underscore) and a number \p{N} becomes \d; "punctuation" is then
# anything that is not whitespace, a letter or a digit, the underscore included. Every
# character matches one of the alternatives, so the chunks concatenate back to the text.
#
# Why chunks: a pair that spans a boundary, such as "e c" in " the cat", is frequent only by
# accident of word order, and merging it would spend vocabulary on phrases instead of on
# pieces of words. Chunks also make training fast: a corpus of a million characters has only
# about fourteen thousand distinct chunks, each counted once and weighted by its frequency.
CHUNK_PATTERN = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")

# Python strings may hold lone surrogates (U+D800..U+DFFF), which strict UTF-8 refuses:
# "surrogatepass" encodes them as 3 bytes each way, so every str round-trips.
ENCODING_ERRORS = "surrogatepass"


def split_chunks(text: str) -> list[str]:
    """The pre-split chunks of text, in order; "".join(split_chunks(text)) == text."""
    return CHUNK_PATTERN.findall(text)


def _check_vocab_size(vocab_size: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer):
        raise UserError(f"BPE vocab_size must be an integer, got {vocab_size!r}")
    if vocab_size < N_BYTES:
        raise UserError(f"BPE vocab_size must be at least {N_BYTES} (one token per byte value), got {vocab_size}")
    if vocab_size > MAX_VOCAB_SIZE:
        raise UserError(f"BPE vocab_size must be at most 2**32 = {MAX_VOCAB_SIZE} (ids are stored as uint32), "
                        f"got {vocab_size}")


def chunk_counts(chunks: Iterable[str]) -> dict[bytes, int]:
    """How often each distinct chunk occurs, as the UTF-8 bytes the trainers take. (Counting
    the strs first is done in C; distinct strs have distinct bytes, so no two entries merge.)"""
    return {chunk.encode("utf-8", ENCODING_ERRORS): n for chunk, n in Counter(chunks).items()}


def merge(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    """ids with every occurrence of pair replaced by the id `new`, taken left to right without
    overlap (a run "a a a" for the pair (a, a) becomes "new a")."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ---- the algorithm: count every pair, merge the most frequent, repeat ------------------------
def pair_counts(words: list[list[int]], freqs: list[int]) -> Counter[tuple[int, int]]:
    """How often each adjacent pair occurs in the chunks (words, as ids), each chunk counted as
    often as it occurs in the text (freqs)."""
    counts: Counter[tuple[int, int]] = Counter()
    for word, freq in zip(words, freqs):
        for pair in zip(word, word[1:]):
            counts[pair] += freq
    return counts


def naive_merges(chunk_counts: dict[bytes, int], n_merges: int) -> list[tuple[int, int]]:
    """Up to n_merges merges learned from chunks (as bytes) and their frequencies.

    Each step counts every pair of every chunk and merges the pair with the highest count;
    ties go to the smallest pair (a, b), so training is deterministic. A pair that occurs once
    is still merged. Fewer merges come back when every chunk has become a single token.
    Obviously right, and far too slow for a real corpus (minutes for tiny shakespeare).
    """
    words = [list(chunk) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges:
        counts = pair_counts(words, freqs)
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))  # the most frequent, then the smallest
        words = [merge(word, best, N_BYTES + len(merges)) for word in words]
        merges.append(best)
    return merges


# ---- the same merges, incrementally ---------------------------------------------------------
def train_merges(chunk_counts: dict[bytes, int], n_merges: int) -> Iterator[tuple[int, int]]:
    """naive_merges(chunk_counts, n_merges), one merge at a time as each is learned.

    The idea: a merge changes only the chunks that hold its pair, and only the counts of the
    pairs in those chunks. So the pairs are counted once, beside an index from each pair to
    the chunks that hold it; each merge then rewrites just those chunks, taking their pairs
    off the counts before and adding them back after (exact even for runs such as "aaaa").
    The most frequent pair comes from a heap of (-count, pair), whose entries go stale as
    counts change: only pairs with the new token can grow, and they are pushed anew; an
    entry popped whose count has shrunk since is pushed back with its count (_most_frequent).
    """
    words = [list(chunk) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> the chunks that hold it (or once did)
    for w, word in enumerate(words):
        for pair in zip(word, word[1:]):
            counts[pair] += freqs[w]
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapify(heap)
    for new in range(N_BYTES, N_BYTES + n_merges):
        pair = _most_frequent(heap, counts)
        if pair is None:  # every chunk is one token
            return
        grown = set()
        for w in where.pop(pair):
            word, freq = words[w], freqs[w]
            merged = merge(word, pair, new)
            if len(merged) == len(word):  # an earlier merge took the pair from this chunk
                continue
            for old in zip(word, word[1:]):
                counts[old] -= freq
            for fresh in zip(merged, merged[1:]):
                counts[fresh] += freq
                if new in fresh:
                    where[fresh].add(w)
                    grown.add(fresh)
            words[w] = merged
        for fresh in grown:
            heappush(heap, (-counts[fresh], fresh))
        yield pair


def _most_frequent(heap: list[tuple[int, tuple[int, int]]], counts: dict[tuple[int, int], int]
                   ) -> tuple[int, int] | None:
    """The pair with the highest count, the smallest of equal ones, popped from the heap; None
    when no pair is left. An entry whose count has grown since it was pushed has a newer
    entry higher up the heap; one whose count has shrunk is pushed back with its count."""
    while heap:
        negative, pair = heappop(heap)
        count = counts[pair]
        if count == -negative:
            return pair
        if 0 < count < -negative:
            heappush(heap, (-count, pair))
    return None


def _pair_of_ids(rank: int, pair: object) -> tuple[int, int]:
    """Merge `rank` as a pair of Python ints; a UserError where it is not two integers (a
    tokenizer file may hold anything)."""
    if (not isinstance(pair, list | tuple) or len(pair) != 2
            or any(isinstance(x, bool) or not isinstance(x, int | np.integer) for x in pair)):
        raise UserError(f"BPE merge {rank} must be a pair of ids [a, b], got {pair!r}")
    return int(pair[0]), int(pair[1])


class BPETokenizer:
    """encode: text -> ids (np.ndarray, smallest unsigned dtype); decode: ids -> text.

    `merges[i] = (a, b)` made the id 256 + i; `vocab[i]` is the bytes token i stands for.
    """

    def __init__(self, merges: Iterable[tuple[int, int]]):
        self.merges = [_pair_of_ids(rank, pair) for rank, pair in enumerate(merges)]
        self.vocab: list[bytes] = [bytes([i]) for i in range(N_BYTES)]
        self._merged: dict[tuple[int, int], int] = {}  # pair -> the id it was merged into
        for new, (a, b) in enumerate(self.merges, start=N_BYTES):
            for x in (a, b):
                if not 0 <= x < new:
                    raise UserError(f"BPE merge {new - N_BYTES} ({a}, {b}) uses id {x}, which does not exist "
                                    f"before it (ids 0..{new - 1})")
            if (a, b) in self._merged:
                raise UserError(f"BPE merge {new - N_BYTES} ({a}, {b}) is a duplicate of merge "
                                f"{self._merged[a, b] - N_BYTES}")
            self._merged[a, b] = new
            self.vocab.append(self.vocab[a] + self.vocab[b])
        _check_vocab_size(self.vocab_size)
        self.dtype = smallest_uint(self.vocab_size)

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """The tokenizer with vocab_size tokens learned from text (see train_merges).

        If the text runs out of pairs first (every chunk already one token), the tokenizer
        has fewer tokens than asked: train says nothing, and callers that care compare
        vocab_size with what they asked for.
        """
        _check_vocab_size(vocab_size)
        return cls(train_merges(chunk_counts(split_chunks(text)), vocab_size - N_BYTES))

    @property
    def vocab_size(self) -> int:
        return N_BYTES + len(self.merges)

    def token_bytes(self, i: int) -> bytes:
        """The bytes token i stands for (a token may hold part of a character's UTF-8 bytes)."""
        return self.vocab[i]

    @cached_property
    def chars_per_token(self) -> np.ndarray:
        """(V,) the characters each token stands for, a character counted at its first byte
        (a UTF-8 byte that is not a continuation byte 0b10xxxxxx): a token may hold a piece of
        a character, but the counts of a text's tokens always add up to len(text)."""
        return np.array([sum((byte & 0xC0) != 0x80 for byte in token) for token in self.vocab], dtype=np.int64)

    @cached_property
    def utf8_mask(self) -> Utf8Mask:
        """Which tokens may follow which, so that samples are always valid UTF-8 (gpt.utf8)."""
        return Utf8Mask(self.vocab)

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        """The ids of one chunk: merge the pair that was merged first in training, again and
        again, until no adjacent pair is a merge."""
        ids = list(chunk)
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self._merged.get(p, inf))
            if pair not in self._merged:
                break
            ids = merge(ids, pair, self._merged[pair])
        return ids

    def encode(self, text: str) -> np.ndarray:
        """ids (n,) of dtype self.dtype."""
        return self.encode_chunks(split_chunks(text))

    def encode_chunks(self, chunks: list[str]) -> np.ndarray:
        """The ids of text already split by split_chunks (or part of its chunks: the ids of
        consecutive parts concatenate to those of the whole). Each distinct chunk is encoded
        once.

        The cache of chunk -> ids lives for one call: it holds no more than the text itself
        does, and a tokenizer kept for a long time (or fed a huge corpus piece by piece) does
        not grow with everything it has seen.
        """
        cache = {chunk: self._encode_chunk(chunk.encode("utf-8", ENCODING_ERRORS)) for chunk in set(chunks)}
        return np.array([i for chunk in chunks for i in cache[chunk]], dtype=self.dtype)

    def decode_bytes(self, ids: Iterable[int] | np.ndarray) -> bytes:
        """The bytes of a sequence of ids (a list, an array of any integer dtype, or one id)."""
        return b"".join(self.vocab[i] for i in check_ids(ids, self.vocab_size).tolist())

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of a sequence of ids: exactly the text they were encoded from.

        Ids that do not come from encode (a slice that cuts a character in two, a model's
        samples drawn without gpt.utf8's mask) may not form valid UTF-8: those are decoded with
        errors="replace", each bad byte sequence becoming U+FFFD (lone surrogates in such a
        text become U+FFFD as well).
        """
        data = self.decode_bytes(ids)
        try:
            return data.decode("utf-8", ENCODING_ERRORS)
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="replace")

    def to_json(self) -> str:
        """The merges as JSON, stored in checkpoints so sampling uses the same ids (read back by
        gpt.tokenizer.tokenizer_from_json)."""
        return json.dumps({"type": "bpe", "merges": [list(pair) for pair in self.merges]})
