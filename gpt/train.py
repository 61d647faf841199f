"""Train a GPT (or the lecture's bigram) on a text:  python -m gpt.train [--preset NAME] [flags]

The file reads as nanoGPT's train.py: the settings, the data, the model and the optimizer,
then the loop. Each step draws a batch of (context, next token) pairs, computes the loss,
backpropagates, sums the gradients over the processes, clips them and takes an optimizer
step (AdamW; or Muon for the matrices and AdamW for the rest). Every eval_interval steps
the loop estimates the train and val loss on fixed batches, logs them to metrics.jsonl and
saves a checkpoint (ckpt.npz, and best.npz at the lowest val loss).

Data parallelism: where a second process pays (TrainConfig.data_parallel_workers), the run
starts itself again as MPI ranks under mpiexec. Each rank holds the whole model and computes
the gradient of its share of every batch, and one Allreduce sums the shares before the update
(nanograd.distributed). Everything a user can get wrong is checked by one process before any
rank trains, so the ranks need agree on nothing but each step's numbers: the loss, and whether
Ctrl-C asks them to stop. Rank 0 alone writes files and prints; a rank that fails on its own
ends the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import nanograd
from nanograd import backend, distributed, nn, no_grad, optim

from . import sampling
from .budget import step_and_evaluation_seconds, steps_that_fit
from .checkpoint import (
    SavedRun,
    TrainState,
    checkpoint_path,
    load_checkpoint,
    load_run,
    not_finite,
    resume_training,
    run_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig, build_model, build_parser, check_device, check_run_settings, resolve
from .data import TokenDataset
from .errors import Diverged, Interrupted, UserError, attempt, ctrl_c_sets_a_flag, exit_status
from .fileio import claim_directory
from .memory import check_memory, memory_lower_bound
from .prepare import prepare
from .runlog import TERMINAL_COLUMNS, RunLog, chars_per_target, terminal_columns
from .tokenizer import Tokenizer

SPLITS = ("train", "val")
TrainOptimizer = optim.AdamW | optim.Optimizers  # AdamW, or Muon and AdamW (make_optimizer)
WHOLE_VAL = "whole val"  # the evaluation batches that cover the val split (eval_all_val)
NO_MPI = "note: MPI is not installed (pip install mpi4py mpich): training in one process"
INTERRUPTED = "interrupted: the last checkpoint written, if any, is intact"


class StopRequested(Exception):
    """Ctrl-C, as every rank learned it at the end of a step or in a round of an evaluation."""


@dataclass
class Run:
    """A run that passed every check, as rank 0 sends it to the other ranks."""

    config: TrainConfig
    tokenizer: Tokenizer
    resumed: SavedRun | None  # the checkpoint it continues
    processes: int


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    world = distributed.world()  # this job's MPI ranks, or this process alone
    with contextlib.ExitStack() as held:  # what rank 0 holds while the run trains: its out dir
        # everything a user can get wrong, checked by one process before any rank trains
        status, run = world.broadcast(attempt(lambda: open_run(argv, world, held)) if world.rank == 0 else None)
        if run is None:  # refused (rank 0 said why), or nothing to do
            return status or 0
        if run.processes > 1 and not distributed.launched_by_mpi():  # this command again, as MPI ranks
            held.close()  # (their rank 0 claims the out dir again)
            # their output reaches the terminal through mpiexec's pipes: tell them whether it is one
            environment = {**os.environ, TERMINAL_COLUMNS: str(terminal_columns() or "")}
            return distributed.run_as_ranks(distributed.find_mpiexec(), run.processes,
                                            [sys.executable, "-m", "gpt.train", *argv], environment)
        backend.keep_freed_memory()  # each step reuses the last one's memory instead of faulting it in again
        world.share_the_machine(run.config.device)
        return exit_status(lambda: train(run, world), INTERRUPTED, world)


def open_run(argv: list[str], world: distributed.World, held: contextlib.ExitStack) -> Run | None:
    """The run the flags ask for, with everything a user can get wrong checked in turn: the
    flags, the checkpoint to resume, the data, the memory and the out dir (claimed into held).
    None where there is nothing to do: the run to resume is finished."""
    args = build_parser("python -m gpt.train", "Train a GPT (or the bigram) with nanograd.").parse_args(argv)
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out-dir and --overwrite replaces it: give one")
    args.out_dir = args.out_dir or "out"  # (a resumed run goes on where it was read from)
    path = checkpoint_path(args.out_dir)
    resumed = load_run(path, resuming=True) if args.resume else None
    config = resolve(args, saved=vars(resumed.config) if resumed else None)
    kept_from = path if resumed and args.device is None else None  # a resumed run keeps its device
    config = dataclasses.replace(config, device=check_device(config.device, kept_from))
    launched = distributed.launched_by_mpi()  # by hand, or by this command itself (main)
    processes, on_this_machine = (world.size, world.local_size) if launched else (config.data_parallel_workers(),) * 2
    if processes > 1 and not launched and distributed.find_mpiexec() is None:
        print(NO_MPI, file=sys.stderr)
        processes = on_this_machine = 1
    check_run_settings(config, processes, launched)
    if resumed is not None and is_finished(resume_training(resumed, make_optimizer(resumed.model, config), path),
                                           config):  # (its training state checked on the way)
        return None
    corpus = prepare(config.data, config.tokenizer, config.vocab_size, config.val_fraction,
                     saved_tokenizer=resumed.tokenizer if resumed else None, show_progress=not config.quiet)
    corpus.dataset().check_block_size(config.block_size, "use a longer text" + (
        " (a resumed run keeps its block size)" if resumed else " or a smaller --block-size"))
    if config.device == "cpu":  # (a GPU's memory is its own: CuPy raises a MemoryError there)
        check_memory(memory_lower_bound(config, corpus.tokenizer.vocab_size, training=True,
                                        processes=on_this_machine), "training this model")
    held.enter_context(claim_directory(Path(config.out_dir)))
    refuse_to_replace_a_run(config, resumed)
    return Run(config, corpus.tokenizer, resumed, processes)


def is_finished(state: TrainState, config: TrainConfig) -> bool:
    """Whether a resumed run has taken its max_iters steps and its last evaluation (it then
    says so, and nothing is changed)."""
    if state.step < config.max_iters or state.evaluated_step != state.step:
        return False
    print(f"the run in {config.out_dir} is finished: it took its {state.step} steps (--max-iters "
          f"{config.max_iters}) and was evaluated there; a larger --max-iters trains it on")
    return True


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


def train(run: Run, world: distributed.World) -> None:
    """The run, on this rank: the data, the model and the optimizer, then the loop."""
    config = dataclasses.replace(run.config, workers=run.processes)  # (a resumed run records its own count)
    writes = world.rank == 0  # rank 0 alone writes the run's files and prints
    dataset, eval_batches = load_data(config, run.tokenizer)
    model, optimizer, state = model_and_optimizer(run, config, dataset.vocab_size, world)  # the same on every rank
    log = start_log(config, model, dataset, eval_batches, state, writes)
    # (the loop checks for values that are not finite itself: NumPy's warnings would only bury its error)
    with log, ctrl_c_sets_a_flag() as ctrl_c_pressed, np.errstate(all="ignore"):
        grad_norm = math.nan  # the last step's, before clipping
        try:
            while True:
                if evaluation_due(config, state):
                    sets = evaluation_sets(config, state.step)  # each split's batches, by name
                    losses = {split: estimate_loss(model, eval_batches[name], world, config.device, ctrl_c_pressed,
                                                   log, split) for split, name in sets.items()}
                    check_finite({f"{split} loss": loss for split, loss in losses.items()}, state, config)
                    log.evaluation(state, losses, grad_norm, lr_at(config, state.step), sets)
                    save_checkpoints(config, state, losses["val"], model, optimizer, run.tokenizer, writes)
                if state.step >= config.max_iters:
                    break
                t0 = time.perf_counter()
                optimizer.lr = lr_at(config, state.step)
                if config.dropout and config.device == "cpu":  # its masks: a stream per step and rank (dropout_seed)
                    nanograd.manual_seed(dropout_seed(config.seed, state.step, world.rank))
                x, y = dataset.get_batch("train", config.batch_size, config.block_size, state.batch_rng)  # (B, T) each
                loss, grad_norm, stop = train_step(model, optimizer, world, x, y, config, ctrl_c_pressed())
                check_finite({"loss": loss}, state, config)
                state.step += 1
                state.clipped_steps += bool(config.grad_clip and grad_norm > config.grad_clip)
                log.step(state, loss, grad_norm, time.perf_counter() - t0)
                if stop:
                    raise StopRequested
                if log.train_steps == config.steps_to_time():  # --time-budget: as many steps as fit
                    config = fit_the_budget(config, state, log, world, model.num_parameters(), eval_batches)
        except StopRequested:  # Ctrl-C: the model as it stands between two steps, saved
            raise interrupted(model, optimizer, config, run.tokenizer, state, writes) from None
    log.done(state, checkpoint_path(config.out_dir))
    if config.sample_tokens and writes and not config.quiet:
        print_sample(model, run.tokenizer, config)


def load_data(config: TrainConfig, tokenizer: Tokenizer) -> tuple[TokenDataset, dict[str, list]]:
    """The corpus that the checks tokenized, read from its cache, and the fixed batches that
    every evaluation estimates each split's loss on (and with eval_all_val, "whole val": the
    whole val split, for the last one)."""
    dataset = prepare(config.data, val_fraction=config.val_fraction, saved_tokenizer=tokenizer,
                      show_progress=False).dataset()
    batches = {split: dataset.fixed_batches(split, config.eval_iters, config.batch_size, config.block_size,
                                            seed=config.seed + 1) for split in SPLITS}
    if config.eval_all_val:
        batches[WHOLE_VAL] = dataset.whole_split_batches("val", config.batch_size, config.block_size)
    return dataset, batches


def evaluation_sets(config: TrainConfig, step: int) -> dict[str, str]:
    """Which batches the evaluation at a step estimates each split's loss on: the fixed ones,
    and with eval_all_val the whole val split at the last step."""
    last = config.eval_all_val and step >= config.max_iters
    return {"train": "train", "val": WHOLE_VAL if last else "val"}


def last_evaluation_scale(config: TrainConfig, eval_batches: dict[str, list]) -> float:
    """What the last evaluation costs against one along the way: its batches over theirs (more
    where it covers the whole val split)."""
    def batches(sets: dict[str, str]) -> int:
        return sum(len(eval_batches[name]) for name in sets.values())

    along_the_way = evaluation_sets(config, -1)  # (a step before the last)
    return batches(evaluation_sets(config, config.max_iters)) / batches(along_the_way)


def start_log(config: TrainConfig, model: nn.Module, dataset: TokenDataset, eval_batches: dict[str, list],
              state: TrainState, writes: bool) -> RunLog:
    """The run's log (kept where it writes: rank 0), config.json and its first note."""
    out_dir = Path(config.out_dir)
    log = RunLog(out_dir, config.max_iters, state.step, config.batch_size * config.block_size, config.log_interval,
                 {split: chars_per_target(dataset.tokenizer, batches) for split, batches in eval_batches.items()},
                 config.quiet, shown=writes)
    log.record_settings({**vars(config), "n_params": model.num_parameters()})
    if state.step:
        log.note(f"resuming {checkpoint_path(out_dir)} at step {state.step}")
    log.note(f"{config.model}: {model.num_parameters():,} parameters, vocabulary {dataset.vocab_size}, "
             f"{len(dataset.train):,} train / {len(dataset.val):,} val tokens, device {config.device}")
    if config.workers > 1:
        log.note(f"{config.workers} processes, each on a share of every batch")
    return log


def model_and_optimizer(run: Run, config: TrainConfig, vocab_size: int,
                        world: distributed.World) -> tuple[nn.Module, TrainOptimizer, TrainState]:
    """The model (new, or the checkpoint's) on its device, its optimizer, and the training state."""
    nanograd.manual_seed(config.seed)  # the same initial weights on every rank
    model = run.resumed.model if run.resumed else build_model(config, vocab_size)
    model.to(config.device)
    optimizer = make_optimizer(model, config, world)
    if run.resumed is None:
        state = TrainState(np.random.default_rng(config.seed))
    else:
        state = resume_training(run.resumed, optimizer, checkpoint_path(config.out_dir))
    if config.device != "cpu":  # dropout's masks on a GPU: a stream per rank from here (see dropout_seed)
        nanograd.manual_seed(dropout_seed(config.seed, state.step, world.rank))
    return model, optimizer, state


def fit_the_budget(config: TrainConfig, state: TrainState, log: RunLog, world: distributed.World,
                   n_params: int, eval_batches: dict[str, list]) -> TrainConfig:
    """--time-budget: the steps that fit, from this session's timed steps and evaluations. Every
    rank takes the mean of every rank's times, so all choose the same length; it is said, and
    kept as max_iters (a resumed run goes on to it)."""
    timed = [time.perf_counter() - state.started, *log.step_seconds]  # this session's, and its steps'
    session_seconds, *step_seconds = (seconds / world.size for seconds in world.sum(timed))
    step_s, eval_s = step_and_evaluation_seconds(step_seconds, session_seconds, log.evaluations)
    seconds_left = config.time_budget - state.elapsed_s - session_seconds
    max_iters = steps_that_fit(seconds_left, state.step, step_s, eval_s, config.eval_interval,
                               last_evaluation_scale(config, eval_batches) * eval_s)
    log.note(f"--time-budget {config.time_budget:g}: {max_iters} steps (a step takes {1000 * step_s:.1f} ms, an "
             f"evaluation {eval_s:.1f} s); --max-iters {max_iters} repeats this run")
    config = dataclasses.replace(config, max_iters=max_iters, time_budget=None)
    log.set_steps(max_iters)
    log.record_settings({**vars(config), "n_params": n_params})
    return config


def evaluation_due(config: TrainConfig, state: TrainState) -> bool:
    """Every eval_interval steps and at the last, unless this step was evaluated already (a run
    resumed from the checkpoint of an evaluation)."""
    return state.step != state.evaluated_step and (state.step % config.eval_interval == 0
                                                   or state.step == config.max_iters)


def check_finite(losses: dict[str, float], state: TrainState, config: TrainConfig) -> None:
    """A loss that is not finite stops the run, before anything is saved over a good checkpoint."""
    for name, loss in losses.items():
        if not math.isfinite(loss):
            raise diverged(f"the {name} became {loss} at step {state.step}", config)


def train_step(model: Any, optimizer: TrainOptimizer, world: distributed.World, x: np.ndarray, y: np.ndarray,
               config: TrainConfig, stop: bool = False) -> tuple[float, float, bool]:
    """One update from a batch (B, T): forward and backward on this rank's micro-batches, the
    gradients summed over the ranks, clip, the optimizer's step. Returns the batch's mean
    loss, the gradient norm before clipping, and whether any rank asks to stop after this
    step (`stop`: Ctrl-C on this one, which rides with the loss to the others).

    Each micro-batch's loss is scaled by its share of the whole batch, so that the gradients
    add up to the gradient of the batch's mean loss, however it was split: over ranks or into
    micro-batches. A loss that is not finite returns before the update, so that the model
    stays as it was."""
    optimizer.zero_grad()
    loss_sum = 0.0
    for x_micro, y_micro in micro_batches(x, y, world, config.grad_accum):
        logits, loss = model(backend.to_device(x_micro, config.device), backend.to_device(y_micro, config.device))
        if len(x_micro) < len(x):  # a part of the batch: its share of the batch's mean loss
            loss = loss * (len(x_micro) / len(x))
        loss.backward()
        loss_sum += loss.item()
    world.all_reduce_gradients(model.parameters())  # summed over the ranks (one process: as they are)
    loss_value, stops = world.sum([loss_sum, float(stop)])
    if not math.isfinite(loss_value):
        return loss_value, math.nan, bool(stops)
    # the norm before clipping is the health signal (max_norm inf only measures it)
    grad_norm = optim.clip_grad_norm(model.parameters(), config.grad_clip or math.inf)
    optimizer.step()
    return loss_value, grad_norm, bool(stops)


def micro_batches(x: np.ndarray, y: np.ndarray, world: distributed.World,
                  grad_accum: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's share of the batch (B, T), rows lo to hi (the ranks' shares as even as B
    splits), cut into grad_accum micro-batches (as even again; empty ones left out)."""
    lo, hi = len(x) * world.rank // world.size, len(x) * (world.rank + 1) // world.size
    edges = [lo + (hi - lo) * i // grad_accum for i in range(grad_accum + 1)]
    return [(x[a:b], y[a:b]) for a, b in zip(edges, edges[1:]) if b > a]


@no_grad()
def estimate_loss(model: Any, batches: list[tuple[np.ndarray, np.ndarray]], world: distributed.World, device: str,
                  ctrl_c_pressed: Callable[[], bool], log: RunLog, split: str) -> float:
    """Mean loss over fixed batches (of sequences of equal length), in eval mode (no dropout)
    and with no graph: each batch's mean weighed by its sequences (the last of a whole split
    may hold fewer).

    Each rank takes its share of every batch, as a training step does, and the shares' losses,
    each weighed by its size, add up over the ranks to the batch's (a share may be empty, in a
    small last batch). Ctrl-C rides with them, so an evaluation stops at once
    (StopRequested), on every rank."""
    model.eval()
    total, sequences = 0.0, 0  # the batches' mean losses, each times its sequences; their count
    try:
        for done, (x, y) in enumerate(batches, start=1):
            loss = 0.0
            for x_share, y_share in micro_batches(x, y, world, grad_accum=1):  # (B / ranks, T) each, or none
                loss = model(backend.to_device(x_share, device), backend.to_device(y_share, device))[1].item()
                loss *= len(x_share) / len(x)
            batch_loss, stops = world.sum([loss, float(ctrl_c_pressed())])
            if stops:
                raise StopRequested
            total += batch_loss * len(x)
            sequences += len(x)
            log.evaluating(split, done, len(batches))
    finally:
        model.train()
    return total / sequences


def save_checkpoints(config: TrainConfig, state: TrainState, val_loss: float, model: nn.Module,
                     optimizer: TrainOptimizer, tokenizer: Tokenizer, writes: bool) -> None:
    """ckpt.npz after every evaluation, and best.npz where the val loss is the lowest yet: a run
    resumed from them goes on without evaluating this step again."""
    state.evaluated_step = state.step
    if val_loss < state.best_val_loss:
        state.best_val_loss = val_loss
        save(checkpoint_path(config.out_dir, best=True), model, optimizer, config, tokenizer, state, writes)
    save(checkpoint_path(config.out_dir), model, optimizer, config, tokenizer, state, writes)


def save(path: Path, model: nn.Module, optimizer: TrainOptimizer, config: TrainConfig, tokenizer: Tokenizer,
         state: TrainState, writes: bool) -> None:
    """The run as it stands, written where `writes` (rank 0). Only a checkpoint whose every array
    is finite is written: every process checks its own copy (they are the same), so that all
    stop together, and the last checkpoint stays a good one."""
    arrays, meta = run_checkpoint(model, optimizer, dataclasses.asdict(config), tokenizer, state)
    bad = not_finite(arrays)
    if bad:
        what = "the weights" if bad[0].startswith("model.") else "the optimizer's moments"
        raise diverged(f"{what} stopped being finite by step {state.step} ({bad[0]})", config)
    if writes:
        try:
            save_checkpoint(path, arrays, meta)
        except OSError as exc:
            raise UserError(f"could not write {path} ({exc.strerror or exc}); "
                            "the checkpoint there before, if any, is intact") from None


def interrupted(model: nn.Module, optimizer: TrainOptimizer, config: TrainConfig, tokenizer: Tokenizer,
                state: TrainState, writes: bool) -> Interrupted:
    """Save the run as it stands, and say where."""
    path = checkpoint_path(config.out_dir)
    save(path, model, optimizer, config, tokenizer, state, writes)
    return Interrupted(f"interrupted: saved step {state.step} to {path} (continue with --resume --out-dir "
                       f"{config.out_dir})")


def diverged(what: str, config: TrainConfig) -> Diverged:
    """The error that stops a run whose numbers are no longer finite, naming what it leaves."""
    path = checkpoint_path(config.out_dir)
    kept = f"the last good checkpoint is {path}" if path.exists() else "no checkpoint was written"
    return Diverged(f"{what}; {kept} (try a lower --lr)")


def lr_at(config: TrainConfig, step: int) -> float:
    if not config.decay_lr:
        return optim.cosine_lr(step, config.lr, config.lr, config.warmup_iters, config.warmup_iters)
    decay_iters = config.lr_decay_iters or config.max_iters
    return optim.cosine_lr(step, config.lr, config.min_lr, config.warmup_iters, decay_iters)


def make_optimizer(model: nn.Module, config: TrainConfig,
                   world: distributed.World | None = None) -> TrainOptimizer:
    """AdamW for every parameter; or with --optimizer muon, Muon for the blocks' 2-D weights (the
    hidden layers' matmuls) and AdamW for the rest: the embeddings (the head, when tied) and
    the 1-D parameters, for which orthogonalizing an update has no meaning."""
    matrices, params = muon_and_adamw_parameters(model.named_parameters(), config.optimizer)
    adamw = optim.AdamW(parameter_groups(params, config.weight_decay), lr=config.lr, betas=(config.beta1, config.beta2))
    if config.optimizer == "adamw":
        return adamw
    return optim.Optimizers(adamw, optim.Muon(matrices, lr=config.muon_lr, momentum=config.muon_momentum,
                                              weight_decay=config.muon_weight_decay, world=world))


def muon_and_adamw_parameters(named_parameters: Iterable[tuple[str, Any]], optimizer: str) -> tuple[list, list]:
    """(the parameters Muon updates, those AdamW updates): with --optimizer muon, the blocks' 2-D
    weights and the rest; with adamw, none and all. (For nanograd's models and their PyTorch
    twins alike: the names are GPT-2's.)"""
    named = list(named_parameters)
    if optimizer == "adamw":
        return [], [p for _, p in named]
    matrices = [p for name, p in named if name.startswith("transformer.h.") and p.ndim == 2]
    return matrices, [p for _, p in named if not any(p is m for m in matrices)]


def parameter_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Decay 2-D weights (matmuls, embeddings) but not biases and LayerNorm gains (1-D):
    shrinking those towards 0 has no regularising benefit and only fights the normalisation."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """The seed of dropout's generator at a step on a rank, one stream per (seed, step, rank):
    the ranks draw different masks, and on the CPU, where the trainer reseeds at every step
    (a new NumPy generator is cheap), a run resumed at any step draws the masks that the
    uninterrupted run drew. A GPU's generator is seeded once, where the run starts (a new
    CuPy generator sets up a state per GPU thread), so its masks after a resume differ."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def print_sample(model: nn.Module, tokenizer: Tokenizer, config: TrainConfig) -> None:
    """A taste of what the model learned, sampled as gpt.sample does (a byte-level BPE's
    through its UTF-8 mask, so that the text holds no U+FFFD)."""
    prompt = sampling.default_prompt(tokenizer)
    ids = sampling.generate(model, tokenizer.encode(prompt).astype(np.int64)[None, :], config.sample_tokens,
                            rng=np.random.default_rng(config.seed),
                            utf8_mask=tokenizer.utf8_mask)  # (1, len(prompt ids) + sample_tokens)
    new = ids[0, -config.sample_tokens:, None]  # (sample_tokens, 1), as sampling.stream yields them
    print(prompt + "".join(sampling.text_pieces(tokenizer, new)))


if __name__ == "__main__":
    sys.exit(main())
