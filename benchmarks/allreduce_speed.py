"""What a data-parallel step exchanges, and how long the exchange takes: the gradients of each
preset's model summed over the ranks (nanograd.distributed.World.all_reduce_gradients).

    mpiexec -n 2 python benchmarks/allreduce_speed.py             # baby and video, ms per Allreduce
    mpiexec -n 4 python benchmarks/allreduce_speed.py --json      # one JSON object per preset

Each rank fills its gradients with its rank number plus one, and the sums are checked (every
element 1 + 2 + ... + ranks) before anything is timed. Then --calls exchanges are timed
back to back, --rounds times, each round starting together (a barrier), and rank 0 reports
the median round. The bus bandwidth is what a ring Allreduce moves per rank, 2 (ranks - 1) /
ranks x the bytes, over the time: the figure that the network must carry.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere

from gpt.config import PRESETS, TrainConfig, build_model  # noqa: E402
from gpt.errors import UserError, exit_status  # noqa: E402
from nanograd import distributed  # noqa: E402
from nanograd.distributed import World  # noqa: E402

VOCAB = 65  # tiny shakespeare's characters


def exchange_ms(world: World, preset: str, rounds: int, calls: int) -> dict:
    """The median milliseconds of one all_reduce_gradients of the preset's model, checked first."""
    model = build_model(TrainConfig(**PRESETS[preset]), VOCAB)
    params = model.parameters()

    def fill() -> None:
        for p in params:
            p.grad = np.full(p.shape, world.rank + 1.0, p.dtype)

    fill()
    world.all_reduce_gradients(params)
    expected = world.size * (world.size + 1) / 2
    if not all(np.all(p.grad == expected) for p in params):
        raise RuntimeError(f"the gradients summed over {world.size} ranks are not {expected} everywhere")
    times = []
    for _ in range(rounds):
        fill()  # (p.grad now views the last sum's buffer: a fresh array each, as backward gives)
        world.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            world.all_reduce_gradients(params)
        times.append((time.perf_counter() - start) / calls)
    seconds = statistics.median(times)
    n_params = sum(p.size for p in params)
    nbytes = sum(p.size * p.dtype.itemsize for p in params)
    return {"preset": preset, "ranks": world.size, "params": n_params, "bytes": nbytes,
            "ms": round(seconds * 1e3, 3),
            "bus_gb_per_s": round(2 * (world.size - 1) / world.size * nbytes / seconds / 1e9, 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["baby", "video"], choices=sorted(PRESETS))
    p.add_argument("--rounds", type=int, default=7, help="timed rounds; the median is reported")
    p.add_argument("--calls", type=int, default=20, help="exchanges per round")
    p.add_argument("--json", action="store_true", help="one JSON object per preset")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        raise UserError("--rounds and --calls must be at least 1")
    world = distributed.world()
    for preset in args.presets:
        row = exchange_ms(world, preset, args.rounds, args.calls)
        if world.rank == 0:
            print(json.dumps(row) if args.json else
                  f"{preset:>6}: {row['params']:>10,} parameters, {row['bytes'] / 1e6:6.1f} MB, {row['ranks']} ranks: "
                  f"{row['ms']:8.3f} ms per Allreduce, bus {row['bus_gb_per_s']:.2f} GB/s", flush=True)


if __name__ == "__main__":
    world = distributed.world()  # (of one, unless mpiexec started this process)
    sys.exit(exit_status(main, world=world))
