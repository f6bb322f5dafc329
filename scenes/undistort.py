"""Undistorted copies of a split, for renderers that project through an ideal pinhole only (the Gaussian
rasterizer): each image is resampled once onto a pinhole camera with the same focal lengths, principal point and
size (each image its own), so the pixel the pinhole camera sees along a ray holds what the real lens recorded
along it. Pixels whose ray the real image does not cover are masked out (never trained on, not evaluated)."""

from __future__ import annotations

import dataclasses

import torch

from scenes.cameras import Cameras, distort
from scenes.images import Images
from scenes.scene import SceneSplit, to_uint8


def lens_coordinates(x: torch.Tensor, y: torch.Tensor, dist: torch.Tensor,
                     fisheye: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the lens puts rays with pinhole (undistorted) normalised coordinates ``x, y``: OpenCV's
    radial-tangential model, or the equidistant fisheye model (radius theta_d = theta (1 + k1 theta^2 + ...)
    for the angle theta = atan(r) off the axis)."""
    if not fisheye:
        return distort(x, y, dist)
    k1, k2, k3, k4 = dist.unbind(-1)
    r = torch.sqrt(x * x + y * y)
    theta = torch.atan(r)
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    scale = torch.where(r > 1e-9, theta_d / r.clamp_min(1e-9), torch.ones_like(r))
    return x * scale, y * scale


def undistorted(split: SceneSplit) -> SceneSplit:
    """``split`` on pinhole cameras (the split itself when its cameras already are)."""
    cams = split.cameras
    if cams.distortion is None and not cams.fisheye:
        return split
    images, masks = zip(*(undistorted_image(split, i) for i in range(len(cams))))
    pinhole = Cameras(cams.c2w, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height)
    return dataclasses.replace(split, cameras=pinhole, images=Images.stack([to_uint8(im) for im in images]),
                               masks=Images.stack(masks))


def undistorted_image(split: SceneSplit, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``i`` of ``split`` resampled onto its pinhole camera (RGBA [H, W, 4] in [0, 1], at its own size),
    and which of its pixels the real image covers and the split's masks keep [H, W]."""
    cams = split.cameras
    w, h = cams.size(i)
    py, px = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5,
                            indexing="ij")
    dist = cams.distortion[i] if cams.distortion is not None else torch.zeros(4)
    xd, yd = lens_coordinates((px - cams.cx[i]) / cams.fx[i], (py - cams.cy[i]) / cams.fy[i], dist, cams.fisheye)
    u, v = xd * cams.fx[i] + cams.cx[i], yd * cams.fy[i] + cams.cy[i]  # source pixel positions (centres +0.5)
    grid = torch.stack([2 * u / w - 1, 2 * v / h - 1], -1)[None]  # align_corners=False: edges at -1 and 1
    source = split.rgba(i).permute(2, 0, 1)[None]
    image = torch.nn.functional.grid_sample(source, grid, mode="bilinear", padding_mode="border",
                                            align_corners=False)[0].permute(1, 2, 0)
    keep = (u >= 0) & (u <= w) & (v >= 0) & (v <= h)
    if split.masks is not None:
        kept = split.masks[i].float()[None, None]
        keep &= torch.nn.functional.grid_sample(kept, grid, mode="nearest", align_corners=False)[0, 0] > 0.5
    return image, keep
