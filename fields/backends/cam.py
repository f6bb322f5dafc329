"""Coordinate-Aware Modulation (CAM, Lee et al., ICLR 2024): the coordinate MLP whose hidden layers are
normalised without a learned affine, then scaled and shifted by ``gamma(c)``, ``beta(c)`` read by bilinear
interpolation from small grids over a modulating coordinate ``c``, before the activation.

Modulating coordinates (``--cam.modulate``):
- ``planes``: three axis-aligned planes over the scene box (the authors' NerfAcc variant) modulate the trunk.
  ``gamma`` is the product of the three planes' values (each initialised to 1) and ``beta`` their *sum* (each
  initialised to 0). The official code multiplies the beta planes too; a product of zeros has zero gradient
  with respect to every factor, so its beta never learns. With a sum every beta plane gets gradient 1.
- ``view``: a 2-D grid over the view direction's (azimuth, elevation) (the authors' Mip-NeRF variant). Here it
  modulates the colour head rather than the trunk, so density stays independent of the view direction (the
  occupancy grid and the exporters query density without one).
For ``fields fit`` one grid over the pixel coordinates modulates every trunk layer (the authors' image setup).

The grids are initialised to gamma = 1 and beta = 0, so a fresh CAM is the plain MLP with normalisation, and
they train with their own learning rate (``grid_lr_scale`` times the MLP's; see there why not the official 10x).
The normalise-modulate-ReLU step runs as one fused native op (``fields.backends.fused_mlp.modulated_relu``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fields.backends.base import Appearance
from fields.backends.mlp import ImageMLP, MLPConfig, MLPField
from fields.backends.positional import direction_to_unit_square, sample_planes

PLANE_AXES = ((0, 1), (0, 2), (1, 2))


def modulation_grid(n_planes: int, n_layers: int, height: int, width: int) -> nn.Parameter:
    """Grids [n_planes, 2 * n_layers, H, W]: the first n_layers channels are gamma (ones), the rest beta (zeros)."""
    return nn.Parameter(torch.cat([torch.ones(n_planes, n_layers, height, width),
                                   torch.zeros(n_planes, n_layers, height, width)], 1))


def read_modulation(grid: nn.Parameter, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma, beta [layers, N, 1] at ``uv`` [P, N, 2]: product of the planes' gammas, sum of their betas."""
    values = sample_planes(grid, uv).permute(0, 2, 1)[..., None]  # [P, 2L, N, 1]
    n_layers = grid.shape[1] // 2
    return values[:, :n_layers].prod(0), values[:, n_layers:].sum(0)


@dataclass
class CAMConfig(MLPConfig):
    """CAM backend: the `mlp` backend's network (same options and CPU-sized defaults) with coordinate-aware
    modulation. Grids are smaller than the authors' (128^2 planes instead of 512^2) to keep the per-sample
    lookups cheap on a CPU; the view grid keeps their 10 x 3 (azimuth x elevation)."""

    modulate: tuple[Literal["planes", "view"], ...] = ("planes", "view")
    """Modulating coordinates: 'planes' (three spatial planes on the trunk), 'view' (view direction on the
    colour head)."""
    plane_resolution: int = 128
    """Cells per side of each spatial modulation plane."""
    view_resolution: tuple[int, int] = (10, 3)
    """Azimuth x elevation cells of the view-direction grid."""
    image_resolution: int = 32
    """Cells per side of the pixel-coordinate grid for `fields fit`."""
    grid_lr_scale: float = 1.0
    """Learning rate of the modulation grids relative to the MLP's. The official code uses 10x; with our
    minutes-long schedule (MLP at 3e-3) that overshoots: lego after 120 s scored 23.6 dB with 10x, 25.8 with 1x
    (and 24.7 with 0.3x); fitting a 256px image for 30 s, 31.8 vs 34.2 dB."""

    def build(self, aabb: torch.Tensor, appearance: Appearance = Appearance()) -> "CAMField":
        return CAMField(aabb, self, appearance)

    def build_image(self) -> "ImageCAM":
        return ImageCAM(self)


def _groups(module: nn.Module, lr: float, cfg: CAMConfig) -> list[dict]:
    grids = [p for n, p in module.named_parameters() if n.endswith("_grid")]
    ids = {id(p) for p in grids}
    nets = [p for p in module.parameters() if id(p) not in ids]
    return [{"name": "grid", "params": grids, "lr": lr * cfg.lr_scale * cfg.grid_lr_scale},
            {"name": "mlp", "params": nets, "lr": lr * cfg.lr_scale}]


class CAMField(MLPField):
    def __init__(self, aabb: torch.Tensor, cfg: CAMConfig, appearance: Appearance = Appearance()):
        super().__init__(aabb, cfg, appearance)
        unknown = set(cfg.modulate) - {"planes", "view"}
        if unknown:
            raise ValueError(f"unknown CAM modulating coordinate(s) {sorted(unknown)} (known: planes, view)")
        r = cfg.plane_resolution
        self.plane_grid = modulation_grid(3, cfg.layers, r, r) if "planes" in cfg.modulate else None
        az, el = cfg.view_resolution
        self.view_grid = modulation_grid(1, 1, el, az) if "view" in cfg.modulate else None

    def trunk_modulation(self, u: torch.Tensor):
        if self.plane_grid is None:
            return None, None
        return read_modulation(self.plane_grid, torch.stack([u[:, list(a)] for a in PLANE_AXES]))

    def color_modulation(self, d: torch.Tensor):
        if self.view_grid is None:
            return None, None
        return read_modulation(self.view_grid, direction_to_unit_square(d)[None])

    def param_groups(self, lr: float) -> list[dict]:
        return _groups(self, lr, self.cfg)


class ImageCAM(ImageMLP):
    def __init__(self, cfg: CAMConfig):
        super().__init__(cfg)
        self.uv_grid = modulation_grid(1, cfg.layers, cfg.image_resolution, cfg.image_resolution)

    def modulation(self, uv: torch.Tensor):
        return read_modulation(self.uv_grid, uv[None])

    def param_groups(self, lr: float) -> list[dict]:
        return _groups(self, lr, self.cfg)
