"""The exports the viewer's buttons run: a mesh or an orbit video of a run, saved or still training, written
into that run's ``exports/`` folder and nowhere else (every path goes through ``inside_exports``).

Each export works on a copy of the field and occupancy grid taken when it starts, so a run that keeps training
meanwhile yields a consistent result named after the step it was copied at.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rich.progress import Progress

from fields.backends.base import Field
from fields.export import ExportError, inside_exports
from scenes.camera_paths import derived_path, resized
from fields.export.mesh import MeshSettings, extract_mesh, write_mesh
from fields.export.video import render_video
from renderers.occupancy import OccupancyGrid
from renderers.render import RenderConfig
from scenes.cameras import Cameras

if TYPE_CHECKING:
    from fields.run.folder import LoadedRun
    from fields.training.trainer import Trainer


@dataclass
class RunExporter:
    """A run's field with what exporting it needs; ``step`` tells the step the field is at now."""

    run_dir: Path
    field: Field
    grid: OccupancyGrid
    render: RenderConfig
    cameras: Cameras  # the training cameras (mesh visibility, orbit path)
    background: tuple[float, float, float]
    step: Callable[[], int]

    @classmethod
    def for_run(cls, run: "LoadedRun") -> "RunExporter":
        return cls(run.path, run.field, run.grid, run.config.render, run.split("train").cameras,
                   tuple(run.config.scene.background), lambda: run.step)

    @classmethod
    def for_trainer(cls, trainer: "Trainer") -> "RunExporter":
        """Exports of a run while it trains (the field at the step an export starts)."""
        return cls(trainer.run_dir, trainer.field, trainer.grid, trainer.cfg.render, trainer.data.cameras,
                   tuple(trainer.data.background), lambda: trainer.step)

    def _snapshot(self) -> tuple[Field, OccupancyGrid, int]:
        step = self.step()
        return copy.deepcopy(self.field).eval(), copy.deepcopy(self.grid), step

    def mesh(self, resolution: int, fmt: str, progress: Progress) -> Path:
        """A mesh with the default settings at ``resolution`` as ``exports/mesh-step-N.<fmt>``."""
        field, grid, step = self._snapshot()
        mesh, _ = extract_mesh(field, grid, self.render, MeshSettings(resolution=resolution), self.cameras,
                               progress=progress)
        path = inside_exports(self.run_dir, f"mesh-step-{step:06d}.{fmt}")
        write_mesh(mesh, path)
        return path

    def orbit_video(self, height: int, seconds: float, progress: Progress, fps: float = 30.0) -> Path:
        """An RGB orbit about the training cameras' centre, ``height`` pixels high, as
        ``exports/video-orbit-step-N.mp4``."""
        frames = round(seconds * fps)
        if frames < 1:
            raise ExportError(f"{seconds} s at {fps:g} fps gives no frames")
        field, grid, step = self._snapshot()
        cams = resized(derived_path(self.cameras, "orbit", frames).cameras, height)
        path = inside_exports(self.run_dir, f"video-orbit-step-{step:06d}.mp4")
        render_video(field, grid, self.render, cams, fps, self.background, {"rgb": path}, progress=progress)
        return path
