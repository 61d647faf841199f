"""Generation speed of the baby GPT: tokens/s with the KV cache and with full recompute.

    python benchmarks/sample_speed.py                 # a randomly initialised baby model
    python benchmarks/sample_speed.py --out-dir out   # the trained checkpoint in out/
    python benchmarks/sample_speed.py --json

Batch 1, one start token, 500 new tokens. Without the cache, every new token runs the whole
model over the last block_size tokens; with it, only the new token goes through the model,
attending to the keys and values kept from the earlier ones. Speed does not depend on the
weights, so a random model measures the same as a trained one.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_calls, usable_device  # noqa: E402

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
    p.add_argument("--json", action="store_true", help="one JSON object")
    args = p.parse_args(argv)
    if args.tokens < 1:
        raise UserError("--tokens must be at least 1")
    args.device = usable_device(args.device)
    if args.out_dir:
        model = load_run(checkpoint_path(args.out_dir), args.device).model
        if model.new_cache() is None:  # the bigram: one character of context, nothing to cache
            raise UserError(f"the model in {args.out_dir} keeps no KV cache (a bigram): train a GPT to time it")
    else:
        nanograd.manual_seed(0)
        model = build_model(TrainConfig(**PRESETS["baby"]), 65).to(args.device)
    model.eval()
    prompt = np.zeros((1, 1), dtype=np.int64)
    rates: dict[str, float] = {}
    for name, use_cache in (("kv_cache", True), ("recompute", False)):
        # the same seed each time: both runs sample the same kind of text, token for token
        run = partial(sampling.generate, model, prompt, rng=np.random.default_rng(0), use_cache=use_cache)
        run(max_new_tokens=WARMUP_TOKENS)  # the first calls allocate memory and fill caches
        rates[name] = args.tokens / time_calls(partial(run, max_new_tokens=args.tokens), 1, args.device)
    speedup = rates["kv_cache"] / rates["recompute"]
    if args.json:
        print(json.dumps({"tokens": args.tokens, "device": args.device, "speedup": round(speedup, 2),
                          **{f"{k}_tokens_per_s": round(v, 1) for k, v in rates.items()}}))
    else:
        for name, rate in rates.items():
            print(f"{name:>9}: {rate:8,.0f} tokens/s")
        print(f"KV cache speed-up: {speedup:.1f}x ({args.tokens} tokens, batch 1, block {model.config.block_size})")


if __name__ == "__main__":
    sys.exit(exit_status(main))  # a bad flag or file: one line, exit 2 (gpt.errors)
