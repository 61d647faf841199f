"""A training run: its configuration (presets, command-line flags), the model it builds, and
the checkpoint that holds everything needed to sample from it or resume it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nanograd import backend, nn

from .bigram import BigramLanguageModel
from .bpe import MAX_VOCAB_SIZE, N_BYTES
from .checkpoint import DamagedCheckpoint, load_checkpoint, save_checkpoint
from .errors import UserError
from .model import GPT, GPTConfig
from .prepare import Tokenizer, tokenizer_from_json

TOKENIZER_HELP = "'char' (every character a token) or 'bpe' (byte-pair tokens learned from the train split)"
VOCAB_SIZE_HELP = "tokens in a BPE vocabulary: 256 bytes and the merges learned (with --tokenizer bpe)"


def check_tokenizer_settings(tokenizer: str, vocab_size: int | None, val_fraction: float) -> None:
    """--tokenizer, --vocab-size and --val-fraction, as gpt.train and gpt.prepare take them."""
    if tokenizer not in ("char", "bpe"):
        raise UserError(f"--tokenizer must be 'char' or 'bpe', got {tokenizer!r}")
    if tokenizer == "char" and vocab_size is not None:
        raise UserError("--vocab-size is for --tokenizer bpe (the character vocabulary is the text's characters)")
    if tokenizer == "bpe" and vocab_size is None:
        raise UserError("--tokenizer bpe needs --vocab-size (256 bytes and the merges to learn, e.g. 512)")
    if tokenizer == "bpe" and not N_BYTES <= vocab_size <= MAX_VOCAB_SIZE:
        raise UserError(f"--vocab-size must be between {N_BYTES} (the bytes) and {MAX_VOCAB_SIZE:,} (uint32 ids), "
                        f"got {vocab_size}")
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, got {val_fraction}")


@dataclass
class TrainConfig:
    preset: str = field(default="baby", metadata={
        "help": "named configuration the other flags override: baby (default), bigram or video"})
    # model
    model: str = field(default="gpt", metadata={"help": "'gpt' or 'bigram'"})
    n_layer: int = field(default=4, metadata={"help": "transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention heads per block"})
    n_embd: int = field(default=128, metadata={"help": "embedding width (channels)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability while training"})
    bias: bool = field(default=False, metadata={"help": "biases in Linear layers and LayerNorms"})
    tie_weights: bool = field(default=True, metadata={"help": "share token embedding and output head"})
    # data
    data: str | None = field(default=None, metadata={"help": "UTF-8 text file (default: tiny shakespeare)"})
    tokenizer: str = field(default="char", metadata={"help": TOKENIZER_HELP})
    vocab_size: int | None = field(default=None, metadata={"help": VOCAB_SIZE_HELP})
    val_fraction: float = field(default=0.1, metadata={"help": "fraction of the text held out for validation"})
    block_size: int = field(default=64, metadata={"help": "context length T"})
    batch_size: int = field(default=12, metadata={"help": "sequences per step B, over all the processes together"})
    grad_accum: int = field(default=1, metadata={
        "help": "micro-batches that each process's share of a batch is cut into, their gradients summed "
                "before the update: the same update in less memory"})
    # optimisation
    max_iters: int = field(default=2000, metadata={"help": "training steps"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-4, metadata={"help": "learning rate at the end of the cosine decay"})
    warmup_iters: int = field(default=100, metadata={"help": "linear warm-up steps"})
    decay_lr: bool = field(default=True, metadata={"help": "cosine decay from lr to min_lr"})
    lr_decay_iters: int | None = field(default=None, metadata={"help": "decay length (default, or 0: max_iters)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decoupled weight decay (2-D weights only)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.99, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0: off)"})
    # evaluation and output
    eval_interval: int = field(default=250, metadata={"help": "steps between evaluations"})
    eval_iters: int = field(default=200, metadata={"help": "batches per loss estimate"})
    seed: int = field(default=1337, metadata={"help": "seed for initialisation, batches and dropout"})
    device: str = field(default="cpu", metadata={"help": "'cpu' or 'cuda'"})
    workers: int | None = field(default=None, metadata={
        "help": "CPU processes (MPI ranks) to start, each training on a share of the batch (default: one per "
                "core, fewer for small steps; one for the bigram and on a GPU); under mpiexec, its -n decides"})
    out_dir: str = field(default="out", metadata={"help": "directory for checkpoints and logs"})
    resume: bool = field(default=False, metadata={"help": "continue the run saved in out_dir"})
    overwrite: bool = field(default=False, metadata={
        "help": "start a new run in an out_dir that holds one (its checkpoints are replaced)"})
    sample_tokens: int = field(default=300, metadata={"help": "characters sampled at the end (0: none)"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar (for logs)"})

    def validate(self) -> None:
        for name in (f.name for f in dataclasses.fields(self) if f.type in ("int", "int | None")):
            value = getattr(self, name)  # (a checkpoint's JSON could hold 64.0 or "64")
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise UserError(f"--{name.replace('_', '-')} must be a whole number, got {value!r}")
        positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "eval_interval",
                    "eval_iters")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be positive, got {self.workers}")
        if self.lr_decay_iters is not None and self.lr_decay_iters < 0:
            raise UserError(f"--lr-decay-iters must be 0 or more (0: max_iters), got {self.lr_decay_iters}")
        for name in ("max_iters", "warmup_iters", "sample_tokens", "seed"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"--{name.replace('_', '-')} must be a number >= 0, got {value}")
        if self.model not in ("gpt", "bigram"):
            raise UserError(f"--model must be 'gpt' or 'bigram', got {self.model!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        check_tokenizer_settings(self.tokenizer, self.vocab_size, self.val_fraction)
        if self.model == "gpt" and self.n_embd % self.n_head:
            raise UserError(f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})")

    def data_parallel_workers(self) -> int:
        """How many processes `python -m gpt.train` starts (under mpiexec, gpt.ranks), each on a
        share of every batch: --workers if given, else one per core (per BLAS thread), as long as

        - each process's share keeps at least MIN_ACTIVATIONS_PER_WORKER activations (B T C /
          workers): on smaller steps the fixed cost of a step's exchange (the gradients' sum,
          the optimizer's update that every process makes) eats what another core adds;
        - the batch splits evenly enough: the step waits for the largest share.

        The bigram model and GPUs get one (benchmarks/RESULTS.md has the measurements)."""
        if self.device != "cpu":
            return 1
        if self.workers is not None:
            return min(self.workers, self.batch_size)  # a worker without a slice would only wait
        if self.model != "gpt":
            return 1
        B, activations = self.batch_size, self.batch_size * self.block_size * self.n_embd
        workers = min(backend.blas_threads(), B)
        while workers > 1 and (activations / workers < MIN_ACTIVATIONS_PER_WORKER
                               or math.ceil(B / workers) > MAX_SLICE_IMBALANCE * B / workers):
            workers -= 1
        return workers

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias,
                         tie_weights=self.tie_weights)


MIN_ACTIVATIONS_PER_WORKER = 8 * 1024  # see TrainConfig.data_parallel_workers
MAX_SLICE_IMBALANCE = 4 / 3  # the largest slice may hold a third more than an even share (2 + 1)

# Fields that fix the shape of the model: a checkpoint only loads into the same values.
MODEL_FIELDS = ("model", "n_layer", "n_head", "n_embd", "block_size", "bias", "tie_weights", "tokenizer", "vocab_size")

PRESETS: dict[str, dict[str, Any]] = {
    # The lecture's bigram.py: batch 32, block 8, 3000 steps of AdamW at 1e-2 (PyTorch's
    # default weight decay 0.01), no schedule, no clipping.
    "bigram": dict(model="bigram", batch_size=32, block_size=8, max_iters=3000, lr=1e-2,
                   decay_lr=False, warmup_iters=0, weight_decay=0.01, beta2=0.999, grad_clip=0.0,
                   eval_interval=300, eval_iters=200),
    # nanoGPT README's CPU recipe on shakespeare_char ("val loss 1.88 in about 3 minutes").
    "baby": dict(model="gpt", n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12,
                 max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99,
                 weight_decay=0.1, grad_clip=1.0, dropout=0.0, bias=False, tie_weights=True,
                 eval_interval=250, eval_iters=200),
    # The lecture's final gpt.py (val loss about 1.48 on a GPU): AdamW 3e-4, no schedule.
    "video": dict(model="gpt", n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64,
                  max_iters=5000, lr=3e-4, decay_lr=False, warmup_iters=0, weight_decay=0.01,
                  beta2=0.999, grad_clip=0.0, dropout=0.2, bias=True, tie_weights=False,
                  eval_interval=500, eval_iters=200),
}


def _flag_type(tp: Any):
    """The argparse converter for a dataclass field type (Optional[X] -> X)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per TrainConfig field (--batch-size for batch_size); booleans get --no-X too.

    Defaults are None so that only the flags actually given override the preset.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        tp = _flag_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            default = PRESETS["baby"].get(f.name, f.default)
            shown = default is not None and f.name != "preset"
            parser.add_argument(flag, type=tp, default=None, metavar=tp.__name__.upper(),
                                help=f"{help_text} (baby: {default})" if shown else help_text)
    parser.set_defaults(preset=None)
    return parser


def resolve(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> TrainConfig:
    """dataclass defaults <- preset <- the saved config when resuming <- flags given."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    preset = given.get("preset", (saved or {}).get("preset", "baby"))
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    # how this invocation shows its progress and how many processes it runs on are not part of
    # the run: --quiet and --workers are not kept
    saved_settings = {k: v for k, v in (saved or {}).items() if k not in ("quiet", "workers")}
    values = {**PRESETS[preset], **saved_settings, **given, "preset": preset}
    if saved is not None:
        if given.get("preset", preset) != saved.get("preset", preset):
            raise UserError(f"the run was trained with --preset {saved.get('preset')}, which a resumed run "
                            "keeps (give single flags to change its settings)")
        changed = [k for k in MODEL_FIELDS if k in given and given[k] != saved.get(k)]
        if changed:
            raise UserError(
                "the checkpoint was trained with a different model configuration: "
                + ", ".join(f"{k}={saved.get(k)!r} (flag: {given[k]!r})" for k in changed)
            )
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in values.items() if k in names})
    config.validate()
    return config


def build_model(config: TrainConfig, vocab_size: int) -> nn.Module:
    if config.model == "bigram":
        return BigramLanguageModel(vocab_size)
    return GPT(config.model_config(vocab_size))


def memory_lower_bound(config: TrainConfig, vocab_size: int, training: bool, processes: int = 1) -> int:
    """Bytes of float32 the model needs at the least: its weights; to train, also their
    gradients and AdamW's two moments, and the activations a step keeps for its backward pass
    (with `processes` processes on the machine, each holds the model and its part of the batch).

    Counted low on purpose, so that a refusal (check_memory) is never wrong: only the big
    matrices; of the activations, per position, each layer's two normalised inputs (C each),
    q k v (3C), the attention output (C), the MLP's three (4C) arrays and the attention weights
    (half the block per query and head, as causal), then the final normalised output (C) and
    the logits with their softmax (V each). The baby model counts 42 MiB, where one process's
    NumPy arrays peak at 61 MiB in a step (tracemalloc), and its two processes' memory,
    Python and all, at 161.9 MiB (benchmarks/RESULTS.md)."""
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


def checkpoint_path(out_dir: str | Path, best: bool = False) -> Path:
    return Path(out_dir) / ("best.npz" if best else "ckpt.npz")


def save_run(path: Path, model: nn.Module, optimizer: Any, config: TrainConfig,
             tokenizer: Tokenizer, state: dict[str, Any]) -> None:
    """Weights, optimizer moments, config, tokenizer and training state in one .npz (no pickle)."""
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"format": 1, "config": dataclasses.asdict(config), "tokenizer": tokenizer.to_json(), **state}
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        meta["optimizer_t"] = opt_state.pop("t")
        arrays.update({f"optim.{k}": v for k, v in opt_state.items()})
    save_checkpoint(path, arrays, meta)


def load_run(path: Path, device: str = "cpu", resuming: bool = False
             ) -> tuple[nn.Module, TrainConfig, Tokenizer, dict, dict]:
    """(model with weights loaded, config, tokenizer, meta, arrays) from a checkpoint. A damaged
    one's error says what can be done instead: use the run's other checkpoint where that one is
    intact, or (resuming) start over."""
    try:
        return _load_run(path, device)
    except DamagedCheckpoint as exc:
        raise DamagedCheckpoint(f"{exc}; {_way_forward(Path(path), resuming)}") from None


def _way_forward(damaged: Path, resuming: bool) -> str:
    """What to do about a damaged checkpoint in a run directory (see load_run)."""
    best = damaged.name == checkpoint_path(damaged.parent, best=True).name
    other = checkpoint_path(damaged.parent, best=not best)
    try:
        step = _load_run(other, "cpu")[3].get("step")
    except UserError:  # missing or damaged too
        return "start the run over with --overwrite" if resuming else "its run has no other usable checkpoint"
    intact = f"{other} (step {step}) is intact"
    if resuming:
        return f"{intact}: copy it over {damaged} to resume from there, or start over with --overwrite"
    return f"{intact}: sample from it {'without' if best else 'with'} --best"


def _load_run(path: Path, device: str) -> tuple[nn.Module, TrainConfig, Tokenizer, dict, dict]:
    arrays, meta = load_checkpoint(path)
    try:
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        saved = dict(meta["config"])
        config = TrainConfig(**{k: v for k, v in saved.items() if k in names})
        config.validate()
        tokenizer = tokenizer_from_json(meta["tokenizer"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DamagedCheckpoint(f"checkpoint {path} has no usable config or tokenizer ({exc})") from None
    check_memory(memory_lower_bound(config, tokenizer.vocab_size, training=False), f"the model in {path}")
    model = build_model(config, tokenizer.vocab_size)
    weights = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except (KeyError, ValueError) as exc:
        raise DamagedCheckpoint(f"checkpoint {path} does not match its model configuration: {exc}") from None
    if not all(np.isfinite(w).all() for w in weights.values()):  # gpt.train never saves such weights
        raise DamagedCheckpoint(f"checkpoint {path} holds weights that are not finite (NaN or inf): it cannot be used")
    model.to(device)
    return model, config, tokenizer, meta, arrays


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay 2-D weights (matmuls, embeddings) but not biases and LayerNorm gains (1-D):
    shrinking those towards 0 has no regularising benefit and only fights the normalisation."""
    params = model.parameters()
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def check_device(device: str) -> str:
    try:
        return backend.check_device(device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from None
