"""The baby run in PyTorch, on the same batches: a reference for nanograd's loss and wall time.

    python benchmarks/torch_train.py                 # the baby preset, 2000 steps
    python benchmarks/torch_train.py --max-iters 200

Same corpus, tokenizer, train/val split, batch sampler and seed, same fixed evaluation batches,
learning-rate schedule, AdamW groups and clipping as `python -m gpt.train`; the model is
benchmarks/torch_gpt.py, initialised from nanograd's own initial weights so that both runs
start from the same point. Prints the evaluations and the wall time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import blas_threads, torch_or_none  # noqa: E402

import nanograd  # noqa: E402
from gpt.config import PRESETS, TrainConfig, build_model  # noqa: E402
from gpt.data import CharDataset, load_text  # noqa: E402
from gpt.errors import UserError, exit_status  # noqa: E402
from gpt.train import lr_at  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    nanograd.backend.keep_freed_memory()  # as gpt.train does: the same allocator for both implementations
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-iters", type=int, default=None)
    p.add_argument("--data", default=None)
    args = p.parse_args(argv)
    torch = torch_or_none()
    if torch is None:
        raise UserError("PyTorch is not installed (pip install -e '.[bench]')")
    from torch_gpt import TorchGPT, copy_weights  # (imports torch)
    torch.set_num_threads(blas_threads())
    config = TrainConfig(**PRESETS["baby"])
    if args.max_iters is not None:
        config.max_iters = args.max_iters
        config.validate()
    dataset = CharDataset(load_text(args.data), val_fraction=config.val_fraction)
    nanograd.manual_seed(config.seed)  # nanograd's initial weights, copied into the torch model
    model = TorchGPT(config.model_config(dataset.vocab_size))
    copy_weights(build_model(config, dataset.vocab_size), model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr,
                            betas=(config.beta1, config.beta2))
    batch_rng = np.random.default_rng(config.seed)
    evals = {split: [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in dataset.fixed_batches(
        split, config.eval_iters, config.batch_size, config.block_size, seed=config.seed + 1)]
        for split in ("train", "val")}

    def estimate(split: str) -> float:
        model.eval()
        with torch.no_grad():
            loss = float(np.mean([model(x, y).item() for x, y in evals[split]]))
        model.train()
        return loss

    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {blas_threads()} threads, {n_params:,} parameters")
    t0 = time.perf_counter()
    for step in range(config.max_iters + 1):
        if step % config.eval_interval == 0 or step == config.max_iters:
            print(f"step {step}: train loss {estimate('train'):.4f}, val loss {estimate('val'):.4f}", flush=True)
        if step == config.max_iters:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(config, step)
        x, y = dataset.get_batch("train", config.batch_size, config.block_size, batch_rng)
        loss = model(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
        opt.step()
    print(f"done: {config.max_iters} steps in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    sys.exit(exit_status(main))  # a bad flag or file: one line, exit 2 (gpt.errors)
