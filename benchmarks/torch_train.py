"""gpt.train's run in PyTorch eager, on the same batches: a reference for nanograd's losses and
wall time.

    python benchmarks/torch_train.py                                # the baby preset, 2000 steps
    python benchmarks/torch_train.py --max-iters 200
    python benchmarks/torch_train.py --tokenizer bpe --vocab-size 1024 --time-budget 300

It takes gpt.train's flags and settles them as gpt.train does (gpt.config): the same corpus,
tokenizer and split (gpt.prepare), batch sampler and seed, fixed evaluation batches,
learning-rate schedule, AdamW groups and clipping. The model is benchmarks/torch_gpt.py,
started from nanograd's own initial weights. With --time-budget it times its first steps and
evaluations by the rule gpt.train follows (gpt.budget) and takes as many steps as fit in its
own time. One process, with as many threads as NumPy's BLAS; it prints the evaluations (val
bits per character too), the steps a budget chose, and the time the run took.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import blas_threads, torch_or_none  # noqa: E402

import nanograd  # noqa: E402
from gpt.budget import step_and_evaluation_seconds, steps_that_fit  # noqa: E402
from gpt.config import TrainConfig, build_model, build_parser, resolve  # noqa: E402
from gpt.errors import UserError, exit_status  # noqa: E402
from gpt.prepare import prepare  # noqa: E402
from gpt.runlog import chars_per_target  # noqa: E402
from gpt.train import SPLITS, lr_at  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    nanograd.backend.keep_freed_memory()  # as gpt.train does: the same allocator for both implementations
    config = resolve(build_parser("benchmarks/torch_train.py", __doc__.split("\n\n")[0]).parse_args(argv))
    if config.model != "gpt":
        raise UserError("torch_train.py trains the GPT (torch_gpt.TorchGPT), not the bigram")
    torch = torch_or_none()
    if torch is None:
        raise UserError("PyTorch is not installed (pip install -e '.[bench]')")
    from torch_gpt import TorchGPT, copy_weights  # (imports torch)
    torch.set_num_threads(blas_threads())
    dataset = prepare(config.data, config.tokenizer, config.vocab_size, config.val_fraction).dataset()
    nanograd.manual_seed(config.seed)  # nanograd's initial weights, copied into the torch model
    model = TorchGPT(config.model_config(dataset.vocab_size))
    copy_weights(build_model(config, dataset.vocab_size), model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr,
                            betas=(config.beta1, config.beta2))
    batch_rng = np.random.default_rng(config.seed)
    fixed = {split: dataset.fixed_batches(split, config.eval_iters, config.batch_size, config.block_size,
                                          seed=config.seed + 1) for split in SPLITS}
    chars = {split: chars_per_target(dataset.tokenizer, batches) for split, batches in fixed.items()}
    evals = {split: [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
             for split, batches in fixed.items()}

    def estimate(split: str) -> float:
        model.eval()
        with torch.no_grad():
            loss = float(np.mean([model(x, y).item() for x, y in evals[split]]))
        model.train()
        return loss

    print(f"torch {torch.__version__}, {blas_threads()} threads, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, vocabulary {dataset.vocab_size}", flush=True)
    started, step_seconds, evaluations, step = time.perf_counter(), [], 0, 0
    while True:
        if step % config.eval_interval == 0 or step == config.max_iters:
            losses = {split: estimate(split) for split in SPLITS}
            evaluations += 1
            print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                  f"val {losses['val'] / chars['val'] / math.log(2):.3f} bits per character", flush=True)
        if step >= config.max_iters:
            break
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(config, step)
        x, y = dataset.get_batch("train", config.batch_size, config.block_size, batch_rng)
        loss = model(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
        opt.step()
        step += 1
        step_seconds.append(time.perf_counter() - t0)
        if len(step_seconds) == config.steps_to_time():
            config = fit_the_budget(config, step, step_seconds, time.perf_counter() - started, evaluations)
    tokens_per_s = config.batch_size * config.block_size * step / sum(step_seconds) if step else math.nan
    print(f"done: {step} steps in {time.perf_counter() - started:.1f}s ({tokens_per_s:,.0f} tokens/s in training "
          "steps)")


def fit_the_budget(config: TrainConfig, step: int, step_seconds: list[float], session_seconds: float,
                   evaluations: int) -> TrainConfig:
    """--time-budget, by gpt.train's rule (gpt.train.fit_the_budget, in one process)."""
    step_s, eval_s = step_and_evaluation_seconds(step_seconds, session_seconds, evaluations)
    max_iters = steps_that_fit(config.time_budget - session_seconds, step, step_s, eval_s, config.eval_interval)
    print(f"--time-budget {config.time_budget:g}: {max_iters} steps (a step takes {1000 * step_s:.1f} ms, an "
          f"evaluation {eval_s:.1f} s)", flush=True)
    return dataclasses.replace(config, max_iters=max_iters, time_budget=None)


if __name__ == "__main__":
    sys.exit(exit_status(main))  # a bad flag or file: one line, exit 2 (gpt.errors)
