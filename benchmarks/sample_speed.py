"""Generation speed of the baby GPT: tokens/s with the KV cache and with full recompute.

    python benchmarks/sample_speed.py                 # a randomly initialised baby model
    python benchmarks/sample_speed.py --out-dir out   # the trained checkpoint in out/
    python benchmarks/sample_speed.py --json
    python benchmarks/sample_speed.py --out-dir out-bpe --rounds 9   # a BPE run: its mask, and without it

Batch 1, one start token, 500 new tokens. Without the cache, every new token runs the whole
model over the last block_size tokens; with it, only the new token goes through the model,
attending to the keys and values kept from the earlier ones. Speed does not depend on the
weights, so a random model measures the same as a trained one. A checkpoint samples as
gpt.sample does: a byte-level BPE's through its UTF-8 mask (gpt.utf8), and then the cached
path is timed without the mask too, in turns with it, for what the mask costs (the random
model has 65 characters, and no mask). With --rounds, each way runs that many times in
turns (common.alternate, which lets the BLAS threads settle between them), and the median
is kept; the cached ways take turns in both orders (the geometric mean of the two medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, usable_device  # noqa: E402

import nanograd  # noqa: E402
from gpt import sampling  # noqa: E402
from gpt.checkpoint import checkpoint_path, load_run  # noqa: E402
from gpt.config import PRESETS, TrainConfig, build_model  # noqa: E402
from gpt.errors import UserError, exit_status  # noqa: E402

WARMUP_TOKENS = 20  # generated, untimed, before each timed run


def main(argv: list[str] | None = None) -> None:
    nanograd.backend.keep_freed_memory()  # as gpt.train does: the same allocator for both implementations
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=None, help="load this run's checkpoint instead of a random model")
    p.add_argument("--tokens", type=int, default=500, help="new tokens to generate")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, default=1, help="timed runs of each way, in turns (the median is kept)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    args = p.parse_args(argv)
    if args.tokens < 1:
        raise UserError("--tokens must be at least 1")
    if args.rounds < 1:
        raise UserError("--rounds must be at least 1")
    args.device = usable_device(args.device)
    utf8_mask = None
    if args.out_dir:
        saved = load_run(checkpoint_path(args.out_dir), args.device)
        model, utf8_mask = saved.model, saved.tokenizer.utf8_mask
        if model.new_cache() is None:  # the bigram: one character of context, nothing to cache
            raise UserError(f"the model in {args.out_dir} keeps no KV cache (a bigram): train a GPT to time it")
    else:
        nanograd.manual_seed(0)
        model = build_model(TrainConfig(**PRESETS["baby"]), 65).to(args.device)
    model.eval()
    prompt = np.zeros((1, 1), dtype=np.int64)
    ways = {"kv_cache": (True, utf8_mask), "recompute": (False, utf8_mask)}  # name: (use_cache, mask)
    if utf8_mask is not None:
        ways["kv_cache_unmasked"] = (True, None)

    def run(way: str, tokens: int) -> None:
        # the same seed each time: every run samples the same kind of text, token for token
        use_cache, mask = ways[way]
        sampling.generate(model, prompt, tokens, rng=np.random.default_rng(0), use_cache=use_cache, utf8_mask=mask)

    for way in ways:
        run(way, WARMUP_TOKENS)  # the first calls allocate memory and fill caches
    # The cached ways by turns, in one order and then the other, and then recomputing: a cached
    # run right after a recomputing one measured up to 15% slow, and the same cached run first
    # in a round 8% faster than second.
    cached = [way for way in ways if way != "recompute"]
    orders = [alternate({way: partial(run, way, args.tokens) for way in order}, args.rounds, 1, args.device)
              for order in ([cached, cached[::-1]] if len(cached) > 1 else [cached])]
    seconds = {way: statistics.geometric_mean([order[way] for order in orders]) for way in cached}
    seconds |= alternate({"recompute": partial(run, "recompute", args.tokens)}, args.rounds, 1, args.device)
    rates = {way: args.tokens / seconds[way] for way in ways}
    speedup = rates["kv_cache"] / rates["recompute"]
    row = {"tokens": args.tokens, "device": args.device, "vocab_size": model.vocab_size, "rounds": args.rounds,
           "utf8_mask": utf8_mask is not None, "speedup": round(speedup, 2),
           **{f"{k}_tokens_per_s": round(v, 1) for k, v in rates.items()}}
    if utf8_mask is not None:  # above 1: the mask makes cached sampling slower
        row["mask_slowdown"] = round(rates["kv_cache_unmasked"] / rates["kv_cache"], 4)
    if args.json:
        print(json.dumps(row))
    else:
        for way, rate in rates.items():
            print(f"{way:>17}: {rate:8,.0f} tokens/s")
        print(f"KV cache speed-up: {speedup:.1f}x ({args.tokens} tokens, batch 1, block {model.config.block_size}, "
              f"vocabulary {model.vocab_size})")
        if "mask_slowdown" in row:
            print(f"UTF-8 mask: cached sampling takes {row['mask_slowdown']:.3f}x the time it takes without")


if __name__ == "__main__":
    sys.exit(exit_status(main))  # a bad flag or file: one line, exit 2 (gpt.errors)
