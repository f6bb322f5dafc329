"""The viser web app: a run's field rendered from each browser tab's camera, the training cameras, the scene
box and (on request) world axes, live training stats and Pause / Resume, and export buttons when given an
exporter. Tabs open on a view of the whole scene from outside the training cameras.

It binds 127.0.0.1 unless told otherwise (viser's own default is every interface). It writes files only
through the exporter (``viewer/export_panel.py``), which keeps them in the run's ``exports/`` folder.
Training drives it through `Viewer.on_step`, which the trainer calls after each step outside its clock.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
import viser
from rich.console import Console

from scenes.cameras import Cameras
from viewer.camera import OVERVIEW_FOV, c2w_to_viser, overview, vertical_fov
from viewer.export_panel import ExportPanel, Exporter
from viewer.render_worker import RENDER_MODES, ClientRenderer, RenderMode, RenderTarget, View

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATS_EVERY = 0.5  # seconds between stats updates in the panel
FRUSTUM_SCALE = 0.05  # training-camera frustum size, as a fraction of the cameras' mean distance from the centre
FRUSTUM_LINE_PX = 1.5  # their line width in screen pixels (world-sized lines fill the view near a camera)


class Viewer:
    """A viser server showing one field; live when a trainer calls `on_step`, static otherwise."""

    def __init__(self, target: RenderTarget, cameras: Cameras, aabb: torch.Tensor, *, host: str = "127.0.0.1",
                 port: int = 7007, training: bool = False, max_side: int = 256, title: str = "fields",
                 console: Console | None = None, exporter: Exporter | None = None):
        self.target, self.console = target, console or Console()
        if host not in LOOPBACK:
            self.console.print(f"[yellow]warning:[/yellow] the viewer listens on {host}: anyone who can reach this "
                               "machine can watch the run and pause training. Use --host 127.0.0.1 to keep it local.")
        self.server = viser.ViserServer(host=host, port=port, label=title, verbose=False)
        self.host = host
        self._renderers: dict[int, ClientRenderer] = {}
        self._lock = threading.Lock()
        self._resume = threading.Event()
        self._resume.set()
        # samples/s over the training time since the last stats update
        self._stats_at, self._window_start, self._samples, self._sps = 0.0, None, 0, 0.0
        self._add_scene(cameras, aabb)
        self._add_gui(training, max_side)
        self.exports = ExportPanel(self.server.gui, exporter, one_thread=training) if exporter else None
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.server.get_port()}"

    # -- scene ---------------------------------------------------------------------------------------------
    def _add_scene(self, cams: Cameras, aabb: torch.Tensor) -> None:
        """The scene box, the training cameras (frustums sized to their spread, thin lines), the world axes
        (hidden until the panel's checkbox shows them) and an opening view of the whole scene."""
        scene = self.server.scene
        lo, hi = aabb[0].numpy().astype(np.float64), aabb[1].numpy().astype(np.float64)
        size = float(np.linalg.norm(hi - lo))
        scene.add_box("/scene_box", color=(120, 120, 120), dimensions=tuple(hi - lo), position=tuple((lo + hi) / 2),
                      wireframe=True)
        axes = scene.world_axes  # viser's own /WorldAxes node, hidden by default
        axes.axes_length, axes.axes_radius, axes.visible = 0.1 * size, 0.003 * size, False
        if not len(cams):
            return
        eye, centre, up = overview(cams, aabb)
        spread = float(np.linalg.norm(cams.centers.double().numpy() - centre, axis=-1).mean())
        for i in range(len(cams)):
            wxyz, position = c2w_to_viser(cams.c2w[i].numpy())
            width, height = cams.size(i)
            frustum = scene.add_camera_frustum(f"/train_cameras/{i:03d}", fov=vertical_fov(cams, i),
                                               aspect=width / height, scale=FRUSTUM_SCALE * spread,
                                               thickness=FRUSTUM_LINE_PX, thickness_units="screen",
                                               color=(60, 90, 200), wxyz=wxyz, position=position)
            frustum.on_click(self._jump_to)
        initial = self.server.initial_camera
        initial.position, initial.look_at, initial.up = tuple(eye), tuple(centre), tuple(up)
        initial.fov = OVERVIEW_FOV

    @staticmethod
    def _jump_to(event: viser.SceneNodePointerEvent) -> None:
        """Move the clicking tab's camera onto a training camera."""
        frustum, camera = event.target, event.client.camera
        with event.client.atomic():
            camera.fov = frustum.fov
            camera.wxyz = frustum.wxyz
            camera.position = frustum.position

    # -- gui -----------------------------------------------------------------------------------------------
    def _add_gui(self, training: bool, max_side: int) -> None:
        gui = self.server.gui
        with gui.add_folder("Render"):
            self._mode = gui.add_dropdown("Mode", RENDER_MODES, initial_value="RGB")
            self._max_side = gui.add_slider("Max resolution", min=32, max=1024, step=16, initial_value=max_side,
                                            hint="Longer image side (px) once the camera stops; lower is faster.")
            self._show_axes = gui.add_checkbox("World axes", initial_value=False,
                                               hint="Show the world axes (x red, y green, z blue) at the origin.")
        self._mode.on_update(lambda _: self._invalidate())
        self._max_side.on_update(lambda _: self._invalidate())
        self._show_axes.on_update(lambda _: setattr(self.server.scene.world_axes, "visible", self._show_axes.value))
        with gui.add_folder("Training" if training else "Run"):
            self._stats = gui.add_markdown(self._stats_text({"step": self.target.version}))
            self._pause = gui.add_button("Pause training", icon=viser.Icon.PLAYER_PAUSE) if training else None
        if self._pause is not None:
            self._pause.on_click(lambda _: self._toggle_pause())

    def settings(self) -> tuple[RenderMode, int]:
        """Mode and resolution cap, clamped: GUI values arrive from the browser and are not trusted."""
        mode = self._mode.value if self._mode.value in RENDER_MODES else "RGB"
        side = self._max_side.value
        return mode, int(min(max(side, 32), 1024)) if isinstance(side, (int, float)) and side == side else 256

    def _invalidate(self) -> None:
        with self._lock:
            renderers = list(self._renderers.values())
        for r in renderers:
            r.invalidate()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def pause(self) -> None:
        """Hold training at its next step (the Pause button)."""
        self._resume.clear()
        if self._pause is not None:
            self._pause.label, self._pause.icon = "Resume training", viser.Icon.PLAYER_PLAY

    def resume(self) -> None:
        self._resume.set()
        if self._pause is not None:
            self._pause.label, self._pause.icon = "Pause training", viser.Icon.PLAYER_PAUSE

    def _toggle_pause(self) -> None:
        self.resume() if self.paused else self.pause()

    @staticmethod
    def _stats_text(stats: dict) -> str:
        rows = [("Step", f"{stats['step']}")]
        if "loss" in stats:
            rows += [("Loss", f"{stats['loss']:.5f}"), ("PSNR", f"{stats['psnr']:.2f} dB"),
                     ("Samples/s", f"{stats['samples_per_s']:,.0f}"), ("Elapsed", f"{stats['elapsed']:.1f} s")]
        if stats.get("paused"):
            rows.append(("State", "**paused**"))
        return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])

    # -- clients -------------------------------------------------------------------------------------------
    def _connect(self, client: viser.ClientHandle) -> None:
        renderer = ClientRenderer(self.target, client.scene.set_background_image, self.settings,
                                  name=f"viewer-render-{client.client_id}")
        with self._lock:
            self._renderers[client.client_id] = renderer
        client.camera.on_update(lambda camera: renderer.request(self._view(camera)))
        renderer.request(self._view(client.camera), moving=False)

    def _disconnect(self, client: viser.ClientHandle) -> None:
        with self._lock:
            renderer = self._renderers.pop(client.client_id, None)
        if renderer is not None:
            renderer.stop(timeout=0)  # its daemon thread ends at its next check; viser's callback pool need not wait

    @staticmethod
    def _view(camera: viser.CameraHandle) -> View:
        try:
            aspect = float(camera.aspect)
        except ZeroDivisionError:  # a client that reports a 0-pixel canvas; the view is ignored as unusable
            aspect = float("nan")
        return View(tuple(camera.wxyz.tolist()), tuple(camera.position.tolist()), float(camera.fov), aspect)

    def renderers(self) -> dict[int, ClientRenderer]:
        """The render worker of each connected tab, by client id."""
        with self._lock:
            return dict(self._renderers)

    # -- training hook -------------------------------------------------------------------------------------
    def on_step(self, trainer) -> None:
        """Trainer callback: tell the views the field changed, update the stats, block while paused."""
        self.target.version = trainer.step
        if self._window_start is None:
            self._window_start = trainer.elapsed
        else:
            self._samples += int(trainer.last.get("samples", 0))
        if time.monotonic() - self._stats_at >= STATS_EVERY or self.paused:
            self._publish(trainer)
        if self.paused:
            while not self._resume.wait(0.1):
                pass
            self._publish(trainer)

    def _publish(self, trainer) -> None:
        dt = trainer.elapsed - self._window_start
        if dt > 0:
            self._sps, self._window_start, self._samples = self._samples / dt, trainer.elapsed, 0
        m = trainer.last
        self._stats.content = self._stats_text({"step": trainer.step, "loss": m.get("loss", float("nan")),
                                                "psnr": m.get("psnr", float("nan")), "samples_per_s": self._sps,
                                                "elapsed": trainer.elapsed, "paused": self.paused})
        self._stats_at = time.monotonic()

    def training_finished(self, trainer) -> None:
        """Show the final stats and retire the Pause button."""
        self._publish(trainer)
        if self._pause is not None:
            self._pause.label, self._pause.disabled = "Training finished", True

    # -- lifetime ------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until Ctrl-C, then shut down cleanly."""
        self.console.print(f"Serving the viewer at {self.url} until Ctrl-C")
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._resume.set()
        with self._lock:
            renderers, self._renderers = list(self._renderers.values()), {}
        for r in renderers:  # signal every tab's worker first, then wait: workers stuck sending to closed tabs
            r.stop(timeout=0)  # then cost one join timeout in all, not one each
        for r in renderers:
            r.stop()
        self.server.stop()
