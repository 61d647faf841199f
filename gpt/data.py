"""The corpus and the batches: text in, (context, next-character) pairs out.

Shapes: B = batch size, T = block size (the context length).
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from .chars import CharTokenizer
from .errors import UserError
from .fileio import atomic_write

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DEFAULT_CORPUS = Path("data/tinyshakespeare/input.txt")  # relative to the current directory
DOWNLOAD_TIMEOUT_S = 30


def download_shakespeare(path: Path = DEFAULT_CORPUS) -> None:
    """Fetch tiny shakespeare once, check its sha256, and write it atomically (a temporary file
    beside path, renamed over it), so an interrupted download never leaves a partial corpus."""
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            content = response.read()
    except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        raise UserError(
            f"tiny shakespeare is not at {path} and could not be downloaded ({exc}); put the file "
            f"there (from {SHAKESPEARE_URL}), or pass --data PATH to train on any UTF-8 text file"
        ) from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise UserError(
            f"downloaded tiny shakespeare has sha256 {digest}, expected {SHAKESPEARE_SHA256}; put the "
            f"file at {path} yourself, or pass --data PATH to train on any UTF-8 text file"
        )
    atomic_write(path, lambda f: f.write(content))


def load_text(path: str | Path | None = None) -> str:
    """The training text: a UTF-8 file, or tiny shakespeare (downloaded on first use).

    Every problem with the file is a one-line UserError naming the path."""
    if path is None:
        path = DEFAULT_CORPUS
        if not path.exists():
            download_shakespeare(path)
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} not found")
    if path.is_dir():
        raise UserError(f"data path {path} is a directory, not a text file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read data file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"data file {path} is not UTF-8 text (invalid byte at offset {exc.start})") from None
    if not text:
        raise UserError(f"data file {path} is empty")
    return text


class TokenDataset:
    """A corpus as token ids, in a train and a val split (arrays, or np.memmap of files that
    gpt.prepare wrote), and the tokenizer that made them."""

    def __init__(self, tokenizer: Any, train: np.ndarray, val: np.ndarray):
        self.tokenizer, self.train, self.val = tokenizer, train, val

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> np.ndarray:
        """The ids of the 'train' or 'val' split."""
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def check_block_size(self, block_size: int, remedy: str = "use a longer text or a smaller --block-size") -> None:
        """Each split must hold at least one chunk of block_size + 1 tokens: checked once up
        front, so a bad --block-size fails before training starts."""
        for name in ("train", "val"):
            self._check_chunk_fits(name, block_size, remedy)

    def _check_chunk_fits(self, split: str, block_size: int, remedy: str) -> None:
        if block_size <= 0:
            raise UserError(f"block size must be positive, got {block_size}")
        n = len(self.split(split))
        if n < block_size + 1:
            raise UserError(
                f"the {split} split has {n} tokens, shorter than block size {block_size} + 1: {remedy}"
            )

    def get_batch(self, split: str, batch_size: int, block_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """B random chunks of T + 1 tokens: x = chunk[:-1], y = chunk[1:], both (B, T) int64.

        Each chunk holds T training examples at once: for every t, the context x[:t+1]
        should predict y[t].
        """
        if batch_size <= 0:
            raise UserError(f"batch size must be positive, got {batch_size}")
        self._check_chunk_fits(split, block_size, "use a longer text")
        data = self.split(split)
        starts = rng.integers(0, len(data) - block_size, size=batch_size)  # (B,): every valid start
        chunks = data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)  # (B, T + 1)
        return chunks[:, :-1], chunks[:, 1:]

    def fixed_batches(self, split: str, n: int, batch_size: int, block_size: int,
                      seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """n batches drawn once from their own seed: the same evaluation set at every step and
        in every run, so loss estimates differ only because the model did."""
        if n <= 0:
            raise UserError(f"the number of evaluation batches must be positive, got {n}")
        rng = np.random.default_rng(seed)
        return [self.get_batch(split, batch_size, block_size, rng) for _ in range(n)]

    def whole_split_batches(self, split: str, batch_size: int, block_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The whole split as consecutive chunks of T + 1 tokens, each starting where the last
        one's targets ended (every token after the first is a target once), B chunks to a batch
        (the last batch may hold fewer; the tail shorter than a chunk is left out): an
        evaluation over all of it, not over a draw."""
        self._check_chunk_fits(split, block_size, "use a longer text")
        data = self.split(split)
        starts = np.arange((len(data) - 1) // block_size) * block_size  # (N,)
        chunks = data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)  # (N, T + 1)
        return [(chunks[i : i + batch_size, :-1], chunks[i : i + batch_size, 1:])
                for i in range(0, len(chunks), batch_size)]


class CharDataset(TokenDataset):
    """A text in memory as character ids, split into train (the first 1 - val_fraction of the
    characters) and val (the rest): the lecture's dataset. gpt.prepare builds the same ids
    on disk, for corpora of any size and for the BPE tokenizer."""

    def __init__(self, text: str, tokenizer: CharTokenizer | None = None, val_fraction: float = 0.1):
        check_val_fraction(val_fraction)
        tokenizer = tokenizer if tokenizer is not None else CharTokenizer.from_text(text)
        ids = tokenizer.encode(text)  # smallest unsigned dtype: 1 byte per character here
        n_train = int(len(ids) * (1 - val_fraction))
        super().__init__(tokenizer, ids[:n_train], ids[n_train:])


def check_val_fraction(val_fraction: float) -> None:
    """The share of a text held out for validation: some, and not all of it (an empty split
    has no loss to estimate)."""
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}")
