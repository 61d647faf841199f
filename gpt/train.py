"""Train a character-level language model:  python -m gpt.train [--preset baby|bigram|video] [flags]

Each step: sample a batch of (context, next-character) pairs, compute the loss, backpropagate,
clip the gradient, take an AdamW step. Every eval_interval steps: estimate the train and val
loss on fixed batches, log them to metrics.jsonl and save a checkpoint (gpt.bookkeeping keeps
the run's files, its progress and its counters).

With several processes (MPI ranks: `mpiexec -n N python -m gpt.train`, or started by itself,
gpt.ranks), each one computes the gradient of its share of every batch, and the step sums the
gradients over the ranks before clipping (nanograd.distributed). Rank 0 alone writes the
run's files and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import nanograd
from nanograd import backend, distributed, nn, no_grad, optim
from nanograd.distributed import World

from . import ranks, sampling
from .bookkeeping import SPLITS, Bookkeeper, refuse_to_replace_a_run, run_log
from .checkpoint import SavedRun, checkpoint_path, load_checkpoint, load_run
from .config import TrainConfig, build_model, build_parser, check_device, check_run_settings, resolve
from .data import TokenDataset
from .errors import UserError, every_rank, exit_status
from .fileio import claim_directory
from .memory import check_memory, memory_lower_bound
from .prepare import prepare


@no_grad()
def estimate_loss(model: Any, world: World, batches: list[tuple[np.ndarray, np.ndarray]], device: str,
                  after_round: Callable[[int], None]) -> float:
    """Mean loss over fixed batches of equal size, in eval mode (no dropout) and with no graph.

    The batches are shared out in rounds: in each, rank r takes the round's r-th batch. The
    mean of equal-size batches' means is the mean over all their sequences. after_round(batches
    done) runs on every rank after each round: it shows progress, and may raise to stop
    (Ctrl-C), which leaves the model in train mode as it found it.
    """
    model.eval()
    total = 0.0  # this rank's batches' losses, summed
    try:
        for start in range(0, len(batches), world.size):
            if start + world.rank < len(batches):
                x, y = (backend.to_device(a, device) for a in batches[start + world.rank])  # (B, T) each
                logits, loss = model(x, y)
                total += loss.item()
            after_round(min(start + world.size, len(batches)))
    finally:
        model.train()
    return world.sum(total) / len(batches)


def micro_batches(x: np.ndarray, y: np.ndarray, world: World, grad_accum: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's share of the batch (B, T), rows lo to hi (the ranks' shares as even as B
    splits), cut into grad_accum micro-batches (as even again; empty ones left out)."""
    lo, hi = len(x) * world.rank // world.size, len(x) * (world.rank + 1) // world.size
    edges = [lo + (hi - lo) * i // grad_accum for i in range(grad_accum + 1)]
    return [(x[a:b], y[a:b]) for a, b in zip(edges, edges[1:]) if b > a]


def train_step(model: Any, optimizer: optim.AdamW, world: World, x: np.ndarray, y: np.ndarray,
               config: TrainConfig, device: str) -> tuple[float, float]:
    """One update from a batch (B, T): forward and backward on this rank's micro-batches, the
    gradients summed over the ranks, clip, AdamW.

    Each micro-batch's loss is scaled by its share of the whole batch, so that the gradients
    add up to the gradient of the batch's mean loss, however it was split: over ranks or into
    micro-batches. Returns (the batch's mean loss, gradient norm before clipping). A loss
    that is not finite (on any rank) returns before the update, so the model stays as it was.
    """
    optimizer.zero_grad()
    loss_sum = 0.0
    for x_micro, y_micro in micro_batches(x, y, world, config.grad_accum):
        logits, loss = model(backend.to_device(x_micro, device), backend.to_device(y_micro, device))
        if len(x_micro) < len(x):  # a part of the batch: its share of the batch's mean loss
            loss = loss * (len(x_micro) / len(x))
        loss.backward()
        loss_sum += loss.item()
    world.all_reduce_gradients(model.parameters())  # summed over the ranks (one process: as they are)
    loss_value = world.sum(loss_sum)
    if not math.isfinite(loss_value):
        return loss_value, math.nan
    # the norm before clipping is the health signal (max_norm inf only measures it)
    grad_norm = optim.clip_grad_norm(model.parameters(), config.grad_clip or math.inf)
    optimizer.step()
    return loss_value, grad_norm


def lr_at(config: TrainConfig, step: int) -> float:
    if not config.decay_lr:
        return optim.cosine_lr(step, config.lr, config.lr, config.warmup_iters, config.warmup_iters)
    decay_iters = config.lr_decay_iters or config.max_iters
    return optim.cosine_lr(step, config.lr, config.min_lr, config.warmup_iters, decay_iters)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay 2-D weights (matmuls, embeddings) but not biases and LayerNorm gains (1-D):
    shrinking those towards 0 has no regularising benefit and only fights the normalisation."""
    params = model.parameters()
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


def fit(config: TrainConfig, device: str, dataset: TokenDataset, model: nn.Module, resumed: SavedRun | None,
        log: Callable[[str], None], world: World) -> dict[str, Any]:
    """The training loop, in a claimed out_dir (see train); returns the last evaluation's row."""
    model.to(device)  # (a resumed model is loaded on the CPU)
    optimizer = optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                            betas=(config.beta1, config.beta2))
    config = dataclasses.replace(config, workers=world.size)  # for the record: a resumed run counts its own
    log(f"{config.model}: {model.num_parameters():,} parameters, vocabulary {dataset.vocab_size}, "
        f"{len(dataset.train):,} train / {len(dataset.val):,} val tokens, device {device}")
    if world.size > 1:
        log(f"{world.size} processes (MPI ranks), each on a share of every batch")
    eval_batches = {split: dataset.fixed_batches(split, config.eval_iters, config.batch_size, config.block_size,
                                                 seed=config.seed + 1) for split in SPLITS}
    book = Bookkeeper(config, world, log, model, optimizer, dataset.tokenizer, eval_batches, resumed)
    if device != "cpu":  # dropout's masks on a GPU: a stream per rank, from the step the run starts at
        nanograd.manual_seed(dropout_seed(config.seed, book.state["step"], world.rank))
    # the loop checks the loss and the weights for non-finite values itself: NumPy's overflow
    # warnings along the way would only bury that one-line error
    with book, np.errstate(all="ignore"):
        while True:
            step = book.state["step"]
            if book.evaluation_due():
                losses = {split: estimate_loss(model, world, eval_batches[split], device, book.after_eval_round(split))
                          for split in SPLITS}
                book.record_evaluation(losses, lr_at(config, step))
            if step >= config.max_iters:
                break
            book.stop_if_requested()

            t0 = time.perf_counter()
            optimizer.lr = lr_at(config, step)
            if config.dropout and device == "cpu":  # its masks: a stream per step and rank (see dropout_seed)
                nanograd.manual_seed(dropout_seed(config.seed, step, world.rank))
            x, y = dataset.get_batch("train", config.batch_size, config.block_size, book.batch_rng)  # (B, T) each
            loss, grad_norm = train_step(model, optimizer, world, x, y, config, device)
            book.record_step(loss, grad_norm, time.perf_counter() - t0)
    book.finish()
    if config.sample_tokens and world.rank == 0:
        print_sample(model, dataset.tokenizer, config)
    return book.row


def print_sample(model: nn.Module, tokenizer: Any, config: TrainConfig) -> None:
    """A taste of what the model learned, decoded as gpt.sample does (bytes that are no
    character print as U+FFFD)."""
    prompt = sampling.default_prompt(tokenizer)
    ids = sampling.generate(model, tokenizer.encode(prompt).astype(np.int64)[None, :], config.sample_tokens,
                            rng=np.random.default_rng(config.seed),
                            utf8_mask=tokenizer.utf8_mask)  # (1, len(prompt ids) + sample_tokens)
    new = ids[0, -config.sample_tokens:, None]  # (sample_tokens, 1), as sampling.stream yields them
    print(prompt + "".join(sampling.text_pieces(tokenizer, new)))


def train(config: TrainConfig, resumed: SavedRun | None = None, world: World | None = None,
          model: nn.Module | None = None) -> dict[str, Any]:
    """Run (or continue) training; returns the last metrics row. `model` is the model to train
    (default: the resumed run's, else a new one as config describes it).

    Ctrl-C saves a checkpoint at the end of the step (or at once during an evaluation) and
    raises errors.Interrupted; a loss that stops being finite raises a UserError before
    anything is saved. Everything that can be refused is checked before out_dir is created,
    and out_dir is claimed for the run while it trains (gpt.fileio.claim_directory). With
    several ranks (world), every rank calls this, and rank 0 alone writes into out_dir."""
    world = world or World()
    out_dir = Path(config.out_dir)
    device = ranks.together(world, lambda: check_run_settings(config, world))
    if device == "cuda" and world.local_size > 1:
        backend.use_cuda_device(world.local_rank)

    def refuse_early() -> None:
        """Refused before the corpus is tokenized, which can take minutes (a directory that
        does not exist yet holds no run)."""
        if out_dir.is_dir():
            with claim_directory(out_dir):
                refuse_to_replace_a_run(config, resumed)

    ranks.from_rank0(world, refuse_early)
    log = run_log(config, world)
    # rank 0 tokenizes the corpus and caches it; the others then read the cache
    corpus = ranks.rank0_first(world, lambda: prepare(
        config.data, config.tokenizer, config.vocab_size, config.val_fraction,
        saved_tokenizer=resumed.tokenizer if resumed else None, log=log,
        show_progress=not config.quiet and world.rank == 0))
    dataset = corpus.dataset()

    def check_sizes() -> None:
        if resumed is None:
            dataset.check_block_size(config.block_size)
        else:
            dataset.check_block_size(config.block_size, "use a longer text (a resumed run keeps its block size)")
        if device == "cpu":  # (a GPU's memory is its own: CuPy raises a MemoryError there)
            check_memory(memory_lower_bound(config, dataset.vocab_size, training=True, processes=world.local_size),
                         "training this model")

    ranks.together(world, check_sizes)
    nanograd.manual_seed(config.seed)  # the same initial weights on every rank
    if resumed is not None:
        model = resumed.model
    elif model is None:
        model = build_model(config, dataset.vocab_size)
    with ranks.on_rank0(world, claim_directory(out_dir)):
        ranks.from_rank0(world, lambda: refuse_to_replace_a_run(config, resumed))  # again, now that no other run can
        return fit(config, device, dataset, model, resumed, log, world)


def run(args: argparse.Namespace, world: World) -> None:
    """The run that the flags ask for: a new one, or the one in --out-dir continued (--resume)."""
    if args.resume and args.overwrite:  # (every rank reads the same flags)
        raise every_rank(UserError("--resume continues the run in --out-dir and --overwrite replaces it: give one"))
    if args.resume:
        args.out_dir = args.out_dir or "out"  # the run is read from there: it goes on there too
        path = checkpoint_path(args.out_dir)
        # rank 0 reads the checkpoint and sends it to the others (on the CPU: fit() moves the model)
        resumed = ranks.from_rank0(world, lambda: load_run(path, resuming=True))
        saved = resumed.config

        def keep_the_device() -> None:
            try:
                check_device(saved.device)
            except UserError as exc:
                raise UserError(f"the run in {path} was trained with --device {saved.device}, which it keeps: "
                                f"{exc}; add --device cpu to go on on the CPU") from None

        if args.device is None and saved.device != "cpu":
            ranks.together(world, keep_the_device)
        config = ranks.together(world, lambda: resolve(args, saved=vars(saved)))
        train(config, resumed, world)
    else:
        train(ranks.together(world, lambda: resolve(args)), world=world)


def processes_for(args: argparse.Namespace) -> int:
    """How many processes a run started without mpiexec takes (TrainConfig.data_parallel_workers);
    1 where its settings cannot be read, and the run in this process then says why."""
    try:
        saved = load_checkpoint(checkpoint_path(args.out_dir or "out"))[1]["config"] if args.resume else None
        return resolve(args, saved=saved).data_parallel_workers()
    except (KeyError, TypeError, ValueError, AttributeError):  # (a UserError is a ValueError)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m gpt.train", "Train a character-level GPT (or bigram) with nanograd.")
    world = distributed.world()  # this run's MPI ranks, or this process alone
    with ranks.silent_unless(world.rank == 0):  # every rank reads the flags: rank 0 says what is wrong with them
        args = parser.parse_args(argv)
    if not distributed.launched_by_mpi() and (count := processes_for(args)) > 1:
        mpiexec = ranks.find_mpiexec()
        if mpiexec is not None:  # this command again, as `count` ranks
            command = [sys.executable, "-m", "gpt.train", *(sys.argv[1:] if argv is None else argv)]
            return ranks.run_under_mpiexec(mpiexec, count, command,
                                           "the last checkpoint written, if any, is intact (continue with --resume)")
        print(ranks.NO_MPI, file=sys.stderr)
    backend.keep_freed_memory()  # each step reuses the last one's memory instead of faulting it in again
    if world.local_size > 1:  # the machine's cores, shared out between its ranks
        backend.limit_blas_threads(max(1, backend.blas_threads() // world.local_size))
    if distributed.launched_by_mpi():
        sys.stdout.reconfigure(line_buffering=True)  # mpiexec passes it on through a pipe: each line as it comes
    # a first Ctrl-C stops at the end of the step and saves (see Bookkeeper); a second one
    # lands mid-step (or one during the final sample), and the last checkpoint is still whole
    return exit_status(lambda: run(args, world), rank=world.rank, ranks=world.size,
                       interrupted="interrupted: the last checkpoint written, if any, is intact")


if __name__ == "__main__":
    sys.exit(main())
