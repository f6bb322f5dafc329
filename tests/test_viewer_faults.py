"""The viewer under bad clients while training runs: ten tabs at once, a tab that disconnects mid-render, and a
tab that sends a camera full of NaNs. The server keeps serving and training keeps going."""

from __future__ import annotations

import io
import threading

import numpy as np
import torch
from rich.console import Console

from conftest import tiny_config
from fields.training.trainer import Trainer
from test_viewer import free_port, wait_for
from viewer import RenderTarget, Viewer
from ws_client import ViserTab, send_nan_camera


def test_ten_tabs_a_dropout_and_a_nan_camera_do_not_stop_serving_or_training(tmp_path, procedural_root):
    trainer = Trainer(tiny_config(max_steps=40, ckpt_every=1000), tmp_path / "run", Console(file=io.StringIO()))
    target = RenderTarget(trainer.model, torch.ones(3), trainer.step)
    viewer = Viewer(target, trainer.data.cameras, trainer.data.aabb, port=free_port(), training=True, max_side=32,
                    console=Console(file=io.StringIO()))
    thread = threading.Thread(target=trainer.train, kwargs={"callbacks": [viewer.on_step], "show_progress": False})
    tabs: list[ViserTab] = []
    try:
        thread.start()
        cams = trainer.data.cameras
        tabs = [ViserTab(viewer.url, 64, 64) for _ in range(10)]
        for i, tab in enumerate(tabs):
            tab.send_camera(cams.c2w[i % len(cams)].numpy())
        send_nan_camera(tabs[1])
        tabs[0].close()  # gone while its first render is under way
        images = [tab.next_image(120) for tab in tabs[2:]]
        assert all(img is not None and img.shape[2] == 3 for img in images)
        assert wait_for(lambda: len(viewer.renderers()) == 9, 30)  # the dropped tab's worker is gone
        # The NaN tab's thread survived: a proper camera afterwards is rendered.
        tabs[1].send_camera(cams.c2w[3].numpy())
        assert tabs[1].next_image(120) is not None
        assert sum(r.ignored for r in viewer.renderers().values()) >= 1
        assert all(not r.errors for r in viewer.renderers().values())
        # A new tab is still served after all that.
        late = ViserTab(viewer.url, 64, 64)
        tabs.append(late)
        late.send_camera(cams.c2w[5].numpy())
        assert late.next_image(120) is not None and len(viewer.renderers()) == 10
        thread.join(300)
        assert not thread.is_alive() and trainer.step == 40
        assert np.isfinite(trainer.last["loss"])
    finally:
        for tab in tabs:
            tab.close()
        thread.join(300)
        viewer.close()

