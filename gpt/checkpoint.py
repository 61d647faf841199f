"""Checkpoints: one .npz file holding named arrays plus a JSON metadata blob, never pickle.

The metadata is stored inside the archive (as the UTF-8 bytes of its JSON, a uint8 array
under META_KEY), so a checkpoint is a single file. It is written under a temporary name in
the same directory and then renamed over the old one (an atomic step on POSIX and Windows),
so a crash or Ctrl-C mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import UserError
from .fileio import atomic_write

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
