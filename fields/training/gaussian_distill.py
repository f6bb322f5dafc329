"""Field -> Gaussians: seed 3-D Gaussians from a trained radiance field and optimise them (issue 8).

Seeds are the points where training rays of the teacher become opaque (``renderers.surface_points``: the
expected depth of rays at least ``min_opacity`` opaque), with the teacher's colour there as the SH DC term and
the spacing of neighbouring seeds as the size. They are then trained like any gaussians run, on the training
images plus ``teacher_views`` extra views along a spiral around the training cameras that the teacher renders
once up front (as straight RGBA, so random backgrounds still apply). The result is a normal run folder.
``distill_to_gaussians`` is the single entry point (``fields distill --student gaussians``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from rich.console import Console
from rich.progress import Progress

from fields.backends.gaussians import GaussiansConfig
from fields.backends.gaussians.field import initial_gaussians, neighbour_spacing
from fields.run.config import RunConfig, TrainConfig
from fields.run.folder import LoadedRun
from fields.run.scene_record import write_scene_record
from fields.training.trainer import Trainer
from renderers.surface_points import surface_points
from scenes import Cameras, SceneSplit
from scenes.camera_paths import derived_path
from scenes.images import Images
from scenes.scene import to_uint8
from scenes.undistort import undistorted


def seed_points(teacher: LoadedRun, num_points: int, min_opacity: float = 0.95,
                show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points [N, 3] where the teacher's training rays turn opaque, their colours [N, 3] and sizes [N]."""
    points, colors = surface_points(teacher.model, teacher.record.cameras, num_points, min_opacity,
                                    show_progress=show_progress)
    points = torch.from_numpy(points).float()
    return points, torch.from_numpy(colors).float(), neighbour_spacing(points)


@torch.no_grad()
def teacher_views(teacher: LoadedRun, n: int, show_progress: bool = True) -> SceneSplit:
    """``n`` views along a spiral around the training cameras, rendered by the teacher as straight RGBA."""
    train = teacher.record  # cameras, box and background: no images needed
    cams = derived_path(train.cameras, "spiral", n).cameras
    images = []
    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task("teacher views", total=n)
        for i in range(n):
            out = teacher.model.render(cams, i, torch.zeros(3))
            alpha = out["opacity"][..., None]
            images.append(to_uint8(torch.cat([(out["rgb"] / alpha.clamp_min(1e-6)).clamp(0, 1), alpha], -1)))
            bar.advance(task)
    return SceneSplit(train.name, "teacher", cams, Images.stack(images), train.aabb, train.background)


def joined(a: SceneSplit, b: SceneSplit) -> SceneSplit:
    """The views of ``a`` followed by those of ``b`` (each at its own size; missing distortion counts as none, a
    split without masks keeps every pixel where the other has masks)."""
    masks = None
    if a.masks is not None or b.masks is not None:
        masks = Images.cat([s.masks if s.masks is not None else kept_all(s.images) for s in (a, b)])
    return SceneSplit(a.name, a.split, Cameras.cat([a.cameras, b.cameras]), Images.cat([a.images, b.images]),
                      a.aabb, a.background, masks=masks)


def kept_all(images: Images) -> Images:
    """Masks that keep every pixel of ``images``."""
    return Images(torch.ones(len(images.pixels), dtype=torch.bool), images.widths, images.heights)


def distill_to_gaussians(teacher: LoadedRun, run_dir: Path, *, field_config: GaussiansConfig | None = None,
                         train: TrainConfig | None = None, num_points: int = 50_000, min_opacity: float = 0.95,
                         n_teacher_views: int = 50, console: Console | None = None, show_progress: bool = True,
                         callbacks: Sequence[Callable[[Trainer], None]] = ()) -> Path:
    """Train a gaussians run in ``run_dir`` seeded from ``teacher`` (see the module docstring); returns the
    folder, which ``fields.run.folder.load_run``, ``fields eval`` and ``fields export splats`` read like any run.
    Resuming it trains on the training images only (the teacher's views are not stored). ``callbacks`` run after
    each step, as in ``Trainer.train``."""
    console = console or Console()
    cfg = RunConfig(scene=teacher.config.scene, field_config=field_config or GaussiansConfig(),
                    render=teacher.config.render, train=train or TrainConfig(), capture=teacher.config.capture,
                    grid_resolution=teacher.grid.resolution)
    points, colors, sizes = seed_points(teacher, num_points, min_opacity, show_progress)
    console.print(f"Seeded {len(points)} Gaussians from {teacher.path} (step {teacher.step})")
    train_split = data = teacher.split("train")
    if n_teacher_views > 0:
        # the teacher's views are pinhole: the training images join them undistorted, as the Gaussians train on them
        data = joined(undistorted(data), teacher_views(teacher, n_teacher_views, show_progress))
    trainer = Trainer(cfg, run_dir, console, data=data)
    trainer.field.set_gaussians(initial_gaussians(trainer.field.aabb, cfg.field_config, points, colors, sizes))
    trainer.grid.load_state_dict(teacher.grid.state_dict())  # where the teacher found content
    trainer.train(callbacks=list(callbacks), show_progress=show_progress)
    write_scene_record(run_dir, train_split)  # the scene's cameras for view/export, not the added spiral views
    return Path(run_dir)
