"""The viewer's Export folder: buttons that export a mesh or a video of the run (on its default camera path), with a few settings,
progress in the panel and the written path when done.

The panel only drives an `Exporter` handed in by the application (``fields/export/run_exports.py``), which
writes into the run's ``exports/`` folder and nowhere else. One export runs at a time on its own thread, with
both buttons disabled meanwhile (a click that still arrives is ignored); training carries on.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Protocol

import torch
import viser
from rich.progress import Progress

MESH_FORMATS = ("ply", "obj", "glb")
PROGRESS_EVERY = 0.25  # seconds between progress updates in the panel


class Exporter(Protocol):
    """Runs the exports; each returns the path it wrote and reports its stages as tasks of ``progress``."""

    def mesh(self, resolution: int, fmt: str, progress: Progress) -> Path: ...

    def video(self, height: int, seconds: float, progress: Progress) -> Path: ...


class PanelProgress(Progress):
    """A rich Progress that prints nothing and calls ``on_change(stage, fraction)`` at most every
    ``PROGRESS_EVERY`` seconds as the exporter's tasks advance."""

    def __init__(self, on_change: Callable[[str, float], None]):
        super().__init__(disable=True)
        self._on_change, self._last = on_change, 0.0

    def update(self, task_id, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._changed(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._changed(task_id)

    def _changed(self, task_id) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY:
            self._last = now
            task = self._tasks[task_id]
            self._on_change(task.description, task.completed / task.total if task.total else 0.0)


class ExportPanel:
    """The Export folder of the GUI; ``one_thread`` keeps an export to one CPU thread (while training)."""

    def __init__(self, gui: viser.GuiApi, exporter: Exporter, one_thread: bool):
        self.exporter, self.one_thread = exporter, one_thread
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None
        with gui.add_folder("Export"):
            self.mesh_resolution = gui.add_slider("Mesh resolution", min=32, max=512, step=32, initial_value=256,
                                                  hint="Grid samples per side of the scene box.")
            self.mesh_format = gui.add_dropdown("Mesh format", MESH_FORMATS, initial_value="ply")
            self.mesh_button = gui.add_button("Export mesh", icon=viser.Icon.CUBE)
            self.video_height = gui.add_slider("Video height", min=32, max=1024, step=16, initial_value=200,
                                               hint="Frame height in pixels; the width follows the training images.")
            self.video_seconds = gui.add_number("Video seconds", initial_value=6.0, min=0.1, max=120.0, step=0.1)
            self.video_button = gui.add_button("Export video", icon=viser.Icon.VIDEO,
                                               hint="An orbit, or the forward spiral of a forward-facing capture.")
            self.progress = gui.add_progress_bar(0.0, visible=False)
            self.status = gui.add_markdown("Exports go to the run's `exports/` folder.")
        self.mesh_button.on_click(lambda _: self.start("mesh", lambda p: self.exporter.mesh(
            int(self.mesh_resolution.value), str(self.mesh_format.value), p)))
        self.video_button.on_click(lambda _: self.start("video", lambda p: self.exporter.video(
            int(self.video_height.value), float(self.video_seconds.value), p)))

    @property
    def running(self) -> bool:
        return self._busy.locked()

    def start(self, what: str, job: Callable[[Progress], Path]) -> bool:
        """Run ``job`` on a background thread unless an export is running already; True if started."""
        if not self._busy.acquire(blocking=False):
            return False
        self.mesh_button.disabled = self.video_button.disabled = True
        self.progress.value, self.progress.visible = 0.0, True
        self.status.content = f"Exporting {what}..."
        self._thread = threading.Thread(target=self._run, args=(what, job), name="viewer-export", daemon=True)
        self._thread.start()
        return True

    def _run(self, what: str, job: Callable[[Progress], Path]) -> None:
        if self.one_thread:
            torch.set_num_threads(1)

        def show(stage: str, fraction: float) -> None:
            self.progress.value = round(100 * min(max(fraction, 0.0), 1.0), 1)
            self.status.content = f"Exporting {what}: {stage} {fraction:.0%}"

        try:
            path = job(PanelProgress(show))
            self.status.content = f"Wrote {what}: `{path}`"
        except Exception as e:  # shown in the panel: the viewer and training carry on
            self.status.content = f"Export of {what} failed: {e}"
        finally:
            self.progress.visible = False
            self.mesh_button.disabled = self.video_button.disabled = False
            self._busy.release()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running export to finish."""
        if self._thread is not None:
            self._thread.join(timeout)
