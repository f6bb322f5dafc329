"""Camera records shared by every loader, renderer and exporter.

Conventions (see DESIGN.md): camera-to-world matrices in the OpenGL/Blender convention (+X right, +Y up,
the camera looks down -Z), intrinsics in pixels, pixel centres at +0.5. Distortion, when present, is the
OpenCV radial-tangential model ``k1 k2 p1 p2`` that nerfstudio's ``transforms.json`` uses, or for fisheye
cameras the OpenCV / COLMAP ``OPENCV_FISHEYE`` equidistant model ``k1 k2 k3 k4``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Cameras:
    """A batch of cameras that share one lens model; each has its own intrinsics and image size.

    ``fx fy cx cy`` are per camera so that nerfstudio's per-frame overrides survive loading, and so are ``width``
    and ``height`` (int64 [N]; a whole number given for them applies to every camera), so that a split may mix
    image sizes. ``fisheye`` switches the whole batch from the pinhole projection (plus optional
    radial-tangential distortion) to the equidistant fisheye projection, whose ``distortion`` is then
    ``k1 k2 k3 k4``.
    """

    c2w: torch.Tensor  # [N, 4, 4] float32, OpenGL convention
    fx: torch.Tensor  # [N]
    fy: torch.Tensor  # [N]
    cx: torch.Tensor  # [N]
    cy: torch.Tensor  # [N]
    width: torch.Tensor  # [N] int64 (an int is broadcast to every camera)
    height: torch.Tensor  # [N] int64
    distortion: torch.Tensor | None = None  # [N, 4] = k1 k2 p1 p2 (k1 k2 k3 k4 if fisheye), or None
    fisheye: bool = False

    def __post_init__(self) -> None:
        n = self.c2w.shape[0]
        self.width = torch.as_tensor(self.width, dtype=torch.long).expand(n).contiguous()
        self.height = torch.as_tensor(self.height, dtype=torch.long).expand(n).contiguous()

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        """Select cameras by index, slice or index tensor; always returns a batch."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        dist = None if self.distortion is None else self.distortion[idx]
        return Cameras(self.c2w[idx], self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx],
                       self.width[idx], self.height[idx], dist, self.fisheye)

    def size(self, i: int) -> tuple[int, int]:
        """(width, height) in pixels of camera ``i``."""
        return int(self.width[i]), int(self.height[i])

    def scaled(self, factor: float) -> "Cameras":
        """The same cameras for images resized by ``factor`` (e.g. 0.5 halves the resolution)."""
        return Cameras(self.c2w, self.fx * factor, self.fy * factor, self.cx * factor, self.cy * factor,
                       _rounded(self.width * factor), _rounded(self.height * factor), self.distortion, self.fisheye)

    def resized(self, width: int | torch.Tensor, height: int | torch.Tensor) -> "Cameras":
        """The same cameras for their images resampled to ``width`` x ``height`` pixels (one size for all, or one
        per camera; the image's edges map onto the new edges, so x scales by width / self.width and y by
        height / self.height)."""
        width, height = torch.as_tensor(width, dtype=torch.long), torch.as_tensor(height, dtype=torch.long)
        sx, sy = width / self.width, height / self.height
        return Cameras(self.c2w, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height,
                       self.distortion, self.fisheye)

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres in world space, [N, 3]."""
        return self.c2w[:, :3, 3]

    def mean_pose(self) -> torch.Tensor:
        """The mean camera-to-world pose [4, 4] (float64): mean centre, mean viewing axis, and the mean up
        vector made orthonormal to it (LLFF's ``poses_avg``; the reference camera of NDC and of forward-facing
        camera paths)."""
        c2w = self.c2w.double()
        back = torch.nn.functional.normalize(c2w[:, :3, 2].mean(0), dim=0)
        right = torch.nn.functional.normalize(torch.linalg.cross(c2w[:, :3, 1].mean(0), back), dim=0)
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, :3] = torch.stack([right, torch.linalg.cross(back, right), back], 1)
        pose[:3, 3] = c2w[:, :3, 3].mean(0)
        return pose

    @staticmethod
    def from_fov(c2w: torch.Tensor, width: int | torch.Tensor, height: int | torch.Tensor, fov_x: float) -> "Cameras":
        """Cameras with a horizontal field of view in radians and the principal point at the image centre (one
        image size for all, or one per camera)."""
        n = c2w.shape[0]
        w = torch.as_tensor(width, dtype=torch.float64).expand(n)  # in float64, then rounded once to float32
        h = torch.as_tensor(height, dtype=torch.float64).expand(n)
        focal = (0.5 * w / torch.tan(torch.tensor(0.5 * fov_x, dtype=torch.float64))).float()
        return Cameras(c2w.float(), focal, focal.clone(), (w / 2).float(), (h / 2).float(), width, height)

    @staticmethod
    def cat(parts: list["Cameras"]) -> "Cameras":
        """The cameras of ``parts`` (one lens model), one batch after the other; a batch without distortion
        counts as zero distortion where another has some."""
        if len({c.fisheye for c in parts}) > 1:
            raise ValueError("fisheye and pinhole cameras do not join into one batch (undistort them first)")
        either = any(c.distortion is not None for c in parts)
        dist = (torch.cat([c.distortion if c.distortion is not None else torch.zeros(len(c), 4) for c in parts])
                if either else None)
        field = lambda name: torch.cat([getattr(c, name) for c in parts])  # noqa: E731
        return Cameras(field("c2w"), field("fx"), field("fy"), field("cx"), field("cy"), field("width"),
                       field("height"), dist, parts[0].fisheye)


def _rounded(size: torch.Tensor) -> torch.Tensor:
    """Scaled image sizes as whole pixels, at least 1 (Python's ``round``: halves to even)."""
    return size.round().clamp_min(1).long()


CONVERGED = 1e-6  # Newton steps stop when no point moves more than this (normalised units: ~1e-3 px; float32
# rounding alone moves points by ~1e-7)


def undistort(u: torch.Tensor, v: torch.Tensor, dist: torch.Tensor, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert the OpenCV radial-tangential model (k1 k2 p1 p2) on normalised coordinates by Newton's method
    (at most ``iters`` steps, fewer once converged).

    ``u, v`` are distorted normalised image coordinates; returns the undistorted ones. Same scheme as
    nerfstudio's ``radial_and_tangential_undistort``.
    """
    k1, k2, p1, p2 = dist.unbind(-1)
    x, y = u.clone(), v.clone()
    for _ in range(iters):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * k2)
        fx = radial * x + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - u
        fy = radial * y + 2 * p2 * x * y + p1 * (r2 + 2 * y * y) - v
        d_radial = k1 + 2 * r2 * k2  # d radial / d r2
        fx_x = radial + 2 * x * x * d_radial + 2 * p1 * y + 6 * p2 * x
        fx_y = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        fy_x = 2 * x * y * d_radial + 2 * p2 * y + 2 * p1 * x
        fy_y = radial + 2 * y * y * d_radial + 2 * p2 * x + 6 * p1 * y
        det = fx_x * fy_y - fx_y * fy_x
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        step_x, step_y = (fx * fy_y - fy * fx_y) / det, (fy * fx_x - fx * fy_x) / det
        x, y = x - step_x, y - step_y
        if step_x.numel() == 0 or max(step_x.abs().max().item(), step_y.abs().max().item()) < CONVERGED:
            break
    return x, y


def distort(x: torch.Tensor, y: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the OpenCV radial-tangential model to undistorted normalised coordinates (the forward model)."""
    k1, k2, p1, p2 = dist.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * k2)
    return (radial * x + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            radial * y + 2 * p2 * x * y + p1 * (r2 + 2 * y * y))


def fisheye_angle(theta_d: torch.Tensor, dist: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Invert the equidistant fisheye model theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)
    by Newton's method: the angle ``theta`` between a ray and the optical axis."""
    k1, k2, k3, k4 = dist.unbind(-1)
    theta = theta_d.clone()
    for _ in range(iters):
        t2 = theta * theta
        poly = 1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))
        d_poly = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))  # d (theta * poly) / d theta
        step = (theta * poly - theta_d) / torch.where(d_poly.abs() < 1e-12, torch.full_like(d_poly, 1e-12), d_poly)
        theta = theta - step
        if step.numel() == 0 or step.abs().max().item() < CONVERGED:
            break
    return theta


def fisheye_directions(u: torch.Tensor, v: torch.Tensor, dist: torch.Tensor | None) -> torch.Tensor:
    """Unit directions in OpenCV camera axes (x right, y down, z forward) of distorted normalised fisheye
    coordinates ``u, v``: the ray's angle from the axis is the inverted distortion of their radius."""
    theta_d = torch.sqrt(u * u + v * v)
    theta = theta_d if dist is None else fisheye_angle(theta_d, dist)
    sin_over_r = torch.where(theta_d > 1e-8, torch.sin(theta) / theta_d.clamp_min(1e-8), torch.ones_like(theta_d))
    return torch.stack([u * sin_over_r, v * sin_over_r, torch.cos(theta)], -1)


def pixel_rays(cams: Cameras, cam_idx: torch.Tensor | int, px: torch.Tensor, py: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through pixel positions ``(px, py)`` (pixel units; centres at +0.5) of cameras
    ``cam_idx`` (one index per pixel, or one camera for all: then its parameters stay scalars, which keeps
    the distortion's Newton steps fast). Returns origins and unit directions, each [..., 3]."""
    u = (px - cams.cx[cam_idx]) / cams.fx[cam_idx]
    v = (py - cams.cy[cam_idx]) / cams.fy[cam_idx]
    if cams.fisheye:
        d = fisheye_directions(u, v, None if cams.distortion is None else cams.distortion[cam_idx])
        dirs_cam = d * torch.tensor([1.0, -1.0, -1.0])  # OpenCV axes to ours
    else:
        if cams.distortion is not None:
            u, v = undistort(u, v, cams.distortion[cam_idx])
        dirs_cam = torch.stack([u, -v, -torch.ones_like(u)], -1)  # image y points down, camera +Y up
    c2w = cams.c2w[cam_idx]
    if c2w.dim() == 2:  # one camera
        dirs = torch.nn.functional.normalize(dirs_cam @ c2w[:3, :3].T, dim=-1)
    else:
        dirs = torch.nn.functional.normalize((c2w[..., :3, :3] @ dirs_cam[..., None])[..., 0], dim=-1)
    return c2w[..., :3, 3].expand_as(dirs).contiguous(), dirs  # contiguous: gathers from a strided view are slow


def image_rays(cams: Cameras, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through every pixel centre of camera ``i`` (at its own size), each [H, W, 3]."""
    w, h = cams.size(i)
    py, px = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                            torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
    return pixel_rays(cams, i, px, py)
