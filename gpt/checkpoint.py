"""Checkpoints: one .npz file holding named arrays plus a JSON metadata blob, never pickle.

The file is written under a temporary name in the same directory and then renamed over the
old one (an atomic step on POSIX and Windows), so a crash or Ctrl-C mid-write leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .fileio import atomic_write

META_KEY = "__meta__"


def save_checkpoint(path: str | Path, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write arrays and meta (JSON-serialisable) to path atomically."""
    path = Path(path)
    payload = {name: np.asarray(value) for name, value in arrays.items()}
    payload[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **payload))


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) from a checkpoint; any problem with the file is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path} (train one with python -m gpt.train --out-dir {path.parent})")
    if not zipfile.is_zipfile(path):
        raise UserError(f"checkpoint {path} is not an .npz archive (corrupted, truncated or another file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}  # read everything now
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(f"checkpoint {path} holds pickled objects, which are never loaded") from None
        raise UserError(f"checkpoint {path} is corrupted or truncated ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise UserError(f"checkpoint {path} is corrupted or truncated ({type(exc).__name__}: {exc})") from None
    broken = [name for name, value in arrays.items() if not isinstance(value, np.ndarray)]
    if broken:  # np.load hands back raw bytes for a member that is not a valid .npy
        raise UserError(f"checkpoint {path} is corrupted: entry {broken[0]!r} is not an array")
    if META_KEY not in arrays:
        raise UserError(f"checkpoint {path} has no metadata: it was not written by gpt.train")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint {path} has corrupted metadata ({exc})") from None
    return arrays, meta
