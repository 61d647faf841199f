"""Time to quality: val bits per character against wall time, for the quick start's baby run,
the speedrun preset and the same recipe in PyTorch, on this machine, one run after another.

    python benchmarks/time_to_quality.py                      # about 13 minutes
    python benchmarks/time_to_quality.py --budget 60 --png /tmp/ttq.png

The runs:
- baby: `python -m gpt.train`, as the quick start runs it (2000 steps, 9 evaluations);
- speedrun: `python -m gpt.train --preset speedrun --time-budget BUDGET --eval-interval 500`;
- PyTorch: `benchmarks/torch_train.py` with the speedrun's flags.
The speedrun evaluates every 500 steps here, on 20 random val batches, to draw its curve; those
evaluations cost time, so it takes fewer steps than the preset's run, which evaluates only at
the end. The last point of the speedrun and of PyTorch is over the whole val split. A point
is (seconds since the run's first step, val bits per character). It prints a table and draws
the picture (docs/time_to_quality.png by default; needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gpt.errors import UserError, exit_status  # noqa: E402

EVAL_INTERVAL = 500
# torch_train.py's evaluation line: "step N: train loss ..., val 2.345 bits per character, 12.3 s"
TORCH_EVALUATION = re.compile(r"^step (\d+): .* val ([0-9.]+) bits per character, ([0-9.]+) s$", re.M)


def run(command: list[str]) -> str:
    """A command's output; a UserError naming it and its last line where it fails."""
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"{' '.join(command[1:])} failed: {last}")
    return result.stdout


def nanograd_curve(flags: list[str], out_dir: Path) -> list[tuple[int, float, float]]:
    """(step, seconds, val bits per character) at each evaluation of a gpt.train run."""
    run([sys.executable, "-m", "gpt.train", *flags, "--out-dir", str(out_dir), "--overwrite", "--quiet",
         "--sample-tokens", "0"])
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["elapsed_s"], row["val_bpc"]) for row in rows]


def torch_curve(flags: list[str]) -> list[tuple[int, float, float]]:
    output = run([sys.executable, str(REPO / "benchmarks" / "torch_train.py"), *flags])
    return [(int(step), float(seconds), float(bpc)) for step, bpc, seconds in TORCH_EVALUATION.findall(output)]


def draw(curves: dict[str, list[tuple[int, float, float]]], path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in curves.items():
        ax.plot([s for _, s, _ in points], [b for _, _, b in points], marker="o", markersize=3, label=name)
        ax.annotate(f"{points[-1][2]:.3f}", (points[-1][1], points[-1][2]), textcoords="offset points",
                    xytext=(4, -12), fontsize=8)
    ax.axvline(budget, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("wall time since the first step (s)")
    ax.set_ylabel("val bits per character")
    ax.set_ylim(top=3.6)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Tiny shakespeare on this CPU: quality against time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for the speedrun and PyTorch runs")
    parser.add_argument("--png", default=str(REPO / "docs" / "time_to_quality.png"), help="the picture")
    parser.add_argument("--no-torch", action="store_true", help="leave the PyTorch run out")
    args = parser.parse_args(argv)
    if not args.budget > 0:
        raise UserError(f"--budget must be a number of seconds above 0, got {args.budget}")
    speedrun = ["--preset", "speedrun", "--time-budget", str(args.budget), "--eval-interval", str(EVAL_INTERVAL)]
    with tempfile.TemporaryDirectory() as scratch:
        curves = {"baby (python -m gpt.train)": nanograd_curve([], Path(scratch) / "baby"),
                  "speedrun, nanograd": nanograd_curve(speedrun, Path(scratch) / "speedrun")}
    if not args.no_torch:
        curves["speedrun, PyTorch eager"] = torch_curve(speedrun)
    print(f"{'run':<28} {'steps':>6} {'seconds':>8} {'val bits/char':>14}")
    for name, points in curves.items():
        step, seconds, bpc = points[-1]
        print(f"{name:<28} {step:>6} {seconds:>8.1f} {bpc:>14.4f}")
    draw(curves, Path(args.png), args.budget)


if __name__ == "__main__":
    sys.exit(exit_status(main))  # a bad flag or a failed run: one line, exit 2 (gpt.errors)
