"""A minimal client for viser's websocket protocol: it stands in for a browser tab, sending camera poses and
GUI input (button clicks, slider values) and receiving the background images the viewer renders and the state
of the GUI. Tests and `scripts/bench_viewer.py` drive the viewer with it; a real browser is driven by the
headless-chromium test.

Wire format (viser 1.x, ``viser/infra/_infra.py``): the client sends plain msgpack dicts with a ``type`` key;
the server sends windows of messages as ``[u64 msgpack size][u64 zstd size][zstd(msgpack)][aligned raw
buffers]``. The websocket subprotocol names the viser version, which must match the server's.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import imageio.v3 as iio
import msgspec
import numpy as np
import viser
import zstandard

from websockets.sync.client import ClientConnection, connect

from viewer.camera import c2w_to_viser


# The server's camera messages: the key each sets in ``ViserTab.camera`` and the message field holding it.
CAMERA_MESSAGES = {"SetCameraPositionMessage": ("position", "position"),
                   "SetCameraLookAtMessage": ("look_at", "look_at"),
                   "SetCameraUpDirectionMessage": ("up", "position"), "SetCameraFovMessage": ("fov", "fov")}


def decode_window(frame: bytes) -> list[dict]:
    """The messages of one server frame (binary buffers left as placeholders)."""
    compressed_size = int.from_bytes(frame[8:16], "little")
    inner = zstandard.ZstdDecompressor().decompress(frame[16:16 + compressed_size],
                                                   max_output_size=int.from_bytes(frame[:8], "little"))
    return list(msgspec.msgpack.decode(inner)["messages"])


class ViserTab:
    """One simulated browser tab connected to a viser server.

    ``gui`` holds the GUI components the server created, by uuid (their props, ``type`` and ``value``, kept
    up to date from the server's updates); ``gui_updates`` is every update received, in order. ``scene`` holds
    the scene nodes by name (``type``, props and ``visible``) and ``camera`` the camera the server set
    (``position``, ``look_at``, ``up``, ``fov``)."""

    def __init__(self, url: str, width: int = 320, height: int = 240, fov_y: float = 0.7):
        self.width, self.height, self.fov_y = width, height, fov_y
        self.gui: dict[str, dict[str, Any]] = {}
        self.gui_updates: list[tuple[str, dict[str, Any]]] = []
        self.scene: dict[str, dict[str, Any]] = {}
        self.camera: dict[str, Any] = {}
        ws_url = url.replace("http://", "ws://")
        self.ws: ClientConnection = connect(ws_url, subprotocols=[f"viser-v{viser.__version__}"],
                                            max_size=64 * 1024 * 1024, compression=None, open_timeout=10)

    def _receive(self, timeout: float) -> list[dict] | None:
        """The messages of the next server frame (the GUI state updated from them), or None on timeout."""
        try:
            messages = decode_window(self.ws.recv(timeout=timeout))
        except TimeoutError:
            return None
        for m in messages:
            if m["type"] == "GuiUpdateMessage":
                self.gui_updates.append((m["uuid"], m["updates"]))
                if m["uuid"] in self.gui:
                    self.gui[m["uuid"]].update(m["updates"])
            elif m["type"].startswith("Gui") and isinstance(m.get("props"), dict) and "uuid" in m:
                self.gui[m["uuid"]] = {**m["props"], "type": m["type"], "value": m.get("value")}
            elif m["type"] in CAMERA_MESSAGES:
                key, field = CAMERA_MESSAGES[m["type"]]
                self.camera[key] = m[field]
            elif "name" in m and isinstance(m.get("props"), dict):
                self.scene[m["name"]] = {**m["props"], "type": m["type"], "visible": True}
            elif m["type"] == "SetSceneNodeVisibilityMessage" and m["name"] in self.scene:
                self.scene[m["name"]]["visible"] = m["visible"]
            elif m["type"] == "SceneNodeUpdateMessage" and m["name"] in self.scene:
                self.scene[m["name"]].update(m["updates"])
        return messages

    def find(self, label: str) -> str:
        """The uuid of the GUI component labelled ``label``."""
        for uuid, props in self.gui.items():
            if props.get("label") == label:
                return uuid
        raise KeyError(f"no GUI component labelled {label!r} (have {[p.get('label') for p in self.gui.values()]})")

    def set_value(self, label: str, value: Any) -> None:
        """Change an input's value as a user would (a button's click is ``True``). viser ignores GUI input
        from a tab until it has sent its first camera."""
        self.ws.send(msgspec.msgpack.encode({"type": "GuiUpdateMessage", "uuid": self.find(label),
                                             "updates": {"value": value}}))

    def click(self, label: str) -> None:
        self.set_value(label, True)

    def wait_gui(self, predicate: Callable[["ViserTab"], bool], timeout: float) -> bool:
        """Receive until ``predicate(self)`` holds (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if (left := deadline - time.monotonic()) <= 0:
                return False
            self._receive(left)
        return True

    def send_camera(self, c2w: np.ndarray, look_at: np.ndarray = np.zeros(3)) -> None:
        """Report the tab's camera as an OpenGL camera-to-world pose (converted to viser's convention)."""
        wxyz, position = c2w_to_viser(c2w)
        msg = {"type": "ViewerCameraMessage", "wxyz": [float(v) for v in wxyz],
               "position": [float(v) for v in position], "fov": self.fov_y, "near": 0.01, "far": 1000.0,
               "image_height": self.height, "image_width": self.width,
               "look_at": [float(v) for v in look_at], "up_direction": [0.0, 0.0, 1.0]}
        self.ws.send(msgspec.msgpack.encode(msg))

    def next_image(self, timeout: float) -> np.ndarray | None:
        """The next background image the server sends (uint8 [H, W, 3]), or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            messages = self._receive(left)
            if messages is None:
                return None
            images = [m for m in messages if m["type"] == "BackgroundImageMessage" and m["rgb_data"]]
            if images:
                return iio.imread(images[-1]["rgb_data"])[..., :3]
        return None

    def close(self) -> None:
        self.ws.close()


def send_nan_camera(tab: ViserTab) -> None:
    nan = float("nan")
    tab.ws.send(msgspec.msgpack.encode({
        "type": "ViewerCameraMessage", "wxyz": [nan, 0.0, 0.0, 0.0], "position": [nan, nan, float("inf")],
        "fov": nan, "near": 0.01, "far": 1000.0, "image_height": 0, "image_width": 0, "look_at": [nan] * 3,
        "up_direction": [0.0, 0.0, 1.0]}))
