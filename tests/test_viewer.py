"""The web viewer with real parts: a viser server on a trained tiny run, driven over its websocket protocol and
from headless Debian chromium."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from rich.console import Console

from fields.cli import live_exporter, run_viewer
from fields.export.run_exports import RunExporter
from fields.run.folder import load_run
from scenes.cameras import image_rays
from viewer import Viewer
from viewer.camera import c2w_to_viser, viewer_camera, viser_to_c2w
from ws_client import ViserTab

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_run(trained_run)


@pytest.fixture
def viewer(loaded):
    v = run_viewer(loaded, port=free_port(), max_side=48, console=Console(file=io.StringIO()))
    yield v
    v.close()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0**2
    return -10 * math.log10(max(mse, 1e-12))


# -- camera conventions ----------------------------------------------------------------------------------------
def test_viser_pose_maps_to_opengl_camera():
    # A viser (OpenCV) camera at +3x looking at the origin with +z up: forward = -x, down = -z, right = +y.
    rot = np.stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]], axis=1)
    import viser.transforms as vtf

    wxyz = vtf.SO3.from_matrix(rot).wxyz
    cams = viewer_camera(wxyz, np.array([3.0, 0.0, 0.0]), fov_y=0.8, width=5, height=3)
    _, dirs = image_rays(cams, 0)
    assert torch.allclose(dirs[1, 2], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)  # centre pixel looks at origin
    assert dirs[0, 2, 2] > 0 and dirs[2, 2, 2] < 0  # top row looks up (+z), bottom row down
    assert dirs[1, 4, 1] > 0 and dirs[1, 0, 1] < 0  # right column looks towards +y
    c2w = viser_to_c2w(wxyz, np.array([3.0, 0.0, 0.0]))
    back_wxyz, back_pos = c2w_to_viser(c2w)
    assert np.allclose(viser_to_c2w(back_wxyz, back_pos), c2w, atol=1e-9)


# -- websocket clients -----------------------------------------------------------------------------------------
def final_image(tab: ViserTab, side: int, timeout: float = 60.0) -> np.ndarray:
    """Images until one at the resolution cap arrives (previews come first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        img = tab.next_image(deadline - time.monotonic())
        if img is not None and max(img.shape[:2]) == side:
            return img
    raise AssertionError(f"no {side}px image within {timeout} s")


def test_viewer_renders_the_field_from_the_tab_camera(viewer, loaded):
    """A tab at a training camera's pose gets the image the run's model renders for that camera (JPEG aside)."""
    cams = loaded.split("train").cameras
    width, height = cams.size(0)
    fov_y = 2 * math.atan(0.5 * height / cams.fy[0].item())
    tab = ViserTab(viewer.url, width=width, height=height, fov_y=fov_y)
    try:
        tab.send_camera(cams.c2w[0].numpy())
        img = final_image(tab, 48)
        assert img.shape == (48, 48, 3)
        bg = torch.tensor(loaded.config.scene.background)
        direct = loaded.model.render(cams.scaled(48 / width), 0, bg)["rgb"]
        expected = (direct.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        assert psnr(img, expected) > 30
        assert img.std() > 5  # not a blank frame

        # Moving the camera (another training view) yields a new, different image.
        tab.send_camera(cams.c2w[len(cams) // 2].numpy())
        moved = final_image(tab, 48)
        assert psnr(moved, img) < 25
    finally:
        tab.close()


def test_two_tabs_have_their_own_cameras(viewer, loaded):
    cams = loaded.split("train").cameras
    tabs = [ViserTab(viewer.url, 64, 64), ViserTab(viewer.url, 64, 64)]
    try:
        for tab, i in zip(tabs, (0, len(cams) // 3)):
            tab.send_camera(cams.c2w[i].numpy())
        a, b = final_image(tabs[0], 48), final_image(tabs[1], 48)
        assert len(viewer.renderers()) == 2
        assert psnr(a, b) < 25
        tabs[1].close()
        deadline = time.monotonic() + 10
        while len(viewer.renderers()) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(viewer.renderers()) == 1
    finally:
        for tab in tabs:
            tab.close()


def test_the_viewer_opens_on_the_whole_scene_with_thin_frustums_and_axes_on_request(viewer, loaded):
    """A tab opens outside the training cameras' sphere looking at the scene centre (not inside a camera's
    frustum), frustums are small and drawn with thin screen-space lines, and the world axes stay hidden until
    the panel's checkbox shows them."""
    from scenes.camera_paths import scene_frame

    cams = loaded.record.cameras
    frame = scene_frame(cams)
    centre, distances = frame.centre.numpy(), (cams.centers - frame.centre).norm(dim=-1).numpy()
    tab = ViserTab(viewer.url, 64, 64)
    try:
        assert tab.wait_gui(lambda t: {"position", "look_at", "up", "fov"} <= set(t.camera) and "/WorldAxes" in t.scene
                            and any(n.startswith("/train_cameras/") for n in t.scene), 10), (tab.camera, tab.scene)
        eye, target = np.array(tab.camera["position"]), np.array(tab.camera["look_at"])
        assert np.linalg.norm(eye - centre) > 1.2 * distances.max()  # outside the sphere of the training cameras
        assert np.allclose(target, centre, atol=1e-4)
        lo, hi = loaded.grid.aabb.numpy()
        corners = np.stack(np.meshgrid(*zip(lo, hi), indexing="ij"), -1).reshape(-1, 3)
        rays = (corners - eye) / np.linalg.norm(corners - eye, axis=-1, keepdims=True)
        view = (target - eye) / np.linalg.norm(target - eye)
        assert (np.arccos(rays @ view) < tab.camera["fov"] / 2).all()  # the whole scene box is in view
        assert np.dot(tab.camera["up"], frame.up.numpy()) > 0.99 and np.dot(eye - centre, frame.up.numpy()) > 0
        frustums = {n: p for n, p in tab.scene.items() if n.startswith("/train_cameras/")}
        assert len(frustums) == len(cams)
        for name, props in frustums.items():
            assert props["thickness_units"] == "screen" and props["thickness"] <= 2, props
            assert props["scale"] <= 0.1 * distances.mean(), props  # small beside the camera spread
        # the opening view is not inside any frustum: every camera is farther from it than its frustum's size
        scale = max(p["scale"] for p in frustums.values())
        assert (np.linalg.norm(cams.centers.numpy() - eye, axis=-1) > 5 * scale).all()

        assert not tab.scene["/WorldAxes"]["visible"]
        tab.send_camera(cams.c2w[0].numpy())  # viser takes GUI input after a camera
        assert wait_for(lambda: viewer.server.get_clients(), 10, 0.05)
        tab.set_value("World axes", True)
        assert tab.wait_gui(lambda t: t.scene["/WorldAxes"]["visible"], 10)
        assert tab.scene["/WorldAxes"]["axes_length"] == pytest.approx(0.1 * float((loaded.grid.aabb[1] -
                                                                                    loaded.grid.aabb[0]).norm()))
        tab.set_value("World axes", False)
        assert tab.wait_gui(lambda t: not t.scene["/WorldAxes"]["visible"], 10)
    finally:
        tab.close()


# -- bind address ----------------------------------------------------------------------------------------------
def non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_default_bind_is_loopback_and_exposing_warns(viewer, loaded):
    assert viewer.server.get_host() == "127.0.0.1"
    ip = non_loopback_ip()
    if ip is not None:
        with pytest.raises(OSError):
            socket.create_connection((ip, viewer.server.get_port()), timeout=2).close()
    from fields.cli import Train, View

    assert View.host == "127.0.0.1" and Train.host == "127.0.0.1"
    out = io.StringIO()
    exposed = run_viewer(loaded, host="0.0.0.0", port=free_port(), console=Console(file=out, width=200))
    try:
        assert "warning" in out.getvalue() and "0.0.0.0" in out.getvalue()
    finally:
        exposed.close()


# -- pausing training ------------------------------------------------------------------------------------------
def test_pause_holds_training_and_resume_finishes_it(trained_run, tmp_path):
    from fields.training.trainer import Trainer
    from viewer import RenderTarget

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    trainer = Trainer(load_run(run).config, run, Console(file=io.StringIO()))
    trainer.resume()
    start = trainer.step
    trainer.cfg.train.max_steps = start + 4
    target = RenderTarget(trainer.model, torch.ones(3), trainer.step)
    v = Viewer(target, trainer.data.cameras, trainer.data.aabb, port=free_port(), training=True,
               console=Console(file=io.StringIO()))
    try:
        v.pause()
        thread = threading.Thread(target=trainer.train, kwargs={"callbacks": [v.on_step], "show_progress": False})
        thread.start()
        time.sleep(3.0)
        assert trainer.step == start + 1  # one step, then held in the callback
        assert "paused" in v._stats.content
        v.resume()
        thread.join(60)
        assert not thread.is_alive() and trainer.step == start + 4
        assert target.version == start + 4
    finally:
        v.resume()
        v.close()


# -- export buttons --------------------------------------------------------------------------------------------
def written_path(tab: ViserTab, status: str, what: str) -> Path | None:
    text = tab.gui[status]["_markdown"]
    return Path(text.split("`")[1]) if text.startswith(f"Wrote {what}") else None


def test_export_buttons_write_a_mesh_and_a_video_into_the_run_folder(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("exports"))
    before = sorted(p.name for p in run_dir.iterdir())  # other tests may have evaluated the shared run
    run = load_run(run_dir)
    v = run_viewer(run, port=free_port(), max_side=32, console=Console(file=io.StringIO()),
                   exporter=RunExporter.for_run(run))
    tab = ViserTab(v.url, 32, 32)
    try:
        tab.send_camera(run.split("train").cameras.c2w[0].numpy())  # viser takes GUI input after a camera
        assert wait_for(lambda: v.server.get_clients(), 10, 0.05)
        assert tab.wait_gui(lambda t: any(str(p.get("_markdown", "")).startswith("Exports go to")
                                          for p in t.gui.values()), 10)
        status = next(u for u, p in tab.gui.items() if str(p.get("_markdown", "")).startswith("Exports go to"))
        mesh_button, video_button = tab.find("Export mesh"), tab.find("Export video")

        tab.set_value("Mesh resolution", 64)
        tab.set_value("Mesh format", "glb")
        tab.click("Export mesh")
        assert tab.wait_gui(lambda t: written_path(t, status, "mesh"), 120), tab.gui[status]
        mesh_path = written_path(tab, status, "mesh")
        assert mesh_path.parent == run_dir.resolve() / "exports" and mesh_path.suffix == ".glb"
        mesh = trimesh.load(mesh_path, force="mesh")
        assert len(mesh.faces) > 100 and mesh.visual.vertex_colors[:, :3].std() > 5
        updates = [u for uuid, u in tab.gui_updates if uuid == mesh_button]
        assert {"disabled": True} in updates and not tab.gui[mesh_button]["disabled"]  # disabled while it ran
        assert any(u.get("visible") for uuid, u in tab.gui_updates if tab.gui[uuid]["type"] == "GuiProgressBarMessage")

        tab.set_value("Video height", 32)
        tab.set_value("Video seconds", 2.0)
        tab.click("Export video")
        assert tab.wait_gui(lambda t: t.gui[video_button]["disabled"], 30)
        tab.click("Export mesh")  # ignored while the video runs
        assert tab.wait_gui(lambda t: written_path(t, status, "video"), 120), tab.gui[status]
        video_path = written_path(tab, status, "video")
        assert video_path.parent == run_dir.resolve() / "exports"
        assert iio.imread(video_path).shape == (60, 32, 32, 3)  # 2 s at 30 fps
        time.sleep(1.0)
        assert sorted((run_dir / "exports").iterdir()) == sorted([mesh_path, video_path])
        assert sorted(p.name for p in run_dir.iterdir()) == sorted(before + ["exports"])
    finally:
        tab.close()
        v.close()


def test_a_failed_export_is_shown_and_the_buttons_come_back():
    import viser

    from fields.export import ExportError
    from viewer.export_panel import ExportPanel

    server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
    try:
        panel = ExportPanel(server.gui, exporter=None, one_thread=False)

        def fail(progress):
            progress.update(progress.add_task("density", total=4), completed=2)
            raise ExportError("no surface: the density never crosses the threshold")

        assert panel.start("mesh", fail)
        panel.join(10)
        assert panel.status.content == "Export of mesh failed: no surface: the density never crosses the threshold"
        assert not panel.running and not panel.mesh_button.disabled and not panel.video_button.disabled
        assert not panel.progress.visible
    finally:
        server.stop()


def test_training_carries_on_while_the_viewer_exports(trained_run, tmp_path):
    from fields.training.trainer import Trainer
    from viewer import RenderTarget

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("exports"))
    trainer = Trainer(load_run(run).config, run, Console(file=io.StringIO()))
    trainer.resume()
    start = trainer.step
    trainer.cfg.train.max_steps = start + 60
    target = RenderTarget(trainer.model, torch.ones(3), trainer.step)
    v = Viewer(target, trainer.data.cameras, trainer.data.aabb, port=free_port(), training=True,
               console=Console(file=io.StringIO()), exporter=live_exporter(trainer))
    thread = threading.Thread(target=trainer.train, kwargs={"callbacks": [v.on_step], "show_progress": False})
    try:
        thread.start()
        assert wait_for(lambda: trainer.step > start + 2, 60, 0.05)
        exporter, steps = v.exports.exporter, []
        assert v.exports.start("mesh", lambda p: (steps.append(trainer.step), exporter.mesh(48, "ply", p),
                                                  steps.append(trainer.step))[1])
        assert not v.exports.start("mesh", lambda p: exporter.mesh(48, "obj", p))  # one export at a time
        v.exports.join(120)
        assert v.exports.status.content.startswith("Wrote mesh"), v.exports.status.content
        assert steps[1] > steps[0]  # training advanced while the mesh was exported
        (mesh,) = (run / "exports").iterdir()
        assert steps[0] <= int(mesh.stem.split("-")[-1]) <= steps[1]  # named after the step it copied
        assert len(trimesh.load(mesh).faces) > 100
        thread.join(120)
        assert trainer.step == start + 60
    finally:
        thread.join(120)
        v.close()


# -- the command line in a browser -----------------------------------------------------------------------------
class Chromium:
    """Headless Debian chromium driven over the DevTools protocol."""

    def __init__(self, width: int = 800, height: int = 600):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2))
                page = next(p for p in pages if p["type"] == "page")
                break
            except (OSError, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    self.close()
                    raise
                time.sleep(0.2)
        from websockets.sync.client import connect

        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10)
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def screenshot(self, attempts: int = 20) -> np.ndarray:
        """A PNG screenshot of the viewport; retried while a navigation is still attaching the page."""
        for attempt in range(attempts):
            try:
                data = self.call("Page.captureScreenshot", format="png")["data"]
                return iio.imread(base64.b64decode(data))[..., :3]
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5)

    def close(self) -> None:
        if hasattr(self, "ws"):
            self.ws.close()
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


def rendered_fraction(shot: np.ndarray) -> float:
    """Fraction of the central area (clear of the control panel and notifications) that is neither white
    page nor thin overlay: the procedural scene's shaded solids are well below white."""
    h, w = shot.shape[:2]
    centre = shot[int(0.3 * h):int(0.8 * h), int(0.25 * w):int(0.58 * w)].astype(np.float32)
    return float((centre.mean(-1) < 200).mean())


def wait_for(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (scripts/setup.sh installs it)")
def test_fields_view_in_headless_chromium_then_ctrl_c(trained_run):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1")  # SIGABRT on a hang prints every stack
    proc = subprocess.Popen([sys.executable, "-m", "fields.cli", "view", str(trained_run), "--port", str(port),
                             "--max-resolution", "64"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            # as a terminal starts it: a suite run in the background of a non-interactive shell
                            # inherits SIGINT ignored, and then Ctrl-C could not reach `fields view` at all
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    browser = None
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: any(f"Serving the viewer at {url}" in ln for ln in lines), 60, 0.1), lines
        browser = Chromium()
        browser.call("Page.navigate", url=url)
        shots: list[np.ndarray] = []

        ok = wait_for(lambda: shots.append(browser.screenshot()) or rendered_fraction(shots[-1]) > 0.2, 60, 1.0)
        assert ok, f"no rendered content on the page (fraction {rendered_fraction(shots[-1]):.3f})"

        # The same page from a bare viser server (no field rendered) fails the check: it is not the empty page.
        import viser

        bare = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
        try:
            browser.call("Page.navigate", url=f"http://127.0.0.1:{bare.get_port()}")
            time.sleep(4.0)
            assert rendered_fraction(browser.screenshot()) < 0.05
        finally:
            bare.stop()
    finally:
        if browser is not None:
            browser.close()
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # the fault handler writes each thread's stack, then the process ends
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            time.sleep(0.5)  # let the reader thread take the last lines
            pytest.fail("`fields view` did not exit within 30 s of Ctrl-C; its output:\n" + "".join(lines))
    output = "".join(lines)
    assert rc == 0, output
    assert "Traceback" not in output, output
