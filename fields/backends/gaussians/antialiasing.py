"""Mip-Splatting's 3-D filter (Yu et al., CVPR 2024): each Gaussian is smoothed by an isotropic Gaussian as wide
as the finest detail the training cameras can resolve at its place, so that it never becomes thinner than a pixel
of the closest training view (which renders as aliasing when zooming in or out). The 2-D half of the method, the
opacity compensation of the screen-space dilation, is the rasterizer's (``render_gaussians(antialiased=True)``).
"""

from __future__ import annotations

import torch

from renderers.splatting import Camera
from scenes.cameras import Cameras

FILTER_VARIANCE = 0.2
"""The filter's variance in units of (depth / focal)^2, a pixel's footprint squared (Mip-Splatting's 0.2)."""
NEAR = 0.2
"""Depths below this do not count as seeing a Gaussian (Mip-Splatting's)."""
MARGIN = 0.15
"""Means up to this share of the image beyond its border count as seen (Mip-Splatting's)."""


@torch.no_grad()
def filter_variance(means: torch.Tensor, cams: Cameras) -> torch.Tensor:
    """The 3-D filter's variance [N] of Gaussians at ``means`` [N, 3]: ``0.2 (z / f)^2`` at the smallest
    depth-to-focal ratio (the highest sampling rate) over the cameras that see each mean; means no camera sees get
    the largest value of the seen ones (0 when none is seen)."""
    best = torch.full((len(means),), float("inf"), dtype=means.dtype)
    for i in range(len(cams)):
        cam = Camera.of(cams, i, means.dtype, means.device)
        p = means @ cam.R.T + cam.t
        z = p[:, 2]
        zs = z.clamp_min(NEAR)
        x, y = p[:, 0] / zs * cam.fx + cam.cx, p[:, 1] / zs * cam.fy + cam.cy
        seen = ((z > NEAR) & (x >= -MARGIN * cam.width) & (x <= (1 + MARGIN) * cam.width)
                & (y >= -MARGIN * cam.height) & (y <= (1 + MARGIN) * cam.height))
        best = torch.where(seen, torch.minimum(best, z / cam.fx), best)
    seen = torch.isfinite(best)
    if not bool(seen.any()):
        return torch.zeros_like(best)
    best[~seen] = best[seen].max()
    return FILTER_VARIANCE * best * best


def smoothed(scales: torch.Tensor, opacities: torch.Tensor, variance: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales [N, 3] of Gaussians convolved with isotropic Gaussians of ``variance`` [N], and opacities [N] scaled by
    ``sqrt(det S / det(S + variance I))`` so that each keeps its integral (differentiable in scales and
    opacities; the ratio is taken per axis, where the determinants of tiny Gaussians would underflow)."""
    var = scales * scales
    blurred = var + variance[:, None]
    return blurred.sqrt(), opacities * (var / blurred).prod(-1).sqrt()
