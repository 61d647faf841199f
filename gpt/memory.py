"""Memory: a lower bound on what a model needs, checked against what this process may use,
so that sizes too large for the machine are a one-line error instead of a silent kill.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import TrainConfig
from .errors import UserError


def memory_lower_bound(config: TrainConfig, vocab_size: int, training: bool, processes: int = 1) -> int:
    """Bytes of float32 the model needs at the least: its weights; to train, also their
    gradients and AdamW's two moments, and the activations a step keeps for its backward pass
    (with `processes` processes on the machine, each holds the model and its part of the batch).

    Counted low on purpose, so that a refusal (check_memory) is never wrong: only the big
    matrices; of the activations, per position, each layer's two normalised inputs (C each),
    q k v (3C), the attention output (C), the MLP's three (4C) arrays and the attention weights
    (half the block per query and head, as causal), then the final normalised output (C) and
    the logits with their softmax (V each). benchmarks/RESULTS.md compares the count with what
    a step really allocates."""
    V, T, C, L = vocab_size, config.block_size, config.n_embd, config.n_layer
    if config.model == "bigram":
        weights, per_position = V * V, V  # the table; the logits it returns
    else:
        weights = L * 12 * C * C + (V + T) * C + (0 if config.tie_weights else V * C)
        per_position = L * (18 * C + config.n_head * T // 2) + C + 2 * V
    float32_bytes = 4
    if not training:
        return float32_bytes * weights
    copies = 4  # weights, gradients, AdamW's two moments
    return float32_bytes * (processes * copies * weights + config.batch_size * T * per_position)


def check_memory(needed: int, what: str) -> None:
    """A one-line error where `needed` bytes exceed the memory this process may use, instead of
    the system killing it without a word once the pages are touched."""
    try:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to compare with
        return
    limit = min([machine, *cgroup_memory_limits()])
    if needed > limit:
        whose = "this machine's" if limit == machine else "this container's limit of"
        raise UserError(f"{what} needs at least {needed / 2**30:,.1f} GiB, more than {whose} "
                        f"{limit / 2**30:,.1f} GiB of memory: try smaller sizes")


def cgroup_memory_limits(proc_cgroup: Path = Path("/proc/self/cgroup"),
                         root: Path = Path("/sys/fs/cgroup")) -> list[int]:
    """The memory limits set on this process's control groups (Linux; a container gets one,
    e.g. docker run --memory). Read where /proc/self/cgroup places the process (cgroup v2:
    memory.max; v1: memory/memory.limit_in_bytes) and at the hierarchy's root, which is the
    container's own where it has a cgroup namespace. "max", or v1's huge default, is no limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    files = {root / "memory.max", root / "memory" / "memory.limit_in_bytes"}
    for line in lines:  # "hierarchy id:controllers:path"
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files.add(root / path.lstrip("/") / "memory.max")
        elif "memory" in controllers.split(","):
            files.add(root / "memory" / path.lstrip("/") / "memory.limit_in_bytes")
    limits = []
    for file in files:
        try:
            text = file.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return sorted(limits)
