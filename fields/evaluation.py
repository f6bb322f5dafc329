"""Evaluation on held-out views: PSNR and SSIM on images composited on the scene background, and image grids
(ground truth | render | error | depth)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.progress import Progress

from renderers.imaging import colormap, depth_image, on_background, psnr, ssim, write_png
from renderers.model import Renderable
from scenes import SceneSplit
from scenes.undistort import undistorted


def view_indices(n: int, every: int) -> list[int]:
    return list(range(0, n, max(every, 1)))


def default_every(split: SceneSplit) -> int:
    """Which views are evaluated unless told: every view of a real capture (its held-out split is already every
    8th image) and of any split of up to 32 views; every 8th of larger ones, such as Blender's 200 test views."""
    return 1 if split.captured or len(split) <= 32 else 8


@torch.no_grad()
def evaluate(model: Renderable, split: SceneSplit, every: int | None = None, out_dir: Path | None = None,
             show_progress: bool = True, appearance: str | None = None) -> dict:
    """Render every ``every``-th view of ``split`` (None: ``default_every``) with ``model``; return mean PSNR/SSIM
    (over the pixels the scene's masks keep; with masks, also ``psnr_every_pixel``, masked pixels included, to
    compare with tools that keep them) and per-view figures. A model that projects through a pinhole only
    is compared with the images undistorted onto pinhole cameras. ``appearance``: what the held-out views are
    rendered with where the run learned a per-image appearance (``Field.held_out_appearance``), recorded in the
    result, since held-out images' own exposure cannot be known.

    With ``out_dir``, writes one PNG grid per view there (``fields eval`` writes the figures to eval/metrics.json).
    """
    every = default_every(split) if every is None else every
    if model.pinhole_only:
        split = undistorted(split)
    bg = torch.tensor(split.background)
    views = view_indices(len(split), every)
    per_view, t0 = [], time.perf_counter()
    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task(f"eval {split.split}", total=len(views))
        for i in views:
            out = model.render(split.cameras, i, bg)
            gt = on_background(split.rgba(i), bg)
            rgb = out["rgb"].clamp(0, 1)
            mask = None if split.masks is None else split.masks[i]
            per_view.append({"view": i, "psnr": psnr(rgb, gt, mask), "ssim": ssim(rgb, gt, mask).item()})
            if mask is not None:
                per_view[-1]["psnr_every_pixel"] = psnr(rgb, gt)
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
    if split.masks is not None:
        result["psnr_every_pixel"] = sum(v["psnr_every_pixel"] for v in per_view) / len(per_view)
    if appearance is not None:
        result["appearance"] = appearance
    return result
