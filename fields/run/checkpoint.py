"""Checkpoints: written atomically, verified by a digest, loaded without executing code, listed newest first.

A checkpoint is a dict of tensors and plain values saved with ``torch.save``; it is written to a temporary
file in the same folder, flushed to disk and renamed over the final name, so a crash mid-write never leaves a
half-written ``step-*.pt`` behind. torch's zip format has no checksum of its own (a flipped byte inside a tensor
loads silently), so the state carries a BLAKE2 ``digest`` of its contents that loading recomputes. Loading uses
``torch.load(weights_only=True)``: a crafted pickle is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

PATTERN = re.compile(r"step-(\d+)\.pt$")
# Keys of checkpoints written before digests existed; those load unverified.
LEGACY_KEYS = {"step", "elapsed", "n_rays", "field", "grid", "optimizer"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}.pt"


def state_digest(state: Any) -> str:
    """BLAKE2b of a checkpoint's contents (keys, tensor dtypes, shapes and bytes, plain values), in key order."""
    h = hashlib.blake2b(digest_size=20)

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            h.update(b"{%d" % len(v))
            for k in sorted(v, key=repr):
                h.update(repr(k).encode())
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            h.update(b"[%d" % len(v))
            for item in v:
                walk(item)
        elif isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{list(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        else:
            h.update(repr(v).encode())

    walk(state)
    return h.hexdigest()


def atomic_write(path: Path, write) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it and rename it over ``path``: readers
    see the old file or the new one, never half of one. The temporary file is removed if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: Path, state: dict) -> Path:
    """Write ``state`` plus its ``digest`` to ``path`` atomically (temp file + fsync + rename)."""
    state = {**state, "digest": state_digest(state)}
    return atomic_write(path, lambda f: torch.save(state, f))


def remove_partial_writes(run_dir: Path) -> list[Path]:
    """Delete temporary files that a killed process left in the run's checkpoint folder; returns them."""
    stale = list((Path(run_dir) / "checkpoints").glob(".step-*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint with ``weights_only=True``; CheckpointError names the file if it is unreadable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as e:  # truncated zip, flipped bytes, disallowed pickle globals ...
        first = (str(e).strip().splitlines() or [""])[0][:200]
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"{path}: refused: it holds pickled objects other than tensors (a crafted or "
                                  f"corrupted file; weights_only loading does not run them) ({first})") from None
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt "
                              f"({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a fields checkpoint (no 'step' entry)")
    digest = state.pop("digest", None)
    if digest is None and not set(state) <= LEGACY_KEYS:
        raise CheckpointError(f"{path}: corrupt checkpoint (its digest entry is missing)")
    if digest is not None and digest != state_digest(state):
        raise CheckpointError(f"{path}: corrupt checkpoint (contents do not match their digest; bytes were changed)")
    return state


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, newest (highest step) first."""
    folder = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := PATTERN.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]
