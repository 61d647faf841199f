"""Peak memory of tokenizing a corpus larger than one would read whole (gpt.prepare streams it).

    python benchmarks/prepare_memory.py                       # a 1 GB synthetic text, BPE 4096
    python benchmarks/prepare_memory.py --gb 0.1 --tokenizer char

The synthetic text is tiny shakespeare's lines shuffled over and over (a fixed seed) up to
--gb gigabytes, written once to --work-dir (default out-prepare-memory/, reused when present).
`python -m gpt.prepare` then tokenizes it in a child process with an empty cache, and the
child's peak resident memory (getrusage's ru_maxrss, the high-water mark of its pages in
RAM) is reported beside the size of the text; also the time each run took.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gpt.errors import UserError, exit_status  # noqa: E402

SHAKESPEARE = REPO / "data" / "tinyshakespeare" / "input.txt"


def synthetic_text(path: Path, size: int, seed: int = 0) -> None:
    """`size` bytes (about) of tiny shakespeare's lines in random order, written piece by piece."""
    if not SHAKESPEARE.exists():
        raise UserError(f"tiny shakespeare is not at {SHAKESPEARE} (python -m gpt.train downloads it)")
    lines = SHAKESPEARE.read_text().splitlines(keepends=True)
    rng = random.Random(seed)
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            rng.shuffle(lines)
            piece = "".join(lines)
            f.write(piece)
            written += len(piece.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the synthetic text (10^9 bytes)")
    parser.add_argument("--tokenizer", default="bpe", choices=["char", "bpe"])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--work-dir", default=str(REPO / "out-prepare-memory"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def run() -> None:
        if not args.gb > 0:
            raise UserError(f"--gb must be positive, got {args.gb}")
        text = Path(args.work_dir) / f"synthetic-{args.gb:g}gb.txt"
        if not text.exists() or text.stat().st_size < args.gb * 1e9:
            synthetic_text(text, int(args.gb * 1e9))
        shutil.rmtree(text.parent / "tokenized", ignore_errors=True)  # an empty cache: the whole job
        command = [sys.executable, "-m", "gpt.prepare", "--data", str(text), "--tokenizer", args.tokenizer]
        if args.tokenizer == "bpe":
            command += ["--vocab-size", str(args.vocab_size)]
        t0 = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if result.returncode != 0:
            raise UserError(f"gpt.prepare failed: {result.stderr.strip().splitlines()[-1]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # (Linux reports KiB)
        row = {"text_bytes": text.stat().st_size, "tokenizer": args.tokenizer,
               "vocab_size": args.vocab_size if args.tokenizer == "bpe" else None,
               "peak_rss_bytes": peak, "seconds": round(seconds, 1), "prepare_output": result.stdout.strip()}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['text_bytes'] / 1e9:.2f} GB of text, {args.tokenizer}: peak memory {peak / 2**20:,.0f} MiB, "
                  f"{seconds:.0f} s\n{row['prepare_output']}")

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
