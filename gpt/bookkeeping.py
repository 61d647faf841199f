"""What a training run keeps track of around its steps (gpt.train runs the steps): the run it
must not replace, the state it resumes, its checkpoints and metrics.jsonl, the progress bar,
and Ctrl-C. Rank 0 alone writes the run's files and prints.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nanograd import backend, nn, optim
from nanograd.distributed import World

from . import plots, ranks
from .checkpoint import SavedRun, checkpoint_path, load_checkpoint, rng_from_json, rng_state_to_json, save_run
from .config import TrainConfig
from .errors import Interrupted, UserError, every_rank
from .fileio import atomic_write
from .tokenizer import Tokenizer

SPLITS = ("train", "val")


def refuse_to_replace_a_run(config: TrainConfig, resumed: SavedRun | None) -> None:
    """A new run does not write over an earlier one unless --overwrite says so; a resumed run
    goes on only from the checkpoint it read (another run may have written one since)."""
    out_dir = Path(config.out_dir)
    earlier = [path for path in (checkpoint_path(out_dir), checkpoint_path(out_dir, best=True)) if path.exists()]
    if resumed is None and earlier and not config.overwrite:
        raise UserError(f"{out_dir} holds an earlier run ({earlier[0]}): continue it with --resume, start "
                        "over with --overwrite (its checkpoints are replaced), or choose another --out-dir")
    if resumed is not None and load_checkpoint(checkpoint_path(out_dir))[1] != resumed.meta:
        raise UserError(f"{checkpoint_path(out_dir)} was written by another run after this one read it: "
                        "run --resume again to continue from it")


def run_log(config: TrainConfig, world: World) -> Callable[[str], None]:
    """How the run's notes are printed: beside the progress bar, plainly with --quiet, and only
    by rank 0, which speaks for the run."""
    if world.rank != 0:
        return lambda message: None
    return print if config.quiet else _tqdm_write


class Bookkeeper:
    """The run's counters, files and progress, from its start (or resume) to its end.

    Used as a context manager around the training loop: while inside, a first Ctrl-C only sets
    a flag that the loop checks between steps (stop_if_requested), so that a checkpoint is never
    taken of a half-updated model; a second Ctrl-C interrupts at once.
    """

    def __init__(self, config: TrainConfig, world: World, log: Callable[[str], None], model: nn.Module,
                 optimizer: optim.AdamW, tokenizer: Tokenizer, eval_batches: dict[str, list],
                 resumed: SavedRun | None) -> None:
        self.config, self.world, self.log = config, world, log
        self.model, self.optimizer, self.tokenizer = model, optimizer, tokenizer
        self.out_dir = Path(config.out_dir)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.batch_rng = np.random.default_rng(config.seed)  # every rank draws the same batches, and takes its share
        self.state = {"step": 0, "best_val_loss": math.inf, "clipped_steps": 0, "elapsed_s": 0.0}
        if resumed is not None:
            self._restore(resumed)
        # a BPE token stands for several characters: a split's mean loss per token over its mean
        # characters per predicted token is its loss per character, comparable across tokenizers
        chars_per_token = tokenizer.chars_per_token  # (V,)
        self.chars_per_target = {split: float(np.mean([chars_per_token[y].mean() for _, y in batches]))
                                 for split, batches in eval_batches.items()}
        self.row = ranks.from_rank0(world, lambda: self._start_files(resumed is None))  # the last evaluation's
        self.evaluated_step = self.row.get("step")  # resumed right after an evaluation: not again at that step
        self.grad_norm = math.nan  # the last step's, before clipping
        self.bar = None if config.quiet or world.rank != 0 else _progress(config.max_iters, self.state["step"])
        self.started = time.perf_counter() - self.state["elapsed_s"]
        self.train_seconds, self.train_steps = 0.0, 0  # this session's time in training steps (no evals)
        self.stop_requested = False

    def _restore(self, resumed: SavedRun) -> None:
        """The optimizer's moments, the batch generator and the counters of the checkpoint."""
        meta, path = resumed.meta, checkpoint_path(self.out_dir)
        try:
            _check_counters(meta)
            self.optimizer.load_state_dict({"t": meta["optimizer_t"], **{
                k[len("optim."):]: v for k, v in resumed.arrays.items() if k.startswith("optim.")}})
            self.batch_rng = rng_from_json(meta["batch_rng"])
            self.state.update({k: meta[k] for k in self.state})
        except (KeyError, TypeError, ValueError) as exc:  # (every rank has the same checkpoint's numbers)
            raise every_rank(UserError(f"{path} holds no usable training state to resume from "
                                       f"(missing or bad: {exc}); it can still be sampled from")) from None
        self.log(f"resuming {path} at step {self.state['step']}")

    def _start_files(self, new_run: bool) -> dict[str, Any]:
        """config.json, and metrics.jsonl as of this step; the last evaluation's row, if any."""
        record = {**vars(self.config), "n_params": self.model.num_parameters()}
        (self.out_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")
        if new_run:
            self.metrics_path.write_text("")
            return {}
        return _keep_metrics_until(self.metrics_path, self.state["step"])

    def __enter__(self) -> Bookkeeper:
        self.previous_handler = signal.signal(signal.SIGINT, self._on_ctrl_c)
        return self

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous_handler)
        if self.bar is not None:
            self.bar.close()

    def stop_if_requested(self) -> None:
        """After Ctrl-C (on any rank: they decide together): save the model as it stands, and stop."""
        if self.world.any(self.stop_requested):
            self.state["elapsed_s"] = time.perf_counter() - self.started
            self.save(checkpoint_path(self.out_dir))
            raise every_rank(Interrupted(f"interrupted: saved step {self.state['step']} to "
                                         f"{checkpoint_path(self.out_dir)} (continue with --resume "
                                         f"--out-dir {self.out_dir})"))

    def evaluation_due(self) -> bool:
        step = self.state["step"]
        return step != self.evaluated_step and (step % self.config.eval_interval == 0 or step == self.config.max_iters)

    def after_eval_round(self, split: str) -> Callable[[int], None]:
        """What an evaluation does after each round of batches: stop at once on Ctrl-C, and
        say on the bar how far it has come."""
        shown_at = -math.inf

        def after_round(done: int) -> None:
            nonlocal shown_at
            self.stop_if_requested()
            if self.bar is not None and time.perf_counter() - shown_at > self.bar.mininterval:
                self.bar.set_postfix_str(f"evaluating {split} loss: batch {done}/{self.config.eval_iters}")
                shown_at = time.perf_counter()
        return after_round

    def record_evaluation(self, losses: dict[str, float], lr: float) -> None:
        """Log the evaluation, append it to metrics.jsonl and save the checkpoints (best.npz too
        where the val loss is the lowest yet); a loss that is not finite stops the run instead."""
        step, state = self.state["step"], self.state
        state["elapsed_s"] = time.perf_counter() - self.started
        for split, loss in losses.items():  # never save a diverged model over a good one
            if not math.isfinite(loss):
                raise every_rank(self._diverged(f"the {split} loss became {loss} by step {step}"))
        row = {"step": step, **{f"{split}_loss": losses[split] for split in SPLITS},
               **{f"{split}_bpc": losses[split] / self.chars_per_target[split] / math.log(2) for split in SPLITS},
               "lr": lr, "grad_norm": None if math.isnan(self.grad_norm) else self.grad_norm,
               "clipped_steps": state["clipped_steps"], "elapsed_s": round(state["elapsed_s"], 3),
               "tokens_per_s": round(self._tokens_per_s(), 1) if self.train_steps else None}
        if self.world.rank == 0:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        health = "" if math.isnan(self.grad_norm) else \
            f", grad norm {self.grad_norm:.3f}, clipped steps {state['clipped_steps']}"
        self.log(f"step {step}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}{health}, "
                 f"val {row['val_bpc']:.3f} bits per character")
        if row["val_loss"] < state["best_val_loss"]:
            state["best_val_loss"] = row["val_loss"]
            self.save(checkpoint_path(self.out_dir, best=True))
        self.save(checkpoint_path(self.out_dir))
        self.row = row

    def record_step(self, loss: float, grad_norm: float, seconds: float) -> None:
        """Count a training step that took `seconds`; a loss that is not finite stops the run."""
        if not math.isfinite(loss):
            raise every_rank(self._diverged(f"the loss became {loss} at step {self.state['step']}"))
        self.grad_norm = grad_norm
        self.state["clipped_steps"] += bool(self.config.grad_clip and grad_norm > self.config.grad_clip)
        self.state["step"] += 1
        self.train_seconds += seconds
        self.train_steps += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", gnorm=f"{grad_norm:.2f}", tok_s=f"{self._tokens_per_s():,.0f}",
                                 refresh=False)
            self.bar.update(1)

    def _tokens_per_s(self) -> float:
        return self.train_steps * self.config.batch_size * self.config.block_size / self.train_seconds

    def save(self, path: Path) -> None:
        """The run as it stands, on rank 0; weights that are no longer finite stop the run instead."""
        if not all(bool(backend.array_module(p.data).isfinite(p.data).all()) for p in self.model.parameters()):
            raise every_rank(self._diverged(f"the weights stopped being finite by step {self.state['step']}"))
        if self.world.rank != 0:
            return
        try:
            save_run(path, self.model, self.optimizer, self.config, self.tokenizer,
                     {**self.state, "batch_rng": rng_state_to_json(self.batch_rng)})
        except OSError as exc:
            raise UserError(f"could not write {path} ({exc.strerror or exc}); "
                            "the checkpoint there before, if any, is intact") from None

    def _diverged(self, what: str) -> UserError:
        """The error that stops a run whose loss is no longer finite, naming what it leaves behind."""
        path = checkpoint_path(self.out_dir)
        kept = f"the last good checkpoint is {path}" if path.exists() else "no checkpoint was written"
        return UserError(f"{what}; {kept} (try a lower --lr)")

    def finish(self) -> None:
        """The loss curve and a last note, on rank 0 (after the with-block, which closed the bar)."""
        if self.world.rank != 0:
            return
        elapsed = time.perf_counter() - self.started
        self.log(plots.plot_losses(self.metrics_path, self.out_dir / "loss.png"))
        self.log(f"done: {self.state['step']} steps in {elapsed:.1f}s, "
                 f"val loss {self.row.get('val_loss', float('nan')):.4f}; checkpoint {checkpoint_path(self.out_dir)}")


def _check_counters(meta: dict[str, Any]) -> None:
    """Raise ValueError unless the saved counters are what a run writes."""
    for key in ("step", "optimizer_t", "clipped_steps"):
        if type(meta[key]) is not int or meta[key] < 0:
            raise ValueError(f"{key} {meta[key]!r} is not a whole number >= 0")
    for key in ("best_val_loss", "elapsed_s"):  # (best_val_loss is inf before any evaluation)
        if type(meta[key]) not in (int, float) or not meta[key] >= 0:
            raise ValueError(f"{key} {meta[key]!r} is not a number >= 0")


def _keep_metrics_until(metrics_path: Path, step: int) -> dict[str, Any]:
    """Keep the evaluations that a checkpoint of `step` includes, and return the latest ({} if none).

    Rows after it come from a run that stopped before saving them (a failed save, a second
    Ctrl-C mid-save), and a line cut short by a crash is no row at all: both are dropped, so
    that the resumed run evaluates those steps again and the file stays in step order."""
    rows = []
    for line in (metrics_path.read_text().splitlines() if metrics_path.exists() else []):
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        if isinstance(row, dict) and type(row.get("step")) is int and row["step"] <= step:
            rows.append(row)
    atomic_write(metrics_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return rows[-1] if rows else {}


def _progress(total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)


def _tqdm_write(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
