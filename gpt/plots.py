"""The pictures: the loss curves of a run (loss.png) and the heat maps of gpt.explain, drawn
with matplotlib where it is installed (the `plot` extra); without it, one line says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

NO_MATPLOTLIB = "matplotlib is not installed: {} (pip install -e '.[plot]')"


def _pyplot() -> Any:
    """matplotlib.pyplot, drawing to files only (no window), or None where it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_losses(metrics_path: Path, out_path: Path) -> str:
    """loss.png from metrics.jsonl; returns the line to print (a note when matplotlib is missing)."""
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB.format("skipping loss.png")
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return f"wrote {out_path}"


def picture_path(path: str) -> Path:
    """Where --png writes: checked before any work, so a bad name costs nothing. No suffix
    means .png; a suffix must be a format matplotlib writes (checked where it is installed)."""
    target = Path(path)
    if path.endswith(("/", "\\")) or target.is_dir():
        raise UserError(f"--png {path} is a directory: give a file name, such as {target / 'picture.png'}")
    if not target.parent.is_dir():
        raise UserError(f"--png {path}: there is no directory {target.parent}")
    target = target if target.suffix else target.with_suffix(".png")
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return target
    formats = FigureCanvasBase.get_supported_filetypes()
    if target.suffix[1:].lower() not in formats:
        raise UserError(f"--png {path}: matplotlib cannot write {target.suffix} files (it writes "
                        f"{', '.join('.' + f for f in sorted(formats))})")
    return target


def save_heatmap(matrix: np.ndarray, labels: list[str], target: Path, title: str, xlabel: str, ylabel: str) -> None:
    """A square matrix as a heat map in target, its rows and its columns named by labels."""
    plt = _pyplot()
    if plt is None:
        print(NO_MATPLOTLIB.format("no picture"))
        return
    size = max(6, len(labels) * 0.14)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    print(f"wrote {target}")
