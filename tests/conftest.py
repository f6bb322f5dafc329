"""Shared fixtures: the procedural scene (generated once per cache folder), writers of tiny scene folders, and the
native ops with the devices to test them on."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

# Dev helpers shared with the benchmark scripts (fault injection, a viser websocket tab) live in scripts/.
sys.path.append(str(Path(__file__).resolve().parent.parent / "scripts"))


@pytest.fixture(scope="module")
def one_thread_module():
    """Torch on one thread for a module of small workloads: one thread is faster than two there, and far faster
    on a loaded machine (two OpenMP threads wait for each other on every small op)."""
    from sfm_capture import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="session", autouse=True)
def fields_cache(tmp_path_factory) -> Path:
    """Keep the procedural scene in $FIELDS_CACHE when CI sets it (reused across runs), else a session folder."""
    cache = Path(os.environ.get("FIELDS_CACHE") or tmp_path_factory.mktemp("fields-cache"))
    os.environ["FIELDS_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def procedural_root(fields_cache) -> Path:
    from scenes import find_scene

    return find_scene("procedural")


def write_blender(root: Path, n: int = 3, size: int = 8, fov: float = 0.7) -> Path:
    """A tiny Blender-format scene: ``n`` random RGBA images per split, cameras on a circle."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i in range(n):
            iio.imwrite(root / split / f"r_{i}.png", rng.integers(0, 255, (size, size, 4), dtype=np.uint8))
            a = 2 * np.pi * i / n
            c2w = np.eye(4)
            c2w[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
            c2w[:3, 3] = [4 * np.sin(a), 0, 4 * np.cos(a)]
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames}))
    return root


def write_nerfstudio(root: Path, n: int = 8, w: int = 12, h: int = 10, **top) -> Path:
    """A tiny nerfstudio scene with OpenCV intrinsics; ``top`` adds or overrides top-level keys."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        iio.imwrite(root / "images" / f"frame_{i:03d}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        c2w = np.eye(4)
        c2w[:3, 3] = [i * 0.1, 0, 2.0]
        frames.append({"file_path": f"images/frame_{i:03d}.png", "transform_matrix": c2w.tolist()})
    meta = {"camera_model": "OPENCV", "fl_x": 10.0, "fl_y": 11.0, "cx": 6.0, "cy": 5.0, "w": w, "h": h,
            "k1": 0.1, "k2": -0.02, "p1": 0.001, "p2": -0.002, "frames": frames, **top}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def tiny_config(max_steps: int = 30, **train):
    """A small, fast run on the procedural scene at half resolution (for tests)."""
    from fields.run.config import RunConfig, SceneConfig, TrainConfig
    from fields.backends.hashgrid import HashGridConfig

    return RunConfig(scene=SceneConfig(downscale=2),
                     field_config=HashGridConfig(n_levels=8, log2_table_size=14, max_resolution=128, hidden=32),
                     train=TrainConfig(max_time=None, max_steps=max_steps, target_samples=1 << 13, init_rays=512,
                                       grid_warmup=64, warmup_steps=10, log_every=10, **train),
                     grid_resolution=32)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, procedural_root) -> Path:
    """A procedural run trained for 200 steps (shared by the tests that need a trained field)."""
    from fields.training.trainer import Trainer

    from fields.backends.hashgrid import HashGridConfig
    from renderers.render import RenderConfig

    cfg = tiny_config(max_steps=200, grid_every=8)
    cfg.field_config = HashGridConfig(n_levels=8, log2_table_size=15, max_resolution=128)
    cfg.render = RenderConfig(samples_per_diagonal=256)
    run_dir = tmp_path_factory.mktemp("runs") / "procedural"
    Trainer(cfg, run_dir).train(show_progress=False)
    return run_dir


@pytest.fixture(scope="session")
def ops():
    """``torch.ops.fields`` from the native build; the tests that use it fail if the build does."""
    from renderers import native

    if not native.enabled():
        pytest.skip("FIELDS_NATIVE=0 forces the reference")
    ops = native.native_ops()
    assert ops is not None, "the native build failed (see the warning); g++ and ninja are required"
    return ops


def devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def needs_device(device: str, ops) -> None:
    if device == "cuda" and not ops.has_cuda():
        pytest.skip("the native build has no CUDA support (torch without CUDA or nvcc missing)")
