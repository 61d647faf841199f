"""Byte-level BPE: training time, encoding speed and characters per token of gpt.bpe, beside
HuggingFace `tokenizers` and SentencePiece where installed, and the naive recount trainer.

    python benchmarks/tokenizer_speed.py                        # vocab 4096 on tiny shakespeare
    python benchmarks/tokenizer_speed.py --rounds 5 --json
    python benchmarks/tokenizer_speed.py --naive-merges 20 --data other.txt

The corpus is split as gpt.data.CharDataset splits it: the first 90% of the characters train,
the rest is the validation text. Checked before timing: our tokenizer round-trips the train
split, and our incremental trainer makes the same first --naive-merges merges as the naive one
(gpt.bpe.naive_merges), which recounts every pair of every chunk at each merge.

Each round trains and encodes with every implementation in turn, so a change in the speed of
the (shared) machine hits all alike; the median round is reported with the range. The
libraries run as shipped, with their own threads; ours is one Python thread.

  ours           gpt.bpe.BPETokenizer
  hf_tokenizers  models.BPE, the ByteLevel pre-tokenizer (GPT-2's pattern, no prefix space), a
                 BpeTrainer starting from the 256 byte symbols, min_frequency 0: the same job.
                 Its merges are reported beside ours (the same set; ties may come in another order)
  sentencepiece  model_type=bpe: not the same job. It learns from lines (the newlines are not
                 in its text: each counts as one token here), splits only at spaces (no pre-split
                 of punctuation), starts from characters (with byte fallback, 256 byte pieces and
                 3 special tokens inside the vocabulary) and normalises nothing here (identity)
  naive          the naive recount trainer, timed for its first --naive-merges merges only (it would
                 take minutes to reach 4096); its full time is extrapolated from the time per
                 merge, an estimate, since each recount shrinks a little as chunks merge
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gpt.bpe import BPETokenizer, chunk_counts, naive_merges, split_chunks, train_merges  # noqa: E402
from gpt.errors import UserError, exit_status  # noqa: E402

VAL_FRACTION = 0.1  # gpt.data.CharDataset's default split
DEFAULT_DATA = REPO / "data" / "tinyshakespeare" / "input.txt"


class Implementation:
    """A tokenizer library's train(text) -> tokenizer and count_tokens(tokenizer, text)."""

    def __init__(self, train: Callable[[str], object], count_tokens: Callable[[object, str], int]):
        self.train, self.count_tokens = train, count_tokens


def ours(vocab_size: int) -> Implementation:
    return Implementation(lambda text: BPETokenizer.train(text, vocab_size), lambda tok, text: len(tok.encode(text)))


def hf_tokenizers(vocab_size: int) -> Implementation | None:
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        print("HuggingFace tokenizers is not installed: skipped (pip install tokenizers)", file=sys.stderr)
        return None

    def train(text: str) -> object:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False, special_tokens=[],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([text], trainer=trainer)
        return tok

    return Implementation(train, lambda tok, text: len(tok.encode(text).ids))


def sentencepiece(vocab_size: int) -> Implementation | None:
    try:
        import sentencepiece as spm
    except ImportError:
        print("sentencepiece is not installed: skipped (pip install sentencepiece)", file=sys.stderr)
        return None

    def train(text: str) -> object:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(text.split("\n")), model_writer=model, model_type="bpe", vocab_size=vocab_size,
            character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False, hard_vocab_limit=False, minloglevel=2)
        return spm.SentencePieceProcessor(model_proto=model.getvalue())

    def count_tokens(tok, text: str) -> int:
        lines = text.split("\n")
        return sum(map(len, tok.encode(lines))) + len(lines) - 1  # one token per newline

    return Implementation(train, count_tokens)


def gpt2_byte_symbols() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (the ByteLevel alphabet) -> the byte: printable
    Latin-1 bytes stand for themselves, the others for 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


def hf_merges(tok) -> list[tuple[bytes, bytes]]:
    """The merges of a trained HuggingFace byte-level BPE as pairs of byte strings."""
    symbols = gpt2_byte_symbols()
    merges = json.loads(tok.to_str())["model"]["merges"]  # [a, b] pairs, or "a b" in older versions
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    return [tuple(bytes(symbols[c] for c in piece) for piece in pair) for pair in pairs]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def spread(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def usable(name: str, impl: Implementation, train_text: str) -> bool:
    """Whether a library trains on this text (an untimed first run, which also warms it up);
    if not (SentencePiece refuses a vocabulary smaller than its characters and byte pieces),
    one line says why and it is left out."""
    if name == "ours":
        return True
    try:
        impl.train(train_text)
    except RuntimeError as exc:
        print(f"{name} skipped: {str(exc).splitlines()[0]}", file=sys.stderr)
        return False
    return True


def check_before_timing(train_text: str, vocab_size: int, n_naive: int) -> BPETokenizer:
    """Our tokenizer, after checking that it round-trips the train split and that the first
    n_naive merges are the naive trainer's (a fast wrong result is no result)."""
    tok = BPETokenizer.train(train_text, vocab_size)
    if tok.decode(tok.encode(train_text)) != train_text:
        raise RuntimeError("check failed: decode(encode(train split)) is not the train split")
    counts = chunk_counts(split_chunks(train_text))
    if n_naive and naive_merges(counts, n_naive) != list(train_merges(counts, n_naive)):
        raise RuntimeError(f"check failed: the first {n_naive} merges differ from the naive trainer's")
    return tok


def parse_flags(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab-size", type=int, default=4096, help="tokens in the vocabulary, 256 bytes included")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the corpus, a UTF-8 text file")
    p.add_argument("--naive-merges", type=int, default=50, help="merges to time the naive trainer over (0: skip it)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of every implementation, in turns")
    p.add_argument("--json", action="store_true", help="one JSON object")
    args = p.parse_args(argv)
    if args.vocab_size <= 256:
        raise UserError(f"--vocab-size must be above 256 (the byte values), got {args.vocab_size}")
    if not 0 <= args.naive_merges <= args.vocab_size - 256:
        raise UserError(f"--naive-merges must be in [0, {args.vocab_size - 256}] (--vocab-size - 256)")
    if args.rounds < 1:
        raise UserError("--rounds must be at least 1")
    if not Path(args.data).is_file():
        raise UserError(f"corpus not found at {args.data}: pass --data, or copy tiny shakespeare there")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_flags(argv)
    text = Path(args.data).read_text(encoding="utf-8")
    n_train = int(len(text) * (1 - VAL_FRACTION))
    train_text, val_text = text[:n_train], text[n_train:]
    train_bytes = len(train_text.encode("utf-8", "surrogatepass"))

    ours_tok = check_before_timing(train_text, args.vocab_size, args.naive_merges)
    impls = {"ours": ours(args.vocab_size), "hf_tokenizers": hf_tokenizers(args.vocab_size),
             "sentencepiece": sentencepiece(args.vocab_size)}
    impls = {name: impl for name, impl in impls.items() if impl is not None and usable(name, impl, train_text)}
    train_s: dict[str, list[float]] = {name: [] for name in impls}
    encode_s: dict[str, list[float]] = {name: [] for name in impls}
    trained: dict[str, object] = {}
    counts = chunk_counts(split_chunks(train_text))
    naive_s: list[float] = []
    incremental_s: list[float] = []
    for _ in range(args.rounds):
        for name, impl in impls.items():
            seconds, trained[name] = timed(lambda impl=impl: impl.train(train_text))
            train_s[name].append(seconds)
            encode_s[name].append(timed(lambda impl=impl, name=name: impl.count_tokens(trained[name], train_text))[0])
        if args.naive_merges:
            naive_s.append(timed(lambda: naive_merges(counts, args.naive_merges))[0])
            incremental_s.append(timed(lambda: list(train_merges(counts, args.naive_merges)))[0])

    results = {}
    for name, impl in impls.items():
        val_tokens = impl.count_tokens(trained[name], val_text)
        results[name] = {"train_s": spread(train_s[name]),
                         "encode_mb_per_s": spread([train_bytes / 1e6 / s for s in encode_s[name]]),
                         "val_chars_per_token": len(val_text) / val_tokens if val_tokens else None}
    row = {"data": args.data, "train_chars": len(train_text), "val_chars": len(val_text),
           "vocab_size": args.vocab_size, "ours_vocab_size": ours_tok.vocab_size, "rounds": args.rounds,
           "cpus": os.cpu_count(), **results}
    if "hf_tokenizers" in trained:
        ours_pairs = [(ours_tok.vocab[a], ours_tok.vocab[b]) for a, b in ours_tok.merges]
        theirs = hf_merges(trained["hf_tokenizers"])
        row["hf_same_merges"] = {"same_set": set(ours_pairs) == set(theirs),
                                 "same_position": sum(a == b for a, b in zip(ours_pairs, theirs)),
                                 "of": len(ours_pairs)}
    if args.naive_merges:
        per_merge = statistics.median(naive_s) / args.naive_merges
        extrapolated = per_merge * len(ours_tok.merges)
        row["naive"] = {"merges": args.naive_merges, "s_per_merge": per_merge, "s": spread(naive_s),
                        "incremental_s": spread(incremental_s),
                        "ratio_same_merges": statistics.median(naive_s) / statistics.median(incremental_s),
                        "extrapolated_full_s": extrapolated,
                        "ratio_extrapolated": extrapolated / results["ours"]["train_s"]["median"]}
    print(json.dumps(row) if args.json else report(row))


def report(row: dict) -> str:
    def rng(d: dict, fmt: str) -> str:
        return f"{d['median']:{fmt}} ({d['min']:{fmt}}-{d['max']:{fmt}})"

    lines = [f"{row['data']}: train split {row['train_chars']:,} characters, val {row['val_chars']:,}; "
             f"vocab {row['vocab_size']}; median of {row['rounds']} rounds (range); {row['cpus']} CPUs",
             f"{'':>14}  {'train s':>20}  {'encode MB/s':>20}  {'val chars/token':>15}"]
    for name in ("ours", "hf_tokenizers", "sentencepiece"):
        if name in row:
            r = row[name]
            per_token = "-" if r["val_chars_per_token"] is None else f"{r['val_chars_per_token']:.3f}"
            lines.append(f"{name:>14}  {rng(r['train_s'], '.2f'):>20}  {rng(r['encode_mb_per_s'], '.2f'):>20}  "
                         f"{per_token:>15}")
    if row["ours_vocab_size"] < row["vocab_size"]:
        lines.append(f"ours ran out of pairs at {row['ours_vocab_size']} tokens")
    if "hf_same_merges" in row:
        same = row["hf_same_merges"]
        lines.append(f"merges, ours and HF's: {'the same set' if same['same_set'] else 'different sets'}, "
                     f"{same['same_position']} of {same['of']} at the same rank")
    if "naive" in row:
        n = row["naive"]
        lines.append(f"naive recount: {n['merges']} merges in {rng(n['s'], '.2f')} s = {1e3 * n['s_per_merge']:.1f} "
                     f"ms/merge; incremental, the same {n['merges']}: {rng(n['incremental_s'], '.3f')} s "
                     f"({n['ratio_same_merges']:.0f}x)")
        lines.append(f"naive extrapolated to all {row['ours_vocab_size'] - 256} merges: about "
                     f"{n['extrapolated_full_s']:.0f} s, {n['ratio_extrapolated']:.0f}x our full training "
                     "(an estimate)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(exit_status(main))  # a bad flag or file: one line, exit 2 (gpt.errors)
