"""Coordinate encodings and small-grid lookups shared by the MLP-style backends (mlp, cam, rbf).

- ``fourier_encode``: NeRF's positional encoding ``[x, sin(2^k pi x), cos(2^k pi x)]`` (Mildenhall et al. 2020).
- ``gaussian_encode``: the shifted Gaussian basis of "Rethinking Positional Encoding" (Zheng et al. 2021):
  per input dimension, ``exp(-(x - t_i)^2 / (2 sigma^2))`` at evenly spaced shifts ``t_i``.
- ``sample_planes``: bilinear lookups in a stack of 2-D grids (CAM's modulation grids).
- ``direction_to_unit_square``: a unit direction as (azimuth, elevation) in [0, 1]^2, the view coordinate CAM
  modulates with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def fourier_encode(x: torch.Tensor, n_freqs: int, include_input: bool = True) -> torch.Tensor:
    """``x`` [N, D] (expected in [-1, 1]) -> [N, D * (2 * n_freqs + include_input)]."""
    parts = [x] if include_input else []
    if n_freqs > 0:
        scales = (2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)) * math.pi
        xb = (x[:, None, :] * scales[:, None]).reshape(x.shape[0], n_freqs * x.shape[1])  # [N, n_freqs * D]; N may be 0
        parts += [torch.sin(xb), torch.cos(xb)]
    return torch.cat(parts, -1)


def fourier_dim(in_dim: int, n_freqs: int, include_input: bool = True) -> int:
    return in_dim * (2 * n_freqs + int(include_input))


def gaussian_encode(x: torch.Tensor, n_basis: int, sigma: float) -> torch.Tensor:
    """Shifted Gaussian basis embedding of ``x`` [N, D] in [0, 1]: [N, D * n_basis].

    ``sigma`` is in units of the spacing between shifts (1/(n_basis-1)), so the bandwidth follows the basis
    count; 1 gives neighbouring Gaussians that overlap at about 60 % of their peak.
    """
    shifts = torch.linspace(0, 1, n_basis, dtype=x.dtype, device=x.device)
    s = sigma / max(n_basis - 1, 1)
    return torch.exp(-0.5 * ((x[:, :, None] - shifts) / s) ** 2).reshape(x.shape[0], x.shape[1] * n_basis)


def sample_planes(planes: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``planes`` [P, C, H, W] at ``uv`` [P, N, 2] in [0, 1]^2 (u along W) -> [P, N, C].

    Grid corners sit on 0 and 1 (align_corners) and coordinates outside are clamped to the border.
    """
    grid = (uv * 2 - 1)[:, :, None, :]  # [P, N, 1, 2]
    out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[..., 0].transpose(1, 2)


def direction_to_unit_square(d: torch.Tensor) -> torch.Tensor:
    """Unit directions [N, 3] -> (azimuth, elevation) [N, 2], both mapped to [0, 1]."""
    x, y, z = d.unbind(-1)
    azimuth = torch.atan2(y, x) / (2 * math.pi) + 0.5
    elevation = torch.atan2(z, torch.sqrt(x * x + y * y)) / math.pi + 0.5
    return torch.stack([azimuth, elevation], -1)


class CoordinateEncoding(torch.nn.Module):
    """Fourier or shifted-Gaussian encoding of coordinates in [0, 1]^D (no learnable parameters)."""

    def __init__(self, in_dim: int, kind: str = "fourier", n_freqs: int = 10, n_basis: int = 64,
                 sigma: float = 1.0):
        super().__init__()
        if kind not in ("fourier", "gaussian"):
            raise ValueError(f"unknown coordinate encoding '{kind}' (known: fourier, gaussian)")
        self.kind, self.n_freqs, self.n_basis, self.sigma = kind, n_freqs, n_basis, sigma
        self.out_dim = fourier_dim(in_dim, n_freqs) if kind == "fourier" else in_dim * n_basis

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.kind == "fourier":
            return fourier_encode(u * 2 - 1, self.n_freqs)
        return gaussian_encode(u, self.n_basis, self.sigma)


def lift_uv(uv: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates [N, 2] as points on the mid-plane z = 0.5 of the unit cube, so that the 3-D grid
    encodings serve 2-D fields unchanged."""
    return torch.cat([uv, torch.full_like(uv[:, :1], 0.5)], -1)
