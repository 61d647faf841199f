"""gpt.train's run in PyTorch eager, on the same batches: a reference for nanograd's losses and
wall time.

    python benchmarks/torch_train.py                                # the baby preset, 2000 steps
    python benchmarks/torch_train.py --max-iters 200
    python benchmarks/torch_train.py --preset speedrun --time-budget 300

It takes gpt.train's flags and settles them as gpt.train does (gpt.config): the same corpus,
tokenizer and split (gpt.prepare), batch sampler and seed, fixed evaluation batches (and the
whole val split at the end, with --eval-all-val), learning-rate schedule, optimizers (AdamW
groups; with --optimizer muon, torch.optim.Muon for the blocks' matrices) and clipping. The
model is benchmarks/torch_gpt.py (rotary embeddings too), started from nanograd's own
initial weights. With --time-budget it times its first steps and
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import blas_threads, torch_or_none  # noqa: E402

import nanograd  # noqa: E402
from gpt.budget import step_and_evaluation_seconds, steps_that_fit  # noqa: E402
from gpt.config import TrainConfig, build_model, build_parser, resolve  # noqa: E402
from gpt.errors import UserError, exit_status  # noqa: E402
from gpt.prepare import prepare  # noqa: E402
from gpt.runlog import chars_per_target  # noqa: E402
from gpt.train import (  # noqa: E402
    SPLITS,
    WHOLE_VAL,
    evaluation_sets,
    last_evaluation_scale,
    lr_at,
    muon_and_adamw_parameters,
    parameter_groups,
)


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
    optimizers = make_optimizers(torch, model, config)
    batch_rng = np.random.default_rng(config.seed)
    fixed = {split: dataset.fixed_batches(split, config.eval_iters, config.batch_size, config.block_size,
                                          seed=config.seed + 1) for split in SPLITS}
    if config.eval_all_val:
        fixed[WHOLE_VAL] = dataset.whole_split_batches("val", config.batch_size, config.block_size)
    chars = {name: chars_per_target(dataset.tokenizer, batches) for name, batches in fixed.items()}
    evals = {name: [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches] for name, batches in fixed.items()}

    def estimate(name: str) -> float:  # each batch's mean loss weighed by its sequences, as gpt.train's
        model.eval()
        with torch.no_grad():
            losses = [(model(x, y).item(), len(x)) for x, y in evals[name]]
        model.train()
        return sum(loss * n for loss, n in losses) / sum(n for _, n in losses)

    print(f"torch {torch.__version__}, {blas_threads()} threads, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, vocabulary {dataset.vocab_size}", flush=True)
    started, step_seconds, evaluations, step = time.perf_counter(), [], 0, 0
    while True:
        if step % config.eval_interval == 0 or step == config.max_iters:
            sets = evaluation_sets(config, step)
            losses = {split: estimate(name) for split, name in sets.items()}
            evaluations += 1
            print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                  f"val {losses['val'] / chars[sets['val']] / math.log(2):.3f} bits per character, "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        if step >= config.max_iters:
            break
        t0 = time.perf_counter()
        for opt, peak in optimizers:  # each optimizer's peak, scaled by the schedule
            for group in opt.param_groups:
                group["lr"] = lr_at(config, step) * peak / config.lr
        x, y = dataset.get_batch("train", config.batch_size, config.block_size, batch_rng)
        loss = model(torch.from_numpy(x), torch.from_numpy(y))
        for opt, _ in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
        for opt, _ in optimizers:
            opt.step()
        step += 1
        step_seconds.append(time.perf_counter() - t0)
        if len(step_seconds) == config.steps_to_time():
            config = fit_the_budget(config, step, step_seconds, time.perf_counter() - started, evaluations,
                                    last_evaluation_scale(config, fixed))
    tokens_per_s = config.batch_size * config.block_size * step / sum(step_seconds) if step else math.nan
    print(f"done: {step} steps in {time.perf_counter() - started:.1f}s ({tokens_per_s:,.0f} tokens/s in training "
          "steps)")


def make_optimizers(torch: Any, model: Any, config: TrainConfig) -> list[tuple[Any, float]]:
    """gpt.train.make_optimizer's optimizers in PyTorch, each with its peak learning rate:
    AdamW (no decay on 1-D parameters), and with --optimizer muon, torch.optim.Muon for the
    blocks' 2-D weights (whose update rule nanograd.optim.Muon follows)."""
    matrices, rest = muon_and_adamw_parameters(model.named_parameters(), config.optimizer)
    adamw = torch.optim.AdamW(parameter_groups(rest, config.weight_decay), lr=config.lr,
                              betas=(config.beta1, config.beta2))
    if config.optimizer == "adamw":
        return [(adamw, config.lr)]
    muon = torch.optim.Muon(matrices, lr=config.muon_lr, momentum=config.muon_momentum,
                            weight_decay=config.muon_weight_decay)
    return [(adamw, config.lr), (muon, config.muon_lr)]


def fit_the_budget(config: TrainConfig, step: int, step_seconds: list[float], session_seconds: float,
                   evaluations: int, last_eval_scale: float) -> TrainConfig:
    """--time-budget, by gpt.train's rule (gpt.train.fit_the_budget, in one process)."""
    step_s, eval_s = step_and_evaluation_seconds(step_seconds, session_seconds, evaluations)
    max_iters = steps_that_fit(config.time_budget - session_seconds, step, step_s, eval_s, config.eval_interval,
                               last_eval_scale * eval_s)
    print(f"--time-budget {config.time_budget:g}: {max_iters} steps (a step takes {1000 * step_s:.1f} ms, an "
          f"evaluation {eval_s:.1f} s)", flush=True)
    return dataclasses.replace(config, max_iters=max_iters, time_budget=None)


if __name__ == "__main__":
    sys.exit(exit_status(main))  # a bad flag or file: one line, exit 2 (gpt.errors)
