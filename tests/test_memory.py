"""Out of memory: requests too large for memory fail at once with advice, and a chunk that runs out of memory
is retried in smaller chunks instead of failing the render or export."""

from __future__ import annotations

import re

import pytest
import torch

from fields.cli import main
from fields.export import ExportError
from fields.export.mesh import MeshSettings, extract_mesh
from fields.export.video import check_frame_memory
from renderers.chunks import map_chunks
from renderers.model import VolumeModel
from renderers.render import RenderConfig, render_image
from test_export import procedural_cameras, sdf_field


class Starved:
    """Wraps a field so that any call with more than ``limit`` points fails like torch's allocator does."""

    def __init__(self, field, limit: int):
        self.field, self.limit, self.refused = field, limit, 0

    def check(self, x: torch.Tensor) -> None:
        if x.shape[0] > self.limit:
            self.refused += 1
            raise RuntimeError(f"DefaultCPUAllocator: not enough memory: you tried to allocate {x.shape[0] * 4096} bytes.")

    def density(self, x):
        self.check(x)
        return self.field.density(x)

    def geometry(self, x):
        self.check(x)
        return self.field.geometry(x)

    def __call__(self, x, d):
        self.check(x)
        return self.field(x, d)

    def __getattr__(self, name):
        return getattr(self.field, name)


def test_chunks_shrink_when_memory_runs_out_and_results_do_not_change():
    field, grid = sdf_field()
    cams = procedural_cameras(2)
    full = VolumeModel(field, grid, RenderConfig()).render(cams, 0, torch.ones(3))
    starved = Starved(field, limit=30_000)  # samples per call: a 1600-ray chunk takes more than that
    small = render_image(starved.geometry, starved.color, grid, cams, 0, RenderConfig(), torch.ones(3), chunk=1600)
    assert starved.refused > 0
    for k in ("rgb", "depth", "opacity"):
        assert torch.allclose(full[k], small[k], atol=1e-5), k
    settings = MeshSettings(resolution=24, clean=False, seen_only=False)
    mesh_full, _ = extract_mesh(VolumeModel(field, grid, RenderConfig()), settings, None, False)
    starved = Starved(field, limit=500)
    mesh_small, _ = extract_mesh(VolumeModel(starved, grid, RenderConfig()), settings, None, False)
    assert starved.refused > 0 and (mesh_full.vertices == mesh_small.vertices).all()
    with pytest.raises(RuntimeError, match="not enough memory"):  # below the smallest chunk the error goes up
        map_chunks(Starved(field, limit=10).density, (torch.zeros(1000, 3),), chunk=512, min_chunk=256)


def test_too_large_requests_fail_at_once_with_advice(monkeypatch):
    import fields.export.video as video

    monkeypatch.setattr(video, "available_bytes", lambda: 1 << 30)
    with pytest.raises(ExportError, match=r"frames of 16384x16384 need about 32.0 GB .* lower --resolution"):
        check_frame_memory(16384, 16384)
    check_frame_memory(640, 480)


@pytest.mark.parametrize("args,advice", [(["mesh", "--resolution", "100000"], r"use --resolution \d+ or lower"),
                                         (["pointcloud", "--num-points", "100000000000"], r"use --num-points \d+")])
def test_cli_refuses_huge_exports_before_loading_the_run(tmp_path, capsys, args, advice):
    with pytest.raises(SystemExit) as e:  # tmp_path is no run: the request is refused before it is loaded
        main(["export", args[0], str(tmp_path), *args[1:]])
    out = capsys.readouterr().out
    assert e.value.code == 2 and "Traceback" not in out, out
    assert re.search(rf"error: .*needs about [\d.]+ GB of memory, more than .* available; {advice}", out), out
