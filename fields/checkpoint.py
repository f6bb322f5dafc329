"""Checkpoints: written atomically, loaded without executing code, listed newest first.

A checkpoint is a dict of tensors and plain values saved with ``torch.save``; it is written to a temporary
file in the same folder, flushed to disk and renamed over the final name, so a crash mid-write never leaves a
half-written ``step-*.pt`` behind. Loading uses ``torch.load(weights_only=True)``: a crafted pickle is refused.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

PATTERN = re.compile(r"step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}.pt"


def save_checkpoint(path: Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint with ``weights_only=True``; CheckpointError names the file if it is unreadable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as e:  # truncated zip, flipped bytes, disallowed pickle globals ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a fields checkpoint (no 'step' entry)")
    return state


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, newest (highest step) first."""
    folder = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := PATTERN.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]
