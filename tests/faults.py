"""gpt.train with a fault on one rank, for tests/test_distributed.py:

    mpiexec -n 2 python tests/faults.py KIND STEP [gpt.train flags]

At its training step STEP, the last rank kills itself with SIGKILL (KIND kill, as the
system's out-of-memory killer would), runs out of memory (memory: a MemoryError), or makes
a weight of its copy of the model nan, so that its share's loss is nan (nan). Every other
rank, and every other step, trains as gpt.train does.
"""

from __future__ import annotations

import math
import os
import signal
import sys

from gpt import train
from nanograd import distributed


def main() -> int:
    kind, fault_step, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    world = distributed.world()
    step_of_run = train.train_step
    steps = 0

    def faulty_step(*args, **kwargs):
        nonlocal steps
        steps += 1
        if world.rank == world.size - 1 and steps == fault_step:
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "memory":
                raise MemoryError("Unable to allocate 1.00 TiB for an array")
            if kind == "nan":  # one weight of this rank's model: its share's loss is nan
                args[0].parameters()[0].data[0, 0] = math.nan
        return step_of_run(*args, **kwargs)

    train.train_step = faulty_step
    return train.main(flags)


if __name__ == "__main__":
    sys.exit(main())
