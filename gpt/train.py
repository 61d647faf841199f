"""Train a character-level language model:  python -m gpt.train [--preset baby|bigram|video] [flags]

Each step: sample a batch of (context, next-character) pairs, compute the loss, backpropagate,
clip the gradient, take an AdamW step. Every eval_interval steps: estimate the train and val
loss on fixed batches, log them to metrics.jsonl and save a checkpoint.

With several processes (MPI ranks: `mpiexec -n N python -m gpt.train`, or started by itself,
gpt.ranks), each one computes the gradient of its share of every batch, and the step sums the
gradients over the ranks before clipping (nanograd.distributed). Rank 0 alone writes the
run's files and prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import nanograd
from nanograd import backend, distributed, no_grad, optim
from nanograd.distributed import World

from . import ranks, sampling
from .checkpoint import load_checkpoint, rng_from_json
from .data import TokenDataset
from .errors import Interrupted, UserError, every_rank, exit_status
from .fileio import atomic_write, claim_directory
from .prepare import Tokenizer, prepare
from .run import (
    TrainConfig,
    build_model,
    build_parser,
    check_device,
    check_memory,
    checkpoint_path,
    load_run,
    memory_lower_bound,
    parameter_groups,
    resolve,
    save_run,
    write_json,
)


class _StopRequest:
    """Ctrl-C sets a flag that the loop checks between steps, so a checkpoint is never taken
    of a half-updated model. A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _StopRequest:
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)


@no_grad()
def estimate_loss(model: Any, world: World, batches: list[tuple[np.ndarray, np.ndarray]], device: str,
                  after_round: Callable[[int], None] = lambda done: None) -> float:
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


def plot_losses(metrics_path: Path, out_path: Path) -> str:
    """loss.png from metrics.jsonl; a one-line note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: skipping loss.png (pip install -e '.[plot]')"
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return f"wrote {out_path}"


def train(config: TrainConfig, resume_meta: dict | None = None, model: Any = None,
          tokenizer: Tokenizer | None = None, arrays: dict | None = None, world: World | None = None) -> dict[str, Any]:
    """Run (or continue) training; returns the last metrics row. Ctrl-C saves a checkpoint at
    the end of the step (or at once during an evaluation) and raises errors.Interrupted; a loss
    that stops being finite raises a UserError before anything is saved. Everything that can
    be refused is checked before out_dir is created, and out_dir is claimed for the run while
    it trains (gpt.fileio.claim_directory). With several ranks (world), every rank calls this,
    and rank 0 alone writes into out_dir."""
    world = world or World()
    out_dir = Path(config.out_dir)

    def check_settings() -> str:
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"--out-dir {out_dir} is a file, not a directory")
        if distributed.launched_by_mpi() and config.workers not in (None, world.size):
            raise UserError(f"--workers {config.workers} asks for {config.workers} processes, and mpiexec started "
                            f"{world.size}: leave --workers out under mpiexec")
        if world.size > config.batch_size:
            raise UserError(f"{world.size} processes cannot share batches of {config.batch_size}: each needs a "
                            "sequence at least (a larger --batch-size, or fewer processes)")
        device = check_device(config.device)
        if device == "cuda" and world.local_size > 1:
            backend.use_cuda_device(world.local_rank)
        return device

    def refuse_to_replace_a_run() -> None:
        earlier = [path for path in (checkpoint_path(out_dir), checkpoint_path(out_dir, best=True)) if path.exists()]
        if resume_meta is None and earlier and not config.overwrite:
            raise UserError(f"{out_dir} holds an earlier run ({earlier[0]}): continue it with --resume, start "
                            "over with --overwrite (its checkpoints are replaced), or choose another --out-dir")
        if resume_meta is not None and load_checkpoint(checkpoint_path(out_dir))[1] != resume_meta:
            raise UserError(f"{checkpoint_path(out_dir)} was written by another run after this one read it: "
                            "run --resume again to continue from it")

    def refuse_early() -> None:
        """The same refusals before the corpus is tokenized, which can take minutes (a directory
        that does not exist yet holds no run)."""
        if out_dir.is_dir():
            with claim_directory(out_dir):
                refuse_to_replace_a_run()

    device = ranks.together(world, check_settings)
    ranks.from_rank0(world, refuse_early)
    log = (print if config.quiet else _tqdm_write) if world.rank == 0 else _silent
    # rank 0 tokenizes the corpus and caches it; the others then read the cache
    corpus = ranks.rank0_first(world, lambda: prepare(
        config.data, config.tokenizer, config.vocab_size, config.val_fraction, saved_tokenizer=tokenizer, log=log,
        show_progress=not config.quiet and world.rank == 0))
    dataset = corpus.dataset()

    def check_sizes() -> None:
        if resume_meta is None:
            dataset.check_block_size(config.block_size)
        else:
            dataset.check_block_size(config.block_size, "use a longer text (a resumed run keeps its block size)")
        if device == "cpu":  # (a GPU's memory is its own: CuPy raises a MemoryError there)
            check_memory(memory_lower_bound(config, dataset.vocab_size, training=True, processes=world.local_size),
                         "training this model")

    ranks.together(world, check_sizes)
    with ranks.on_rank0(world, claim_directory(out_dir)):
        ranks.from_rank0(world, refuse_to_replace_a_run)  # again, now that no other run can write out_dir
        return _fit(config, device, dataset, resume_meta, model, arrays, log, world)


def _fit(config: TrainConfig, device: str, dataset: TokenDataset, resume_meta: dict | None, model: Any,
         arrays: dict | None, log: Callable[[str], None], world: World) -> dict[str, Any]:
    """The training run itself, in a claimed out_dir (see train)."""
    out_dir = Path(config.out_dir)
    tokenizer = dataset.tokenizer
    nanograd.manual_seed(config.seed)
    if model is None:
        model = build_model(config, tokenizer.vocab_size)  # (the same weights on every rank: the same seed)
    model.to(device)  # (a resumed model is loaded on the CPU)
    n_params = model.num_parameters()
    optimizer = optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                            betas=(config.beta1, config.beta2))
    config = dataclasses.replace(config, workers=world.size)  # for the record: a resumed run counts its own
    log(f"{config.model}: {n_params:,} parameters, vocabulary {tokenizer.vocab_size}, "
        f"{len(dataset.train):,} train / {len(dataset.val):,} val tokens, device {device}")
    if world.size > 1:
        log(f"{world.size} processes (MPI ranks), each on a share of every batch")
    batch_rng = np.random.default_rng(config.seed)  # every rank draws the same batches, and takes its share
    eval_batches = {split: dataset.fixed_batches(split, config.eval_iters, config.batch_size,
                                                 config.block_size, seed=config.seed + 1)
                    for split in ("train", "val")}
    # a BPE token stands for several characters: a split's mean loss per token over its mean
    # characters per predicted token is its loss per character, comparable across tokenizers
    chars_per_token = tokenizer.chars_per_token  # (V,)
    chars_per_target = {split: float(np.mean([chars_per_token[y].mean() for _, y in batches]))
                        for split, batches in eval_batches.items()}
    state = {"step": 0, "best_val_loss": math.inf, "clipped_steps": 0, "elapsed_s": 0.0}
    if resume_meta is not None:
        try:
            _check_counters(resume_meta)
            optimizer.load_state_dict({"t": resume_meta["optimizer_t"],
                                       **{k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}})
            batch_rng = rng_from_json(resume_meta["batch_rng"])
            state.update({k: resume_meta[k] for k in state})
        except (KeyError, TypeError, ValueError) as exc:  # (every rank has the same checkpoint's numbers)
            raise every_rank(UserError(f"{checkpoint_path(out_dir)} holds no usable training state to resume from "
                                       f"(missing or bad: {exc}); it can still be sampled from")) from None
        log(f"resuming {checkpoint_path(out_dir)} at step {state['step']}")
    metrics_path = out_dir / "metrics.jsonl"

    def start_files() -> dict[str, Any]:
        """config.json, and metrics.jsonl as of this step; the last evaluation's row, if any."""
        write_json(out_dir / "config.json", {**vars(config), "n_params": n_params})
        if resume_meta is None:
            metrics_path.write_text("")
            return {}
        return _keep_metrics_until(metrics_path, state["step"])

    row = ranks.from_rank0(world, start_files)

    def save(path: Path) -> None:
        if not all(bool(backend.array_module(p.data).isfinite(p.data).all()) for p in model.parameters()):
            raise every_rank(_diverged(f"the weights stopped being finite by step {state['step']}", out_dir))
        if world.rank != 0:
            return
        try:
            save_run(path, model, optimizer, config, tokenizer, {**state, "batch_rng": batch_rng.bit_generator.state})
        except OSError as exc:
            raise UserError(f"could not write {path} ({exc.strerror or exc}); "
                            "the checkpoint there before, if any, is intact") from None

    if device != "cpu":  # dropout's masks on a GPU: a stream per rank, from the step the run starts at
        nanograd.manual_seed(dropout_seed(config.seed, state["step"], world.rank))
    tokens_per_step = config.batch_size * config.block_size
    grad_norm = float("nan")
    evaluated_step = row.get("step")  # resumed right after an evaluation: not again at that step
    bar = None if config.quiet or world.rank != 0 else _progress(config.max_iters, state["step"])
    t_start = time.perf_counter() - state["elapsed_s"]
    train_seconds, train_steps = 0.0, 0  # this session's time in training steps (no evals)
    # the loop checks the loss and the weights for non-finite values itself: NumPy's overflow
    # warnings along the way would only bury that one-line error
    with _StopRequest() as stop, np.errstate(all="ignore"):
        def stop_if_requested(step: int) -> None:
            """Ctrl-C (on any rank: they decide together): save the model as it stands after
            `step` updates, and stop."""
            if world.any(stop.requested):
                save(checkpoint_path(out_dir))
                if bar is not None:
                    bar.close()
                raise every_rank(Interrupted(f"interrupted: saved step {step} to {checkpoint_path(out_dir)} "
                                             f"(continue with --resume --out-dir {out_dir})"))

        def evaluate(split: str, step: int) -> float:
            """The split's loss estimate; the bar says so while it runs, and Ctrl-C stops it at once."""
            shown_at = -math.inf

            def after_round(done: int) -> None:
                nonlocal shown_at
                stop_if_requested(step)
                if bar is not None and time.perf_counter() - shown_at > bar.mininterval:
                    bar.set_postfix_str(f"evaluating {split} loss: batch {done}/{config.eval_iters}")
                    shown_at = time.perf_counter()
            return estimate_loss(model, world, eval_batches[split], device, after_round)

        while True:
            step = state["step"]
            state["elapsed_s"] = time.perf_counter() - t_start
            if step != evaluated_step and (step % config.eval_interval == 0 or step == config.max_iters):
                row = {"step": step, "train_loss": evaluate("train", step), "val_loss": evaluate("val", step)}
                row.update({f"{split}_bpc": row[f"{split}_loss"] / chars_per_target[split] / math.log(2)
                            for split in ("train", "val")})
                row.update({"lr": lr_at(config, step), "grad_norm": None if math.isnan(grad_norm) else grad_norm,
                            "clipped_steps": state["clipped_steps"], "elapsed_s": round(state["elapsed_s"], 3),
                            "tokens_per_s": round(train_steps * tokens_per_step / train_seconds, 1)
                            if train_steps else None})
                for key in ("train_loss", "val_loss"):  # never save a diverged model over a good one
                    if not math.isfinite(row[key]):
                        raise every_rank(_diverged(f"the {key.replace('_', ' ')} became {row[key]} by step {step}",
                                                   out_dir))
                if world.rank == 0:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                health = "" if math.isnan(grad_norm) else \
                    f", grad norm {grad_norm:.3f}, clipped steps {state['clipped_steps']}"
                log(f"step {step}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}{health}, "
                    f"val {row['val_bpc']:.3f} bits per character")
                if row["val_loss"] < state["best_val_loss"]:
                    state["best_val_loss"] = row["val_loss"]
                    save(checkpoint_path(out_dir, best=True))
                save(checkpoint_path(out_dir))
            if step >= config.max_iters:
                break
            stop_if_requested(step)

            t0 = time.perf_counter()
            optimizer.lr = lr_at(config, step)
            if config.dropout and device == "cpu":  # its masks: a stream per step and rank (see dropout_seed)
                nanograd.manual_seed(dropout_seed(config.seed, step, world.rank))
            x, y = dataset.get_batch("train", config.batch_size, config.block_size, batch_rng)
            loss_value, grad_norm = train_step(model, optimizer, world, x, y, config, device)
            if not math.isfinite(loss_value):
                raise every_rank(_diverged(f"the loss became {loss_value} at step {step}", out_dir))
            state["clipped_steps"] += bool(config.grad_clip and grad_norm > config.grad_clip)
            state["step"] = step + 1
            train_seconds += time.perf_counter() - t0
            train_steps += 1
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.4f}", gnorm=f"{grad_norm:.2f}",
                                tok_s=f"{train_steps * tokens_per_step / train_seconds:,.0f}", refresh=False)
                bar.update(1)
    if bar is not None:
        bar.close()
    if world.rank != 0:
        return row
    log(plot_losses(metrics_path, out_dir / "loss.png"))
    log(f"done: {state['step']} steps in {state['elapsed_s']:.1f}s, val loss {row.get('val_loss', float('nan')):.4f}; "
        f"checkpoint {checkpoint_path(out_dir)}")
    if config.sample_tokens:
        prompt = sampling.default_prompt(tokenizer)
        ids = sampling.generate(model, tokenizer.encode(prompt).astype(np.int64)[None, :], config.sample_tokens,
                                rng=np.random.default_rng(config.seed))  # (1, len(prompt ids) + sample_tokens)
        new = ids[0, -config.sample_tokens:, None]  # (sample_tokens, 1), as sampling.stream yields them
        print(prompt + "".join(sampling.text_pieces(tokenizer, new)))  # (bytes that are no character: U+FFFD)
    return row


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """The seed of dropout's generator at a step on a rank, one stream per (seed, step, rank):
    the ranks draw different masks, and on the CPU, where the trainer reseeds at every step
    (a new NumPy generator is cheap), a run resumed at any step draws the masks that the
    uninterrupted run drew. A GPU's generator is seeded once, where the run starts (a new
    CuPy generator sets up a state per GPU thread), so its masks after a resume differ."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def _diverged(what: str, out_dir: Path) -> UserError:
    """The error that stops a run whose loss is no longer finite, naming what it leaves behind."""
    path = checkpoint_path(out_dir)
    kept = f"the last good checkpoint is {path}" if path.exists() else "no checkpoint was written"
    return UserError(f"{what}; {kept} (try a lower --lr)")


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


def _silent(message: str) -> None:
    """The log of every rank but 0: rank 0 speaks for the run."""


def _tqdm_write(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def run(args, world: World) -> None:
    if args.resume and args.overwrite:  # (every rank reads the same flags)
        raise every_rank(UserError("--resume continues the run in --out-dir and --overwrite replaces it: give one"))
    if args.resume:
        args.out_dir = args.out_dir or "out"  # the run is read from there: it goes on there too
        path = checkpoint_path(args.out_dir)
        # rank 0 reads the checkpoint and sends it to the others (on the CPU: train() moves the model)
        model, saved, tokenizer, meta, arrays = ranks.from_rank0(world, lambda: load_run(path, resuming=True))

        def keep_the_device() -> None:
            try:
                check_device(saved.device)
            except UserError as exc:
                raise UserError(f"the run in {path} was trained with --device {saved.device}, which it keeps: "
                                f"{exc}; add --device cpu to go on on the CPU") from None

        if args.device is None and saved.device != "cpu":
            ranks.together(world, keep_the_device)
        config = ranks.together(world, lambda: resolve(args, saved=vars(saved)))
        train(config, resume_meta=meta, model=model, tokenizer=tokenizer, arrays=arrays, world=world)
    else:
        train(ranks.together(world, lambda: resolve(args)), world=world)


def processes_for(args) -> int:
    """How many processes a run started without mpiexec takes (TrainConfig.data_parallel_workers);
    1 where its settings cannot be read, and the run in this process then says why."""
    try:
        saved = load_checkpoint(checkpoint_path(args.out_dir or "out"))[1]["config"] if args.resume else None
        return resolve(args, saved=saved).data_parallel_workers()
    except (UserError, KeyError, TypeError, ValueError):
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
    # a first Ctrl-C stops at the end of the step and saves (see _StopRequest); a second one
    # lands mid-step (or one during the final sample), and the last checkpoint is still whole
    return exit_status(lambda: run(args, world), rank=world.rank, ranks=world.size,
                       interrupted="interrupted: the last checkpoint written, if any, is intact")


if __name__ == "__main__":
    sys.exit(main())
