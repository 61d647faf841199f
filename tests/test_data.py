"""Tokenizer, corpus loading, batches and checkpoints."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt import checkpoint, data
from gpt.checkpoint import load_checkpoint, save_checkpoint
from gpt.data import CharDataset, load_text
from gpt.errors import UserError
from gpt.tokenizer import CharTokenizer


# ---- tokenizer ---------------------------------------------------------------------------------
@settings(deadline=None, max_examples=50)
@given(st.text(min_size=1, max_size=200))
def test_tokenizer_round_trip(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.chars == sorted(set(text)) and ids.max() < tok.vocab_size


def test_tokenizer_picks_the_smallest_dtype():
    assert CharTokenizer("abc").encode("cab").dtype == np.uint8
    many = "".join(chr(0x100 + i) for i in range(300))
    assert CharTokenizer(many).encode(many).dtype == np.uint16


def test_unknown_characters_are_listed():
    tok = CharTokenizer.from_text("hello")
    with pytest.raises(UserError, match=r"'x'.*'€'|'€'.*'x'"):
        tok.encode("hex€x")


def test_tokenizer_json_round_trip():
    tok = CharTokenizer.from_text("To be, or not to be?\n")
    again = CharTokenizer.from_json(tok.to_json())
    assert again.chars == tok.chars
    with pytest.raises(UserError):
        CharTokenizer.from_json("{not json")


# ---- loading text ------------------------------------------------------------------------------
def test_load_text_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(UserError, match="directory"):
        load_text(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        load_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"abc\xe9def")
    with pytest.raises(UserError, match="offset 3"):
        load_text(tmp_path / "latin1.txt")


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_checks_the_checksum_and_writes_atomically(tmp_path, monkeypatch):
    good = b"tiny shakespeare stand-in\n"
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(good).hexdigest())
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: FakeResponse(good))
    target = tmp_path / "data" / "input.txt"
    data.download_shakespeare(target)
    assert target.read_bytes() == good
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"tampered"))
    target.unlink()
    with pytest.raises(UserError, match="sha256"):
        data.download_shakespeare(target)
    assert list(target.parent.iterdir()) == []  # no partial file left behind


def test_no_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"data/tinyshakespeare/input.txt.*--data PATH"):
        load_text(None)


def test_the_real_corpus(shakespeare):
    raw = shakespeare.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == data.SHAKESPEARE_SHA256
    text = load_text(shakespeare)
    assert len(text) == 1_115_394
    ds = CharDataset(text)
    assert ds.vocab_size == 65 and ds.train.dtype == np.uint8
    assert len(ds.train) == 1_003_854 and len(ds.train) + len(ds.val) == len(text)


# ---- batches -----------------------------------------------------------------------------------
@pytest.fixture
def dataset() -> CharDataset:
    return CharDataset("abcdefghijklmnopqrstuvwxyz" * 20, val_fraction=0.2)


def test_batches_are_shifted_by_one(dataset):
    x, y = dataset.get_batch("train", 5, 8, np.random.default_rng(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):  # every row is a real chunk of the train split
        start = int(np.flatnonzero(
            (np.lib.stride_tricks.sliding_window_view(dataset.train, 9) == np.r_[row_x, row_y[-1]]).all(1))[0])
        np.testing.assert_array_equal(dataset.train[start + 1 : start + 9], row_y)


def test_batches_are_seeded(dataset):
    a = dataset.get_batch("val", 4, 8, np.random.default_rng(1))
    b = dataset.get_batch("val", 4, 8, np.random.default_rng(1))
    c = dataset.get_batch("val", 4, 8, np.random.default_rng(2))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    first = dataset.fixed_batches("val", 3, 4, 8, seed=5)
    again = dataset.fixed_batches("val", 3, 4, 8, seed=5)
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(first, again))


def test_block_size_longer_than_a_split_is_refused(dataset):
    dataset.check_block_size(40)
    with pytest.raises(UserError, match="val split has 104 tokens"):
        dataset.check_block_size(200)
    with pytest.raises(UserError, match="val_fraction"):
        CharDataset("abc", val_fraction=1.0)


# ---- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([1, 2], dtype=np.uint16)}
    meta = {"step": 7, "rng": np.random.default_rng(3).bit_generator.state, "name": "ünïcode"}
    save_checkpoint(tmp_path / "ckpt.npz", arrays, meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "ckpt.npz")
    assert loaded_meta == meta
    for name, value in arrays.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)
    rng = np.random.default_rng()
    rng.bit_generator.state = loaded_meta["rng"]
    assert rng.random() == np.random.default_rng(3).random()


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.ones(3)}, {"step": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": np.zeros(3)}, {"step": 2})
    arrays, meta = load_checkpoint(path)
    assert meta["step"] == 1 and arrays["w"].sum() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]


def test_bad_checkpoint_files(tmp_path):
    path = tmp_path / "ckpt.npz"
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(path)
    save_checkpoint(path, {"w": np.ones(1000)}, {"step": 1})
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(UserError, match="corrupted or truncated|not an .npz"):
        load_checkpoint(path)
    np.savez(path, w=np.ones(2))  # an npz, but not one of ours
    with pytest.raises(UserError, match="no metadata"):
        load_checkpoint(path)
    np.savez(path, obj=np.array([{"a": 1}], dtype=object), __meta__=np.frombuffer(b"{}", np.uint8))
    with pytest.raises(UserError, match="pickled"):
        load_checkpoint(path)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", b"garbage that is not an array")
        with io.BytesIO() as meta:
            np.save(meta, np.frombuffer(b"{}", np.uint8))
            z.writestr("__meta__.npy", meta.getvalue())
    with pytest.raises(UserError, match="corrupted"):
        load_checkpoint(path)
