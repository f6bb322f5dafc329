"""The exports the viewer's buttons run: a mesh or a video (on the run's default camera path: an orbit, or the
forward spiral of a forward-facing capture) of a run, saved or still training, written into that run's
``exports/`` folder and nowhere else (every path goes through ``inside_exports``).

Each export works on a copy of the field and occupancy grid taken when it starts, so a run that keeps training
meanwhile yields a consistent result named after the step it was copied at.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rich.progress import Progress

from fields.export import ExportError, inside_exports
from fields.export.mesh import MeshSettings, extract_mesh, write_mesh
from fields.export.region import export_region
from fields.export.video import render_video, run_path
from fields.run.scene_record import SceneRecord
from renderers.model import VolumeModel
from scenes.camera_paths import resized

if TYPE_CHECKING:
    from fields.run.folder import LoadedRun


@dataclass
class RunExporter:
    """A run's field with what exporting it needs; ``step`` tells the step the field is at now."""

    run_dir: Path
    model: VolumeModel
    record: SceneRecord  # the training cameras (mesh visibility, video path), background and where content lies
    step: Callable[[], int]

    @classmethod
    def for_run(cls, run: "LoadedRun") -> "RunExporter":
        return cls(run.path, run.model, run.record, lambda: run.step)

    def _snapshot(self) -> tuple[VolumeModel, int]:
        """A copy of the model at the current step (training goes on while the export runs)."""
        step = self.step()
        model = copy.deepcopy(self.model)
        model.field.eval()
        return model, step

    def mesh(self, resolution: int, fmt: str, progress: Progress) -> Path:
        """A mesh with the default settings at ``resolution`` as ``exports/mesh-step-N.<fmt>``."""
        model, step = self._snapshot()
        settings = MeshSettings(resolution=resolution, region=export_region(model, self.record))
        mesh, _ = extract_mesh(model, settings, self.record.cameras, progress=progress)
        path = inside_exports(self.run_dir, f"mesh-step-{step:06d}.{fmt}")
        write_mesh(mesh, path)
        return path

    def video(self, height: int, seconds: float, progress: Progress, fps: float = 30.0) -> Path:
        """An RGB video on the run's default path (``run_path``'s auto), ``height`` pixels high, as
        ``exports/video-<path>-step-N.mp4``."""
        frames = round(seconds * fps)
        if frames < 1:
            raise ExportError(f"{seconds} s at {fps:g} fps gives no frames")
        model, step = self._snapshot()
        cam_path, kind = run_path("auto", model, self.record, frames)
        cams = resized(cam_path.cameras, height)
        path = inside_exports(self.run_dir, f"video-{kind}-step-{step:06d}.mp4")
        render_video(model, cams, fps, self.record.background, {"rgb": path}, progress=progress)
        return path
