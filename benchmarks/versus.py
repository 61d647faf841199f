"""Training-step speed before and after a change: benchmarks/train_speed.py run in turns on
an earlier commit and on this working tree, so that a change in the machine's speed during
the run hits both alike.

    python benchmarks/versus.py HEAD~3 -- --preset baby            # 3 rounds of each, in turns
    python benchmarks/versus.py b630a77 --rounds 5 -- --preset bigram --steps 50
    python benchmarks/versus.py b630a77 --rounds 1 -- --sweep --rounds 3

The earlier commit is exported with `git archive` into a temporary folder, and each tree runs
train_speed.py with its own code (PYTHONPATH). The flags after `--` go to train_speed.py, with
--json added. Reported per configuration: the median over rounds of each tree's ms per step,
after / before (below 1: faster now), and, where PyTorch ran beside them, each tree's median
nanograd / torch tokens per second, a second view that the machine's drift cancels from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
from gpt.errors import UserError, exit_status  # noqa: E402

HERE = Path(__file__).resolve().parent.parent
SHAPE = ("preset", "batch_size", "block_size", "n_embd", "n_layer", "n_head")


def export(commit: str, into: Path) -> Path:
    """The tree of `commit` in the folder `into`, by git archive."""
    archive = subprocess.run(["git", "-C", str(HERE), "archive", commit], capture_output=True)
    if archive.returncode != 0:
        raise UserError(f"git archive {commit} failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def nanograd_rows(tree: Path, flags: list[str]) -> list[dict]:
    """train_speed.py's nanograd rows (one per configuration), run in `tree` with its code;
    each carries nanograd_over_torch when PyTorch ran too."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    run = subprocess.run([sys.executable, "benchmarks/train_speed.py", *flags, "--json"], cwd=tree, env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"train_speed.py failed in {tree} (exit status {run.returncode}):\n{run.stderr}")
    return [row for row in map(json.loads, run.stdout.splitlines()) if row["impl"] == "nanograd"]


def report(rows: dict[str, list[dict]]) -> None:
    """One line per configuration: median ms per step of each tree, their ratio, and the
    nanograd / torch ratios where there are any."""
    by_shape: dict[tuple, dict[str, list[dict]]] = {}
    for tree, tree_rows in rows.items():
        for row in tree_rows:
            by_shape.setdefault(tuple(row[k] for k in SHAPE), {}).setdefault(tree, []).append(row)
    print(f"{'preset':>7} {'B':>3} {'T':>4} {'C':>4} {'L':>2} {'nh':>2} | {'before ms':>9} {'after ms':>9} "
          f"{'after/before':>12} | vs torch before, after")
    for shape, trees in by_shape.items():
        before, after = (statistics.median(r["ms_per_step"] for r in trees[t]) for t in ("before", "after"))
        line = " ".join(f"{v:>{w}}" for v, w in zip(shape, (7, 3, 4, 4, 2, 2)))
        line += f" | {before:9.3f} {after:9.3f} {after / before:12.3f}"
        if all("nanograd_over_torch" in r for t in trees.values() for r in t):
            ratios = [statistics.median(r["nanograd_over_torch"] for r in trees[t]) for t in ("before", "after")]
            line += f" | {ratios[0]:.3f}x, {ratios[1]:.3f}x"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("commit", help="the earlier commit (anything git archive takes)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each tree, in turns: before, after, before, ...")
    args = p.parse_args(ours)
    if args.rounds < 1:
        raise UserError("--rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="versus-") as tmp:
        trees = {"before": export(args.commit, Path(tmp)), "after": HERE}
        rows: dict[str, list[dict]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                rows[name] += nanograd_rows(tree, flags)
        report(rows)


if __name__ == "__main__":
    sys.exit(exit_status(main))
