"""Training-step speed: nanograd against PyTorch eager, same model, same batch, same threads.

    python benchmarks/train_speed.py --preset baby          # ms/step, tokens/s, MFU, ratio
    python benchmarks/train_speed.py --preset bigram --json
    python benchmarks/train_speed.py --sweep                 # block size x width
    python benchmarks/train_speed.py --preset baby --memory  # peak memory of each, in fresh processes

A step is forward, backward, gradient clipping and an AdamW update, timed after warm-up.
MFU (model FLOPs utilisation) = model FLOPs per second / the float32 matmul peak measured in
the same run. Model FLOPs per token = 6 N + 12 L C T (N parameters without the position
table, L layers, C width, T context; the estimate of the PaLM paper, appendix B, as used by
nanoGPT): 2 N for the forward matmuls, 4 N for the backward, plus attention's scores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
from common import alternate, blas_threads, cuda_or_exit, matmul_peak_flops, torch_or_none  # noqa: E402

import nanograd  # noqa: E402
from gpt.run import PRESETS, TrainConfig, build_model, parameter_groups  # noqa: E402
from nanograd import backend, optim  # noqa: E402

VOCAB = 65


def config_for(args: argparse.Namespace, **overrides) -> TrainConfig:
    fields = {k: v for k, v in PRESETS[args.preset].items()}
    for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    fields.update(overrides)
    return replace(TrainConfig(), preset=args.preset, device=args.device, **fields)


def model_flops_per_step(config: TrainConfig, n_params: int) -> float:
    tokens = config.batch_size * config.block_size
    if config.model == "bigram":
        return 6 * n_params * tokens  # no attention; the lookup's "matmul" is a row copy really
    n = n_params - config.block_size * config.n_embd  # without the position table
    return (6 * n + 12 * config.n_layer * config.n_embd * config.block_size) * tokens


def batch(config: TrainConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (config.batch_size, config.block_size)
    return rng.integers(0, VOCAB, shape), rng.integers(0, VOCAB, shape)


def nanograd_step(config: TrainConfig):
    """(model, step function) for nanograd on config.device."""
    nanograd.manual_seed(0)
    model = build_model(config, VOCAB).to(config.device)
    opt = optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, betas=(config.beta1, config.beta2))
    x, y = (backend.to_device(a, config.device) for a in batch(config))
    clip = config.grad_clip or float("inf")

    def step() -> None:
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm(model.parameters(), clip)
        opt.step()

    return model, step


def torch_step(config: TrainConfig, nanograd_model=None):
    """(model, step function) for the equivalent PyTorch model; checks the loss matches first."""
    torch = torch_or_none()
    from torch_gpt import TorchBigram, TorchGPT, check_same_loss

    torch.manual_seed(0)
    device = "cuda" if config.device == "cuda" else "cpu"
    model = TorchBigram(VOCAB) if config.model == "bigram" else TorchGPT(config.model_config(VOCAB))
    x, y = batch(config)
    if nanograd_model is not None and config.device == "cpu":
        check_same_loss(nanograd_model.eval(), model.eval(), x, y)
        nanograd_model.train()
        model.train()
    model.to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=config.lr, betas=(config.beta1, config.beta2))
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    clip = config.grad_clip or float("inf")

    def step() -> None:
        loss = model(xt, yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return model, step


def measure(config: TrainConfig, args: argparse.Namespace, peak: float) -> list[dict]:
    model, ours = nanograd_step(config)
    steps = {"nanograd": ours}
    torch = None if args.no_torch else torch_or_none()
    if torch is not None:
        torch.set_num_threads(blas_threads())
        steps["torch"] = torch_step(config, model)[1]
    for step in steps.values():  # warm-up: first calls allocate and fill caches
        for _ in range(args.warmup):
            step()
    seconds = alternate(steps, args.rounds, args.steps, config.device)
    flops = model_flops_per_step(config, model.num_parameters())
    tokens = config.batch_size * config.block_size
    rows = [{"preset": config.preset, "impl": impl, "ms_per_step": round(s * 1e3, 3),
             "tokens_per_s": round(tokens / s, 1), "mfu": round(flops / s / peak, 4),
             "batch_size": config.batch_size, "block_size": config.block_size, "n_embd": config.n_embd,
             "n_layer": config.n_layer, "device": config.device, "threads": blas_threads(),
             "torch_version": torch.__version__ if torch is not None else None}
            for impl, s in seconds.items()]
    if torch is None and not args.no_torch:
        print("PyTorch is not installed: nanograd only (pip install -e '.[bench]')", file=sys.stderr)
    return rows


def memory_child(impl: str, config: TrainConfig, steps: int) -> int:
    """Peak resident memory (KiB) of a process that builds the model and trains `steps` steps."""
    step = (nanograd_step(config) if impl == "nanograd" else torch_step(config))[1]
    for _ in range(steps):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def print_table(rows: list[dict]) -> None:
    print(f"{'preset':>7} {'B':>3} {'T':>4} {'C':>4} {'L':>2} {'impl':>9} {'ms/step':>9} {'tokens/s':>10} {'MFU':>6}")
    for r in rows:
        print(f"{r['preset']:>7} {r['batch_size']:>3} {r['block_size']:>4} {r['n_embd']:>4} {r['n_layer']:>2} "
              f"{r['impl']:>9} {r['ms_per_step']:>9.2f} {r['tokens_per_s']:>10,.0f} {r['mfu']:>6.1%}")
    by_impl = {r["impl"]: r for r in rows}
    if "torch" in by_impl:
        ratio = by_impl["nanograd"]["tokens_per_s"] / by_impl["torch"]["tokens_per_s"]
        print(f"{'':>30} nanograd / torch tokens/s: {ratio:.2f}x")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="baby", choices=sorted(PRESETS))
    for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (the median is reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true", help="one JSON object per (configuration, impl)")
    p.add_argument("--sweep", action="store_true", help="block size 64..512 x width 128..384")
    p.add_argument("--memory", action="store_true", help="peak memory of each implementation")
    p.add_argument("--no-torch", action="store_true", help="time nanograd alone")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda_or_exit(args.device)
    config = config_for(args)

    if args.memory_child:
        print(memory_child(args.memory_child, config, args.steps))
        return
    if args.memory:
        impls = ["nanograd"] + (["torch"] if torch_or_none() is not None and not args.no_torch else [])
        for impl in impls:
            cmd = [sys.executable, __file__, "--memory-child", impl, "--preset", args.preset,
                   "--steps", str(args.steps)]
            kib = int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip())
            line = {"preset": args.preset, "impl": impl, "peak_rss_mib": round(kib / 1024, 1), "steps": args.steps}
            print(json.dumps(line) if args.json else f"{impl:>9}: peak RSS {kib / 1024:.1f} MiB")
        return

    peak = matmul_peak_flops(args.device)
    if not args.json:
        print(f"float32 matmul peak: {peak / 1e9:.0f} GFLOP/s, BLAS threads: {blas_threads()}")
    configs = [config]
    if args.sweep:
        configs = [config_for(args, block_size=t, n_embd=c, n_head=c // 32, n_layer=4, batch_size=max(1, 768 // t))
                   for t in (64, 128, 256, 512) for c in (128, 256, 384)]
    for cfg in configs:
        rows = measure(cfg, args, peak)
        if args.json:
            for row in rows:
                print(json.dumps(row), flush=True)
        else:
            print_table(rows)


if __name__ == "__main__":
    main()
