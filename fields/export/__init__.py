"""Exporters that turn a trained run into files: meshes, videos, point clouds and splats. This module holds
what they share: the error type, output paths, colour packing and the open3d import.

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


def inside_exports(run_dir: Path, name: str) -> Path:
    """``<run>/exports/<name>`` (folder created), refusing with ExportError any name that resolves elsewhere:
    ``..``, an absolute path, a subfolder, an empty name or one with a NUL byte, or an ``exports`` folder or file
    that is a link out of the run. Exports asked for from outside the command line (the viewer's buttons) are
    written only through this, so a browser can never choose where files go."""
    if not str(name).strip() or "\0" in str(name):
        raise ExportError(f"{name!r}: not a valid export file name")
    exports = Path(run_dir).resolve() / "exports"
    try:
        path = (exports / name).resolve()  # follows symlinks that already exist on the way
    except (OSError, RuntimeError) as e:
        raise ExportError(f"{name}: export path cannot be resolved ({e})") from None
    if path.parent != exports:
        raise ExportError(f"{path}: refusing to write outside {exports} (the viewer writes only there)")
    exports.mkdir(exist_ok=True)
    return path


def rgba8(colors: np.ndarray) -> np.ndarray:
    """Opaque 8-bit RGBA [N, 4] from float RGB [N, 3] in [0, 1] (what mesh and point-cloud files store)."""
    return np.concatenate([np.round(np.clip(colors, 0, 1) * 255), np.full((len(colors), 1), 255)], 1).astype(np.uint8)


def import_open3d():
    """open3d, or an ExportError saying how to get it (it needs the system library libusb-1.0)."""
    try:
        import open3d
    except ImportError as e:  # also OSError-like failures to load libusb surface as ImportError
        raise ExportError(f"mesh export needs open3d, which failed to import ({e}); run scripts/setup.sh "
                          "(installs open3d and libusb-1.0-0) or pass --no-clean") from None
    return open3d
