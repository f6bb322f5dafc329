"""Normalised device coordinates (NDC) for forward-facing captures, as NeRF renders LLFF scenes.

A forward-facing capture (every camera looking roughly one way, e.g. LLFF's fern) sees content from a near
bound out to infinity through one frustum. NDC is the projective map of a reference camera (the mean pose of
the training cameras) that sends that frustum to a cube: x and y become image coordinates (-1..1 across the
reference image) and depth z becomes disparity, -1 at the near plane and 1 at infinity. Straight rays stay
straight, so rays are mapped once and everything downstream (marcher, occupancy grid, field over a box) runs
unchanged in NDC: the field's cells then follow pixels laterally and disparity in depth, where a box in the
world (even contracted) spends them evenly on space that fern's pixels cover at 5x finer footprints.

For a reference camera looking down -z with near plane ``n`` and ``a = 2 f / size`` per axis (NeRF's
``ndc_rays``): ``(x, y, z) -> (-a_x x / z, -a_y y / z, 1 + 2 n / z)``. Rays start on the near plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scenes.cameras import Cameras, image_rays


@dataclass(frozen=True)
class NDC:
    """The NDC map of a reference camera: ``rotation`` [3, 3] (columns: its right, up and backward axes in the
    world), ``origin`` [3], ``scale`` (a_x, a_y) = 2 f / size, and the near plane ``near`` (world units)."""

    rotation: torch.Tensor
    origin: torch.Tensor
    scale: tuple[float, float]
    near: float

    @staticmethod
    def of_cameras(cams: Cameras, near: float) -> "NDC":
        """The map of the mean pose of ``cams`` (mean centre, mean axes made orthonormal), with the first camera's
        focal lengths and size."""
        pose = cams.mean_pose()
        scale = (2 * float(cams.fx[0]) / float(cams.width[0]), 2 * float(cams.fy[0]) / float(cams.height[0]))
        return NDC(pose[:3, :3].float(), pose[:3, 3].float(), scale, float(near))

    def to_list(self) -> tuple[float, ...]:
        """15 numbers (rotation row by row, origin, scale, near) for config.yaml."""
        return (*self.rotation.flatten().tolist(), *self.origin.tolist(), *self.scale, self.near)

    @staticmethod
    def from_list(v: tuple[float, ...] | list[float]) -> "NDC":
        """Inverse of ``to_list``."""
        if len(v) != 15:
            raise ValueError(f"an NDC frame is 15 numbers, got {len(v)}")
        t = torch.tensor([float(x) for x in v])
        return NDC(t[:9].reshape(3, 3), t[9:12], (float(v[12]), float(v[13])), float(v[14]))

    def ray_ends(self, origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World rays [N, 3] (looking away from the reference camera's back) -> their NDC points on the near
        plane (z = -1) and at infinity (z = 1)."""
        o, d = self.camera_frame(origins), dirs @ self.rotation.to(dirs)  # in the reference camera's frame
        o = o + (-(self.near + o[:, 2]) / d[:, 2])[:, None] * d  # onto the near plane z = -near
        ax, ay = self.scale
        end = torch.stack([-ax * d[:, 0] / d[:, 2], -ay * d[:, 1] / d[:, 2], torch.ones_like(d[:, 2])], -1)
        return self.project(o), end

    def ahead(self, dirs: torch.Tensor) -> torch.Tensor:
        """Which world directions [N, 3] go forward from the reference camera (only those reach its frustum)."""
        return dirs @ self.rotation[:, 2].to(dirs) < -1e-6

    def rays(self, origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World rays [..., 3] -> NDC rays: origins on the near plane and unit directions (a sample's distance
        is then its NDC distance from the near plane; the box ends the ray at infinity, z = 1). Rays that do
        not go forward (a viewer's camera turned away) become rays beyond infinity, which miss every box."""
        shape = origins.shape
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        start, end = self.ray_ends(o, d)
        ahead = self.ahead(d)[:, None]
        start = torch.where(ahead, start, torch.tensor([0.0, 0.0, 2.0]).to(start))
        unit = torch.where(ahead, torch.nn.functional.normalize(end - start, dim=-1),
                           torch.tensor([0.0, 0.0, 1.0]).to(start))
        return start.reshape(shape), unit.reshape(shape)

    def to_world(self, q: torch.Tensor) -> torch.Tensor:
        """NDC points [N, 3] with z < 1 -> world points (the inverse of the map)."""
        z = 2 * self.near / (q[:, 2] - 1)  # the reference camera's z, negative before it
        ax, ay = self.scale
        p = torch.stack([-q[:, 0] * z / ax, -q[:, 1] * z / ay, z], -1)
        return p @ self.rotation.to(q).T + self.origin.to(q)

    def camera_frame(self, x: torch.Tensor) -> torch.Tensor:
        """World points [N, 3] in the reference camera's frame (looking down -z)."""
        return (x - self.origin.to(x)) @ self.rotation.to(x)

    def beyond_near(self, x: torch.Tensor) -> torch.Tensor:
        """Which world points [N, 3] lie beyond the near plane (the only ones NDC space holds)."""
        return self.camera_frame(x)[:, 2] < -self.near

    def project(self, p: torch.Tensor) -> torch.Tensor:
        """Points [N, 3] in the reference camera's frame, beyond the near plane -> NDC points."""
        ax, ay = self.scale
        return torch.stack([-ax * p[:, 0] / p[:, 2], -ay * p[:, 1] / p[:, 2], 1 + 2 * self.near / p[:, 2]], -1)

    def from_world(self, x: torch.Tensor) -> torch.Tensor:
        """World points [N, 3] beyond the near plane -> NDC points (the map itself; ``to_world`` inverts it)."""
        return self.project(self.camera_frame(x))

    def density_scale(self, x: torch.Tensor) -> torch.Tensor:
        """NDC distance per world distance at world points [N, 3] beyond the near plane, along the ray from the
        reference camera's centre: there only NDC z changes, by 2 near / |p| |z| (p the point in that camera's
        frame). An NDC density times this is a world density: the same opacity over the same stretch of ray."""
        p = self.camera_frame(x)
        return 2 * self.near / (p.norm(dim=-1) * p[:, 2].abs())

    def world_depth(self, origins: torch.Tensor, dirs: torch.Tensor, depth: torch.Tensor,
                    opacity: torch.Tensor) -> torch.Tensor:
        """Expected depths ``depth`` [N] (opacity-weighted NDC distances, as the renderer sums them) of world rays
        [N, 3] -> the same in world distance along the rays, so that depth maps and surface points of an NDC run
        are in the world (the mean NDC distance is mapped; a ray that reaches infinity keeps a finite 1e6)."""
        start, end = self.ray_ends(origins, dirs)
        unit = torch.nn.functional.normalize(end - start, dim=-1)
        mean = depth / opacity.clamp_min(1e-12)
        q = start + mean[:, None] * unit
        q = torch.cat([q[:, :2], q[:, 2:].clamp_max(1 - 2 * self.near / 1e6)], -1)
        world = ((self.to_world(q) - origins) * dirs).sum(-1) * opacity
        return torch.where(self.ahead(dirs), world, torch.zeros_like(world))  # the rest saw nothing

    def box(self, cams: Cameras) -> torch.Tensor:
        """The NDC box [2, 3] a field needs for ``cams``: x and y over every pixel ray of every camera from the
        near plane to infinity (the other cameras' rays leave the reference image's [-1, 1]), z from -1 to 1."""
        lo, hi = torch.full((3,), float("inf")), torch.full((3,), float("-inf"))
        for i in range(len(cams)):
            o, d = image_rays(cams, i)
            ends = torch.cat(self.ray_ends(o.reshape(-1, 3), d.reshape(-1, 3)))
            lo, hi = torch.minimum(lo, ends.amin(0)), torch.maximum(hi, ends.amax(0))
        lo[2], hi[2] = -1.0, 1.0
        return torch.stack([lo, hi])
