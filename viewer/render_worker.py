"""Rendering a model from one browser tab's camera, on that tab's own thread, through its ``render`` (ray
marching for volume fields, splatting for Gaussians: any ``renderers.model.Renderable``).

Each tab gets a `ClientRenderer`: a thread plus a single "latest request" slot. Camera messages overwrite
the slot, so stale requests are dropped, never queued. While the camera moves the thread renders small
previews sized to take about ``PREVIEW_SECONDS``; once it has been still for ``SETTLE_SECONDS`` it refines in
steps (doubling the resolution up to the cap), dropping a refinement whose camera moved meanwhile. While
training runs, an idle view is re-rendered as the field changes, at most ``REFRESH_DUTY`` of the time, so
an open but idle viewer costs training little.

Render threads use one torch thread each (training keeps the rest of the CPU).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from renderers.imaging import depth_image, to_uint8
from renderers.model import Renderable
from scenes.cameras import Cameras
from viewer.camera import image_size, viewer_camera

RenderMode = Literal["RGB", "Depth", "Opacity"]
RENDER_MODES: tuple[RenderMode, ...] = ("RGB", "Depth", "Opacity")

PREVIEW_SECONDS = 0.12  # target time of one preview frame while the camera moves
SETTLE_SECONDS = 0.25  # the camera counts as still after this long without a new pose
MIN_PREVIEW_SIDE = 32
REFRESH_DUTY = 0.1  # while training, idle re-renders use at most this fraction of wall time
MIN_REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class View:
    """A browser camera: viser pose (OpenCV convention), vertical field of view and canvas aspect."""

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov_y: float
    aspect: float

    def usable(self) -> bool:
        """False for what a browser (or anyone on the socket) may send but no camera is: NaN/inf, a zero
        rotation, a field of view outside (0, pi), an aspect ratio that is not positive or absurd."""
        values = (*self.wxyz, *self.position, self.fov_y, self.aspect)
        return (all(math.isfinite(v) for v in values) and sum(v * v for v in self.wxyz) > 1e-12
                and 0 < self.fov_y < math.pi and 1e-3 < self.aspect < 1e3 and max(map(abs, self.position)) < 1e10)


@dataclass
class RenderTarget:
    """What the viewer renders: a model (``render(cams, i, background)``) on the scene's background.

    ``version`` grows while training changes the model, so idle views know to refresh."""

    model: Renderable
    background: torch.Tensor
    version: int = 0

    def image(self, cams: Cameras, mode: RenderMode) -> np.ndarray:
        """Camera 0 of ``cams`` rendered in ``mode`` as uint8 RGB [H, W, 3]."""
        with torch.no_grad():
            out = self.model.render(cams, 0, self.background)
        if mode == "Depth":
            img = depth_image(out["depth"], out["opacity"])
        elif mode == "Opacity":
            img = out["opacity"][..., None].expand(-1, -1, 3)
        else:
            img = out["rgb"]
        return to_uint8(img)


@dataclass(frozen=True)
class _Job:
    serial: int  # request serial it renders (stale when a newer one arrived)
    view: View
    side: int  # longer image side in pixels
    mode: RenderMode
    refinement: bool  # False for previews while moving, which are shown even if slightly stale


class ClientRenderer:
    """Renders the newest view of one client on its own thread and hands images to ``show``."""

    def __init__(self, target: RenderTarget, show: Callable[[np.ndarray], None],
                 settings: Callable[[], tuple[RenderMode, int]], name: str = "viewer-render"):
        self.target, self.show, self.settings = target, show, settings
        self._cond = threading.Condition()
        self._view: View | None = None
        self._serial = 0  # bumped by every request
        self._moved_at = 0.0
        self._done: tuple[int, int] = (-1, 0)  # (serial, side) of the last image shown
        self._shown_version = -1
        self._last_full = (0.0, 0.0)  # (end time, seconds) of the last render at the cap
        self._rays_per_s = 20_000.0  # refined by measurement
        self._stopped = False
        self.frames = 0  # images handed to ``show`` (tests and benchmarks read it)
        self.ignored = 0  # requests refused as unusable views
        self.errors: list[str] = []  # renders or sends that failed (the thread goes on with the next request)
        self.frame_seconds: deque[tuple[int, float]] = deque(maxlen=256)  # (pixels, seconds) of recent renders
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def request(self, view: View, moving: bool = True) -> None:
        """Make ``view`` the one to render; ``moving=False`` (settings changed) skips the preview wait. A view
        that is no camera (NaN ...) is ignored: the tab keeps its last image."""
        if not view.usable():
            self.ignored += 1
            return
        with self._cond:
            if view == self._view:
                return
            self._view = view
            self._serial += 1
            self._moved_at = time.monotonic() if moving else 0.0
            self._cond.notify()

    def invalidate(self) -> None:
        """Render the current view again (the render settings changed)."""
        with self._cond:
            if self._view is not None:
                self._serial += 1
                self._moved_at = 0.0
                self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- scheduling ----------------------------------------------------------------------------------------
    def _preview_side(self, aspect: float, cap: int) -> int:
        pixels = self._rays_per_s * PREVIEW_SECONDS
        side = int(math.sqrt(pixels * max(aspect, 1.0 / aspect)))
        return max(MIN_PREVIEW_SIDE, min(side, cap))

    def _next_job(self) -> _Job | None:
        """The most useful render now, or None to wait (called with the lock held)."""
        if self._view is None:
            return None
        mode, cap = self.settings()
        now = time.monotonic()
        moving = now - self._moved_at < SETTLE_SECONDS
        done_serial, done_side = self._done
        if self._serial != done_serial:  # a new view: quick preview first
            side = self._preview_side(self._view.aspect, cap)
            return _Job(self._serial, self._view, side, mode, refinement=not moving and side == cap)
        if moving:
            return None
        if done_side < cap:  # still: refine step by step
            return _Job(self._serial, self._view, min(2 * done_side, cap), mode, refinement=True)
        end, seconds = self._last_full
        if (self.target.version != self._shown_version
                and now - end >= max(MIN_REFRESH_SECONDS, seconds * (1 - REFRESH_DUTY) / REFRESH_DUTY)):
            return _Job(self._serial, self._view, cap, mode, refinement=True)
        return None

    def _loop(self) -> None:
        torch.set_num_threads(1)
        while True:
            with self._cond:
                if self._stopped:
                    return
                job = self._next_job()
                if job is None:
                    self._cond.wait(0.05)
                    continue
                version = self.target.version
            width, height = image_size(job.view.aspect, job.side)
            tic = time.perf_counter()
            try:
                cams = viewer_camera(np.array(job.view.wxyz), np.array(job.view.position), job.view.fov_y, width,
                                     height)
                img = self.target.image(cams, job.mode)
            except Exception as e:  # noqa: BLE001 - one bad render must not end this tab's thread
                self._failed(job, e)
                continue
            seconds = time.perf_counter() - tic
            self._rays_per_s = 0.5 * self._rays_per_s + 0.5 * width * height / max(seconds, 1e-6)
            self.frame_seconds.append((width * height, seconds))
            with self._cond:
                if self._stopped:
                    return
                if job.refinement and job.serial != self._serial:
                    continue  # the camera moved on: drop this refinement
                self._done = (job.serial, job.side)
                if job.side >= self.settings()[1]:
                    self._shown_version, self._last_full = version, (time.monotonic(), seconds)
            try:
                self.show(img)
            except Exception as e:  # noqa: BLE001 - the tab went away while we rendered
                self._failed(job, e)
                continue
            self.frames += 1

    def _failed(self, job: _Job, e: Exception) -> None:
        """Remember the error and mark the job done, so the same request is not retried in a loop."""
        self.errors.append(f"{type(e).__name__}: {e}")
        with self._cond:
            if job.serial == self._serial:
                self._done = (job.serial, 1 << 30)
