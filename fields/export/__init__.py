"""Exporters that turn a trained run into files: meshes, videos and point clouds.

They use a run only through the Field interface (``density`` and ``forward``) and the renderer, so every
backend exports the same way. Files go to ``<run>/exports/`` unless an output path is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ExportError(ValueError):
    """An export that cannot be done as asked; the message names the file or option and the problem."""


def output_path(run_dir: Path, output: Path | None, default_name: str) -> Path:
    """Where an export is written: ``output`` if given (a folder gets ``default_name`` inside it), else
    ``<run>/exports/<default_name>``; parent folders are created."""
    if output is None:
        path = Path(run_dir) / "exports" / default_name
    elif Path(output).is_dir():
        path = Path(output) / default_name
    else:
        path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_output_path(run_dir: Path, requested: str | Path) -> Path:
    """Where an export asked for from outside the command line (the viewer's export buttons) is written:
    ``requested`` relative to ``<run>/exports/``, or an absolute path inside the run folder. Anything that would
    land outside the run folder (``..``, other absolute paths, a symlink out, a NUL byte) is refused with
    ExportError, so a browser can never choose where files go. Parent folders are created."""
    run = Path(run_dir).resolve()
    text = str(requested)
    if not text.strip() or "\0" in text:
        raise ExportError(f"{text!r}: not a valid export file name")
    path = Path(text) if Path(text).is_absolute() else run / "exports" / text
    try:
        resolved = path.resolve()  # follows symlinks that already exist on the way
    except (OSError, RuntimeError) as e:
        raise ExportError(f"{requested}: export path cannot be resolved ({e})") from None
    if not resolved.is_relative_to(run) or resolved == run or resolved.is_dir():
        raise ExportError(f"{requested}: exports requested from the viewer must be files inside the run folder {run}")
    resolved.parent.mkdir(parents=True, exist_ok=True)
    return resolved


def rgba8(colors: np.ndarray) -> np.ndarray:
    """Opaque 8-bit RGBA [N, 4] from float RGB [N, 3] in [0, 1] (what mesh and point-cloud files store)."""
    return np.concatenate([np.round(np.clip(colors, 0, 1) * 255), np.full((len(colors), 1), 255)], 1).astype(np.uint8)
