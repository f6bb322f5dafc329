"""NDC for forward-facing captures: the ray map, when runs choose it, and a run that trains, reloads and renders
in it."""

import dataclasses

import numpy as np
import pytest
import torch

from renderers.ndc import NDC
from scenes.cameras import Cameras, image_rays


def forward_facing_split(n: int, seed: int, size: int = 48):
    """The procedural object seen by ``n`` parallel cameras from a small patch 3 units in front of it (an
    LLFF-style capture: a near/far bound, every optical axis along +Y)."""
    from scenes import SceneSplit
    from scenes.images import Images
    from scenes.procedural import render

    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, :3] = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # right +X, up +Z, looking down +Y
    c2w[:, :3, 3] = torch.tensor([0.0, -3.0, 0.0]) + 0.4 * (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor(
        [1.0, 0.2, 1.0])
    images = Images.stack([torch.from_numpy(render(c, size)) for c in c2w])
    cams = Cameras.from_fov(c2w, size, size, 0.69)
    box = torch.tensor([[-1.5, -3.5, -1.5], [1.5, 1.5, 1.5]])
    return SceneSplit("front", "train", cams, images, box, near_far=(1.8, 4.5))


def test_the_map_sends_the_frustum_to_the_cube():
    """The reference camera's rays start on the near plane (z = -1), reach z = 1 at infinity, its image corners
    map to x, y = +-1, a world point along any ray lands on that ray's NDC line at its NDC depth, NDC points
    and depths map back to the world, and rays that do not go forward miss the NDC box."""
    c2w = torch.eye(4)[None].repeat(3, 1, 1)
    c2w[1, :3, 3] = torch.tensor([0.1, -0.05, 0.02])
    c2w[2, :3, 3] = torch.tensor([-0.1, 0.05, -0.02])
    cams = Cameras.from_fov(c2w, 40, 30, 0.8)
    ndc = NDC.of_cameras(cams, near=0.5)
    assert NDC.from_list(ndc.to_list()).to_list() == ndc.to_list()
    o, d = (t.reshape(-1, 3) for t in image_rays(cams, 1))
    start, end = ndc.ray_ends(o, d)
    assert torch.allclose(start[:, 2], torch.full_like(start[:, 2], -1.0), atol=1e-5)
    assert torch.allclose(end[:, 2], torch.ones_like(end[:, 2]))
    s0, e0 = ndc.ray_ends(*(t.reshape(-1, 3) for t in image_rays(cams[:1], 0)))
    assert e0[:, 0].abs().max() < 1 and e0[:, 0].abs().max() > 0.95  # pixel centres, half a pixel in from the edge
    assert e0[:, 1].abs().max() < 1 and e0[:, 1].abs().max() > 0.93
    for depth in (0.7, 2.0, 9.0):
        x = o + depth / -d[:, 2:3] * d  # world points at this depth before the reference camera
        p = x - ndc.origin
        ax, ay = ndc.scale
        want = torch.stack([-ax * p[:, 0] / p[:, 2], -ay * p[:, 1] / p[:, 2], 1 + 2 * ndc.near / p[:, 2]], -1)
        s = (want[:, 2] - start[:, 2]) / (end[:, 2] - start[:, 2])
        assert torch.allclose(start + s[:, None] * (end - start), want, atol=1e-4)
        assert torch.allclose(ndc.to_world(want), x, atol=1e-4)
        ones = torch.ones_like(s)
        got = ndc.world_depth(o, d, s * (end - start).norm(dim=-1), ones)  # world depth of one opaque sample
        assert torch.allclose(got, ((x - o) * d).sum(-1), rtol=1e-4)
    away_o, away_d = ndc.rays(o[:2], torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))  # backwards, sideways
    assert torch.isfinite(away_o).all() and (away_o[:, 2] > 1).all() and (away_d[:, 2] > 0).all()  # miss the box
    depth = ndc.world_depth(o[:2], torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), torch.ones(2), torch.ones(2))
    assert torch.equal(depth, torch.zeros(2))
    box = ndc.box(cams)
    assert (box[0, :2] < -1).all() and (box[1, :2] > 1).all()  # the other cameras' rays reach past the image
    assert box[:, 2].tolist() == [-1.0, 1.0]


def test_forward_facing_captures_of_marched_fields_choose_ndc(procedural_root):
    """auto: NDC (recorded with its frame, 128 samples a diagonal, twice the samples a batch where unset, no
    distortion loss) for a forward-facing capture with a ray-marched field; Gaussians splat in the world; an orbit
    capture and a synthetic scene keep the contraction they had."""
    from conftest import tiny_config
    from fields.backends.gaussians.field import GaussiansConfig
    from scenes.orient import forward_facing

    front = forward_facing_split(6, seed=0, size=16)
    cfg = tiny_config()
    decided = cfg.for_scene(front)
    assert decided.capture.contraction == "ndc" and len(decided.capture.ndc_frame) == 15
    assert decided.render.samples_per_diagonal == 128 and decided.capture.distortion_weight == 0.0
    unset = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, target_samples=None))
    assert unset.for_scene(front).batch_samples() == 2 * cfg.field_config.batch_samples  # twice the rays a batch
    given = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, target_samples=1000))
    assert given.for_scene(front).batch_samples() == 1000
    assert unset.for_scene(cfg.scene.load("train")).batch_samples() == cfg.field_config.batch_samples
    splats = dataclasses.replace(cfg, field_config=GaussiansConfig()).for_scene(front)
    assert splats.capture.contraction != "ndc" and splats.capture.ndc_frame == ()
    orbit = cfg.scene.load("train")
    assert not forward_facing(orbit.cameras.c2w.numpy())
    assert cfg.for_scene(dataclasses.replace(orbit, near_far=(0.1, 20.0))).capture.contraction == "on"
    assert cfg.for_scene(orbit).capture.contraction == "off"


def test_an_ndc_run_learns_and_reloads_as_trained(tmp_path, procedural_root):
    """A forward-facing run trains in NDC, renders held-out views well beyond an empty field, gives surface points
    on the object (world depths), and its saved run (config frame, NDC box, checkpoint) renders them exactly as
    the trainer did, also after a resume; mesh export refuses it."""
    from conftest import tiny_config
    from fields.run.config import RunConfig
    from fields.run.folder import load_run
    from fields.training.trainer import Trainer
    from fields.export import ExportError
    from fields.export.mesh import MeshSettings, extract_mesh
    from renderers.imaging import on_background, psnr
    from renderers.surface_points import surface_points
    from scenes.procedural import sdf

    cfg = tiny_config(max_steps=250)
    train, test = forward_facing_split(12, seed=0), forward_facing_split(3, seed=1)
    run_dir = tmp_path / "run"
    trainer = Trainer(cfg, run_dir, data=train)
    trainer.train(show_progress=False)
    assert trainer.cfg.capture.contraction == "ndc" and trainer.field.ndc is not None
    white = torch.ones(3)
    renders = [trainer.model.render(test.cameras, i, white)["rgb"] for i in range(len(test))]
    truth = [on_background(test.rgba(i), white) for i in range(len(test))]
    got = np.mean([psnr(r, t) for r, t in zip(renders, truth)])
    blank = np.mean([psnr(torch.ones_like(t), t) for t in truth])
    assert got > blank + 6, (got, blank)
    points, _ = surface_points(trainer.model, test.cameras, 400, min_opacity=0.5, show_progress=False)
    points = torch.as_tensor(points)  # depths come back in world units: beyond the NDC near plane (1.35 from the
    ahead = points[:, 1] + 3.0  # cameras; NDC distances would put most within 1), around the (foggy) object
    near_object = sdf(points).abs().median()
    assert len(points) > 100 and ahead.min() > 1.3 and near_object < 0.5, (len(points), ahead.min(), near_object)
    run = load_run(run_dir)
    with pytest.raises(ExportError, match="NDC"):
        extract_mesh(run.model, MeshSettings(), None, show_progress=False)
    assert run.config.capture == trainer.cfg.capture and torch.equal(run.grid.aabb, trainer.grid.aabb)
    assert torch.equal(run.model.render(test.cameras, 0, white)["rgb"], renders[0])
    saved = RunConfig.load(run_dir / "config.yaml")
    saved.train.max_steps = 270
    resumed = Trainer(saved, run_dir, data=train)
    resumed.resume()
    assert resumed.step == 250 and resumed.field.ndc is not None
    assert torch.equal(resumed.model.render(test.cameras, 0, white)["rgb"], renders[0])


def test_video_depth_range_of_an_ndc_grid_is_in_world_units():
    """The depth video's range of an NDC run: occupied cells mapped back to the world before measuring."""
    from fields.export.video import depth_range
    from renderers.occupancy import OccupancyGrid

    cams = Cameras.from_fov(torch.eye(4)[None], 40, 30, 0.8)
    ndc = NDC.of_cameras(cams, near=0.5)
    grid = OccupancyGrid(ndc.box(cams), 8)
    grid.binary.zero_()
    grid.binary[3, 4, 5] = True  # one occupied cell, z < 0.9
    centre = grid.cell_centers(torch.tensor([3 * 64 + 4 * 8 + 5]))
    want = (ndc.to_world(centre) - cams.centers[0]).norm().item()
    lo, hi = depth_range(cams, grid, ndc)
    assert abs(lo - want) < 1e-4 and abs(hi - want) < 1e-4
