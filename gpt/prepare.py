"""A corpus as token ids on disk:  python -m gpt.prepare [--data PATH] [--tokenizer bpe --vocab-size N]

The text is read in pieces, never whole, so a corpus of gigabytes takes bounded memory. The
first 1 - val_fraction of its characters are the train split, the rest the val split. The
tokenizer is the character vocabulary of the whole text (the lecture's), or a BPE learned
from the train split alone, so that the text the model is judged on never shapes the
vocabulary. Each split's ids go to a .bin file (nanoGPT's prepare step does the same) in the
smallest unsigned dtype that holds the vocabulary, read back through np.memmap: the trainer
holds in memory only the batches it draws.

Everything is cached beside the corpus, keyed by the corpus's sha256, so a second run neither
retrains the tokenizer nor encodes again:

    <corpus dir>/tokenized/<sha256 of the corpus, 16 hex digits>/
        char.tokenizer.json, bpe-512-val0.1.tokenizer.json, ...     the tokenizer for those settings
        ids-<sha256 of the tokenizer's JSON, 16>-val0.1/     train.bin, val.bin, meta.json

A tokenizer file holds the tokenizer's JSON and its sha256, so that a damaged one is told
from a different one. meta.json is written last and names every size, so a cache cut short
by a crash, or a .bin file that is not the size it says, is built again rather than read.
A damaged file is named in one line that says what is wrong with it.

On a terminal, a progress bar follows each pass over the file and the learning of the
merges; elsewhere (a log file, a pipe), a line every PROGRESS_EVERY_S seconds does.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from .bpe import N_BYTES, BPETokenizer, chunk_counts, split_chunks, train_merges
from .chars import CharTokenizer, UnknownCharacters
from .data import DEFAULT_CORPUS, TokenDataset, download_shakespeare
from .errors import UserError, exit_status
from .fileio import atomic_write
from .tokenizer import Tokenizer, tokenizer_from_json

READ_BYTES = 1 << 22  # 4 MiB of the file at a time: a piece's chunks and ids stay in the tens of MB
CARRY_CHARS = 4  # see chunk_stream
FORMAT = 1
PROGRESS_EVERY_S = 5.0  # between two progress lines where no bar can be drawn


class DamagedCache(Exception):
    """A cache file that cannot be used, and what is wrong with it."""


def corpus_path(data: str | Path | None) -> Path:
    """The text file to train on: --data, or tiny shakespeare (downloaded on first use)."""
    if data is None:
        if not DEFAULT_CORPUS.exists():
            download_shakespeare(DEFAULT_CORPUS)
        return DEFAULT_CORPUS
    path = Path(data)
    if not path.exists():
        raise UserError(f"data file {path} not found")
    if path.is_dir():
        raise UserError(f"data path {path} is a directory, not a text file")
    return path


def read_pieces(path: Path, start: int = 0, stop: int | None = None,
                progress: Callable[[int], None] = lambda n: None) -> Iterator[str]:
    """The characters [start, stop) of a UTF-8 file, as pieces of a few million characters.

    progress(bytes) is called as the file is read. Invalid UTF-8 is a one-line UserError naming
    the byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    position, offset = 0, 0  # characters decoded so far, bytes read so far
    try:
        with open(path, "rb") as f:
            while stop is None or position < stop:
                raw = f.read(READ_BYTES)
                held = len(decoder.getstate()[0])  # bytes of a character the last read cut in two
                try:
                    piece = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as exc:
                    raise UserError(f"data file {path} is not UTF-8 text (invalid byte at offset "
                                    f"{offset - held + exc.start})") from None
                offset += len(raw)
                progress(len(raw))
                lo, hi = max(start - position, 0), len(piece) if stop is None else min(stop - position, len(piece))
                position += len(piece)
                if lo < hi:
                    yield piece[lo:hi]
                if not raw:
                    return
    except OSError as exc:
        raise UserError(f"cannot read data file {path}: {exc.strerror}") from None


def file_digest(path: Path) -> str:
    """sha256 of the file, read in pieces."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(READ_BYTES):
                digest.update(block)
    except OSError as exc:
        raise UserError(f"cannot read data file {path}: {exc.strerror}") from None
    return digest.hexdigest()


def chunk_stream(pieces: Iterator[str]) -> Iterator[list[str]]:
    """The BPE chunks (gpt.bpe.split_chunks) of the concatenated pieces, a list per piece,
    exactly as the whole text splits.

    A piece may end inside a chunk, or just before characters that would change how its last
    chunks split (a contraction such as 'll needs 3 characters, a run of spaces looks one past
    its end). So the chunks within CARRY_CHARS of a piece's end wait for the next piece, and
    every chunk given out ends where the whole text's chunk ends."""
    carry = ""
    for piece in pieces:
        chunks = split_chunks(carry + piece)
        kept, waiting = len(chunks), 0
        while kept > 0 and waiting < CARRY_CHARS:
            kept -= 1
            waiting += len(chunks[kept])
        carry = "".join(chunks[kept:])
        yield chunks[:kept]
    yield split_chunks(carry)


def encode_pieces(tokenizer: Tokenizer, pieces: Iterator[str]) -> Iterator[np.ndarray]:
    """The ids of the concatenated pieces, in parts: exactly tokenizer.encode of the whole text."""
    if isinstance(tokenizer, CharTokenizer):
        return map(tokenizer.encode, pieces)
    return map(tokenizer.encode_chunks, chunk_stream(pieces))


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON: the check of its cache file, and the key of its ids."""
    return hashlib.sha256(tokenizer.to_json().encode()).hexdigest()


def write_cached_tokenizer(path: Path, tokenizer: Tokenizer) -> None:
    cached = {"sha256": tokenizer_digest(tokenizer), "tokenizer": tokenizer.to_json()}
    atomic_write(path, lambda f: f.write(json.dumps(cached).encode()))


def read_cached_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer that write_cached_tokenizer wrote; DamagedCache where the file is not what
    it wrote (a byte changed, a file cut short, or one written by an earlier version)."""
    try:
        cached = json.loads(path.read_bytes())
    except OSError as exc:
        raise DamagedCache(f"cannot be read: {exc.strerror}") from None
    except ValueError as exc:  # (JSONDecodeError, UnicodeDecodeError)
        raise DamagedCache(f"not JSON: {exc}") from None
    if not isinstance(cached, dict) or not all(isinstance(cached.get(key), str) for key in ("sha256", "tokenizer")):
        raise DamagedCache('not a JSON object {"sha256": ..., "tokenizer": ...}')
    if hashlib.sha256(cached["tokenizer"].encode()).hexdigest() != cached["sha256"]:
        raise DamagedCache("its tokenizer does not match its sha256")
    try:
        return tokenizer_from_json(cached["tokenizer"])
    except UserError as exc:
        raise DamagedCache(str(exc)) from None


class Progress:
    """How far a long pass has come (`what`, `total` in `unit`s): a tqdm bar on a terminal;
    elsewhere, a line through `log` every PROGRESS_EVERY_S seconds, so that no long pass is
    silent; nothing at all where not `shown`."""

    def __init__(self, what: str, total: int, unit: str, log: Callable[[str], None], shown: bool = True):
        self.what, self.total, self.unit, self.log, self.shown = what, total, unit, log, shown
        self.done, self.bar, self.last_line = 0, None, time.monotonic()
        if shown and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=what, file=sys.stderr, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.shown and time.monotonic() - self.last_line >= PROGRESS_EVERY_S:
            self.last_line = time.monotonic()
            unit = "bytes" if self.unit == "B" else self.unit
            self.log(f"{self.what}: {self.done:,} of {self.total:,} {unit} ({self.done / max(self.total, 1):.0%})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class PreparedCorpus:
    """A corpus split, tokenized and on disk: the ids of each split, read through np.memmap."""

    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray
    train_chars: int
    val_chars: int
    source: Path
    scratch: Any = None  # a temporary directory that holds the ids, kept as long as they are read

    def dataset(self) -> TokenDataset:
        return TokenDataset(self.tokenizer, self.train, self.val)


class Preparer:
    """Splits, tokenizes and caches one corpus (see the module docstring)."""

    def __init__(self, path: Path, val_fraction: float, log: Callable[[str], None] = print,
                 show_progress: bool = True):
        self.path, self.val_fraction, self.log, self.show_progress = path, val_fraction, log, show_progress
        self.version = self._file_version()
        self.digest = file_digest(path)
        self.root = path.parent / "tokenized" / self.digest[:16]  # read from here; written here if it can be
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._n_chars: int | None = None

    def _file_version(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_size, stat.st_mtime_ns

    def _check_unchanged(self) -> None:
        """What was read since the hash is the text the hash names: a file edited meanwhile
        would put another text's ids under this one's key."""
        if self._file_version() != self.version:
            raise UserError(f"data file {self.path} changed while it was being tokenized: run again")

    def _write_root(self) -> Path:
        """Where new cache files go: self.root, or, where that cannot be written (a read-only
        corpus directory), a temporary directory kept for this run only."""
        if self._scratch is not None:
            return Path(self._scratch.name)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                return self.root
        except OSError:
            self._scratch = tempfile.TemporaryDirectory(prefix="gpt-tokenized-")
            self.log(f"note: {self.root.parent} cannot be written; the tokenized corpus is kept in "
                     f"{self._scratch.name} for this run only")
            return Path(self._scratch.name)

    def _pieces(self, what: str, start: int = 0, stop: int | None = None) -> Iterator[str]:
        progress = Progress(what, self.path.stat().st_size, "B", self.log, self.show_progress)
        try:
            yield from read_pieces(self.path, start, stop, progress.update)
        finally:
            progress.close()

    @property
    def n_chars(self) -> int:
        if self._n_chars is None:
            self._n_chars = sum(map(len, self._pieces("counting characters")))
            if self._n_chars == 0:
                raise UserError(f"data file {self.path} is empty")
        return self._n_chars

    def n_train(self) -> int:
        """Characters in the train split (the val split is the rest)."""
        return int(self.n_chars * (1 - self.val_fraction))

    def tokenizer(self, kind: str, vocab_size: int | None) -> Tokenizer:
        """The tokenizer of these settings: from the cache, or built and cached. A BPE is
        learned from the train split, so its name holds the split too."""
        name = "char" if kind == "char" else f"bpe-{vocab_size}-val{self.val_fraction!r}"
        path = self.root / f"{name}.tokenizer.json"
        if path.exists():
            try:
                return read_cached_tokenizer(path)
            except DamagedCache as exc:
                self.log(f"note: {path} is damaged ({exc}); building it again")
        if kind == "char":
            chars: set[str] = set()
            for piece in self._pieces("reading the characters"):
                chars.update(piece)
            if not chars:
                raise UserError(f"data file {self.path} is empty")
            tokenizer: Tokenizer = CharTokenizer(chars)
        else:
            tokenizer = self._train_bpe(vocab_size)
        self._check_unchanged()
        write_cached_tokenizer(self._write_root() / path.name, tokenizer)
        return tokenizer

    def _train_bpe(self, vocab_size: int) -> BPETokenizer:
        pieces = self._pieces("counting the train split's chunks", 0, self.n_train())
        counts = chunk_counts(chain.from_iterable(chunk_stream(pieces)))
        self.log(f"training a BPE of {vocab_size} tokens on {len(counts):,} distinct chunks")
        merges = []
        progress = Progress("learning the merges", vocab_size - N_BYTES, "merges", self.log, self.show_progress)
        for pair in train_merges(counts, vocab_size - N_BYTES):
            merges.append(pair)
            progress.update(1)
        progress.close()
        tokenizer = BPETokenizer(merges)
        if tokenizer.vocab_size < vocab_size:
            self.log(f"note: the train split has pairs for {tokenizer.vocab_size} tokens only, not {vocab_size}: "
                     f"every chunk is one token")
        return tokenizer

    def ids(self, tokenizer: Tokenizer) -> PreparedCorpus:
        """Both splits encoded with tokenizer: from the cache, or encoded and cached."""
        name = f"ids-{tokenizer_digest(tokenizer)[:16]}-val{self.val_fraction!r}"
        directory = self.root / name
        meta = self._read_meta(directory, tokenizer)
        if meta is None:
            directory = self._write_root() / name
            try:
                meta = self._encode(directory, tokenizer)
            except UserError:  # (characters the vocabulary lacks, say, because the file changed)
                self._check_unchanged()
                raise
        splits = {split: np.memmap(directory / f"{split}.bin", dtype=tokenizer.dtype, mode="r",
                                   shape=(meta[f"{split}_tokens"],)) if meta[f"{split}_tokens"] else
                  np.zeros(0, tokenizer.dtype) for split in ("train", "val")}
        return PreparedCorpus(tokenizer, splits["train"], splits["val"], meta["train_chars"], meta["val_chars"],
                              self.path, self._scratch)

    def _read_meta(self, directory: Path, tokenizer: Tokenizer) -> dict | None:
        """The cached ids' description, where every file is whole; None where it must be built."""
        try:
            meta = json.loads((directory / "meta.json").read_text())
            whole = meta["format"] == FORMAT and meta["dtype"] == tokenizer.dtype.name and all(
                (directory / f"{name}.bin").stat().st_size == meta[f"{name}_tokens"] * tokenizer.dtype.itemsize
                for name in ("train", "val"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not whole:
            self.log(f"note: the tokenized corpus in {directory} is incomplete; encoding it again")
            return None
        return meta

    def _encode(self, directory: Path, tokenizer: Tokenizer) -> dict:
        directory.mkdir(parents=True, exist_ok=True)
        n_train = self.n_train()
        meta = {"format": FORMAT, "source": str(self.path), "sha256": self.digest, "dtype": tokenizer.dtype.name,
                "val_fraction": self.val_fraction, "train_chars": n_train, "val_chars": self.n_chars - n_train}
        for name, (start, stop) in (("train", (0, n_train)), ("val", (n_train, None))):
            pieces = self._pieces(f"encoding the {name} split", start, stop)
            tokens = 0

            def write(f, pieces=pieces) -> None:
                nonlocal tokens
                for ids in encode_pieces(tokenizer, pieces):
                    f.write(ids.tobytes())
                    tokens += len(ids)
            atomic_write(directory / f"{name}.bin", write)
            meta[f"{name}_tokens"] = tokens
        self._check_unchanged()
        atomic_write(directory / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
        return meta


def prepare(data: str | Path | None, tokenizer: str = "char", vocab_size: int | None = None,
            val_fraction: float = 0.1, saved_tokenizer: Tokenizer | None = None,
            log: Callable[[str], None] = print, show_progress: bool = True) -> PreparedCorpus:
    """The corpus of --data split, tokenized and cached (see the module docstring). A resumed
    run passes its checkpoint's tokenizer, and the text is encoded with that one."""
    preparer = Preparer(corpus_path(data), val_fraction, log, show_progress)
    if saved_tokenizer is None:
        return preparer.ids(preparer.tokenizer(tokenizer, vocab_size))
    try:
        return preparer.ids(saved_tokenizer)
    except UnknownCharacters as exc:
        raise UserError(f"the run's character vocabulary, fixed when it started, cannot encode {preparer.path} "
                        f"({exc}): was the text changed? resume with the text it was trained on") from None


def main(argv: list[str] | None = None) -> int:
    from .config import TOKENIZER_HELP, VOCAB_SIZE_HELP, check_tokenizer_settings

    parser = argparse.ArgumentParser(prog="python -m gpt.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="UTF-8 text file (default: tiny shakespeare)")
    parser.add_argument("--tokenizer", default="char", help=TOKENIZER_HELP)
    parser.add_argument("--vocab-size", type=int, default=None, help=VOCAB_SIZE_HELP)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of the text held out for validation")
    args = parser.parse_args(argv)

    def run() -> None:
        check_tokenizer_settings(args.tokenizer, args.vocab_size, args.val_fraction)
        corpus = prepare(args.data, args.tokenizer, args.vocab_size, args.val_fraction,
                         log=lambda note: print(note, file=sys.stderr))
        for name, ids, chars in (("train", corpus.train, corpus.train_chars), ("val", corpus.val, corpus.val_chars)):
            print(f"{name}: {chars:,} characters, {len(ids):,} tokens ({chars / max(len(ids), 1):.2f} characters "
                  "per token)")
        where = Path(corpus.train.filename).parent if isinstance(corpus.train, np.memmap) else "memory"
        print(f"vocabulary: {corpus.tokenizer.vocab_size} tokens ({corpus.tokenizer.dtype.name} ids); ids in {where}")
    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
