"""The embedded scene: three textured solids with an analytic signed distance, rendered by the package itself.

It lets ``fields train`` run on a fresh machine with no downloads, and it is the ground truth that tests and
benchmarks measure against: ``sdf`` is the exact surface (exported meshes are compared with
``surface_points``). The images are sphere-traced with 2x2 supersampling, Lambertian shading under a fixed
light, on a transparent background, and written in the Blender format so they go through the normal loader.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from scenes.cameras import Cameras, image_rays

NAME = "procedural"
VERSION = 1  # bump when the scene changes, so cached copies are regenerated
AABB = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
FOV_X = 0.6911112070083618  # the lego scene's field of view
RADIUS = 2.8
LIGHT = torch.tensor([0.4, -0.3, 0.85]) / math.sqrt(0.4**2 + 0.3**2 + 0.85**2)
SPLITS = {"train": 64, "val": 8, "test": 16}

SPHERE_C, SPHERE_R = torch.tensor([-0.38, 0.05, 0.05]), 0.36
BOX_C, BOX_H, BOX_ROUND = torch.tensor([0.36, 0.1, -0.08]), torch.tensor([0.24, 0.24, 0.24]), 0.03
TORUS_C, TORUS_R, TORUS_r = torch.tensor([0.0, -0.1, -0.5]), 0.48, 0.11


def _parts(x: torch.Tensor) -> torch.Tensor:
    """Signed distances to the sphere, the rounded box and the torus, [N, 3]."""
    d_sphere = (x - SPHERE_C).norm(dim=-1) - SPHERE_R
    q = (x - BOX_C).abs() - (BOX_H - BOX_ROUND)
    d_box = q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0) - BOX_ROUND
    p = x - TORUS_C
    d_torus = torch.stack([p[:, :2].norm(dim=-1) - TORUS_R, p[:, 2]], -1).norm(dim=-1) - TORUS_r
    return torch.stack([d_sphere, d_box, d_torus], -1)


def sdf(x: torch.Tensor) -> torch.Tensor:
    """Exact signed distance to the scene's surface (negative inside), [N]."""
    return _parts(x).min(dim=-1).values


def albedo(x: torch.Tensor) -> torch.Tensor:
    """Surface colour at points on or near the surface, [N, 3]: stripes, checks and a two-tone ring."""
    part = _parts(x).argmin(dim=-1)
    stripes = (torch.sin(x[:, 2] * 18.0) > 0).float()[:, None]
    sphere = stripes * torch.tensor([0.9, 0.2, 0.15]) + (1 - stripes) * torch.tensor([0.95, 0.8, 0.2])
    cell = ((torch.floor(x * 6.0).sum(-1)) % 2)[:, None]
    box = cell * torch.tensor([0.15, 0.3, 0.85]) + (1 - cell) * torch.tensor([0.85, 0.9, 0.95])
    ang = torch.atan2(x[:, 1] - TORUS_C[1], x[:, 0] - TORUS_C[0])
    ring = (torch.cos(ang * 6.0) > 0).float()[:, None]
    torus = ring * torch.tensor([0.1, 0.65, 0.25]) + (1 - ring) * torch.tensor([0.1, 0.25, 0.1])
    return torch.where((part == 0)[:, None], sphere, torch.where((part == 1)[:, None], box, torus))


def normals(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Unit surface normals from central differences of the SDF."""
    offsets = torch.eye(3) * eps
    grad = torch.stack([sdf(x + o) - sdf(x - o) for o in offsets], -1)
    return torch.nn.functional.normalize(grad, dim=-1)


def surface_points(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points on the true surface, spread roughly uniformly by area, for Chamfer / F-score metrics."""
    g = torch.Generator().manual_seed(seed)
    pts = []
    while sum(p.shape[0] for p in pts) < n:
        x = torch.rand(200_000, 3, generator=g) * 2 - 1
        x = x[sdf(x).abs() < 0.05]  # a thin shell: uniform in volume, hence roughly uniform in area
        for _ in range(6):  # project onto the surface
            x = x - sdf(x)[:, None] * normals(x)
        pts.append(x[sdf(x).abs() < 1e-5])
    return torch.cat(pts)[:n]


def _look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    back = torch.nn.functional.normalize(eye - target, dim=0)  # OpenGL: the camera looks down -Z
    right = torch.nn.functional.normalize(torch.linalg.cross(up, back), dim=0)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, torch.linalg.cross(back, right), back, eye
    return c2w


def camera_poses(n: int, seed: int) -> torch.Tensor:
    """``n`` cameras on a sphere of radius RADIUS looking at the origin, mostly from above (z up)."""
    g = torch.Generator().manual_seed(seed)
    poses = []
    for i in range(n):
        z = -0.25 + 1.2 * (i + torch.rand(1, generator=g).item()) / n  # from slightly below to the top
        z = min(z, 0.97)
        phi = i * math.pi * (3 - math.sqrt(5)) + 2 * math.pi * torch.rand(1, generator=g).item() / n
        eye = RADIUS * torch.tensor([math.sqrt(1 - z * z) * math.cos(phi), math.sqrt(1 - z * z) * math.sin(phi), z])
        poses.append(_look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])))
    return torch.stack(poses)


def render(c2w: torch.Tensor, size: int, supersample: int = 2) -> np.ndarray:
    """Sphere-trace one RGBA image (uint8, straight alpha) of the scene."""
    cams = Cameras.from_fov(c2w[None], size * supersample, size * supersample, FOV_X)
    origins, dirs = image_rays(cams, 0)
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    t = torch.full(origins.shape[:1], RADIUS - 1.8)
    active = torch.arange(t.shape[0])
    for it in range(128):  # sphere tracing; rays that converged or left the scene drop out every 8 steps
        d = sdf(origins[active] + t[active, None] * dirs[active])
        t[active] += d
        if it % 8 == 7:
            active = active[(d.abs() > 1e-5) & (t[active] < RADIUS + 1.8)]
    x = origins + t[:, None] * dirs
    hit = (sdf(x).abs() < 1e-3) & (t < RADIUS + 1.8)
    shade = 0.3 + 0.7 * (normals(x) @ LIGHT).clamp_min(0)[:, None]
    rgb = (albedo(x) * shade).clamp(0, 1) * hit[:, None]
    rgba = torch.cat([rgb, hit[:, None].float()], -1).reshape(1, size * supersample, size * supersample, 4)
    rgba = torch.nn.functional.avg_pool2d(rgba.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)[0]
    rgba[..., :3] = rgba[..., :3] / rgba[..., 3:].clamp_min(1e-6)  # premultiplied -> straight alpha
    return (rgba.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def generate(root: Path, size: int = 100) -> Path:
    """Write the scene in the Blender format under ``root`` (atomically: a reader never sees half a scene)."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root.parent))
    try:
        for seed, (split, n) in enumerate(SPLITS.items()):
            (tmp / split).mkdir()
            frames = []
            for i, c2w in enumerate(camera_poses(n, seed)):
                iio.imwrite(tmp / split / f"r_{i}.png", render(c2w, size))
                frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
            meta = {"camera_angle_x": FOV_X, "aabb": [list(AABB[0]), list(AABB[1])], "frames": frames}
            (tmp / f"transforms_{split}.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, root)
        except OSError:  # another process generated it first
            if not (root / "transforms_test.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_generated(cache_dir: Path, size: int = 100) -> Path:
    """The scene's folder under ``cache_dir``, generating it on first use (a few seconds)."""
    root = Path(cache_dir) / f"{NAME}-v{VERSION}-{size}"
    if not (root / "transforms_test.json").is_file():
        generate(root, size)
    return root
