"""Sample text from a trained checkpoint:  python -m gpt.sample --out-dir out [--prompt TEXT]

The prompt is printed first, then the text of each new token as soon as it is drawn. A
byte-level BPE model draws only tokens that keep the text valid UTF-8 (gpt.utf8).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import numpy as np

from nanograd import backend

from . import sampling
from .checkpoint import checkpoint_path, load_run
from .config import check_device
from .errors import UserError, exit_status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gpt.sample",
                                description="Generate text from a checkpoint written by gpt.train.")
    p.add_argument("--out-dir", default="out", help="the training run's directory (default: out)")
    p.add_argument("--best", action="store_true", help="use best.npz (lowest val loss), not ckpt.npz")
    p.add_argument("--prompt", default=None,
                   help="text to continue (default: a newline, or the vocabulary's first character if it has none)")
    p.add_argument("--max-new-tokens", type=int, default=500,
                   help="tokens to generate (characters with --tokenizer char)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="<1 sharper, >1 more random, 0 always the likeliest token (greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only from the smallest set of likeliest tokens whose probabilities add up to p")
    p.add_argument("--stop", default=None, help="end a sample when this text appears")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples")
    p.add_argument("--seed", type=int, default=1337, help="the same seed gives the same text")
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the last block_size tokens for each new one: slower, and once the "
                   "text outgrows the block, different text for the same seed (docs/05-transformer.md)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every flag, before the checkpoint is loaded."""
    sampling.check_options(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
    if args.num_samples <= 0:
        raise UserError(f"--num-samples must be positive, got {args.num_samples}")
    if args.stop == "":
        raise UserError("--stop must not be empty")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}")


def write_samples(args: argparse.Namespace, out: TextIO) -> None:
    check_args(args)
    device = check_device(args.device)
    model, config, tokenizer, _, _ = load_run(checkpoint_path(args.out_dir, best=args.best), device)
    model.eval()
    if args.prompt is None:
        args.prompt = sampling.default_prompt(tokenizer)
    prompt = tokenizer.encode(args.prompt)
    if len(prompt) == 0:
        raise UserError("--prompt must not be empty")
    if len(prompt) > config.block_size and config.model == "gpt":
        print(f"note: the prompt has {len(prompt)} tokens; the model sees the last "
              f"{config.block_size} (its block size)", file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    for i in range(args.num_samples):
        out.write(args.prompt)
        tokens = sampling.stream(model, np.asarray(prompt, dtype=np.int64)[None, :], args.max_new_tokens,
                                 args.temperature, args.top_k, args.top_p, rng=rng, use_cache=not args.no_cache,
                                 utf8_mask=tokenizer.utf8_mask)
        for piece in sampling.text_pieces(tokenizer, tokens, args.stop, args.prompt):
            out.write(piece)
            out.flush()  # stream: show each token's text as soon as it is drawn
        out.write("\n" if i == args.num_samples - 1 else "\n---------------\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    backend.keep_freed_memory()
    return exit_status(lambda: write_samples(args, sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
