"""Render a coloured mesh file to a PNG with matplotlib (no GPU or display needed): faces painted with their
vertex colours under a simple head light, drawn back to front.

    python scripts/mesh_picture.py outputs/lego/hashgrid/<run>/exports/mesh-step-001000.ply docs/lego-mesh.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import trimesh  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402


def picture(mesh: trimesh.Trimesh, out: Path, elev: float = 25.0, azim: float = -60.0, size: int = 800) -> None:
    """Write a PNG of ``mesh`` seen from (``elev``, ``azim``) degrees, z up."""
    tris = mesh.vertices[mesh.faces]
    colors = mesh.visual.vertex_colors[mesh.faces][:, :, :3].mean(1) / 255.0
    e, a = np.radians(elev), np.radians(azim)
    view = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])  # towards the viewer
    shade = 0.35 + 0.65 * np.clip(mesh.face_normals @ view, 0, 1)[:, None]
    order = np.argsort(tris.mean(1) @ view)  # far faces first
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_subplot(projection="3d")
    ax.add_collection3d(Poly3DCollection(tris[order], facecolors=np.clip(colors * shade, 0, 1)[order],
                                         linewidths=0, antialiased=False))
    lo, hi = mesh.bounds
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    ax.set(xlim=(centre[0] - half, centre[0] + half), ylim=(centre[1] - half, centre[1] + half),
           zlim=(centre[2] - half, centre[2] + half))
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=elev, azim=azim)
    ax.computed_zorder = False
    ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor="white")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mesh", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--elev", type=float, default=25.0)
    ap.add_argument("--azim", type=float, default=-60.0)
    args = ap.parse_args()
    picture(trimesh.load(args.mesh, force="mesh", process=False), args.output, args.elev, args.azim)


if __name__ == "__main__":
    main()
