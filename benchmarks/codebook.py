"""The codebook trade-off, measured: the character tokenizer against BPE at several sizes, on
one corpus, with one model and one machine.

    python benchmarks/codebook.py                              # char and BPE 256..4096, baby model
    python benchmarks/codebook.py --vocab-sizes 512 1024 --max-iters 500 --png codebook.png
    python benchmarks/codebook.py --json

For each tokenizer (gpt.prepare, trained on the train split only):
- characters per token on the val split, and the characters a 256-token block covers;
- the embedding and output-layer parameters (one shared V x C matrix in the baby model, whose
  weights are tied) and their share of the model;
- the share of the vocabulary seen fewer than 10 times in the train split (tokens the model
  barely learns);
- the tokenizer's training time (BPETokenizer.train on the train split: chunks, counts, merges);
- the baby model's val bits per character after the same number of steps (same batch and
  block in tokens, so a BPE model sees more text per step) and after the same training time
  (the char run's: each other run's val bits per character at that time, read off its
  evaluations by linear interpolation).

Each model is a `python -m gpt.train` run in out-codebook/<tokenizer>/ (replaced each time,
unless --reuse-runs finds a finished one there); the runs take minutes each: this is a
benchmark, not a test. Training time is not read from those runs, which a busy machine slows
unevenly: each tokenizer's step time is measured afterwards in short runs (--timing-steps
steps, no evaluation) that take turns, --rounds times, and the fastest is used (other load
only ever adds time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gpt.bpe import N_BYTES, BPETokenizer  # noqa: E402
from gpt.config import PRESETS  # noqa: E402
from gpt.errors import UserError, exit_status  # noqa: E402
from gpt.prepare import prepare  # noqa: E402

RARE = 10  # a token seen fewer times than this in the train split counts as rare
BLOCK_TOKENS = 256  # the block of the lecture's final model


def tokenizer_seconds(text: str, vocab_size: int) -> float:
    """Time to learn the merges from the text (splitting and counting its chunks included)."""
    t0 = time.perf_counter()
    BPETokenizer.train(text, vocab_size)
    return time.perf_counter() - t0


def train_run(out_dir: Path, flags: list[str], max_iters: int, eval_interval: int,
              args: argparse.Namespace) -> list[dict]:
    """A baby model trained with these tokenizer flags into out_dir; its metrics rows."""
    command = [sys.executable, "-m", "gpt.train", *flags, "--out-dir", str(out_dir), "--overwrite", "--quiet",
               "--max-iters", str(max_iters), "--eval-interval", str(eval_interval), "--sample-tokens", "0"]
    if args.data:
        command += ["--data", args.data]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{' '.join(command[1:])} failed: {result.stderr.strip().splitlines()[-1]}")
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def finished_rows(out_dir: Path, max_iters: int) -> list[dict] | None:
    """The metrics of a run of max_iters steps already in out_dir (--reuse-runs), else None."""
    try:
        rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return None
    return rows if rows and rows[-1]["step"] == max_iters else None


def seconds_per_step(settings: list[tuple[str, list[str], int | None]], args: argparse.Namespace) -> dict[str, float]:
    """Each tokenizer's training step time: the fastest of --rounds short runs taken in turns."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in settings}
    tokens_per_step = PRESETS["baby"]["batch_size"] * PRESETS["baby"]["block_size"]
    for _ in range(args.rounds):
        for name, flags, _ in settings:
            rows = train_run(REPO / "out-codebook" / f"timing-{name}", flags + ["--eval-iters", "1"],
                             args.timing_steps, args.timing_steps, args)
            times[name].append(tokens_per_step / rows[-1]["tokens_per_s"])
    return {name: min(t) for name, t in times.items()}


def bpc_at(rows: list[dict], seconds: float, step_seconds: float) -> float | None:
    """Val bits per character after `seconds` of training, between the evaluations around it."""
    times = [r["step"] * step_seconds for r in rows]
    if seconds > times[-1]:
        return None
    return float(np.interp(seconds, times, [r["val_bpc"] for r in rows]))


def measure(args: argparse.Namespace) -> list[dict]:
    baby = PRESETS["baby"]
    C = baby["n_embd"]
    settings = [("char", ["--tokenizer", "char"], None)] + [
        (f"bpe-{v}", ["--tokenizer", "bpe", "--vocab-size", str(v)], v) for v in args.vocab_sizes]
    results = []
    for name, flags, vocab_size in settings:
        corpus = prepare(args.data, "bpe" if vocab_size else "char", vocab_size, log=lambda m: None,
                         show_progress=False)
        V = corpus.tokenizer.vocab_size
        out_dir = REPO / "out-codebook" / name
        rows = (args.reuse_runs and finished_rows(out_dir, args.max_iters)) or \
            train_run(out_dir, flags, args.max_iters, args.eval_interval, args)
        n_params = json.loads((out_dir / "config.json").read_text())["n_params"]
        seen = np.bincount(np.asarray(corpus.train), minlength=V)
        train_text = corpus.source.read_text(encoding="utf-8")[: corpus.train_chars] if vocab_size else ""
        results.append({
            "tokenizer": name, "vocab_size": V,
            "chars_per_token": corpus.val_chars / len(corpus.val),
            "block_chars": BLOCK_TOKENS * corpus.val_chars / len(corpus.val),
            "embedding_params": V * C, "embedding_share": V * C / n_params, "n_params": n_params,
            "rare_share": float(np.mean(seen < RARE)),
            "tokenizer_s": tokenizer_seconds(train_text, vocab_size) if vocab_size else 0.0,
            "steps": rows[-1]["step"], "val_bpc": rows[-1]["val_bpc"], "rows": rows,
        })
    step_seconds = seconds_per_step(settings, args)
    for r in results:
        r["ms_per_step"] = 1000 * step_seconds[r["tokenizer"]]
        r["train_s"] = r["steps"] * step_seconds[r["tokenizer"]]
    budget = results[0]["train_s"]  # the char model's training time
    for r in results:
        r["val_bpc_same_time"] = bpc_at(r["rows"], budget, step_seconds[r["tokenizer"]])
        r["same_time_s"] = budget
    return results


def table(results: list[dict]) -> str:
    lines = ["| tokenizer | V | chars/token (val) | chars in 256 tokens | embedding params (share) | "
             f"seen < {RARE}x in train | tokenizer training | val bits/char, {results[0]['steps']} steps | "
             f"val bits/char, {results[0]['same_time_s']:.0f} s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        same_time = "-" if r["val_bpc_same_time"] is None else f"{r['val_bpc_same_time']:.3f}"
        lines.append(f"| {r['tokenizer']} | {r['vocab_size']} | {r['chars_per_token']:.2f} | {r['block_chars']:.0f} | "
                     f"{r['embedding_params']:,} ({r['embedding_share']:.0%}) | {r['rare_share']:.1%} | "
                     f"{r['tokenizer_s']:.2f} s | {r['val_bpc']:.3f} ({r['ms_per_step']:.0f} ms/step) | {same_time} |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bpe = [r for r in results if r["tokenizer"] != "char"]
    char = results[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = [r["vocab_size"] for r in bpe]
    ax.plot(sizes, [r["val_bpc"] for r in bpe], "o-", label=f"BPE: val bits/char after {char['steps']} steps")
    same = [(r["vocab_size"], r["val_bpc_same_time"]) for r in bpe if r["val_bpc_same_time"] is not None]
    ax.plot(*zip(*same), "s--", label=f"BPE: val bits/char after {char['same_time_s']:.0f} s of training")
    ax.axhline(char["val_bpc"], color="gray", ls=":", label=f"characters (V {char['vocab_size']})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size")
    ax.set_ylabel("val bits per character")
    ax2 = ax.twinx()
    ax2.plot(sizes, [r["chars_per_token"] for r in bpe], "^-", color="tab:green", label="characters per token")
    ax2.set_ylabel("characters per token", color="tab:green")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--max-iters", type=int, default=PRESETS["baby"]["max_iters"])
    parser.add_argument("--eval-interval", type=int, default=100, help="steps between evaluations (the curves)")
    parser.add_argument("--data", default=None, help="UTF-8 text file (default: tiny shakespeare)")
    parser.add_argument("--png", default=None, help="write the plot here (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="one JSON object per tokenizer, rows included")
    parser.add_argument("--reuse-runs", action="store_true",
                        help="read the models' metrics from out-codebook/ where a run of --max-iters steps is there")
    parser.add_argument("--timing-steps", type=int, default=100, help="steps of each timing run")
    parser.add_argument("--rounds", type=int, default=5, help="timing runs of each tokenizer, in turns")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data:  # the runs start in the repository: a path relative to here must still name the file
        args.data = str(Path(args.data).resolve())
    os.chdir(REPO)  # (the default corpus is data/tinyshakespeare/input.txt there, for this process and the runs)

    def run() -> None:
        if min(args.max_iters, args.eval_interval, args.timing_steps, args.rounds) <= 0:
            raise UserError("--max-iters, --eval-interval, --timing-steps and --rounds must be positive")
        if min(args.vocab_sizes) < N_BYTES:
            raise UserError(f"--vocab-sizes must be at least {N_BYTES}")
        results = measure(args)
        if args.json:
            for r in results:
                print(json.dumps(r))
        else:
            print(table(results))
        if args.png:
            plot(results, args.png)

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
