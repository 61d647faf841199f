"""A corpus as token ids on disk (gpt.prepare): read in pieces, the same ids as encoding the
whole text, cached and rebuilt when the cache is damaged; and training and sampling on BPE."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt import prepare as prep
from gpt import sample, sampling, train
from gpt.bpe import BPETokenizer, split_chunks
from gpt.chars import CharTokenizer
from gpt.checkpoint import load_checkpoint
from gpt.data import CharDataset
from gpt.errors import UserError

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--sample-tokens", "0", "--quiet"]
# texts whose chunks are hard to cut: contractions, runs of spaces and newlines, digits, accents
TRICKY = st.lists(st.sampled_from(list("ab 'lsd\n\t7_.é€") + ["'ll", "  ", "\r\n", "😀"]), max_size=40).map("".join)


def pieces_of(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300, deadline=None)
@given(TRICKY, st.lists(st.integers(0, 10**6), max_size=8))
def test_chunks_of_a_text_in_pieces_are_the_chunks_of_the_whole_text(text, cuts):
    streamed = [chunk for chunks in prep.chunk_stream(iter(pieces_of(text, cuts))) for chunk in chunks]
    assert streamed == split_chunks(text)


@pytest.fixture(scope="module")
def small_bpe() -> BPETokenizer:
    return BPETokenizer.train("all's well that ends well, and all  the\n\nwell'll 77 é€ " * 3, 300)


@settings(max_examples=100, deadline=None)
@given(TRICKY, st.lists(st.integers(0, 10**6), max_size=8))
def test_a_text_encoded_in_pieces_gives_the_ids_of_the_whole_text(small_bpe, text, cuts):
    ids = np.concatenate(list(prep.encode_pieces(small_bpe, iter(pieces_of(text, cuts)))))
    np.testing.assert_array_equal(ids, small_bpe.encode(text))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus" / "text.txt"
    path.parent.mkdir()
    lines = ["Wherefore art thou Romeo? I'll tell thee: 'tis the east.", "Été, naïve café — 12 € ok", ""]
    path.write_text("\n".join(lines * 60))
    return path


@pytest.fixture
def small_reads(monkeypatch):
    """Read the file 7 bytes at a time, so pieces cut characters and chunks everywhere."""
    monkeypatch.setattr(prep, "READ_BYTES", 7)


def test_char_ids_on_disk_are_the_in_memory_datasets(corpus, small_reads):
    prepared = prep.prepare(corpus, "char", None, 0.1, log=lambda m: None, show_progress=False)
    text = corpus.read_text()
    expected = CharDataset(text, val_fraction=0.1)
    assert prepared.tokenizer.chars == expected.tokenizer.chars
    np.testing.assert_array_equal(prepared.train, expected.train)
    np.testing.assert_array_equal(prepared.val, expected.val)
    assert isinstance(prepared.train, np.memmap) and prepared.train.dtype == np.uint8
    assert (prepared.train_chars, prepared.val_chars) == (len(expected.train), len(expected.val))


def test_bpe_is_trained_on_the_train_split_alone_and_encodes_each_split(corpus, small_reads):
    prepared = prep.prepare(corpus, "bpe", 320, 0.25, log=lambda m: None, show_progress=False)
    text = corpus.read_text()
    n_train = int(len(text) * 0.75)
    expected = BPETokenizer.train(text[:n_train], 320)
    assert prepared.tokenizer.merges == expected.merges
    np.testing.assert_array_equal(prepared.train, expected.encode(text[:n_train]))
    np.testing.assert_array_equal(prepared.val, expected.encode(text[n_train:]))
    assert prepared.tokenizer.decode(prepared.val) == text[n_train:]
    assert (prepared.train_chars, prepared.val_chars) == (n_train, len(text) - n_train)


def test_a_second_run_reads_the_cache_and_a_damaged_cache_is_built_again(corpus, monkeypatch):
    notes = []
    first = prep.prepare(corpus, "bpe", 300, 0.1, log=notes.append, show_progress=False)
    first.train, first.val = np.array(first.train), np.array(first.val)  # (copies: the files are damaged below)

    def no_training(*args):
        raise AssertionError("the tokenizer was trained again")

    monkeypatch.setattr(prep, "train_merges", no_training)
    again = prep.prepare(corpus, "bpe", 300, 0.1, log=notes.append, show_progress=False)
    assert again.tokenizer.merges == first.tokenizer.merges
    np.testing.assert_array_equal(again.train, first.train)
    (ids_dir,) = (corpus.parent / "tokenized").glob("*/ids-*")
    train_bin = ids_dir / "train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:-2])  # truncated
    rebuilt = prep.prepare(corpus, "bpe", 300, 0.1, log=notes.append, show_progress=False)
    np.testing.assert_array_equal(rebuilt.train, first.train)
    assert any("incomplete; encoding it again" in note for note in notes)
    (ids_dir / "meta.json").write_text("{not json")
    np.testing.assert_array_equal(prep.prepare(corpus, "bpe", 300, 0.1, log=notes.append,
                                               show_progress=False).val, first.val)


def one_digit_changed(text: str) -> str:
    """The tokenizer file with one byte changed: still JSON, and the merges still a BPE's."""
    at = text.index("[[") + 2
    return text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:]


def with_its_sha256(text: str) -> str:
    cached = json.loads(text)
    cached["tokenizer"] = '{"type": "bpe", "merges": [[0, 999]]}'  # an id not made yet
    cached["sha256"] = hashlib.sha256(cached["tokenizer"].encode()).hexdigest()
    return json.dumps(cached)


@pytest.mark.parametrize("damage, found", [
    (one_digit_changed, "its tokenizer does not match its sha256"),
    (lambda text: text[:-9], "not JSON: "),
    (lambda text: json.loads(text)["tokenizer"], 'not a JSON object {"sha256": ..., "tokenizer": ...}'),  # older
    (with_its_sha256, "uses id 999, which does not exist"),
])
def test_a_damaged_tokenizer_file_is_named_with_what_is_wrong_and_built_again(corpus, damage, found):
    first = prep.prepare(corpus, "bpe", 300, 0.1, log=lambda m: None, show_progress=False)
    (path,) = (corpus.parent / "tokenized").glob("*/bpe-300-val0.1.tokenizer.json")
    path.write_text(damage(path.read_text()))
    notes = []
    again = prep.prepare(corpus, "bpe", 300, 0.1, log=notes.append, show_progress=False)
    assert again.tokenizer.merges == first.tokenizer.merges
    np.testing.assert_array_equal(again.train, first.train)
    (note,) = [note for note in notes if "damaged" in note]
    assert note.startswith(f"note: {path} is damaged (") and found in note and note.endswith("); building it again")
    assert "\n" not in note
    notes.clear()
    prep.prepare(corpus, "bpe", 300, 0.1, log=notes.append, show_progress=False)
    assert notes == []  # rebuilt whole


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("on_a_terminal", [True, False])
def test_learning_the_merges_shows_progress(corpus, monkeypatch, on_a_terminal):
    """A bar over the merges on a terminal; elsewhere, a line every PROGRESS_EVERY_S seconds
    (here 0: a line for every merge and every read)."""
    stderr = _Terminal() if on_a_terminal else io.StringIO()
    monkeypatch.setattr(prep.sys, "stderr", stderr)
    monkeypatch.setattr(prep, "PROGRESS_EVERY_S", 0.0)
    notes = []
    prep.prepare(corpus, "bpe", 300, 0.1, log=notes.append)
    progress = [note for note in notes if note.startswith("learning the merges: ")]
    if on_a_terminal:
        assert progress == [] and "learning the merges:   0%| " in stderr.getvalue() and " 0/44 " in stderr.getvalue()
    else:
        assert progress[0] == "learning the merges: 1 of 44 merges (2%)" and len(progress) == 44
        assert progress[-1] == "learning the merges: 44 of 44 merges (100%)"
        assert any(note.startswith("counting the train split's chunks: ") for note in notes)
        assert stderr.getvalue() == ""


def test_a_changed_corpus_is_a_new_cache_entry(corpus):
    first = prep.prepare(corpus, "char", None, 0.1, log=lambda m: None, show_progress=False)
    corpus.write_text(corpus.read_text() + "more text\n")
    second = prep.prepare(corpus, "char", None, 0.1, log=lambda m: None, show_progress=False)
    assert len(second.train) + len(second.val) == len(first.train) + len(first.val) + len("more text\n")


def test_a_cache_directory_that_cannot_be_made_is_replaced_by_a_temporary_one(corpus):
    (corpus.parent / "tokenized").write_text("a file where the cache would go")  # (chmod stops no root)
    notes = []
    prepared = prep.prepare(corpus, "char", None, 0.1, log=notes.append, show_progress=False)
    assert "cannot be written" in notes[0] and len(prepared.train) > 0


def test_bad_text_and_settings_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("ok é".encode() + b"\xff rest")
    with pytest.raises(UserError, match=r"not UTF-8 text \(invalid byte at offset 5\)"):
        prep.prepare(bad, "char", None, 0.1, log=lambda m: None, show_progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="is empty"):
        prep.prepare(empty, "char", None, 0.1, log=lambda m: None, show_progress=False)
    for args, message in [(["--tokenizer", "bpe"], "needs --vocab-size"),
                          (["--tokenizer", "bpe", "--vocab-size", "255"], "between 256"),
                          (["--tokenizer", "bpe", "--vocab-size", str(2**32 + 1)], "between 256"),
                          (["--vocab-size", "300"], "is for --tokenizer bpe"),
                          (["--tokenizer", "words"], "'char' or 'bpe'")]:
        assert prep.main(["--data", str(bad), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


def test_asking_more_merges_than_the_text_allows_trains_what_it_allows(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("ab ab ab\n" * 20)
    notes = []
    prepared = prep.prepare(path, "bpe", 5000, 0.1, log=notes.append, show_progress=False)
    assert prepared.tokenizer.vocab_size < 5000
    assert any(f"pairs for {prepared.tokenizer.vocab_size} tokens only, not 5000" in n for n in notes)


def test_prepare_command_prints_the_splits(corpus, capsys):
    assert prep.main(["--data", str(corpus), "--tokenizer", "bpe", "--vocab-size", "300"]) == 0
    out = capsys.readouterr().out
    assert "characters per token" in out and "vocabulary: 300 tokens (uint16 ids)" in out


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_on_bpe_reports_bits_per_character_and_resumes_to_the_same_weights(corpus, tmp_path, capsys):
    common = ["--data", corpus, "--tokenizer", "bpe", "--vocab-size", "300", "--eval-interval", "3", *TINY]
    assert train.main([str(a) for a in ["--out-dir", tmp_path / "once", "--max-iters", "6", *common]]) == 0
    assert train.main([str(a) for a in ["--out-dir", tmp_path / "twice", "--max-iters", "3", *common]]) == 0
    assert train.main([str(a) for a in ["--out-dir", tmp_path / "twice", "--resume", "--max-iters", "6"]]) == 0
    once, twice = (load_checkpoint(tmp_path / d / "ckpt.npz")[0] for d in ("once", "twice"))
    for name in once:
        np.testing.assert_array_equal(once[name], twice[name])
    rows = read_metrics(tmp_path / "once")
    assert read_metrics(tmp_path / "twice") == [{**r, "elapsed_s": t["elapsed_s"], "tokens_per_s": t["tokens_per_s"]}
                                                for r, t in zip(rows, read_metrics(tmp_path / "twice"))]
    # a BPE token stands for more than one character: bits per character are below bits per token
    assert all(r["val_bpc"] < r["val_loss"] / math.log(2) for r in rows)
    capsys.readouterr()
    for flags, message in [(["--tokenizer", "char"], "tokenizer='bpe'"), (["--vocab-size", "400"], "vocab_size=300")]:
        assert train.main([str(a) for a in ["--out-dir", tmp_path / "once", "--resume", *flags]]) == 2
        assert message in capsys.readouterr().err
    assert sample.main(["--out-dir", str(tmp_path / "once"), "--prompt", "Romeo", "--max-new-tokens", "30"]) == 0
    assert capsys.readouterr().out.startswith("Romeo")


def test_a_briefly_trained_bpe_model_samples_text_without_replacement_characters(corpus, tmp_path, capsys):
    """Trained 30 steps on a text of accents, dashes and euro signs (multi-byte characters),
    the model still gives some probability to every byte; its samples, by gpt.train at the
    end and by gpt.sample at temperatures 0.8 and 1.5, with and without the KV cache, over
    several seeds, hold no U+FFFD (bytes that are no character)."""
    out = tmp_path / "run"
    args = ["--data", corpus, "--out-dir", out, "--tokenizer", "bpe", "--vocab-size", "300", "--max-iters", "30", *TINY]
    args[args.index("--sample-tokens") + 1] = "300"
    assert train.main([str(a) for a in args]) == 0
    printed = [capsys.readouterr().out]
    for seed in range(2):
        for temperature in ("0.8", "1.5"):
            for cache in ([], ["--no-cache"]):
                assert sample.main(["--out-dir", str(out), "--seed", str(seed), "--temperature", temperature,
                                    "--max-new-tokens", "50", "--num-samples", "4", *cache]) == 0
                printed.append(capsys.readouterr().out)
    assert all(text.count("---------------") == 3 for text in printed[1:])
    assert not [text for text in printed if "\ufffd" in text]


def test_char_bits_per_character_are_the_loss_in_bits(corpus, tmp_path):
    out = tmp_path / "run"
    assert train.main([str(a) for a in ["--data", corpus, "--out-dir", out, "--max-iters", "2", *TINY]]) == 0
    for row in read_metrics(out):
        for split in ("train", "val"):
            assert row[f"{split}_bpc"] == pytest.approx(row[f"{split}_loss"] / math.log(2), rel=1e-12)


class _Tokens:
    """Token ids (1,) one at a time, as gpt.sampling.stream yields them."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def __iter__(self):
        return (np.array([i]) for i in self.ids)


def test_the_sampler_prints_a_character_only_once_its_bytes_are_complete():
    bytes_only = BPETokenizer([])  # every token one byte
    pieces = list(sampling.text_pieces(bytes_only, _Tokens(list("aé€".encode())), None, ""))
    assert pieces == ["a", "", "é", "", "", "€", ""]
    cut_short = list(sampling.text_pieces(bytes_only, _Tokens(list("€".encode())[:2]), None, ""))
    assert "".join(cut_short) == "\ufffd"  # bytes that never form a character


def test_stop_is_found_inside_a_token_and_across_tokens():
    words = BPETokenizer.train("to be or not to be " * 20, 300)
    ids = words.encode(" not to be or")
    assert any(len(words.token_bytes(i)) > 2 for i in ids)  # tokens of several characters
    assert "".join(sampling.text_pieces(words, _Tokens(list(ids)), "o", "")) == " no"
    assert "".join(sampling.text_pieces(words, _Tokens(list(ids)), "to b", "")) == " not to b"
    assert "".join(sampling.text_pieces(words, _Tokens(list(ids)), "be", "to ")) == " not to be"
    assert "".join(sampling.text_pieces(words, _Tokens(list(ids)), "e not", "to be")) == " not"  # from the prompt
    chars = CharTokenizer("abc")
    assert "".join(sampling.text_pieces(chars, _Tokens([0, 1, 2, 0]), "ca", "")) == "abca"


@pytest.mark.parametrize("merges, message", [([[0, 999]], "does not exist before it"),
                                             ([[97, 98], [97, 98]], "duplicate"),
                                             ("nonsense", "merges")])
def test_a_checkpoint_whose_tokenizer_was_tampered_with_is_a_one_line_error(corpus, tmp_path, capsys, merges, message):
    from gpt.checkpoint import save_checkpoint

    out = tmp_path / "run"
    assert train.main([str(a) for a in ["--data", corpus, "--out-dir", out, "--tokenizer", "bpe", "--vocab-size",
                                        "300", "--max-iters", "1", *TINY]]) == 0
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    save_checkpoint(out / "ckpt.npz", arrays, {**meta, "tokenizer": json.dumps({"type": "bpe", "merges": merges})})
    capsys.readouterr()
    assert sample.main(["--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no usable config or tokenizer" in err and message in err and "\n" not in err


def test_a_bpe_learned_from_one_split_is_not_reused_for_another(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("ab ab ab cd cd\n" * 50 + "zyxwv " * 40)  # "zyxwv" only in the last part
    wide_val = prep.prepare(path, "bpe", 300, 0.5, log=lambda m: None, show_progress=False)
    prep.prepare(path, "bpe", 300, 0.05, log=lambda m: None, show_progress=False)  # learns "zyxwv"
    again = prep.prepare(path, "bpe", 300, 0.5, log=lambda m: None, show_progress=False)
    assert again.tokenizer.merges == wide_val.tokenizer.merges
    assert len(again.tokenizer.encode("zyxwv")) == 5  # never learned from the val split


def test_an_invalid_byte_is_named_at_its_offset_when_a_read_cuts_a_character(tmp_path, small_reads):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"abcdef\xc3\xff rest")  # the 7-byte read ends inside a 2-byte character
    with pytest.raises(UserError, match=r"invalid byte at offset 6\)"):
        prep.prepare(path, "char", None, 0.1, log=lambda m: None, show_progress=False)


def test_a_corpus_changed_while_it_is_tokenized_is_not_cached_under_the_old_hash(corpus, monkeypatch):
    original = prep.Preparer.n_train

    def edit_then_count(self):  # the file changes after it was hashed
        corpus.write_text(corpus.read_text() + "changed!\n")
        return original(self)

    monkeypatch.setattr(prep.Preparer, "n_train", edit_then_count)
    with pytest.raises(UserError, match="changed while it was being tokenized"):
        prep.prepare(corpus, "char", None, 0.1, log=lambda m: None, show_progress=False)
    assert not list((corpus.parent / "tokenized").glob("*/ids-*/meta.json"))


def test_a_whole_cache_is_read_where_it_cannot_be_written(corpus, monkeypatch):
    first = prep.prepare(corpus, "bpe", 300, 0.1, log=lambda m: None, show_progress=False)

    def no_writing(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(prep.tempfile, "TemporaryFile", no_writing)  # (how _write_root probes)
    monkeypatch.setattr(prep, "train_merges", no_writing)
    notes = []
    again = prep.prepare(corpus, "bpe", 300, 0.1, log=notes.append, show_progress=False)
    assert notes == [] and again.scratch is None
    np.testing.assert_array_equal(again.train, first.train)


def test_resuming_on_a_changed_corpus_says_the_vocabulary_is_the_runs(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([str(a) for a in ["--data", corpus, "--out-dir", out, "--max-iters", "1", *TINY]]) == 0
    corpus.write_text(corpus.read_text() + "ZZZ qq\n")
    capsys.readouterr()
    assert train.main([str(a) for a in ["--out-dir", out, "--resume", "--max-iters", "2"]]) == 2
    err = capsys.readouterr().err.strip()
    assert "the run's character vocabulary, fixed when it started, cannot encode" in err and "'Z'" in err
    assert "\n" not in err


def test_a_checkpoint_rewritten_after_a_resume_read_it_is_not_trained_over(corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    common = ["--out-dir", out, "--resume"]
    assert train.main([str(a) for a in ["--data", corpus, "--out-dir", out, "--max-iters", "3", *TINY]]) == 0
    real_prepare = train.prepare

    def another_run_finishes_first(*args, **kwargs):  # while this resume tokenizes the corpus
        monkeypatch.setattr(train, "prepare", real_prepare)
        assert train.main([str(a) for a in [*common, "--max-iters", "6"]]) == 0
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(train, "prepare", another_run_finishes_first)
    capsys.readouterr()
    assert train.main([str(a) for a in [*common, "--max-iters", "5"]]) == 2
    assert "was written by another run after this one read it" in capsys.readouterr().err
    assert load_checkpoint(out / "ckpt.npz")[1]["step"] == 6
    assert [r["step"] for r in read_metrics(out)][-1] == 6


def test_an_empty_val_split_is_refused_before_the_out_dir_is_made(corpus, tmp_path, capsys):
    out = tmp_path / "never"
    assert train.main([str(a) for a in ["--data", corpus, "--out-dir", out, "--val-fraction", "1e-17", *TINY]]) == 2
    assert "the val split has 0 tokens" in capsys.readouterr().err and not out.exists()


def test_a_sample_of_bytes_that_are_no_character_prints_without_a_traceback(corpus, tmp_path, capsys, monkeypatch):
    def bytes_of_a_lone_surrogate(model, idx, n, **options):
        return np.concatenate([idx, np.array([[0xED, 0xA0, 0x80] + [97] * (n - 3)])], axis=1)

    monkeypatch.setattr(sampling, "generate", bytes_of_a_lone_surrogate)
    args = ["--data", corpus, "--out-dir", tmp_path / "run", "--tokenizer", "bpe", "--vocab-size", "300",
            "--max-iters", "1", *TINY, "--no-quiet"]  # (--quiet prints no sample)
    args[args.index("--sample-tokens") + 1] = "5"
    assert train.main([str(a) for a in args]) == 0
    assert capsys.readouterr().out.endswith("\n\ufffd\ufffd\ufffdaa\n")
