"""Photos and videos of the procedural scene with known cameras, textured for SIFT: what the structure-from-motion
test (tests/test_process.py) and bench_process.py's ground-truth video reconstruct and compare against."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from scenes import procedural
from scenes.camera_paths import look_at
from scenes.cameras import Cameras, image_rays

FLOOR = -0.65


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for the block, restored after: small element-wise ops (``render``'s, the tests' tiny
    fields) only spin on extra threads (30x slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _texture(x: torch.Tensor) -> torch.Tensor:
    """A blotchy grey pattern (a sum of random plane waves, squashed): the corners and blobs SIFT needs, which
    the procedural scene's stripes and checks alone do not give at this size."""
    g = torch.Generator().manual_seed(3)
    dirs = torch.nn.functional.normalize(torch.randn(24, 3, generator=g), dim=1)
    waves = dirs * (10 + 50 * torch.rand(24, generator=g))[:, None]
    t = torch.tanh(12 * torch.sin(x @ waves.T + 2 * math.pi * torch.rand(24, generator=g)).mean(-1))
    return 0.55 + 0.4 * t


def render(c2w: torch.Tensor, width: int, height: int, fov_x: float) -> np.ndarray:
    """The procedural scene's solids on a floor, textured, sphere-traced: uint8 RGB [height, width, 3] seen by the
    camera ``c2w`` [4, 4] (OpenGL) with a horizontal field of view ``fov_x`` (radians)."""
    sdf = lambda x: torch.minimum(procedural.sdf(x), x[:, 2] - FLOOR)  # noqa: E731
    origins, dirs = (t.reshape(-1, 3) for t in image_rays(Cameras.from_fov(c2w[None], width, height, fov_x), 0))
    t = torch.full(origins.shape[:1], 0.5)
    active = torch.arange(len(t))
    for _ in range(96):  # sphere tracing; rays that have hit (or left the scene) drop out
        step = sdf(origins[active] + t[active, None] * dirs[active]).clamp_max(1.0)
        t[active] += step
        active = active[(step.abs() > 1e-5) & (t[active] < 12.0)]
    x = origins + t[:, None] * dirs
    hit = (sdf(x).abs() < 1e-3) & (x.norm(dim=-1) < 3.5)
    floor = (x[:, 2] - FLOOR).abs() < 1e-3
    albedo = torch.where(floor[:, None], torch.tensor([0.7, 0.65, 0.6]), procedural.albedo(x)) * _texture(x)[:, None]
    normal = torch.where(floor[:, None], torch.tensor([0.0, 0.0, 1.0]), procedural.normals(x))
    rgb = albedo * (0.35 + 0.65 * (normal @ procedural.LIGHT).clamp_min(0)[:, None])
    rgb = torch.where(hit[:, None], rgb, torch.tensor([0.55, 0.6, 0.7]))
    return (rgb.clamp(0, 1).reshape(height, width, 3) * 255 + 0.5).to(torch.uint8).numpy()


def walk_around(frames: int, seed: int = 0) -> torch.Tensor:
    """Camera-to-world matrices [frames, 4, 4] of a hand-held walk once around the scene: radius, height and aim
    wander smoothly (a few slow sines of random phase), as a person filming an object on the floor would."""
    g = torch.Generator().manual_seed(seed)
    phase = 2 * math.pi * torch.rand(6, generator=g)
    poses = []
    for i in range(frames):
        s = i / frames
        a = 2 * math.pi * s
        wobble = [math.sin(2 * math.pi * k * s + p) for k, p in zip((2, 3, 5, 7, 4, 6), phase.tolist())]
        radius, el = 2.6 + 0.15 * wobble[0], 0.5 + 0.08 * wobble[1]
        eye = radius * torch.tensor([math.cos(el) * math.cos(a), math.cos(el) * math.sin(a), math.sin(el)])
        aim = 0.1 * torch.tensor(wobble[2:5])
        poses.append(look_at(eye, aim, torch.tensor([0.05 * wobble[5], 0.0, 1.0])))
    return torch.stack(poses)


def write_video(path: Path, poses: torch.Tensor, width: int, height: int, fov_x: float, fps: int = 30) -> None:
    """An H.264 mp4 of ``render`` along ``poses`` (compressed as a phone would, not losslessly; width and height
    multiples of 8, which the encoder would otherwise stretch the frames to)."""
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, quality=7, macro_block_size=8)
    writer.send(None)
    try:
        with one_thread():
            for c2w in poses:
                writer.send(np.ascontiguousarray(render(c2w, width, height, fov_x)))
    finally:
        writer.close()
