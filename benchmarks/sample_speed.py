"""Generation speed of the baby GPT: tokens/s with the KV cache and with full recompute.

    python benchmarks/sample_speed.py                 # a randomly initialised baby model
    python benchmarks/sample_speed.py --out-dir out   # the trained checkpoint in out/
    python benchmarks/sample_speed.py --json
    python benchmarks/sample_speed.py --out-dir out-bpe --rounds 9   # a BPE run: its mask, and without it
    python benchmarks/sample_speed.py --out-dir out-bpe --rounds 101 --tokens 100 --versus 0c9dd19

Batch 1, one start token, 500 new tokens. Without the cache, every new token runs the whole
model over the last block_size tokens; with it, only the new token goes through the model,
attending to the keys and values kept from the earlier ones. Speed does not depend on the
weights, so a random model measures the same as a trained one. A checkpoint samples as
gpt.sample does: a byte-level BPE's through its UTF-8 mask (gpt.utf8). With --rounds, each
way runs that many times in turns (common.alternate, which lets the BLAS threads settle
between them), and the median is kept.

What a change costs is measured as the median, over the rounds, of the ratio of two cached
runs made one after the other: a change in the machine's speed hits both alike (it moved
tokens/s by 20-40% within minutes on the shared 2-core VM, while the ratio in a round moves
a few percent). Which runs first alternates, as the same code measured up to 8% apart by its
place in a round. Measured so: the UTF-8 mask (with it against without, for a BPE run), and,
with --versus COMMIT, this tree's sampling loop against the one at COMMIT, on the same model
(the commit's gpt.sampling, exported by git archive and imported as gpt_before, uses this
tree's model and nanograd).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, usable_device  # noqa: E402
from versus import export  # noqa: E402

import nanograd  # noqa: E402
from gpt import sampling  # noqa: E402
from gpt.checkpoint import checkpoint_path, load_run  # noqa: E402
from gpt.config import PRESETS, TrainConfig, build_model  # noqa: E402
from gpt.errors import UserError, exit_status  # noqa: E402

WARMUP_TOKENS = 20  # generated, untimed, before each timed run


def slowdown(before: Callable[[], object], after: Callable[[], object], rounds: int, device: str) -> float:
    """The median over rounds of after's time / before's, the two run one after the other in
    each round, `before` first in every other round (see the module docstring)."""
    ratios = []
    for i in range(rounds):
        pair = {"before": before, "after": after}
        seconds = alternate(pair if i % 2 == 0 else dict(reversed(pair.items())), 1, 1, device)
        ratios.append(seconds["after"] / seconds["before"])
    return statistics.median(ratios)


def sampling_at(commit: str, into: Path) -> ModuleType:
    """gpt.sampling as it was at commit, imported as gpt_before.sampling (the package's modules
    import each other by relative imports, so the copy under another name is whole)."""
    package = export(commit, into) / "gpt"
    spec = importlib.util.spec_from_file_location("gpt_before", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    sys.modules["gpt_before"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["gpt_before"])
    return importlib.import_module("gpt_before.sampling")


def main(argv: list[str] | None = None) -> None:
    nanograd.backend.keep_freed_memory()  # as gpt.train does: the same allocator for both implementations
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=None, help="load this run's checkpoint instead of a random model")
    p.add_argument("--tokens", type=int, default=500, help="new tokens to generate")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, default=1, help="timed runs of each way, in turns (the median is kept)")
    p.add_argument("--versus", metavar="COMMIT", default=None,
                   help="also compare the cached path with the sampling loop of this earlier commit")
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

    def run(tokens: int, use_cache: bool = True, mask: object = utf8_mask, loop: ModuleType = sampling) -> None:
        # the same seed each time: every run samples the same kind of text, token for token
        options = {"utf8_mask": mask} if loop is sampling else {}  # (an earlier loop has no mask)
        loop.generate(model, prompt, tokens, rng=np.random.default_rng(0), use_cache=use_cache, **options)

    ways = {"kv_cache": partial(run, use_cache=True), "recompute": partial(run, use_cache=False)}
    for way in ways.values():
        way(WARMUP_TOKENS)  # the first calls allocate memory and fill caches
    seconds = alternate({name: partial(way, args.tokens) for name, way in ways.items()}, args.rounds, 1, args.device)
    rates = {name: args.tokens / s for name, s in seconds.items()}
    speedup = rates["kv_cache"] / rates["recompute"]
    row = {"tokens": args.tokens, "device": args.device, "vocab_size": model.vocab_size, "rounds": args.rounds,
           "utf8_mask": utf8_mask is not None, "speedup": round(speedup, 2),
           **{f"{k}_tokens_per_s": round(v, 1) for k, v in rates.items()}}
    # above 1: slower than without the mask, or than at the earlier commit
    if utf8_mask is not None:
        row["mask_slowdown"] = round(slowdown(partial(run, args.tokens, mask=None), partial(run, args.tokens),
                                              args.rounds, args.device), 4)
    if args.versus:
        with tempfile.TemporaryDirectory(prefix="sample-speed-") as scratch:
            earlier = sampling_at(args.versus, Path(scratch))
            run(WARMUP_TOKENS, loop=earlier)
            before = partial(run, args.tokens, loop=earlier)
            row["versus"] = args.versus
            row["versus_slowdown"] = round(slowdown(before, partial(run, args.tokens), args.rounds, args.device), 4)
    if args.json:
        print(json.dumps(row))
    else:
        for name, rate in rates.items():
            print(f"{name:>9}: {rate:8,.0f} tokens/s")
        print(f"KV cache speed-up: {speedup:.1f}x ({args.tokens} tokens, batch 1, block {model.config.block_size}, "
              f"vocabulary {model.vocab_size})")
        if "mask_slowdown" in row:
            print(f"UTF-8 mask: cached sampling takes {row['mask_slowdown']:.3f}x the time it takes without")
        if "versus_slowdown" in row:
            print(f"cached sampling takes {row['versus_slowdown']:.3f}x the time it took at {args.versus}")


if __name__ == "__main__":
    sys.exit(exit_status(main))  # a bad flag or file: one line, exit 2 (gpt.errors)
