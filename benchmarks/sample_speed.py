"""Generation speed of the baby GPT: tokens/s with the KV cache and with full recompute.

    python benchmarks/sample_speed.py                 # a randomly initialised baby model
    python benchmarks/sample_speed.py --out-dir out   # the trained checkpoint in out/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cuda_or_exit, synchronize  # noqa: E402

import nanograd  # noqa: E402
from gpt import sampling  # noqa: E402
from gpt.run import PRESETS, TrainConfig, build_model, checkpoint_path, load_run  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=None, help="load this run's checkpoint instead of a random model")
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cuda_or_exit(args.device)
    if args.out_dir:
        model = load_run(checkpoint_path(args.out_dir), args.device)[0]
    else:
        nanograd.manual_seed(0)
        model = build_model(TrainConfig(**PRESETS["baby"]), 65).to(args.device)
    model.eval()
    prompt = np.zeros((1, 1), dtype=np.int64)
    rates = {}
    for use_cache in (True, False):
        sampling.generate(model, prompt, 20, rng=np.random.default_rng(0), use_cache=use_cache)  # warm-up
        synchronize(args.device)
        t0 = time.perf_counter()
        sampling.generate(model, prompt, args.tokens, rng=np.random.default_rng(0), use_cache=use_cache)
        synchronize(args.device)
        rates["kv_cache" if use_cache else "recompute"] = args.tokens / (time.perf_counter() - t0)
    speedup = rates["kv_cache"] / rates["recompute"]
    if args.json:
        print(json.dumps({"tokens": args.tokens, "device": args.device, "speedup": round(speedup, 2),
                          **{f"{k}_tokens_per_s": round(v, 1) for k, v in rates.items()}}))
    else:
        for name, rate in rates.items():
            print(f"{name:>9}: {rate:8,.0f} tokens/s")
        print(f"KV cache speed-up: {speedup:.1f}x ({args.tokens} tokens, batch 1, block {model.config.block_size})")


if __name__ == "__main__":
    main()
