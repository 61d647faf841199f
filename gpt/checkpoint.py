"""Checkpoints: one .npz file holding named arrays plus a JSON metadata blob, never pickle;
and a training run's checkpoint in that file: its model, optimizer, settings, tokenizer and
where it stands (TrainState).

The metadata is stored inside the archive (as the UTF-8 bytes of its JSON, a uint8 array
under META_KEY), so a checkpoint is a single file. It is written under a temporary name in
the same directory and then renamed over the old one (an atomic step on POSIX and Windows),
so a crash or Ctrl-C mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from nanograd import nn, optim

from .config import TrainConfig, build_model, config_from
from .errors import UserError
from .fileio import atomic_write
from .memory import check_memory, memory_lower_bound
from .tokenizer import Tokenizer, tokenizer_from_json

META_KEY = "__meta__"


class DamagedCheckpoint(UserError):
    """A checkpoint file that exists but cannot be used as one: truncated, corrupted, or not
    what gpt.train writes."""

# The bit generators a saved random state may name: never getattr(np.random, <file contents>).
BIT_GENERATORS = {cls.__name__: cls for cls in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937,
                                                np.random.Philox, np.random.SFC64)}


def _to_numpy(value: Any) -> np.ndarray:
    """A NumPy array from a NumPy array, a CuPy array (.get() copies it to the host), a list..."""
    if not isinstance(value, np.ndarray) and callable(getattr(value, "get", None)):
        value = value.get()
    return np.asarray(value)


def save_checkpoint(path: str | Path, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write arrays and meta (JSON-serialisable) to path atomically.

    Object arrays are refused: they would need pickle to load."""
    path = Path(path)
    if META_KEY in arrays:
        raise ValueError(f"{META_KEY!r} is reserved for the metadata; rename that array")
    payload = {name: _to_numpy(value) for name, value in arrays.items()}
    objects = [name for name, value in payload.items() if value.dtype.hasobject]
    if objects:  # (checked here: np.savez takes allow_pickle only from NumPy 2.1 on)
        raise ValueError(f"object arrays need pickle to load, and checkpoints never use it: {objects}")
    payload[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)  # before touching the disk
    atomic_write(path, lambda f: np.savez(f, **payload))


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) from a checkpoint; any problem with the file is a one-line UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint path {path} is a directory, not a checkpoint file")
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        hint = f"train one with python -m gpt.train --out-dir {path.parent}"
        raise UserError(f"no checkpoint at {path} ({hint})") from None
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    with file:
        if not zipfile.is_zipfile(file):
            raise DamagedCheckpoint(f"checkpoint {path} is corrupted or truncated (not a zip archive, as an .npz is)")
        file.seek(0)
        arrays = _read_arrays(file, path)
    if META_KEY not in arrays:
        raise DamagedCheckpoint(f"checkpoint {path} has no metadata: it was not written by gpt.train")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedCheckpoint(f"checkpoint {path} has corrupted metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise DamagedCheckpoint(f"checkpoint {path} has corrupted metadata "
                                f"(a JSON {type(meta).__name__}, not an object)")
    return arrays, meta


def _read_arrays(file: BinaryIO, path: Path) -> dict[str, np.ndarray]:
    """Every array of the archive, read into memory now (np.load is lazy), so a damaged member
    fails here, at load time, and not in the middle of training."""
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(f"checkpoint {path} holds pickled objects, which are never loaded") from None
        raise DamagedCheckpoint(f"checkpoint {path} is corrupted or truncated (ValueError: {exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise DamagedCheckpoint(f"checkpoint {path} is corrupted or truncated ({type(exc).__name__}: {exc})") from None
    broken = [name for name, value in arrays.items() if not isinstance(value, np.ndarray)]
    if broken:  # np.load hands back raw bytes for a member that is not a valid .npy
        raise DamagedCheckpoint(f"checkpoint {path} is corrupted: entry {broken[0]!r} is not an array")
    return arrays


def rng_state_to_json(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's exact state as JSON-serialisable data (for a checkpoint's metadata), so
    a resumed run draws the same numbers as one that never stopped. PCG64's 128-bit integers
    stay Python ints, which JSON holds exactly; arrays (MT19937's key) become lists."""
    return _lists_for_arrays(rng.bit_generator.state)


def _lists_for_arrays(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _lists_for_arrays(item) for key, item in value.items()}
    return value.tolist() if isinstance(value, np.ndarray) else value


def rng_from_json(state: dict[str, Any]) -> np.random.Generator:
    """A generator in exactly the state rng_state_to_json recorded."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in BIT_GENERATORS:
        raise UserError(f"saved random state names an unknown bit generator {name!r} "
                        f"(known: {', '.join(BIT_GENERATORS)})")
    bit_generator = BIT_GENERATORS[name]()
    try:
        with warnings.catch_warnings():  # older NumPy wraps an out-of-range number round with a
            warnings.simplefilter("ignore", DeprecationWarning)  # warning: refused just below
            bit_generator.state = state
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise UserError(f"saved {name} random state is invalid ({type(exc).__name__}: {exc})") from None
    if _lists_for_arrays(bit_generator.state) != state:  # out-of-range numbers that NumPy wrapped round
        raise UserError(f"saved {name} random state is invalid (it does not read back as saved)")
    return np.random.Generator(bit_generator)


def checkpoint_path(out_dir: str | Path, best: bool = False) -> Path:
    """Where a run keeps its latest checkpoint (ckpt.npz), or its best one by val loss (best.npz)."""
    return Path(out_dir) / ("best.npz" if best else "ckpt.npz")


@dataclasses.dataclass
class TrainState:
    """Where a training run stands, besides its weights and its optimizer's moments."""

    batch_rng: np.random.Generator  # the batches still to come: every rank draws the same ones
    step: int = 0
    evaluated_step: int = -1  # the last step evaluated (-1: none yet)
    best_val_loss: float = math.inf
    clipped_steps: int = 0  # steps whose gradient norm was above grad_clip
    elapsed_s: float = 0.0  # the run's wall time over its earlier sessions
    started: float = dataclasses.field(default_factory=time.perf_counter)  # this session's start (not saved)

    def elapsed(self) -> float:
        """The run's wall time so far, over all its sessions."""
        return self.elapsed_s + time.perf_counter() - self.started

    def to_meta(self) -> dict[str, Any]:
        return {"step": self.step, "evaluated_step": self.evaluated_step, "best_val_loss": self.best_val_loss,
                "clipped_steps": self.clipped_steps, "elapsed_s": self.elapsed(),
                "batch_rng": rng_state_to_json(self.batch_rng)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TrainState:
        """The state that to_meta saved; a ValueError where a number is not what a run writes."""
        for key in ("step", "clipped_steps"):
            if type(meta[key]) is not int or meta[key] < 0:
                raise ValueError(f"{key} {meta[key]!r} is not a whole number >= 0")
        if type(meta["evaluated_step"]) is not int or not -1 <= meta["evaluated_step"] <= meta["step"]:
            raise ValueError(f"evaluated_step {meta['evaluated_step']!r} is not a step of the run")
        for key in ("best_val_loss", "elapsed_s"):  # (best_val_loss is inf before any evaluation)
            if type(meta[key]) not in (int, float) or not meta[key] >= 0:
                raise ValueError(f"{key} {meta[key]!r} is not a number >= 0")
        return cls(rng_from_json(meta["batch_rng"]), meta["step"], meta["evaluated_step"], meta["best_val_loss"],
                   meta["clipped_steps"], meta["elapsed_s"])


def run_checkpoint(model: nn.Module, optimizer: optim.AdamW, settings: dict[str, Any], tokenizer: Tokenizer,
                   state: TrainState) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays (weights, optimizer moments) and metadata (settings: the TrainConfig's fields,
    tokenizer, training state) of a run's checkpoint, for save_checkpoint."""
    opt_state = optimizer.state_dict()
    meta = {"format": 1, "config": settings, "tokenizer": tokenizer.to_json(),
            "optimizer_t": opt_state.pop("t"), **state.to_meta()}
    arrays = {**{f"model.{k}": v for k, v in model.state_dict().items()},
              **{f"optim.{k}": v for k, v in opt_state.items()}}
    return arrays, meta


def not_finite(arrays: dict[str, np.ndarray]) -> list[str]:
    """The names of the arrays that hold a NaN or an infinity."""
    return [name for name, value in arrays.items() if not np.isfinite(value).all()]


def resume_training(saved: SavedRun, optimizer: optim.AdamW, path: Path) -> TrainState:
    """Load a checkpoint's optimizer moments into optimizer and return its training state; a
    one-line UserError where either is unusable."""
    meta = saved.meta
    try:
        if type(meta["optimizer_t"]) is not int or meta["optimizer_t"] < 0:
            raise ValueError(f"optimizer_t {meta['optimizer_t']!r} is not a whole number >= 0")
        optimizer.load_state_dict({"t": meta["optimizer_t"], **{
            name[len("optim."):]: value for name, value in saved.arrays.items() if name.startswith("optim.")}})
        return TrainState.from_meta(meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} holds no usable training state to resume from (missing or bad: {exc}); "
                        "it can still be sampled from") from None


class SavedRun(NamedTuple):
    """A run as a checkpoint holds it."""
    model: nn.Module  # with its weights loaded
    config: TrainConfig
    tokenizer: Tokenizer
    meta: dict[str, Any]  # the training state (see save_run)
    arrays: dict[str, np.ndarray]  # the weights and the optimizer's moments


def load_run(path: Path, device: str = "cpu", resuming: bool = False) -> SavedRun:
    """The run saved in a checkpoint, its model on `device`. A damaged one's error says what
    can be done instead: use the run's other checkpoint where that one is intact, or (resuming)
    start over."""
    try:
        return _load_run(path, device, resuming)
    except DamagedCheckpoint as exc:
        raise DamagedCheckpoint(f"{exc}; {_way_forward(Path(path), resuming)}") from None


def _way_forward(damaged: Path, resuming: bool) -> str:
    """What to do about a damaged checkpoint in a run directory (see load_run)."""
    best = damaged.name == checkpoint_path(damaged.parent, best=True).name
    other = checkpoint_path(damaged.parent, best=not best)
    try:
        step = _load_run(other, "cpu", resuming).meta.get("step")
    except UserError:  # missing or damaged too
        return "start the run over with --overwrite" if resuming else "its run has no other usable checkpoint"
    intact = f"{other} (step {step}) is intact"
    if resuming:
        return f"{intact}: copy it over {damaged} to resume from there, or start over with --overwrite"
    return f"{intact}: sample from it {'without' if best else 'with'} --best"


def _load_run(path: Path, device: str, resuming: bool) -> SavedRun:
    arrays, meta = load_checkpoint(path)
    try:
        config = config_from(dict(meta["config"]))
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
    if not_finite(weights):  # gpt.train never saves such arrays
        raise DamagedCheckpoint(f"checkpoint {path} holds weights that are not finite (NaN or inf): it cannot be used")
    moments = not_finite({name: value for name, value in arrays.items() if name.startswith("optim.")})
    if resuming and moments:
        raise DamagedCheckpoint(f"checkpoint {path} holds optimizer moments that are not finite ({moments[0]}): "
                                "it cannot be resumed, but it can be sampled from")
    model.to(device)
    return SavedRun(model, config, tokenizer, meta, arrays)
