"""Out of memory: requests too large for memory fail at once with advice, and a chunk that runs out of memory
is retried in smaller chunks instead of failing the render or export."""

from __future__ import annotations

import re

import imageio.v3 as iio
import numpy as np
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
    # samples per call: images render front to back in rounds of 8 samples per ray; a 1600-ray chunk of this
    # view asks for ~4,300 at once, more than this allows, a 400-ray one for ~2,000
    starved = Starved(field, limit=2_500)
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


def test_decoding_peak_does_not_grow_with_the_number_of_full_size_images(tmp_path):
    """Each image is decoded and downscaled on its own: loading 24 large photos at --downscale 8 peaks about as
    high as loading 4 (holding them all decoded at full size, as floats, would take ~600 MB more)."""
    import subprocess
    import sys

    from conftest import write_nerfstudio

    rng = np.random.default_rng(0)
    peaks = {}
    for n in (4, 24):
        root = write_nerfstudio(tmp_path / f"n{n}", n=n + 1, w=1600, h=1200)  # one more: the held-out frame
        for f in (root / "images").iterdir():  # smooth content: quick to write, realistic to decode
            small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
            iio.imwrite(f, np.kron(small, np.ones((40, 40, 1), np.uint8)))
        code = ("import resource; from scenes import load_split; "
                f"s = load_split({str(root)!r}, 'train', downscale=8); assert s.images.stacked().shape[1:3] == (150, 200); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        peaks[n] = int(out.stdout.split()[-1]) * 1024
    assert peaks[24] - peaks[4] < 100 * 2**20, peaks
