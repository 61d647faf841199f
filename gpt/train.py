"""Train a character-level language model:  python -m gpt.train [--preset baby|bigram|video] [flags]

Each step: sample a batch of (context, next-character) pairs, compute the loss, backpropagate,
clip the gradient, take an AdamW step. Every eval_interval steps: estimate the train and val
loss on fixed batches, log them to metrics.jsonl and save a checkpoint.
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
from nanograd import backend, no_grad, optim
from nanograd.parallel import DataParallel, SharedMemoryTooSmall

from . import sampling
from .checkpoint import rng_from_json
from .data import TokenDataset
from .errors import Interrupted, UserError, exit_status
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


def model_loss(model: Any, x: Any, y: Any) -> Any:
    """The model's mean cross-entropy on inputs x and targets y (B, T): what training minimises."""
    return model(x, y)[1]


@no_grad()
def estimate_loss(parallel: DataParallel, batches: list[tuple[np.ndarray, np.ndarray]], device: str,
                  after_group: Callable[[int], None] = lambda done: None) -> float:
    """Mean loss over fixed batches of equal size, in eval mode (no dropout) and with no graph.

    With several workers, each gets two batches per call: a forward pass alone is light, and
    the fixed cost of a call is then paid once for two batches. The mean of equal-size
    batches' means is the mean over all their sequences, so grouping changes nothing else.
    after_group(batches done) runs after each call: it shows progress, and may raise to stop
    (Ctrl-C), which leaves the model in train mode as it found it.
    """
    parallel.model.eval()
    group = 2 * parallel.workers if parallel.workers > 1 else 1
    losses = []
    try:
        for start in range(0, len(batches), group):
            xs, ys = zip(*batches[start : start + group])
            x, y = (backend.to_device(np.concatenate(a), device) for a in (xs, ys))  # (group B, T) each
            losses += [parallel.loss(model_loss, x, y)] * len(xs)  # one mean, standing for len(xs) batches
            after_group(len(losses))
    finally:
        parallel.model.train()
    return float(np.mean(losses))


def train_step(parallel: DataParallel, optimizer: optim.AdamW, x: np.ndarray, y: np.ndarray,
               config: TrainConfig, device: str) -> tuple[float, float]:
    """One update: forward, backward (each worker process on a slice of the batch), clip, AdamW
    (also shared out between the processes).

    Returns (loss, gradient norm before clipping). A non-finite loss returns before the
    update, so the model stays as it was.
    """
    optimizer.zero_grad()
    loss_value = parallel.loss(model_loss, backend.to_device(x, device), backend.to_device(y, device),
                               backward=True)
    if not math.isfinite(loss_value):
        return loss_value, math.nan
    # the norm before clipping is the health signal (max_norm inf only measures it)
    grad_norm = optim.clip_grad_norm(parallel.params, config.grad_clip or math.inf)
    parallel.step(optimizer)
    return loss_value, grad_norm


def _data_parallel(model: Any, workers: int, optimizer: optim.AdamW, log: Callable[[str], None]) -> DataParallel:
    """The processes that share each step, the optimizer's update included; where /dev/shm has
    no room for the optimizer's buffers, without it; where it has none for the gradients
    either, one process."""
    try:
        return DataParallel(model, workers, optimizer)
    except SharedMemoryTooSmall as exc:
        log(f"{exc}: the optimizer's step runs in this process")
    try:
        return DataParallel(model, workers)
    except SharedMemoryTooSmall as exc:
        log(f"{exc}: training in one process (a container can be given more: docker run --shm-size)")
        return DataParallel(model, 1)


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
          tokenizer: Tokenizer | None = None, arrays: dict | None = None) -> dict[str, Any]:
    """Run (or continue) training; returns the last metrics row. Ctrl-C saves a checkpoint at
    the end of the step (or at once during an evaluation) and raises errors.Interrupted; a loss
    that stops being finite raises a UserError before anything is saved. Everything that can
    be refused is checked before out_dir is created, and out_dir is claimed for the run while
    it trains (gpt.fileio.claim_directory)."""
    device = check_device(config.device)
    out_dir = Path(config.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file, not a directory")
    log = print if config.quiet else _tqdm_write
    corpus = prepare(config.data, config.tokenizer, config.vocab_size, config.val_fraction, saved_tokenizer=tokenizer,
                     log=log, show_progress=not config.quiet)
    dataset = corpus.dataset()
    if resume_meta is None:
        dataset.check_block_size(config.block_size)
    else:
        dataset.check_block_size(config.block_size, "use a longer text (a resumed run keeps its block size)")
    if device == "cpu":  # (a GPU's memory is its own: CuPy raises a MemoryError there)
        check_memory(memory_lower_bound(config, dataset.vocab_size, training=True), "training this model")
    with claim_directory(out_dir):
        earlier = [path for path in (checkpoint_path(out_dir), checkpoint_path(out_dir, best=True)) if path.exists()]
        if resume_meta is None and earlier and not config.overwrite:
            raise UserError(f"{out_dir} holds an earlier run ({earlier[0]}): continue it with --resume, start "
                            "over with --overwrite (its checkpoints are replaced), or choose another --out-dir")
        return _fit(config, device, dataset, resume_meta, model, arrays, log)


def _fit(config: TrainConfig, device: str, dataset: TokenDataset, resume_meta: dict | None, model: Any,
         arrays: dict | None, log: Callable[[str], None]) -> dict[str, Any]:
    """The training run itself, in a claimed out_dir (see train)."""
    out_dir = Path(config.out_dir)
    tokenizer = dataset.tokenizer
    nanograd.manual_seed(config.seed)
    if model is None:
        model = build_model(config, tokenizer.vocab_size)
    model.to(device)  # (a resumed model is loaded on the CPU)
    n_params = model.num_parameters()
    optimizer = optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                            betas=(config.beta1, config.beta2))
    parallel = _data_parallel(model, config.data_parallel_workers(), optimizer, log)
    if device == "cpu":  # saved with the run: resumed, it splits batches (and draws dropout) as before
        config = dataclasses.replace(config, workers=parallel.workers)
    log(f"{config.model}: {n_params:,} parameters, vocabulary {tokenizer.vocab_size}, "
        f"{len(dataset.train):,} train / {len(dataset.val):,} val tokens, device {device}")
    if parallel.workers > 1:
        log(f"{parallel.workers} processes, each on a slice of every batch (--workers to change)")
    batch_rng = np.random.default_rng(config.seed)
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
            backend.generator("cpu").bit_generator.state = rng_from_json(resume_meta["dropout_rng"]).bit_generator.state
            state.update({k: resume_meta[k] for k in state})
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{checkpoint_path(out_dir)} holds no usable training state to resume from "
                            f"(missing or bad: {exc}); it can still be sampled from") from None
        log(f"resuming {checkpoint_path(out_dir)} at step {state['step']}")
        if device != "cpu" and config.dropout > 0:
            log("note: the dropout masks from here on differ from an uninterrupted run's "
                "(CuPy's generator state is not saved)")
    write_json(out_dir / "config.json", {**vars(config), "n_params": n_params})
    metrics_path = out_dir / "metrics.jsonl"
    if resume_meta is None:
        metrics_path.write_text("")
        row = {}
    else:
        row = _keep_metrics_until(metrics_path, state["step"])

    def save(path: Path) -> None:
        if not all(bool(backend.array_module(p.data).isfinite(p.data).all()) for p in model.parameters()):
            raise _diverged(f"the weights stopped being finite by step {state['step']}", out_dir)
        try:
            save_run(path, model, optimizer, config, tokenizer, {
                **state, "batch_rng": batch_rng.bit_generator.state,
                "dropout_rng": backend.generator("cpu").bit_generator.state})
        except OSError as exc:
            raise UserError(f"could not write {path} ({exc.strerror or exc}); "
                            "the checkpoint there before, if any, is intact") from None

    tokens_per_step = config.batch_size * config.block_size
    grad_norm = float("nan")
    evaluated_step = row.get("step")  # resumed right after an evaluation: not again at that step
    bar = None if config.quiet else _progress(config.max_iters, state["step"])
    t_start = time.perf_counter() - state["elapsed_s"]
    train_seconds, train_steps = 0.0, 0  # this session's time in training steps (no evals)
    # the loop checks the loss and the weights for non-finite values itself: NumPy's overflow
    # warnings along the way would only bury that one-line error
    with _StopRequest() as stop, parallel, np.errstate(all="ignore"):  # leaving it stops the workers
        def stop_if_requested(step: int) -> None:
            """Ctrl-C: save the model as it stands after `step` updates, and stop."""
            if stop.requested:
                save(checkpoint_path(out_dir))
                if bar is not None:
                    bar.close()
                raise Interrupted(f"interrupted: saved step {step} to {checkpoint_path(out_dir)} "
                                  f"(continue with --resume --out-dir {out_dir})")

        def evaluate(split: str, step: int) -> float:
            """The split's loss estimate; the bar says so while it runs, and Ctrl-C stops it at once."""
            shown_at = -math.inf

            def after_group(done: int) -> None:
                nonlocal shown_at
                stop_if_requested(step)
                if bar is not None and time.perf_counter() - shown_at > bar.mininterval:
                    bar.set_postfix_str(f"evaluating {split} loss: batch {done}/{config.eval_iters}")
                    shown_at = time.perf_counter()
            return estimate_loss(parallel, eval_batches[split], device, after_group)

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
                        raise _diverged(f"the {key.replace('_', ' ')} became {row[key]} by step {step}", out_dir)
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
            x, y = dataset.get_batch("train", config.batch_size, config.block_size, batch_rng)
            loss_value, grad_norm = train_step(parallel, optimizer, x, y, config, device)
            if not math.isfinite(loss_value):
                raise _diverged(f"the loss became {loss_value} at step {step}", out_dir)
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
    log(plot_losses(metrics_path, out_dir / "loss.png"))
    log(f"done: {state['step']} steps in {state['elapsed_s']:.1f}s, val loss {row.get('val_loss', float('nan')):.4f}; "
        f"checkpoint {checkpoint_path(out_dir)}")
    if config.sample_tokens:
        prompt = tokenizer.encode(sampling.default_prompt(tokenizer))
        ids = sampling.generate(model, np.asarray(prompt, dtype=np.int64)[None, :], config.sample_tokens,
                                rng=np.random.default_rng(config.seed))
        print(tokenizer.decode(ids[0]))
    return row


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


def _tqdm_write(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def run(args) -> None:
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out-dir and --overwrite replaces it: give one")
    if args.resume:
        args.out_dir = args.out_dir or "out"  # the run is read from there: it goes on there too
        path = checkpoint_path(args.out_dir)
        model, saved, tokenizer, meta, arrays = load_run(path, resuming=True)  # on the CPU: train() moves it
        if args.device is None and saved.device != "cpu":
            try:
                check_device(saved.device)
            except UserError as exc:
                raise UserError(f"the run in {path} was trained with --device {saved.device}, which it keeps: "
                                f"{exc}; add --device cpu to go on on the CPU") from None
        train(resolve(args, saved=vars(saved)), resume_meta=meta, model=model, tokenizer=tokenizer, arrays=arrays)
    else:
        train(resolve(args))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m gpt.train", "Train a character-level GPT (or bigram) with nanograd.")
    args = parser.parse_args(argv)
    backend.keep_freed_memory()  # each step reuses the last one's memory instead of faulting it in again
    # a first Ctrl-C stops at the end of the step and saves (see _StopRequest); a second one
    # lands mid-step (or one during the final sample), and the last checkpoint is still whole
    return exit_status(lambda: run(args),
                       interrupted="interrupted: the last checkpoint written, if any, is intact")


if __name__ == "__main__":
    sys.exit(main())
