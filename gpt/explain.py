"""Small commands that make the lecture's moments visible:  python -m gpt.explain TOPIC

    vocab         the characters, the vocabulary size, encoding and decoding
    tokens        how a byte-pair (BPE) vocabulary cuts a text, and what that costs and buys
    chunk         one chunk of block_size + 1 characters and the block_size examples inside it
    batch         a batch: B chunks side by side, the two knobs B and T
    initial-loss  an untrained model's loss next to ln(V)
    bigram        a trained bigram's most likely next characters, and its table as a heat map
    averaging     self-attention's core: a causal weighted average, as one matrix product
    scaling       why the scores are divided by sqrt(head size)
    attention     one head's attention weights on a prompt, as a PNG
    cost          forward-pass time at growing block sizes (attention grows with T^2)
    profile       where a training step's time goes, op by op
    gradcheck     an op's hand-written gradient next to finite differences

Each takes --help. The guide in docs/ walks through them in order.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time

import numpy as np

import nanograd
from nanograd import Tensor, no_grad
from nanograd import functional as F

from . import plots
from .bigram import BigramLanguageModel
from .checkpoint import checkpoint_path, load_run
from .config import PRESETS, TrainConfig, build_model
from .data import CharDataset, load_text
from .errors import UserError, exit_status
from .model import GPT, GPTConfig
from .prepare import prepare


def show(text: str) -> str:
    """Characters as Python would write them, so that newlines and spaces are visible."""
    return repr(text)[1:-1]


def vocab(args: argparse.Namespace) -> None:
    text = load_text(args.data)
    ds = CharDataset(text)
    tok = ds.tokenizer
    print(f"corpus: {len(text):,} characters")
    print(f"vocabulary: {tok.vocab_size} characters: {show(''.join(tok.chars))}")
    try:
        ids = tok.encode(args.text)
    except UserError as exc:  # (the default --text may hold characters another corpus lacks)
        raise UserError(f"--text {args.text!r}: {exc}") from None
    print(f"encode({args.text!r}) = {ids.tolist()}")
    print(f"decode({ids.tolist()}) = {tok.decode(ids)!r}")
    print(f"train: {len(ds.train):,} tokens, val: {len(ds.val):,} tokens ({ds.train.dtype}: 1 byte each)")


def tokens(args: argparse.Namespace) -> None:
    """How a BPE learned from the train split cuts a text, beside the character tokenizer."""
    char = prepare(args.data, "char", log=lambda note: None, show_progress=False)
    bpe = prepare(args.data, "bpe", args.vocab_size, log=lambda note: None, show_progress=False)
    tok = bpe.tokenizer
    print(f"BPE of {tok.vocab_size} tokens (256 bytes + {len(tok.merges)} merges), learned from the train split")
    print("its first merges: " + ", ".join(repr(_token_text(tok, 256 + i)) for i in range(min(8, len(tok.merges)))))
    longest = sorted(range(256, tok.vocab_size), key=lambda i: (-len(tok.token_bytes(i)), i))[:5]
    print("its longest tokens: " + ", ".join(repr(_token_text(tok, i)) for i in longest))
    ids = tok.encode(args.text)
    print(f"{args.text!r}: {len(args.text)} characters, {len(ids)} tokens:")
    print("  " + " ".join(repr(_token_text(tok, i)) for i in ids.tolist()))
    print(f"  ids {ids.tolist()}")
    if args.letter:
        counts = [_token_text(tok, i).count(args.letter) for i in ids.tolist()]
        print(f"{args.letter!r} in each token: {counts}, {sum(counts)} in all: the model sees only the ids, so it "
              f"can count the {args.letter!r}s only if it has learned what each token spells")
    for name, corpus in (("characters", char), (f"BPE {tok.vocab_size}", bpe)):
        per_token = corpus.val_chars / len(corpus.val)
        print(f"{name}: {corpus.tokenizer.vocab_size} tokens, {per_token:.2f} characters per token on the val "
              f"split: a 256-token block holds {256 * per_token:.0f} characters")


def _token_text(tok, i: int) -> str:
    """A token's text; bytes that are part of a character show as U+FFFD."""
    return tok.token_bytes(i).decode("utf-8", errors="replace")


def chunk(args: argparse.Namespace) -> None:
    ds = CharDataset(load_text(args.data))
    T = args.block_size
    ds.check_block_size(T)
    piece = ds.train[: T + 1]
    x, y = piece[:T], piece[1 : T + 1]
    print(f"the first {T + 1} training tokens: {piece.tolist()}")
    print(f"as text: {ds.tokenizer.decode(piece)!r}")
    print(f"one chunk of block_size + 1 = {T + 1} tokens holds {T} training examples:")
    for t in range(T):
        print(f"  context {x[: t + 1].tolist()} -> target {int(y[t])}"
              f"    ({ds.tokenizer.decode(x[: t + 1])!r} -> {ds.tokenizer.decode([y[t]])!r})")


def batch(args: argparse.Namespace) -> None:
    ds = CharDataset(load_text(args.data))
    x, y = ds.get_batch("train", args.batch_size, args.block_size, np.random.default_rng(args.seed))
    print(f"x (inputs), shape {x.shape}:")
    print(x)
    print(f"y (targets), shape {y.shape}: x shifted left by one")
    print(y)
    print(f"{x.size} examples in this batch: batch_size {args.batch_size} x block_size {args.block_size}")


def initial_loss(args: argparse.Namespace) -> None:
    ds = CharDataset(load_text(args.data))
    V = ds.vocab_size
    x, y = ds.get_batch("train", 32, 64, np.random.default_rng(args.seed))
    nanograd.manual_seed(args.seed)
    models = {"bigram": BigramLanguageModel(V),
              "gpt (baby)": GPT(GPTConfig(vocab_size=V, block_size=64, bias=False))}
    print(f"ln(V) = ln({V}) = {math.log(V):.4f}: the loss of a uniform guess over {V} characters")
    with no_grad():
        for name, model in models.items():
            print(f"untrained {name} loss: {model(x, y)[1].item():.4f}")


def _load(out_dir: str, model_kind: str):
    model, config, tok, _, _ = load_run(checkpoint_path(out_dir))
    if config.model != model_kind:
        raise UserError(f"{out_dir} holds a {config.model} model; this command needs a {model_kind} model")
    return model.eval(), config, tok


def bigram(args: argparse.Namespace) -> None:
    if len(args.char) != 1:
        raise UserError(f"--char must be one character, got {args.char!r}")
    picture = plots.picture_path(args.png) if args.png else None
    model, _, tok = _load(args.out_dir, "bigram")
    table = model.token_embedding_table.weight.data  # (V, V): row i = logits of the next character
    row = table[tok.encode(args.char)[0]]
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    print(f"after {args.char!r} the model expects (probability of the next character):")
    for i in np.argsort(-probs)[: args.top]:
        print(f"  {tok.chars[i]!r:>6}  {probs[i]:.3f}")
    if picture:
        probabilities = np.exp(table) / np.exp(table).sum(axis=1, keepdims=True)  # (V, V): row = current character
        plots.save_heatmap(probabilities, [show(c) for c in tok.chars], picture,
                           "bigram: P(next character | current character)", "next character", "current character")


def averaging(args: argparse.Namespace) -> None:
    T = args.block_size
    x = np.arange(1.0, T + 1)[:, None] ** 2  # (T, 1): one channel, values 1, 4, 9, ...
    scores = np.zeros((T, T))  # all positions equally interesting...
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)  # ...but none may look at the future
    weights = F.softmax(F.masked_fill(Tensor(scores), mask, -np.inf)).data  # (T, T)
    np.set_printoptions(precision=2, suppress=True)
    print("weights = softmax(scores with the future set to -inf), row t averages positions 0..t:")
    print(weights)
    print(f"x = {x[:, 0].tolist()}")
    print(f"weights @ x = {(weights @ x)[:, 0].round(2).tolist()}  (the running means of x)")


def scaling(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    hs = args.head_size
    q, k = rng.standard_normal((1000, hs)), rng.standard_normal((1000, hs))
    raw = (q * k).sum(axis=1)  # 1000 dot products of unit-variance vectors
    print(f"head size {hs}: var(q.k) = {raw.var():.1f} (grows like hs); "
          f"var(q.k / sqrt(hs)) = {(raw / math.sqrt(hs)).var():.2f}")
    scores = Tensor(rng.standard_normal(8) * math.sqrt(hs))
    np.set_printoptions(precision=3, suppress=True)
    one_hot, spread = ("(nearly one-hot)", "(spread out)") if hs > 1 else ("", "(the same: 1 / sqrt(1) = 1)")
    print(f"softmax of unscaled scores: {F.softmax(scores).data}  {one_hot}".rstrip())
    print(f"softmax of scaled scores:   {F.softmax(scores * (1 / math.sqrt(hs))).data}  {spread}")


def attention(args: argparse.Namespace) -> None:
    picture = plots.picture_path(args.png) if args.png else None
    model, config, tok = _load(args.out_dir, "gpt")
    if not 0 <= args.layer < config.n_layer or not 0 <= args.head < config.n_head:
        raise UserError(f"the model has layers 0..{config.n_layer - 1} and heads 0..{config.n_head - 1}")
    if not args.prompt:
        raise UserError("--prompt must not be empty")
    idx = tok.encode(args.prompt)[-config.block_size :][None, :].astype(np.int64)  # (1, T)
    T, C, nh = idx.shape[1], config.n_embd, config.n_head
    with no_grad():
        wte, wpe = model.transformer.wte, model.transformer.wpe
        x = wte(idx) + wpe(np.arange(T))  # (1, T, C)
        for block in list(model.transformer.h)[: args.layer]:
            x = block(x)
        attn = model.transformer.h[args.layer].attn
        qkv = attn.c_attn(model.transformer.h[args.layer].ln_1(x)).reshape(1, T, 3, nh, C // nh)
        q, k = qkv.data[0, :, 0, args.head], qkv.data[0, :, 1, args.head]  # (T, hs) each
        scores = Tensor(q @ k.T / math.sqrt(C // nh))  # (T, T)
        weights = F.softmax(F.masked_fill(scores, np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf)).data
    chars = list(tok.decode(idx[0]))
    print(f"layer {args.layer}, head {args.head}: each row is a position, each column what it attends to")
    for t in range(T):
        top = int(weights[t].argmax())
        print(f"  {chars[t]!r:>6} at {t:>2} looks most at {chars[top]!r} at {top} ({weights[t, top]:.2f})")
    if picture:
        plots.save_heatmap(weights, [show(c) for c in chars], picture,
                           f"attention weights, layer {args.layer} head {args.head}", "key position (attended to)",
                           "query position")


def cost(args: argparse.Namespace) -> None:
    nanograd.manual_seed(0)
    rng = np.random.default_rng(0)
    print(f"{'block':>6} {'forward ms':>11} {'attention ms':>13} {'share':>6} {'per token us':>13}")
    for T in args.block_sizes:
        model = GPT(GPTConfig(vocab_size=65, block_size=T, n_layer=4, n_head=4, n_embd=128)).eval()
        idx = rng.integers(0, 65, (1, T))
        q = k = v = Tensor(rng.standard_normal((1, 4, T, 32)).astype(np.float32))
        with no_grad():
            forward = _best_time(model, idx)
            causal_attention = functools.partial(F.scaled_dot_product_attention, is_causal=True)
            attend = _best_time(causal_attention, q, k, v) * 4  # 4 layers
        print(f"{T:>6} {forward * 1e3:>11.2f} {attend * 1e3:>13.2f} {attend / forward:>6.0%} "
              f"{forward / T * 1e6:>13.1f}")
    print("the matmuls grow with T, attention's T x T scores with T^2: its share grows with the block")


def profile(args: argparse.Namespace) -> None:
    """Forward and backward of one preset batch, timed op by op. In this one process: the
    trainer's other processes (MPI ranks) would run their ops where this one cannot time them."""
    nanograd.backend.keep_freed_memory()  # as the trainer does: no page faults for each new array
    config = TrainConfig(preset=args.preset, **PRESETS[args.preset])
    nanograd.manual_seed(args.seed)
    model = build_model(config, 65)
    rng = np.random.default_rng(args.seed)
    x, y = (rng.integers(0, 65, (config.batch_size, config.block_size)) for _ in range(2))  # (B, T) each

    def step() -> None:
        for p in model.parameters():
            p.grad = None
        model(x, y)[1].backward()

    step()  # the first call allocates memory: not timed
    with nanograd.profile() as seconds:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        total = (time.perf_counter() - start) / args.steps
    per_step = {name: s / args.steps for name, s in seconds.items()}
    ops = sorted({name.split(".")[0] for name in per_step},
                 key=lambda op: -(per_step.get(f"{op}.forward", 0) + per_step.get(f"{op}.backward", 0)))
    print(f"{args.preset}: batch {config.batch_size} x {config.block_size}, forward and backward "
          f"{total * 1e3:.2f} ms in one process (BLAS threads: {nanograd.backend.blas_threads()})")
    print(f"{'op':>26} {'forward ms':>11} {'backward ms':>12} {'share':>6}")
    for op in ops:
        forward, backward = per_step.get(f"{op}.forward", 0), per_step.get(f"{op}.backward")
        shown = "-" if backward is None else f"{backward * 1e3:.3f}"  # no backward ran (no gradient needed)
        print(f"{op:>26} {forward * 1e3:>11.3f} {shown:>12} {(forward + (backward or 0)) / total:>6.1%}")
    outside = total - sum(per_step.values())
    print(f"{'outside the ops':>26} {outside * 1e3:>24.3f} {outside / total:>6.1%}  "
          "(the engine's gradient sums and copies, the model's Python)")


def _gradcheck_cases(rng: np.random.Generator) -> dict:
    """op name: (function, float64 inputs) at small sizes, for `explain gradcheck`."""
    def t(*shape):
        return Tensor(rng.standard_normal(shape), requires_grad=True)

    targets, ids = rng.integers(0, 5, 6), rng.integers(0, 5, (2, 3))
    return {
        "softmax": (F.softmax, [t(3, 5)]),
        "cross_entropy": (lambda x: F.cross_entropy(x, targets), [t(6, 5)]),
        "layer_norm": (F.layer_norm, [t(2, 3, 6), t(6), t(6)]),
        "gelu": (F.gelu, [t(4, 5)]),
        "matmul": (lambda a, b: a @ b, [t(2, 3, 4), t(4, 5)]),
        "embedding": (lambda w: F.embedding(ids, w), [t(5, 4)]),
        "embedding_cross_entropy": (lambda w: F.embedding_cross_entropy(ids, w, ids[::-1]), [t(5, 5)]),
        "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                      [t(2, 2, 4, 3), t(2, 2, 4, 3), t(2, 2, 4, 3)]),
    }


def gradcheck(args: argparse.Namespace) -> None:
    fn, inputs = _gradcheck_cases(np.random.default_rng(args.seed))[args.op]
    out = fn(*inputs)
    weights = np.random.default_rng(0).standard_normal(out.shape)
    (out * Tensor(weights)).sum().backward()  # the analytic gradients, as gradcheck computes them
    elements = sum(x.size for x in inputs)
    nanograd.gradcheck(fn, *inputs)  # raises, naming the element, if any gradient is wrong
    print(f"{args.op}: the hand-written backward agrees with central differences on all {elements} "
          f"input elements (float64, eps 1e-6, atol 1e-5, rtol 1e-3)")
    for i, x in enumerate(inputs):
        print(f"  input {i} {x.shape}: |grad| max {np.abs(x.grad).max():.4f}")


def _best_time(fn, *args, repeats: int = 5) -> float:
    """The fastest of a few calls of fn(*args), in seconds."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def _vocab_size(text: str) -> int:
    return _int_from(text, 256, "256 (the bytes) or more")


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (argparse prints the error and exits 2)."""
    return _int_from(text, 1, "a positive integer")


def seed_int(text: str) -> int:
    """argparse type: a seed, an integer of at least 0 (as NumPy's generators take)."""
    return _int_from(text, 0, "an integer >= 0")


def _int_from(text: str, least: int, what: str) -> int:
    value = int(text)
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpt.explain", description=__doc__.split("\n\n")[0])
    topics = parser.add_subparsers(dest="topic", required=True)

    def topic(name: str, fn, doc: str, data: bool = True, random: bool = True) -> argparse.ArgumentParser:
        p = topics.add_parser(name, help=doc, description=doc)
        p.set_defaults(run=fn)
        if data:
            p.add_argument("--data", default=None, help="UTF-8 text file (default: tiny shakespeare)")
        if random:  # (only where something random is drawn)
            p.add_argument("--seed", type=seed_int, default=1337)
        return p

    topic("vocab", vocab, "the vocabulary and the tokenizer", random=False).add_argument("--text", default="hii there")
    p = topic("tokens", tokens, "how a BPE splits a text, against the characters", random=False)
    p.add_argument("--vocab-size", type=_vocab_size, default=512)
    p.add_argument("--text", default="How many r's are in strawberry?")
    p.add_argument("--letter", default="r", help="count this letter in each token ('' for none)")
    topic("chunk", chunk, "the T examples in one chunk", random=False).add_argument(
        "--block-size", type=positive_int, default=8)
    p = topic("batch", batch, "a batch of chunks")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--block-size", type=positive_int, default=8)
    topic("initial-loss", initial_loss, "untrained losses next to ln(V)")
    p = topic("bigram", bigram, "a trained bigram's predictions and table", data=False, random=False)
    p.add_argument("--out-dir", default="out-bigram")
    p.add_argument("--char", default="a")
    p.add_argument("--top", type=positive_int, default=5)
    p.add_argument("--png", default=None, help="save the table as a heat map")
    topic("averaging", averaging, "causal averaging as a matrix product", data=False, random=False).add_argument(
        "--block-size", type=positive_int, default=4)
    topic("scaling", scaling, "why scores are scaled by 1/sqrt(head size)", data=False).add_argument(
        "--head-size", type=positive_int, default=16)
    p = topic("attention", attention, "one head's attention weights", data=False, random=False)
    p.add_argument("--out-dir", default="out")
    p.add_argument("--prompt", default="ROMEO:\nBut soft!")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--head", type=int, default=0)
    p.add_argument("--png", default=None, help="save the weights as a heat map")
    topic("cost", cost, "forward time against block size", data=False, random=False).add_argument(
        "--block-sizes", type=positive_int, nargs="+", default=[64, 128, 256, 512])
    p = topic("profile", profile, "where a training step's time goes, op by op", data=False)
    p.add_argument("--preset", default="baby", choices=sorted(PRESETS))
    p.add_argument("--steps", type=positive_int, default=5)
    p = topic("gradcheck", gradcheck, "check an op's gradient against finite differences", data=False)
    p.add_argument("op", choices=["softmax", "cross_entropy", "layer_norm", "gelu", "matmul", "embedding",
                                  "embedding_cross_entropy", "attention"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
