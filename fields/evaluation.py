"""Evaluation on held-out views: PSNR and SSIM (kornia) on images composited on the scene background, and
image grids (ground truth | render | error | depth)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import kornia
import torch
from rich.progress import Progress

from fields.backends.base import Field
from renderers.imaging import colormap, depth_image, write_png
from renderers.occupancy import OccupancyGrid
from renderers.render import RenderConfig
from scenes import SceneSplit


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (-10.0 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-10))).item()


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two [H, W, 3] images in [0, 1] (kornia, 11x11 Gaussian window)."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    return kornia.metrics.ssim(x, y, window_size=11).mean().item()


def view_indices(n: int, every: int) -> list[int]:
    return list(range(0, n, max(every, 1)))


@torch.no_grad()
def evaluate(field: Field, grid: OccupancyGrid, split: SceneSplit, render_cfg: RenderConfig, every: int = 8,
             out_dir: Path | None = None, show_progress: bool = True) -> dict:
    """Render every ``every``-th view of ``split``; return mean PSNR/SSIM and per-view figures.

    With ``out_dir``, writes ``metrics.json`` and one PNG grid per view there.
    """
    bg = torch.tensor(split.background)
    views = view_indices(len(split), every)
    per_view, t0 = [], time.perf_counter()
    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task(f"eval {split.split}", total=len(views))
        for i in views:
            out = field.render_image(split.cameras, i, bg, grid, render_cfg)
            gt = split.composited([i])[0]
            rgb = out["rgb"].clamp(0, 1)
            per_view.append({"view": i, "psnr": psnr(rgb, gt), "ssim": ssim(rgb, gt)})
            if out_dir is not None:
                err = colormap((rgb - gt).abs().mean(-1), 0.0, 0.25)
                grid_img = torch.cat([gt, rgb, err, depth_image(out["depth"], out["opacity"])], dim=1)
                write_png(Path(out_dir) / f"view_{i:03d}.png", grid_img)
            bar.advance(task)
    seconds = time.perf_counter() - t0
    result = {"split": split.split, "views": len(views), "every": every,
              "psnr": sum(v["psnr"] for v in per_view) / len(per_view),
              "ssim": sum(v["ssim"] for v in per_view) / len(per_view),
              "seconds_per_view": seconds / len(views), "per_view": per_view}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
