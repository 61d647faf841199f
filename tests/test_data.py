"""Loading the corpus (files and the download) and drawing batches from it."""

from __future__ import annotations

import hashlib
import io
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from gpt import data
from gpt.chars import CharTokenizer
from gpt.data import CharDataset, load_text
from gpt.errors import UserError


# ---- loading text ------------------------------------------------------------------------------
def test_load_text_reads_utf8(tmp_path):
    (tmp_path / "t.txt").write_text("naïve café\n", encoding="utf-8")
    assert load_text(tmp_path / "t.txt") == load_text(str(tmp_path / "t.txt")) == "naïve café\n"


@pytest.mark.parametrize("name, content, problem", [
    ("missing.txt", None, "not found"),
    ("a_directory", "dir", "is a directory"),
    ("empty.txt", b"", "is empty"),
    ("latin1.txt", b"abc\xe9def", r"not UTF-8 text \(invalid byte at offset 3\)"),
])
def test_bad_data_files_are_named_with_the_problem(tmp_path, name, content, problem):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=f"{re.escape(str(path))}.*{problem}"):
        load_text(path)


def test_unreadable_data_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.txt"
    path.write_text("hidden")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)  # chmod 000 does not stop root
    with pytest.raises(UserError, match=re.escape(f"cannot read data file {path}: Permission denied")):
        load_text(path)


# ---- the download (urlopen replaced: no network in tests) -----------------------------------------
class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable context manager."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def in_empty_dir(tmp_path, monkeypatch) -> Path:
    """A fresh working directory, so the default corpus path (relative) is missing."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def serve(monkeypatch, content: bytes) -> list[tuple[str, float]]:
    """Make urlopen return content; the returned list records each (url, timeout) asked for."""
    calls = []

    def urlopen(url, timeout):
        calls.append((url, timeout))
        return FakeResponse(content)

    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)
    return calls


def test_download_verifies_and_writes_the_corpus_once(in_empty_dir, monkeypatch):
    good = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(good).hexdigest())
    calls = serve(monkeypatch, good)
    assert load_text(None) == good.decode()
    assert (in_empty_dir / data.DEFAULT_CORPUS).read_bytes() == good
    assert calls == [(data.SHAKESPEARE_URL, data.DOWNLOAD_TIMEOUT_S)]
    assert load_text(None) == good.decode() and len(calls) == 1  # the second time, from disk
    assert sorted(p.name for p in (in_empty_dir / data.DEFAULT_CORPUS).parent.iterdir()) == ["input.txt"]


def test_a_download_with_the_wrong_checksum_is_not_kept(in_empty_dir, monkeypatch):
    serve(monkeypatch, b"not shakespeare at all")
    with pytest.raises(UserError, match=f"sha256 .*expected {data.SHAKESPEARE_SHA256}.*--data PATH"):
        load_text(None)
    target = in_empty_dir / data.DEFAULT_CORPUS
    assert not target.exists()
    assert not target.parent.exists() or list(target.parent.iterdir()) == []  # no temporary file either


@pytest.mark.parametrize("failure", [urllib.error.URLError("no route to host"), TimeoutError("timed out")])
def test_no_network_says_where_to_put_the_file(in_empty_dir, monkeypatch, failure):
    def offline(url, timeout):
        raise failure

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=r"data/tinyshakespeare/input\.txt.*--data PATH.*UTF-8 text file"):
        load_text(None)
    assert not (in_empty_dir / data.DEFAULT_CORPUS).exists()


# ---- the real corpus ---------------------------------------------------------------------------
def test_the_real_corpus(shakespeare):
    assert hashlib.sha256(shakespeare.read_bytes()).hexdigest() == data.SHAKESPEARE_SHA256
    text = load_text(shakespeare)
    assert len(text) == 1_115_394
    ds = CharDataset(text)
    assert ds.vocab_size == 65 and ds.train.dtype == np.uint8
    assert (len(ds.train), len(ds.val)) == (1_003_854, 111_540)  # 90% / 10%, in order
    assert ds.tokenizer.decode(ds.train[:14]) == "First Citizen:"
    assert ds.tokenizer.decode(ds.val) == text[1_003_854:]


# ---- datasets and batches ----------------------------------------------------------------------
@pytest.fixture
def dataset() -> CharDataset:
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz .\n"), size=520))  # no repeating period
    return CharDataset(text, val_fraction=0.2)


def test_the_split_is_first_train_then_val():
    ds = CharDataset("abcdefghij", val_fraction=0.3)
    assert ds.tokenizer.decode(ds.train) == "abcdefg" and ds.tokenizer.decode(ds.val) == "hij"


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_val_fraction_outside_0_1_is_refused(val_fraction):
    with pytest.raises(UserError, match="val_fraction must be between 0 and 1"):
        CharDataset("abc", val_fraction=val_fraction)


def test_a_given_tokenizer_is_used_and_checked():
    tok = CharTokenizer("abcxyz")
    ds = CharDataset("abcabc", tokenizer=tok)
    assert ds.tokenizer is tok and ds.vocab_size == 6
    with pytest.raises(UserError, match="'q'"):
        CharDataset("abq", tokenizer=tok)


@pytest.mark.parametrize("split", ["train", "val"])
def test_y_is_x_shifted_by_one_at_the_sampled_offsets(dataset, split):
    batch_size, block_size = 6, 8
    starts = np.random.default_rng(7).integers(0, len(dataset.split(split)) - block_size, size=batch_size)
    x, y = dataset.get_batch(split, batch_size, block_size, np.random.default_rng(7))
    assert x.shape == y.shape == (batch_size, block_size)
    assert x.dtype == y.dtype == np.int64
    source = dataset.split(split)
    for row, start in enumerate(starts):
        np.testing.assert_array_equal(x[row], source[start : start + block_size])
        np.testing.assert_array_equal(y[row], source[start + 1 : start + block_size + 1])


def test_every_valid_start_can_be_drawn(dataset):
    block_size = len(dataset.val) - 3  # exactly 3 valid starts: 0, 1, 2
    x, _ = dataset.get_batch("val", 300, block_size, np.random.default_rng(0))
    starts = {int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(dataset.val, block_size)
                                  == row).all(1))[0]) for row in x}
    assert starts == {0, 1, 2}


def test_batches_are_seeded(dataset):
    a = dataset.get_batch("train", 4, 8, np.random.default_rng(1))
    b = dataset.get_batch("train", 4, 8, np.random.default_rng(1))
    c = dataset.get_batch("train", 4, 8, np.random.default_rng(2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_fixed_batches_are_the_same_every_time(dataset):
    first = dataset.fixed_batches("val", 3, 4, 8, seed=5)
    again = dataset.fixed_batches("val", 3, 4, 8, seed=5)
    other = dataset.fixed_batches("val", 3, 4, 8, seed=6)
    assert len(first) == 3
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(first, other))
    assert not np.array_equal(first[0][0], first[1][0])  # one stream of batches, not one batch n times


def test_block_size_longer_than_a_split_is_refused(dataset):
    assert (len(dataset.train), len(dataset.val)) == (416, 104)
    dataset.check_block_size(103)
    with pytest.raises(UserError, match=r"the val split has 104 tokens, shorter than block size 104 \+ 1: "
                                        r"use a longer text or a smaller --block-size$"):
        dataset.check_block_size(104)
    with pytest.raises(UserError, match=r"the train split has 416 tokens, shorter than block size 500 \+ 1: "
                                        r"use a longer text$"):  # (the callers of get_batch may fix the size)
        dataset.get_batch("train", 2, 500, np.random.default_rng(0))


@pytest.mark.parametrize("batch_size, block_size, problem", [(0, 8, "batch size"), (-1, 8, "batch size"),
                                                              (4, 0, "block size"), (4, -2, "block size")])
def test_non_positive_sizes_are_refused(dataset, batch_size, block_size, problem):
    with pytest.raises(UserError, match=f"{problem} must be positive"):
        dataset.get_batch("train", batch_size, block_size, np.random.default_rng(0))
    with pytest.raises(UserError, match=f"{problem} must be positive"):
        dataset.fixed_batches("train", 2, batch_size, block_size, seed=0)
    if problem == "block size":
        with pytest.raises(UserError, match="block size must be positive"):
            dataset.check_block_size(block_size)


def test_no_evaluation_batches_is_refused(dataset):
    with pytest.raises(UserError, match="evaluation batches must be positive"):
        dataset.fixed_batches("val", 0, 4, 8, seed=0)
