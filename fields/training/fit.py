"""Fitting a 2-D neural field to an image (``fields fit``): pixel coordinates -> RGB with any backend.

The quickest way to compare backends, and the experiment every backend's paper reports. It runs the one training
loop (``Trainer``) with the ``PixelBatches`` strategy and no run folder: each step draws a random batch of pixels;
the learning rate decays exponentially over the budget (steps or seconds, whichever runs out first); the result
is the whole image rendered by the field and its PSNR against the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from fields.backends.base import ImageField
from fields.run.config import RunConfig, TrainConfig
from fields.training.steps import PixelBatches, pixel_coords
from fields.training.trainer import Trainer
from renderers.imaging import on_background, psnr
from scenes.io import read_image


class FitError(ValueError):
    """A fit that cannot run (no budget)."""


def load_image(path: Path) -> torch.Tensor:
    """An image file as float RGB [H, W, 3] in [0, 1], composited on white where it has alpha (SceneError names
    the file if it cannot be read)."""
    return on_background(read_image(Path(path)), torch.ones(3))


def fit_output_path(image: Path, field: str) -> Path:
    """Where ``fields fit`` writes its result: ``<name>.fit-<field>.png`` next to the input."""
    image = Path(image)
    return image.with_name(f"{image.stem}.fit-{field}.png")


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

    ``lr`` is the base learning rate handed to ``field.param_groups``; it decays to ``lr * lr_final`` (no
    warm-up, no weight decay).
    """
    if not steps and not max_time:
        raise FitError("fit needs a budget: --steps and/or --max-time")
    train = TrainConfig(max_time=max_time, max_steps=steps, lr=lr, lr_final=lr_final, warmup_steps=1,
                        weight_decay=0.0, seed=seed)
    trainer = Trainer(RunConfig(train=train), None, console, steps=PixelBatches(field, target, batch))
    trainer.train(show_progress=show_progress)
    image = render_field(field, *target.shape[:2])
    return FitResult(image, psnr(image, target), trainer.step, trainer.elapsed)
