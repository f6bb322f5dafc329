"""Fitting a 2-D neural field to an image (``fields fit``): pixel coordinates -> RGB with any backend.

The quickest way to compare backends, and the experiment every backend's paper reports. Each step draws a
random batch of pixels; the learning rate decays exponentially over the budget (steps or seconds, whichever
runs out first); the result is the whole image rendered by the field and its PSNR against the input.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from fields.backends.base import ImageField
from fields.evaluation import psnr
from renderers import native
from scenes.io import read_image


class FitError(ValueError):
    """A fit that cannot run (no budget)."""


def load_image(path: Path) -> torch.Tensor:
    """An image file as float RGB [H, W, 3] in [0, 1], composited on white where it has alpha (SceneError names
    the file if it cannot be read)."""
    rgba = read_image(Path(path))
    return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])


def fit_output_path(image: Path, field: str) -> Path:
    """Where ``fields fit`` writes its result: ``<name>.fit-<field>.png`` next to the input."""
    image = Path(image)
    return image.with_name(f"{image.stem}.fit-{field}.png")


def pixel_coords(height: int, width: int) -> torch.Tensor:
    """Pixel centres as (u, v) in [0, 1]^2 (u along the width), row-major [H * W, 2]."""
    v, u = torch.meshgrid((torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width,
                          indexing="ij")
    return torch.stack([u, v], -1).reshape(-1, 2)


@torch.no_grad()
def render_field(field: ImageField, height: int, width: int, chunk: int = 1 << 16) -> torch.Tensor:
    """The field evaluated at every pixel centre, [H, W, 3]."""
    uv = pixel_coords(height, width)
    return torch.cat([field(c) for c in uv.split(chunk)]).reshape(height, width, 3)


@dataclass
class FitResult:
    image: torch.Tensor
    """The fitted image [H, W, 3]."""
    psnr: float
    """PSNR of the fitted image against the target (dB)."""
    steps: int
    seconds: float
    """Optimisation time (excluding the final render)."""


def fit_image(field: ImageField, target: torch.Tensor, steps: int | None = None, max_time: float | None = None,
              lr: float = 3e-2, lr_final: float = 0.1, batch: int = 1 << 13, seed: int = 0,
              console: Console | None = None, show_progress: bool = True) -> FitResult:
    """Fit ``field`` to ``target`` [H, W, 3] until ``steps`` or ``max_time`` seconds (whichever comes first).

    ``lr`` is the base learning rate handed to ``field.param_groups``; it decays to ``lr * lr_final``.
    """
    if not steps and not max_time:
        raise FitError("fit needs a budget: --steps and/or --max-time")
    h, w = target.shape[:2]
    uv, rgb = pixel_coords(h, w), target.reshape(-1, 3)
    batch = min(batch, uv.shape[0])
    groups = field.param_groups(lr)
    for g in groups:
        g["base_lr"] = g["lr"]
    optimizer = torch.optim.Adam(groups, eps=1e-15)
    gen = torch.Generator().manual_seed(seed)
    step, elapsed, shown = 0, 0.0, 0.0
    bar = Progress(TextColumn("[bold]fit"), BarColumn(),
                   TextColumn("step {task.fields[step]}  psnr {task.fields[psnr]:.2f} dB"), TimeRemainingColumn(),
                   console=console or Console(), disable=not show_progress)
    task = bar.add_task("fit", total=1.0, step=0, psnr=0.0)
    with bar, native.flushed_denormals():  # as in training (see Trainer.train)
        while not ((steps and step >= steps) or (max_time and elapsed >= max_time)):
            tic = time.perf_counter()
            progress = max(step / steps if steps else 0.0, elapsed / max_time if max_time else 0.0)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_final ** min(progress, 1.0)
            idx = torch.randint(0, uv.shape[0], (batch,), generator=gen)
            loss = torch.nn.functional.mse_loss(field(uv[idx]), rgb[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            elapsed += time.perf_counter() - tic
            shown = 0.9 * shown + 0.1 * loss.item() if step > 1 else loss.item()
            bar.update(task, completed=min(progress, 1.0), step=step, psnr=-10 * math.log10(max(shown, 1e-10)))
        image = render_field(field, h, w)
        result = FitResult(image, psnr(image, target), step, elapsed)
        bar.update(task, completed=1.0, step=step, psnr=result.psnr)
    return result
