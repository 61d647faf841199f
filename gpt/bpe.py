"""A byte-level BPE tokenizer: the tokens are byte strings learned from the corpus.

Byte-pair encoding (Sennrich et al., 2016) starts from a base alphabet and repeatedly adds
the most frequent pair of adjacent tokens as a new token, until the vocabulary has the size
asked for. GPT-2 (Radford et al., 2019) applies it to bytes rather than characters: the base
alphabet is the 256 byte values of the UTF-8 encoding, so every text can be encoded and no
token is ever unknown. Merge i joins two existing ids (a, b) into the new id 256 + i; encoding
replays the merges in that order (rank), and decoding concatenates each token's bytes.

Before counting pairs, the text is cut into chunks (words with their leading space, numbers,
runs of punctuation, whitespace) as GPT-2 does, and no merge crosses a chunk boundary.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from functools import cached_property
from heapq import heapify, heappop, heappush
from itertools import chain, repeat

import numpy as np

from .errors import UserError
from .tokenizer import description_field, smallest_uint

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


def _merge_pair(ids: list[int], a: int, b: int, new: int) -> list[int]:
    """ids with every occurrence of the pair (a, b) replaced by `new`, taken left to right
    without overlap (a run "a a a" for the pair (a, a) becomes "new a")."""
    out = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def chunk_counts(chunks: Iterable[str]) -> dict[bytes, int]:
    """How often each distinct chunk occurs, as the UTF-8 bytes train_merges takes. (Counting
    the strs first is done in C; distinct strs have distinct bytes, so no two entries merge.)"""
    return {chunk.encode("utf-8", ENCODING_ERRORS): n for chunk, n in Counter(chunks).items()}


def train_merges(chunk_counts: dict[bytes, int], n_merges: int) -> list[tuple[int, int]]:
    """Up to n_merges merges learned from chunks (as bytes) and their frequencies.

    Each step merges the pair with the highest count (occurrences weighted by the frequency
    of their chunk); ties go to the smallest pair (a, b), so training is deterministic. A
    pair that occurs once is still merged. Fewer merges come back when every chunk has become
    a single token.

    Incremental: the pair counts are made once; each merge then visits only the chunks that
    hold its pair (an index from pair to chunks) and applies to the counts the difference
    between the chunk's pairs before and after, which is exact even for overlapping runs
    such as "aaaa". The best pair comes from a max-heap of (-count, pair) whose entries go
    stale as counts change: a count that grows is pushed anew, and a popped entry whose count
    has since shrunk is pushed back with its current count.
    """
    words = [list(chunk) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}  # pair -> chunks that hold it (or held it once)
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            _note_chunk(where, pair, w)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapify(heap)

    merges: list[tuple[int, int]] = []
    counts_get = counts.get  # looked up once: it runs for every changed pair of every merge
    while len(merges) < n_merges and heap:
        negative, pair = heappop(heap)
        count = counts_get(pair, 0)
        if count != -negative:  # stale entry
            if 0 < count < -negative:  # the count shrank since it was pushed: push it back
                heappush(heap, (-count, pair))
            continue  # (a count that grew has a newer entry further up the heap)
        delta = _merge_everywhere(pair, N_BYTES + len(merges), words, freqs, where)
        merges.append(pair)
        for changed, d in delta.items():
            if d:
                count = counts_get(changed, 0) + d
                counts[changed] = count
                if d > 0:
                    heappush(heap, (-count, changed))
    return merges


def _note_chunk(where: dict[tuple[int, int], set[int]], pair: tuple[int, int], w: int) -> None:
    if pair in where:
        where[pair].add(w)
    else:
        where[pair] = {w}


def _merge_everywhere(pair: tuple[int, int], new: int, words: list[list[int]], freqs: list[int],
                      where: dict[tuple[int, int], set[int]]) -> dict[tuple[int, int], int]:
    """Replace pair by the token `new` in every chunk that holds it (words[w] in place, and
    the chunks of the new pairs noted in `where`). Returns how each pair's count changes."""
    a, b = pair
    delta: dict[tuple[int, int], int] = {}
    delta_get = delta.get
    for w in where.pop(pair):
        word = words[w]
        merged = _merge_pair(word, a, b, new)
        if len(merged) == len(word):  # the pair left this chunk in an earlier merge
            continue
        freq = freqs[w]
        for old in zip(word, word[1:]):
            delta[old] = delta_get(old, 0) - freq
        for fresh in zip(merged, merged[1:]):
            delta[fresh] = delta_get(fresh, 0) + freq
            if new in fresh:  # the only pairs this chunk did not hold before
                _note_chunk(where, fresh, w)
        words[w] = merged
    return delta


class BPETokenizer:
    """encode: text -> ids (np.ndarray, smallest unsigned dtype); decode: ids -> text.

    `merges[i] = (a, b)` made the id 256 + i; `vocab[i]` is the bytes token i stands for.
    """

    def __init__(self, merges: Iterable[tuple[int, int]]):
        self.merges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in merges]
        self.vocab: list[bytes] = [bytes([i]) for i in range(N_BYTES)]
        self._ranks: dict[tuple[int, int], int] = {}
        for rank, (a, b) in enumerate(self.merges):
            new = N_BYTES + rank
            for x in (a, b):
                if not 0 <= x < new:
                    raise UserError(f"BPE merge {rank} ({a}, {b}) uses id {x}, which does not exist "
                                    f"before it (ids 0..{new - 1})")
            if (a, b) in self._ranks:
                raise UserError(f"BPE merge {rank} ({a}, {b}) is a duplicate of merge {self._ranks[a, b]}")
            self._ranks[a, b] = rank
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

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        """The ids of one chunk: repeatedly merge the adjacent pair of lowest rank, all its
        occurrences left to right, until no adjacent pair is a merge."""
        ids = list(chunk)
        ranks_get = self._ranks.get
        no_merge = len(self.merges)
        while len(ids) > 1:
            rank = min(map(ranks_get, zip(ids, ids[1:]), repeat(no_merge)))
            if rank == no_merge:
                break
            a, b = self.merges[rank]
            ids = _merge_pair(ids, a, b, N_BYTES + rank)
        return ids

    @cached_property
    def chars_per_token(self) -> np.ndarray:
        """(V,) the characters each token stands for, a character counted at its first byte
        (a UTF-8 byte that is not a continuation byte 0b10xxxxxx): a token may hold a piece of
        a character, but the counts of a text's tokens always add up to len(text)."""
        return np.array([sum((byte & 0xC0) != 0x80 for byte in token) for token in self.vocab], dtype=np.int64)

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
        cache = dict.fromkeys(chunks)
        for chunk in cache:
            cache[chunk] = self._encode_chunk(chunk.encode("utf-8", ENCODING_ERRORS))
        ids = list(chain.from_iterable(map(cache.__getitem__, chunks)))
        return np.array(ids, dtype=self.dtype)

    def _check_ids(self, ids: Iterable[int] | np.ndarray) -> list[int]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        outside = (ids < 0) | (ids >= self.vocab_size)
        if outside.any():
            raise UserError(f"token id {ids[outside][0]} is outside the vocabulary [0, {self.vocab_size})")
        return ids.tolist()

    def decode_bytes(self, ids: Iterable[int] | np.ndarray) -> bytes:
        """The bytes of a sequence of ids (a list, an array of any integer dtype, or one id)."""
        return b"".join(map(self.vocab.__getitem__, self._check_ids(ids)))

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of a sequence of ids: exactly the text they were encoded from.

        Ids that do not come from encode (a model's samples, a slice that cuts a character in
        two) may not form valid UTF-8: those are decoded with errors="replace", each bad byte
        sequence becoming U+FFFD (lone surrogates in such a text become U+FFFD as well).
        """
        data = self.decode_bytes(ids)
        try:
            return data.decode("utf-8", ENCODING_ERRORS)
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="replace")

    def to_json(self) -> str:
        """The merges as JSON, stored in checkpoints so sampling uses the same ids."""
        return json.dumps({"type": "bpe", "merges": [list(pair) for pair in self.merges]})

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        """The tokenizer described by to_json's output."""
        merges = description_field(text, "bpe", "merges", list, '{"type": "bpe", "merges": [[a, b], ...]}')
        for rank, pair in enumerate(merges):
            if (not isinstance(pair, list) or len(pair) != 2
                    or any(isinstance(x, bool) or not isinstance(x, int) for x in pair)):
                raise UserError(f"tokenizer description: BPE merge {rank} must be a pair of ids [a, b], "
                                f"got {json.dumps(pair)}")
        return cls(merges)
