"""Training-step speed: nanograd against PyTorch eager, same model, same batch, same threads.

    python benchmarks/train_speed.py --preset baby --steps 20   # ms/step, tokens/s, MFU, ratio
    python benchmarks/train_speed.py --preset bigram --json      # one JSON object per implementation
    python benchmarks/train_speed.py --n-layer 6 --n-embd 256 --n-head 8 --block-size 128
    python benchmarks/train_speed.py --sweep                     # block size x width, about 5 minutes
    python benchmarks/train_speed.py --memory                    # peak RSS of each, in fresh processes

A step is forward, backward, gradient clipping and an AdamW update, timed after warm-up. The
two implementations take turns (--rounds rounds of --steps steps each) and the median round
is reported, so a change in the machine's speed during the run hits both alike. nanograd
runs on as many processes as gpt.train would (under mpiexec, which the script starts itself
as the trainer does); rank 0 times the steps, and runs PyTorch alone while the others wait.

MFU (model FLOPs utilisation) = model FLOPs per second / the float32 matmul peak measured at
the start of the same run. Model FLOPs per token = 6 N + 12 L C T: N parameters without the
position table (each weight does a multiply-add, 2 FLOPs, per token forward and twice that
backward: 2 N + 4 N), plus attention's scores and weighted sums, which have no parameters
(2 x 2 T C per layer forward, x 3 with backward). PaLM paper, appendix B; nanoGPT's
estimate_mfu.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
from common import (  # noqa: E402
    TORCH_MISSING,
    alternate,
    blas_threads,
    matmul_peak_flops,
    setup_torch,
    usable_device,
)

import nanograd  # noqa: E402
from gpt.config import PRESETS, TrainConfig, build_model  # noqa: E402
from gpt.errors import UserError, exit_status  # noqa: E402
from gpt.memory import check_memory, memory_lower_bound  # noqa: E402
from gpt.train import NO_MPI, parameter_groups, train_step  # noqa: E402
from nanograd import distributed, optim  # noqa: E402
from nanograd.distributed import World  # noqa: E402

VOCAB = 65  # tiny shakespeare's characters; the batches are random ids, speed does not care
SHAPE_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "workers")
# --sweep: every block size x width, 4 layers, one head per 32 channels, and the batch cut so
# that each step sees SWEEP_TOKENS tokens (the baby model's 12 x 64): steps stay small on 2 cores
SWEEP_BLOCKS, SWEEP_WIDTHS, SWEEP_TOKENS = (64, 128, 256, 512), (128, 256, 384), 768

Step = Callable[[], None]


def config_for(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """The preset's TrainConfig, with the shape flags given on the command line, then overrides."""
    fields = dict(PRESETS[args.preset])
    fields.update({name: getattr(args, name) for name in SHAPE_FLAGS if getattr(args, name) is not None})
    fields.update(overrides)
    config = replace(TrainConfig(), preset=args.preset, device=args.device, **fields)
    config.validate()
    return config


def model_flops_per_step(config: TrainConfig, n_params: int) -> float:
    """Training FLOPs of one step: (6 N + 12 L C T) per token (see the module docstring)."""
    tokens = config.batch_size * config.block_size
    if config.model == "bigram":
        return 6 * n_params * tokens  # a table lookup, not a matmul: its "MFU" is nominal
    n = n_params - config.block_size * config.n_embd  # the position table is a lookup too
    return (6 * n + 12 * config.n_layer * config.n_embd * config.block_size) * tokens


def random_batch(config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets (B, T) of random token ids: the same batch for both implementations."""
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.block_size)
    return rng.integers(0, VOCAB, shape), rng.integers(0, VOCAB, shape)


def nanograd_trainer(config: TrainConfig, world: World) -> tuple[Any, Step]:
    """(model, one training step) for nanograd on config.device: gpt.train's own train_step, on
    this rank's share of the batch."""
    nanograd.manual_seed(0)
    model = build_model(config, VOCAB).to(config.device)
    # created after .to(): AdamW takes the parameters' arrays over into one flat buffer
    opt = optim.AdamW(parameter_groups(model.parameters(), config.weight_decay), lr=config.lr,
                      betas=(config.beta1, config.beta2))
    x, y = random_batch(config)

    def step() -> None:
        train_step(model, opt, world, x, y, config)

    return model, step


def torch_trainer(torch: ModuleType, config: TrainConfig, nanograd_model: Any = None,
                  bigram_counts: bool = False) -> Step:
    """One training step of the PyTorch twin (benchmarks/torch_gpt.py). Given the nanograd
    model, first copies its weights over and checks that both give the same loss.
    bigram_counts: the bigram twin takes its loss from counts, as nanograd's does."""
    from torch_gpt import TorchBigram, TorchGPT, check_same_loss

    torch.manual_seed(0)
    model = TorchBigram(VOCAB, bigram_counts) if config.model == "bigram" else TorchGPT(config.model_config(VOCAB))
    model.to(config.device)
    x, y = random_batch(config)
    if nanograd_model is not None:
        check_same_loss(nanograd_model, model, x, y, config.device)
    # the same AdamW groups as gpt.train.parameter_groups: no decay on 1-D parameters
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))
    xt, yt = torch.from_numpy(x).to(config.device), torch.from_numpy(y).to(config.device)
    clip = config.grad_clip or float("inf")

    def step() -> None:
        loss = model(xt, yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    return step


def measure(config: TrainConfig, args: argparse.Namespace, peak: float, torch: ModuleType | None,
            with_torch: bool, world: World) -> list[dict]:
    """One result row per implementation for this configuration (the JSON objects of --json),
    on rank 0 (none on the others); every rank takes part in nanograd's steps, and rank 0 alone
    in PyTorch's (torch, given there: with_torch on every rank)."""
    model, ours = nanograd_trainer(config, world)
    steps = {"nanograd": ours}
    if with_torch:  # (the other ranks wait meanwhile)
        steps["torch"] = torch_trainer(torch, config, model, args.torch_counts) if world.rank == 0 else lambda: None
    for step in steps.values():  # warm-up: the first calls allocate memory and fill caches
        for _ in range(args.warmup):
            step()
    seconds = alternate(steps, args.rounds, args.steps, config.device, wait=world.barrier)
    if world.rank != 0:
        return []
    flops = model_flops_per_step(config, model.num_parameters())
    tokens = config.batch_size * config.block_size
    rows = [{"preset": config.preset, "impl": impl, "ms_per_step": round(s * 1e3, 3),
             "tokens_per_s": round(tokens / s, 1), "mfu": round(flops / s / peak, 4),
             "batch_size": config.batch_size, "block_size": config.block_size, "n_embd": config.n_embd,
             "n_layer": config.n_layer, "n_head": config.n_head, "device": config.device,
             "threads": args.threads, "nanograd_workers": world.size, "steps": args.steps,
             "rounds": args.rounds}
            for impl, s in seconds.items()]
    if torch is not None:
        rows[0]["nanograd_over_torch"] = round(rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"], 3)
        rows[1]["torch_version"] = torch.__version__
        if config.model == "bigram":
            rows[1]["bigram_loss"] = "counts" if args.torch_counts else "lookup"
    return rows


def print_header(with_torch: bool) -> None:
    impl = f"{'ms/step':>9} {'tokens/s':>10} {'MFU':>6}"
    line = f"{'preset':>7} {'B':>3} {'T':>4} {'C':>4} {'L':>2} {'nh':>2} | nanograd {impl}"
    print(line + (f" | torch {impl} | ratio" if with_torch else ""))


def print_row(rows: list[dict]) -> None:
    """One line per configuration: each implementation's figures, then nanograd / torch tokens/s."""
    r = rows[0]
    line = f"{r['preset']:>7} {r['batch_size']:>3} {r['block_size']:>4} {r['n_embd']:>4} {r['n_layer']:>2} " \
           f"{r['n_head']:>2}"
    for row in rows:
        line += f" | {'':>{len(row['impl'])}} {row['ms_per_step']:9.2f} {row['tokens_per_s']:10,.0f} {row['mfu']:6.1%}"
    if "nanograd_over_torch" in r:
        line += f" | {r['nanograd_over_torch']:4.2f}x"
    print(line, flush=True)


def memory_child(config: TrainConfig, impl: str, steps: int, bigram_counts: bool, world: World) -> None:
    """In a fresh process (nanograd: each rank of a fresh MPI job): print the peak RSS (KiB on
    Linux) after the imports and after `steps` training steps, each summed over the ranks, and
    the number of ranks. Only this implementation's libraries are imported, so nothing else
    counts."""
    torch = setup_torch(config.device) if impl == "torch" else None
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step = torch_trainer(torch, config, bigram_counts=bigram_counts) if torch is not None else \
        nanograd_trainer(config, world)[1]
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    baseline, peak = world.sum(baseline), world.sum(peak)
    if world.rank == 0:
        print(int(baseline), int(peak), world.size)


def measure_memory(args: argparse.Namespace, argv: list[str]) -> None:
    """Run memory_child once per implementation, each in its own process, and print the results."""
    # find_spec, not import: on Linux a child's ru_maxrss starts at its parent's peak (exec folds
    # the parent's high-water mark in), so this process must stay as small as it is now
    impls = ["nanograd"] if args.no_torch or importlib.util.find_spec("torch") is None else ["nanograd", "torch"]
    if impls == ["nanograd"] and not args.no_torch:
        print(TORCH_MISSING, file=sys.stderr)
    flags = [a for a in argv if a not in ("--memory", "--json")]  # the same preset, shape, device, steps
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    for impl in impls:
        child = subprocess.run([sys.executable, __file__, *flags, "--memory-child", impl],
                               capture_output=True, text=True)
        if child.returncode != 0:
            last = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else ""
            if child.returncode == 2 and last.startswith("error: "):  # its one-line error (sizes too large...)
                raise UserError(f"measuring {impl}'s memory failed: {last.removeprefix('error: ')}")
            raise RuntimeError(f"measuring {impl}'s memory failed (exit status {child.returncode}):\n{child.stderr}")
        baseline, peak, processes = (int(v) for v in child.stdout.split())
        baseline, peak = baseline / scale, peak / scale
        row = {"preset": args.preset, "impl": impl, "steps": args.steps, "device": args.device,
               "peak_rss_mib": round(peak, 1), "after_imports_rss_mib": round(baseline, 1), "processes": processes}
        print(json.dumps(row) if args.json else
              f"{impl:>9}: peak RSS {peak:7.1f} MiB ({baseline:.1f} MiB after imports, "
              f"{peak - baseline:+.1f} MiB for the model and {args.steps} steps"
              + (f", summed over {processes} processes)" if processes > 1 else ")"))


def parse_flags(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="baby", choices=sorted(PRESETS))
    for name in SHAPE_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help="override the preset's")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round (--memory: steps to run)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median round is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--json", action="store_true", help="one JSON object per (configuration, impl)")
    p.add_argument("--sweep", action="store_true", help="block size (64..512) x width (128..384)")
    p.add_argument("--memory", action="store_true", help="peak memory of each implementation, in fresh processes")
    p.add_argument("--no-torch", action="store_true", help="time nanograd alone")
    p.add_argument("--torch-counts", action="store_true",
                   help="bigram: PyTorch takes its loss from pair counts too, as nanograd does (default: "
                        "the lecture's lookup then cross_entropy)")
    p.add_argument("--memory-child", choices=("nanograd", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("steps", "rounds"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if args.warmup < 0:
        raise UserError("--warmup must be 0 or more")
    if args.memory and args.sweep:
        raise UserError("--memory measures one configuration: leave out --sweep")
    args.device = usable_device(args.device)
    if args.torch_counts and (config_for(args).model != "bigram" or args.sweep or args.no_torch):
        raise UserError("--torch-counts changes the PyTorch twin of the bigram: use it with --preset bigram, "
                        "without --sweep or --no-torch")
    return args


def main(argv: list[str] | None = None) -> None:
    nanograd.backend.keep_freed_memory()  # as gpt.train does: the same allocator for both implementations
    argv = sys.argv[1:] if argv is None else argv
    args = parse_flags(argv)
    config = config_for(args)

    if args.memory:
        return measure_memory(args, argv)
    if args.sweep:
        return sweep(args, argv)
    workers = config.data_parallel_workers()
    if not distributed.launched_by_mpi() and args.memory_child != "torch":
        if config.device == "cpu":  # a one-line refusal, as gpt.train gives, rather than filling the memory
            check_memory(memory_lower_bound(config, VOCAB, training=True, processes=workers), "training this model")
        mpiexec = distributed.find_mpiexec() if workers > 1 else None
        if mpiexec is not None:  # this command again, as `workers` ranks (as gpt.train starts itself)
            raise SystemExit(distributed.run_as_ranks(mpiexec, workers, [sys.executable, __file__, *argv]))
        if workers > 1:
            print(NO_MPI, file=sys.stderr)
    world = distributed.world()
    if args.memory_child:
        world.share_the_machine(config.device)
        return memory_child(config, args.memory_child, args.steps, args.torch_counts, world)

    # rank 0 measures the machine's peak and sets PyTorch up with every core, the others waiting
    args.threads = blas_threads()
    torch = None if args.no_torch or world.rank != 0 else setup_torch(args.device)
    peak = world.broadcast(matmul_peak_flops(args.device) if world.rank == 0 else None)
    world.share_the_machine(args.device)
    if not args.json and world.rank == 0:
        print(f"float32 matmul peak: {peak / 1e9:.0f} GFLOP/s on {args.device}, BLAS threads: {args.threads}"
              + (f", nanograd processes: {world.size}" if world.size > 1 else "")
              + (f", torch {torch.__version__}" if torch is not None else "")
              + (", torch's bigram loss from counts (--torch-counts)" if args.torch_counts else ""))
        print_header(torch is not None)
    rows = measure(config, args, peak, torch, world.broadcast(torch is not None), world)
    if args.json:
        for row in rows:
            print(json.dumps(row), flush=True)
    elif rows:
        print_row(rows)
        if torch is not None:
            print("ratio: nanograd tokens/s / torch tokens/s (above 1: nanograd is faster)")


def sweep(args: argparse.Namespace, argv: list[str]) -> None:
    """--sweep: each configuration in a fresh run of this script (each on the number of
    processes that gpt.train would take for it), printed as it comes."""
    flags = [a for a in argv if a not in ("--sweep", "--json")]
    for t in SWEEP_BLOCKS:
        for c in SWEEP_WIDTHS:
            shape = ["--block-size", t, "--n-embd", c, "--n-head", c // 32, "--n-layer", 4,
                     "--batch-size", max(1, SWEEP_TOKENS // t)]
            child = subprocess.run([sys.executable, __file__, *flags, *map(str, shape), "--json"], capture_output=True,
                                   text=True)
            if child.returncode != 0:
                raise RuntimeError(f"the sweep's run at T {t}, C {c} failed (exit status {child.returncode}):\n"
                                   f"{child.stderr}")
            rows = [json.loads(line) for line in child.stdout.splitlines()]
            if args.json:
                for row in rows:
                    print(json.dumps(row), flush=True)
                continue
            if (t, c) == (SWEEP_BLOCKS[0], SWEEP_WIDTHS[0]):
                print_header(len(rows) > 1)
            print_row(rows)


if __name__ == "__main__":
    world = distributed.world()  # (of one, unless mpiexec started this process)
    sys.exit(exit_status(main, world=world))  # a bad flag or file: one line, exit 2 (gpt.errors)
