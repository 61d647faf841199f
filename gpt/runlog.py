"""A training run's log: what it shows while it trains, and the files that record it
(config.json, its settings; metrics.jsonl, a row per evaluation). Rank 0 alone keeps it.

What is shown: on a terminal, a progress bar (the loss, tokens/s and the time left) with the
run's notes printed above it; elsewhere (a log file, a pipe), a line every log_interval steps,
as nanoGPT's train.py prints; the evaluations in any case; with --quiet, the evaluations alone.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics, plots
from .checkpoint import TrainState

# Set by gpt.train for the MPI ranks it starts, whose output reaches the terminal through
# mpiexec's pipes: the terminal's width where it is one (a rank cannot see it for itself).
TERMINAL_COLUMNS = "GPT_TRAIN_TERMINAL_COLUMNS"


def terminal_columns() -> int | None:
    """The width of the terminal that this process's output ends up on, or None where it is none."""
    if sys.stderr.isatty():
        return os.get_terminal_size(sys.stderr.fileno()).columns
    inherited = os.environ.get(TERMINAL_COLUMNS, "")
    return int(inherited) if inherited.isdigit() else None


class RunLog:
    """The log of one training session, from step `start` to `steps`, in out_dir; shown=False
    on every rank but rank 0, where it does nothing. Used as a context manager: leaving it
    closes the bar. chars_per_target: see chars_per_target."""

    def __init__(self, out_dir: Path, steps: int, start: int, tokens_per_step: int, log_interval: int,
                 chars_per_target: dict[str, float], quiet: bool, shown: bool) -> None:
        self.out_dir, self.tokens_per_step, self.log_interval = out_dir, tokens_per_step, log_interval
        self.chars_per_target, self.shown, self.chatty = chars_per_target, shown, shown and not quiet
        self.path = out_dir / "metrics.jsonl"
        rows = metrics.keep_rows_until(self.path, start) if shown and start else []
        if shown and not start:
            self.path.write_text("")
        self.last_row = rows[-1] if rows else {}
        columns = terminal_columns() if self.chatty else None
        self.bar = _bar(steps, start, columns) if columns else None
        self.step_seconds: list[float] = []  # this session's training steps (evaluations not counted)
        self.evaluations = 0  # this session's
        self.logged_seconds, self.logged_steps = 0.0, 0  # since the last log line
        self.eval_shown_at = -math.inf

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    @property
    def train_steps(self) -> int:
        return len(self.step_seconds)

    def set_steps(self, steps: int) -> None:
        """The run's length, chosen as it trains (--time-budget)."""
        if self.bar is not None:
            self.bar.total = steps
            self.bar.refresh()

    def record_settings(self, settings: dict[str, Any]) -> None:
        """config.json: the run's settings, as they stand."""
        if self.shown:
            (self.out_dir / "config.json").write_text(json.dumps(settings, indent=2) + "\n")

    def note(self, message: str) -> None:
        """A line about the run (not shown with --quiet)."""
        if self.chatty:
            self._write(message)

    def _write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)  # above the bar, which is drawn again below it
        else:
            print(message, flush=True)

    def evaluating(self, split: str, done: int, batches: int) -> None:
        """How far the evaluation of a split has come (on the bar, a few times a second at most)."""
        if self.bar is not None and time.perf_counter() - self.eval_shown_at > self.bar.mininterval:
            self.bar.set_postfix_str(f"evaluating {split} loss: batch {done}/{batches}")
            self.eval_shown_at = time.perf_counter()

    def evaluation(self, state: TrainState, losses: dict[str, float], grad_norm: float, lr: float,
                   sets: dict[str, str] | None = None) -> None:
        """An evaluation: its line, shown even with --quiet, and its row in metrics.jsonl. Its
        time counts for neither the bar's speed nor its time left. sets: which evaluation
        batches each split's loss came from (chars_per_target's keys), where not the split's own."""
        sets = sets or {split: split for split in losses}
        bpc = {split: loss / self.chars_per_target[sets[split]] / math.log(2) for split, loss in losses.items()}
        row = {"step": state.step, **{f"{split}_loss": loss for split, loss in losses.items()},
               **{f"{split}_bpc": value for split, value in bpc.items()},
               "lr": lr, "grad_norm": None if math.isnan(grad_norm) else grad_norm,
               "clipped_steps": state.clipped_steps, "elapsed_s": round(state.elapsed(), 3),
               "tokens_per_s": round(self.tokens_per_s(), 1) if self.train_steps else None}
        health = "" if math.isnan(grad_norm) else f", grad norm {grad_norm:.3f}, clipped steps {state.clipped_steps}"
        if self.shown:
            self._write(f"step {state.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{health}, "
                        f"val {bpc['val']:.3f} bits per character")
            metrics.append_row(self.path, row)
        self.last_row = row
        self.evaluations += 1
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)
            self.bar.unpause()

    def step(self, state: TrainState, loss: float, grad_norm: float, seconds: float) -> None:
        """A training step that took `seconds` (state.step: the steps done so far)."""
        self.step_seconds.append(seconds)
        self.logged_seconds += seconds
        self.logged_steps += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", gnorm=f"{grad_norm:.2f}", tok_s=f"{self.tokens_per_s():,.0f}",
                                 refresh=False)
            self.bar.update(1)
        elif self.chatty and state.step % self.log_interval == 0:
            tokens_per_s = self.tokens_per_step * self.logged_steps / self.logged_seconds
            print(f"step {state.step}: loss {loss:.4f}, {1000 * self.logged_seconds / self.logged_steps:.1f} ms/step, "
                  f"{tokens_per_s:,.0f} tokens/s", flush=True)
            self.logged_seconds, self.logged_steps = 0.0, 0

    def tokens_per_s(self) -> float:
        """This session's training speed, in its training steps alone."""
        return self.tokens_per_step * self.train_steps / sum(self.step_seconds)

    def done(self, state: TrainState, checkpoint: Path) -> None:
        """The loss curve (loss.png), and the run's last line."""
        if self.shown:
            self.note(plots.plot_losses(self.path, self.out_dir / "loss.png"))
        speed = f" ({self.tokens_per_s():,.0f} tokens/s in training steps)" if self.train_steps else ""
        self.note(f"done: {state.step} steps in {state.elapsed():.1f}s{speed}, "
                  f"val loss {self.last_row.get('val_loss', math.nan):.4f}; checkpoint {checkpoint}")


def chars_per_target(tokenizer: Any, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The characters that the target tokens of these batches stand for, on average: a BPE
    token stands for several, and a loss per token over it is a loss per character, which
    compares runs with different tokenizers."""
    return float(tokenizer.chars_per_token[np.concatenate([y.reshape(-1) for _, y in batches])].mean())


def _bar(steps: int, start: int, columns: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=steps, initial=start, unit="step", ncols=columns, file=sys.stderr)
