"""Placing a real capture in the world: oriented, centred and scaled, with a scene box around it.

Structure-from-motion leaves poses in an arbitrary frame (any up direction, any unit). Like nerfstudio's
dataparsers, the loaders of real captures turn the mean camera up vector to +Z, move a centre to the origin and
scale so that every camera lies in the unit sphere. The centre is the point the camera axes pass closest to
when they converge on something in front of them (a capture around an object), else the middle of the bulk of
the SfM points, else the mean camera position. The transform is kept (``Placement``) and recorded on the split
(``SceneSplit.from_dataset``) so that exports can be mapped back to the dataset's frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BULK = (2.0, 98.0)  # percentiles of the SfM points that the scene box and the centre hold


@dataclass(frozen=True)
class Placement:
    """position_world = scale * rotation @ (position_dataset - centre); camera rotations turn by ``rotation``."""

    rotation: np.ndarray  # [3, 3]
    centre: np.ndarray  # [3]
    scale: float

    def poses(self, c2w: np.ndarray) -> np.ndarray:
        """Camera-to-world matrices [N, 4, 4] of the dataset frame in the world frame."""
        out = c2w.copy()
        out[:, :3, :3] = self.rotation @ c2w[:, :3, :3]
        out[:, :3, 3] = self.points(c2w[:, :3, 3])
        return out

    def points(self, xyz: np.ndarray) -> np.ndarray:
        """Points [P, 3] of the dataset frame in the world frame."""
        return self.scale * (xyz - self.centre) @ self.rotation.T

    def split_fields(self) -> dict:
        """The ``from_dataset`` and ``from_dataset_rotation`` fields of a SceneSplit."""
        return {"from_dataset": (tuple(float(c) for c in self.centre), float(self.scale)),
                "from_dataset_rotation": tuple(tuple(float(v) for v in row) for row in self.rotation)}

    def after(self, rotation: np.ndarray, translation: np.ndarray) -> "Placement":
        """This placement applied after the rigid map p -> rotation @ p + translation (e.g. nerfstudio's
        ``applied_transform``), so that it maps from the frame before that map."""
        return Placement(self.rotation @ rotation, rotation.T @ (self.centre - translation), self.scale)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation that turns unit vector ``a`` onto unit vector ``b``."""
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1 + 1e-9:  # opposite: half a turn about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def _axes(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit optical axes [N, 3] (cameras look down -Z) and the sum of the projections across them [3, 3]."""
    dirs = -c2w[:, :3, 2]
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    return dirs, np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]


def forward_facing(c2w: np.ndarray) -> bool:
    """Whether the optical axes of poses [N, 4, 4] (OpenGL convention) are all within ~8 degrees of one
    direction (an LLFF-style capture: one frustum seen from a few nearby viewpoints)."""
    _, proj = _axes(c2w)
    return bool(np.linalg.eigvalsh(proj.sum(0))[0] < 0.02 * len(c2w))


def axes_focus(c2w: np.ndarray) -> np.ndarray | None:
    """The point nearest (least squares) to every camera's optical axis, or None when the axes are close to
    parallel (a forward-facing capture) or the point is not in front of nearly all cameras."""
    if forward_facing(c2w):
        return None
    origins = c2w[:, :3, 3]
    dirs, proj = _axes(c2w)  # proj: onto the plane across each axis
    a, b = proj.sum(0), (proj @ origins[:, :, None]).sum(0)[:, 0]
    focus = np.linalg.solve(a, b)
    in_front = (((focus - origins) * dirs).sum(1) > 0).mean()
    return focus if in_front >= 0.9 else None


def place(c2w: np.ndarray, points: np.ndarray | None = None) -> Placement:
    """Orient (mean camera up -> +Z), centre and scale (cameras in the unit sphere) poses [N, 4, 4] in the
    OpenGL convention, with the dataset's SfM points [P, 3] when it has them."""
    up = c2w[:, :3, 1].mean(0)
    norm = np.linalg.norm(up)
    rotation = rotation_between(up / norm, np.array([0.0, 0.0, 1.0])) if norm > 1e-6 else np.eye(3)
    centre = axes_focus(c2w)
    if centre is None and points is not None and len(points) > 0:
        lo, hi = np.percentile(points @ rotation.T, BULK, axis=0)
        centre = rotation.T @ ((lo + hi) / 2)
    if centre is None:
        centre = c2w[:, :3, 3].mean(0)
    radius = np.linalg.norm(c2w[:, :3, 3] - centre, axis=1).max()
    return Placement(rotation, centre, 1.0 / radius if radius > 1e-8 else 1.0)


def bulk_box(points: np.ndarray) -> np.ndarray:
    """The box [2, 3] of the bulk of SfM points [P, 3] (``BULK`` percentiles per axis: stray points left out)."""
    return np.percentile(points, BULK, axis=0)


def scene_box(cameras: np.ndarray, points: np.ndarray | None = None) -> torch.Tensor:
    """A box [2, 3] around the camera centres [N, 3] and the bulk of the points [P, 3] (world frame; for a
    capture without SfM points, any points that bound what the cameras see), grown by 5% each side. Without
    points it is the cameras' box grown by the unit radius they were scaled to."""
    lo, hi = cameras.min(0), cameras.max(0)
    if points is not None and len(points) > 0:
        p_lo, p_hi = bulk_box(points)
        lo, hi = np.minimum(lo, p_lo), np.maximum(hi, p_hi)
        pad = 0.05 * (hi - lo).max()
    else:
        pad = 1.0
    return torch.tensor(np.stack([lo - pad, hi + pad]), dtype=torch.float32)
