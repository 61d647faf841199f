"""The settings of a training run: TrainConfig, its presets, the command-line flags that
override them, and every check on those values, made once, before anything costly starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanograd import backend, nn

from .bigram import BigramLanguageModel
from .bpe import MAX_VOCAB_SIZE, N_BYTES
from .budget import FIRST_STEPS_LEFT_OUT, measured_steps
from .data import check_val_fraction
from .errors import UserError
from .model import GPT, GPTConfig

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
    check_val_fraction(val_fraction)


@dataclass
class TrainConfig:
    preset: str = field(default="baby", metadata={
        "help": "named configuration the other flags override: baby (default), bigram, video or speedrun"})
    # model
    model: str = field(default="gpt", metadata={"help": "'gpt' or 'bigram'"})
    n_layer: int = field(default=4, metadata={"help": "transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention heads per block"})
    n_embd: int = field(default=128, metadata={"help": "embedding width (channels)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability while training"})
    bias: bool = field(default=False, metadata={"help": "biases in Linear layers and LayerNorms"})
    tie_weights: bool = field(default=True, metadata={"help": "share token embedding and output head"})
    rotary: bool = field(default=False, metadata={
        "help": "rotary position embeddings (RoFormer) in attention, instead of learned position embeddings"})
    reference: bool = field(default=False, metadata={
        "help": "the lecture's attention, LayerNorm, GELU and bigram loss, written from Tensor ops, instead of "
                "the fused ops: slower, the same numbers (dropout draws other masks; gpt/model.py, gpt/bigram.py)"})
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
    time_budget: float | None = field(default=None, metadata={
        "help": "seconds for the whole run, evaluations included: it times its first steps and evaluations, "
                "then takes as many steps as fit, and says how many (--max-iters N repeats it)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-4, metadata={"help": "learning rate at the end of the cosine decay"})
    warmup_iters: int = field(default=100, metadata={"help": "linear warm-up steps"})
    decay_lr: bool = field(default=True, metadata={"help": "cosine decay from lr to min_lr"})
    lr_decay_iters: int | None = field(default=None, metadata={"help": "decay length (default, or 0: max_iters)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decoupled weight decay (2-D weights only)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.99, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0: off)"})
    optimizer: str = field(default="adamw", metadata={
        "help": "'adamw', or 'muon': Muon for the blocks' 2-D weights and AdamW (--lr, --weight-decay) for "
                "the embeddings and 1-D parameters (nanograd/optim.py)"})
    muon_lr: float = field(default=0.02, metadata={
        "help": "Muon's peak learning rate (the schedule scales it as it scales --lr)"})
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon's momentum"})
    muon_weight_decay: float = field(default=0.0, metadata={"help": "Muon's decoupled weight decay"})
    # evaluation and output
    eval_interval: int = field(default=250, metadata={"help": "steps between evaluations"})
    eval_iters: int = field(default=200, metadata={"help": "batches per loss estimate"})
    eval_all_val: bool = field(default=False, metadata={
        "help": "the last evaluation's val loss over the whole val split, not eval_iters random batches"})
    seed: int = field(default=1337, metadata={"help": "seed for initialisation, batches and dropout"})
    device: str = field(default="cpu", metadata={"help": "'cpu' or 'cuda'"})
    workers: int | None = field(default=None, metadata={
        "help": "CPU processes to start, each training on a share of the batch (default: one per "
                "core, fewer for small steps; one for the bigram and on a GPU); under mpiexec, its -n decides"})
    out_dir: str = field(default="out", metadata={"help": "directory for checkpoints and logs"})
    resume: bool = field(default=False, metadata={"help": "continue the run saved in out_dir"})
    overwrite: bool = field(default=False, metadata={
        "help": "start a new run in an out_dir that holds one (its checkpoints are replaced)"})
    sample_tokens: int = field(default=300, metadata={"help": "characters sampled at the end (0: none)"})
    quiet: bool = field(default=False, metadata={"help": "print the evaluations and nothing else"})
    log_interval: int = field(default=100, metadata={
        "help": "steps between the lines that say the loss and the speed, where the output is not a terminal "
                "(on a terminal a progress bar says them)"})

    def validate(self) -> None:
        for name in (f.name for f in dataclasses.fields(self) if f.type in ("int", "int | None")):
            value = getattr(self, name)  # (a checkpoint's JSON could hold 64.0 or "64")
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise UserError(f"--{name.replace('_', '-')} must be a whole number, got {value!r}")
        positive = ("block_size", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval")
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
        if self.time_budget is not None:
            self._check_time_budget()
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "muon_lr", "muon_weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"--{name.replace('_', '-')} must be a number >= 0, got {value}")
        if self.model not in ("gpt", "bigram"):
            raise UserError(f"--model must be 'gpt' or 'bigram', got {self.model!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise UserError(f"--optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        if self.optimizer == "muon" and self.model != "gpt":
            raise UserError("--optimizer muon updates the GPT's blocks: the bigram has none (use adamw)")
        for name in ("beta1", "beta2", "muon_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        check_tokenizer_settings(self.tokenizer, self.vocab_size, self.val_fraction)
        if self.model == "gpt":  # GPTConfig checks the model's sizes; any vocabulary stands in for the text's
            self.model_config(vocab_size=1)

    def _check_time_budget(self) -> None:
        if isinstance(self.time_budget, bool) or not isinstance(self.time_budget, numbers.Real) or not (
                math.isfinite(self.time_budget) and self.time_budget > 0):
            raise UserError(f"--time-budget must be a number of seconds above 0, got {self.time_budget!r}")
        if self.steps_to_time() < FIRST_STEPS_LEFT_OUT + 3:
            raise UserError(f"--time-budget times the run's first steps during the warm-up, whose learning rates do "
                            f"not depend on the run's length: give --warmup-iters {FIRST_STEPS_LEFT_OUT + 3} or more "
                            "(or --lr-decay-iters, or --no-decay-lr)")

    def steps_to_time(self) -> int:
        """How many of its first steps a run with a --time-budget times before it chooses its
        length (gpt.budget); 0 without a budget."""
        return measured_steps(self.decay_lr, self.warmup_iters, self.lr_decay_iters) if self.time_budget else 0

    def data_parallel_workers(self) -> int:
        """How many processes `python -m gpt.train` starts (under mpiexec, nanograd.distributed.run_as_ranks), each on a
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
                         tie_weights=self.tie_weights, fused=not self.reference, rotary=self.rotary)


MIN_ACTIVATIONS_PER_WORKER = 8 * 1024  # see TrainConfig.data_parallel_workers
MAX_SLICE_IMBALANCE = 4 / 3  # the largest slice may hold a third more than an even share (2 + 1)

# Fields that fix the shape of the model: a checkpoint only loads into the same values.
MODEL_FIELDS = ("model", "n_layer", "n_head", "n_embd", "block_size", "bias", "tie_weights", "rotary", "tokenizer",
                "vocab_size", "optimizer")  # (and the optimizer, whose state the checkpoint holds)

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
    # The best val bits per character found for 300 s on a 2-core CPU (benchmarks/RESULTS.md,
    # docs/09-five-minutes.md): the baby's shape on BPE 1024 tokens, rotary embeddings, Muon
    # for the matrices, stronger weight decay, the learning rate decayed to 0, and evaluations
    # only at the end, over the whole val split. Run it with --time-budget SECONDS; max_iters
    # is what --time-budget 300 chose in the run that RESULTS.md reports.
    "speedrun": dict(model="gpt", n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12,
                     tokenizer="bpe", vocab_size=1024, rotary=True, optimizer="muon", muon_lr=0.03,
                     muon_momentum=0.95, muon_weight_decay=0.1, max_iters=3567, lr=3e-3, min_lr=0.0,
                     warmup_iters=100, beta2=0.99, weight_decay=0.6, grad_clip=1.0, dropout=0.0, bias=False,
                     tie_weights=True, eval_interval=100000, eval_iters=20, eval_all_val=True),
}


def _flag_type(tp: Any):
    """The argparse converter for a dataclass field type (Optional[X] -> X)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


class FlagParser(argparse.ArgumentParser):
    """argparse's parser, whose errors (a value of the wrong type, an unknown flag) are a
    one-line UserError like every other bad flag, instead of the usage and a line."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per TrainConfig field (--batch-size for batch_size); booleans get --no-X too.

    Defaults are None so that only the flags actually given override the preset.
    """
    parser = FlagParser(prog=prog, description=description)
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
    if "time_budget" in given and "max_iters" in given:
        raise UserError("--time-budget chooses the number of steps, and --max-iters gives it: give one")
    preset = given.get("preset", (saved or {}).get("preset", "baby"))
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    # how this invocation shows its progress and how many processes it runs on are not part of
    # the run: --quiet, --log-interval and --workers are not kept
    saved_settings = {k: v for k, v in (saved or {}).items() if k not in ("quiet", "log_interval", "workers")}
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
    return config_from(values)


def config_from(values: dict[str, Any]) -> TrainConfig:
    """A checked TrainConfig from settings (flags over a preset, or a checkpoint's record)."""
    config = TrainConfig(**values)
    config.validate()
    return config


def build_model(config: TrainConfig, vocab_size: int) -> nn.Module:
    """The model a configuration describes, freshly initialised (seed nanograd first)."""
    if config.model == "bigram":
        return BigramLanguageModel(vocab_size, fused=not config.reference)
    return GPT(config.model_config(vocab_size))


def check_device(device: str, kept_from: Path | None = None) -> str:
    """The device's normalised name ('cuda:0' -> 'cuda'), or a UserError where it is unknown
    or missing on this machine. kept_from: the checkpoint of a resumed run, which keeps the
    device it was trained on unless --device says otherwise."""
    try:
        return backend.check_device(device)
    except (ValueError, RuntimeError) as exc:
        if kept_from is None:
            raise UserError(str(exc)) from None
        raise UserError(f"the run in {kept_from} was trained with --device {device}, which it keeps: {exc}; "
                        "add --device cpu to go on on the CPU") from None


def check_run_settings(config: TrainConfig, processes: int, started_by_mpiexec: bool) -> None:
    """The settings that only this machine and this number of processes can judge."""
    out_dir = Path(config.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file, not a directory")
    if started_by_mpiexec and config.workers not in (None, processes):
        raise UserError(f"--workers {config.workers} asks for {config.workers} processes, and mpiexec started "
                        f"{processes}: leave --workers out under mpiexec")
    if processes > config.batch_size:
        raise UserError(f"{processes} processes cannot share batches of {config.batch_size}: each needs a "
                        "sequence at least (a larger --batch-size, or fewer processes)")
    share = config.batch_size // processes  # sequences of a batch that the smallest share holds
    if config.grad_accum > share:
        raise UserError(f"--grad-accum {config.grad_accum} cuts each process's share of a batch ({share} "
                        f"sequence{'s' if share > 1 else ''} of {config.batch_size}, on {processes} process"
                        f"{'es' if processes > 1 else ''}) into more micro-batches than it has sequences: "
                        f"at most --grad-accum {share}")
