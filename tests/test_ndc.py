"""NDC for forward-facing captures: the ray map, when runs choose it, and a run that trains, reloads and renders
in it."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from renderers.ndc import NDC
from scenes.cameras import Cameras, image_rays


def forward_facing_split(n: int, seed: int, size: int = 48):
    """The procedural object seen by ``n`` parallel cameras from a small patch 3 units in front of it (an
    LLFF-style capture: a near/far bound, SfM points on the object's surface, every optical axis along +Y)."""
    from scenes import SceneSplit
    from scenes.images import Images
    from scenes.procedural import render, sdf

    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, :3] = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # right +X, up +Z, looking down +Y
    c2w[:, :3, 3] = torch.tensor([0.0, -3.0, 0.0]) + 0.4 * (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor(
        [1.0, 0.2, 1.0])
    images = Images.stack([torch.from_numpy(render(c, size)) for c in c2w])
    cams = Cameras.from_fov(c2w, size, size, 0.69)
    box = torch.tensor([[-1.5, -3.5, -1.5], [1.5, 1.5, 1.5]])
    lattice = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 40)] * 3, indexing="ij"), -1).reshape(-1, 3)
    points = lattice[sdf(lattice).abs() < 0.03]
    return SceneSplit("front", "train", cams, images, box, near_far=(1.8, 4.5), points=points)


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
    distortion loss, images pruned as with contraction) for a forward-facing capture with a ray-marched field;
    Gaussians splat in the world; an orbit capture and a synthetic scene keep the contraction they had."""
    from conftest import tiny_config
    from fields.backends.gaussians.field import GaussiansConfig
    from scenes.orient import forward_facing

    front = forward_facing_split(6, seed=0, size=16)
    cfg = tiny_config()
    decided = cfg.for_scene(front)
    assert decided.capture.contraction == "ndc" and len(decided.capture.ndc_frame) == 15
    assert decided.render.samples_per_diagonal == 128 and decided.capture.distortion_weight == 0.0
    assert (decided.render.image_stop_eps, decided.render.image_weight_thre) == (1e-3, 1e-3)  # images only
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


@pytest.fixture(scope="module")
def ndc_run(tmp_path_factory, procedural_root):
    """A forward-facing procedural run trained 250 steps in NDC: its trainer, run folder and held-out split."""
    from conftest import tiny_config
    from fields.training.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("ndc") / "run"
    trainer = Trainer(tiny_config(max_steps=250), run_dir, data=forward_facing_split(12, seed=0))
    trainer.train(show_progress=False)
    return trainer, run_dir, forward_facing_split(3, seed=1)


def test_an_ndc_run_learns_and_reloads_as_trained(ndc_run, tmp_path):
    """A forward-facing run trains in NDC, renders held-out views well beyond an empty field, gives surface points
    on the object (world depths), and its saved run (config frame, NDC box, checkpoint) renders them exactly as
    the trainer did, also after a resume."""
    import shutil

    from fields.run.config import RunConfig
    from fields.run.folder import load_run
    from fields.training.trainer import Trainer
    from renderers.imaging import on_background, psnr
    from renderers.surface_points import surface_points
    from scenes.procedural import sdf

    trainer, run_dir, test = ndc_run
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
    assert run.config.capture == trainer.cfg.capture and torch.equal(run.grid.aabb, trainer.grid.aabb)
    assert torch.equal(run.model.render(test.cameras, 0, white)["rgb"], renders[0])
    copy = tmp_path / "resumed"
    shutil.copytree(run_dir, copy)
    saved = RunConfig.load(copy / "config.yaml")
    saved.train.max_steps = 270
    resumed = Trainer(saved, copy, data=trainer.data)
    resumed.resume()
    assert resumed.step == 250 and resumed.field.ndc is not None
    assert torch.equal(resumed.model.render(test.cameras, 0, white)["rgb"], renders[0])


def test_ndc_density_scale_is_ndc_per_world_distance():
    """World points map into NDC and back; along the ray from the reference camera's centre the NDC distance
    between two nearby world points is ``density_scale`` times their world distance (so NDC density times it
    gives the same opacity per world distance); only points beyond the near plane are in NDC space."""
    c2w = torch.eye(4)[None].repeat(2, 1, 1)
    c2w[1, :3, 3] = torch.tensor([0.1, 0.0, 0.0])
    cams = Cameras.from_fov(c2w, 40, 30, 0.8)
    ndc = NDC.of_cameras(cams, near=0.5)
    g = torch.Generator().manual_seed(0)
    x = ndc.origin + torch.cat([(torch.rand(50, 2, generator=g) - 0.5) * 2, -0.6 - 5 * torch.rand(50, 1, generator=g)],
                               -1)
    assert ndc.beyond_near(x).all()
    assert torch.allclose(ndc.to_world(ndc.from_world(x)), x, atol=1e-4)
    x, step = x.double(), 1e-4
    ray = torch.nn.functional.normalize(x - ndc.origin.double(), dim=-1)
    moved = (ndc.from_world(x + step * ray) - ndc.from_world(x - step * ray)).norm(dim=-1) / (2 * step)
    assert torch.allclose(ndc.density_scale(x), moved, rtol=1e-5)
    assert not ndc.beyond_near(ndc.origin + torch.tensor([[0.0, 0.0, -0.4], [0.0, 0.0, 1.0]])).any()


def constant_ndc_model(sigma: float):
    """A hash-grid field over the NDC box of a camera at the origin looking down -z (near plane 0.5) with NDC
    density ``sigma`` everywhere in the box (density network zeroed but its last bias: exp(bias - 1) = sigma);
    every grid cell occupied."""
    from fields.backends.hashgrid import HashGridConfig
    from renderers.model import VolumeModel
    from renderers.occupancy import OccupancyGrid
    from renderers.render import RenderConfig

    cams = Cameras.from_fov(torch.eye(4)[None], 40, 30, 0.8)
    ndc = NDC.of_cameras(cams, near=0.5)
    box = ndc.box(cams)
    field = HashGridConfig(n_levels=2, log2_table_size=8, hidden=16).build(box)
    with torch.no_grad():
        for p in field.density_net.parameters():
            p.zero_()
        field.density_net[-1].bias[0] = 1 + math.log(sigma)
    grid = OccupancyGrid(box, 8)
    grid.binary.fill_(True)
    field.ndc = ndc
    return VolumeModel(field, grid, RenderConfig(samples_per_diagonal=128), ndc), ndc


def test_a_known_ndc_density_meshes_where_its_world_density_crosses_the_threshold():
    """A constant NDC density c has world density c * 2 near / (|p| |z|): the mesh at world threshold t is the
    surface |p| |z| = 2 near c / t (a cap at depth 2 on the axis here), in world coordinates; the default
    threshold (the NDC one in world units at the region's middle) puts it through that middle where c is the
    NDC one."""
    from fields.export import ExportError
    from fields.export.mesh import MeshSettings, default_threshold, extract_mesh

    c = 0.3
    model, ndc = constant_ndc_model(c)
    region = torch.tensor([[-0.2, -0.15, -3.2], [0.2, 0.15, -0.8]])  # inside the camera's frustum
    voxel = (region[1] - region[0]) / 39

    def cap(mesh):
        """|p| |z| of the vertices away from the region's faces (where the volume is closed off)."""
        v = torch.tensor(mesh.vertices, dtype=torch.float32)
        inner = ((v > region[0] + 2 * voxel) & (v < region[1] - 2 * voxel)).all(-1)
        assert inner.sum() > 100, inner.sum()
        p = ndc.camera_frame(v[inner])
        return p.norm(dim=-1) * p[:, 2].abs()

    threshold = 2 * ndc.near * c / 2.0**2
    with pytest.raises(ExportError, match="no world box"):  # NDC has no world box of its own: a region is needed
        extract_mesh(model, MeshSettings(resolution=8, threshold=threshold, seen_only=False), None, show_progress=False)
    mesh, _ = extract_mesh(model, MeshSettings(resolution=40, threshold=threshold, clean=False, seen_only=False,
                                               region=region), None, show_progress=False)
    assert torch.allclose(cap(mesh), torch.tensor(4.0), rtol=0.03)
    region = torch.tensor([[-0.2, -0.15, -3.6], [0.2, 0.15, -1.2]])  # its middle 2.4 ahead
    model, _ = constant_ndc_model(default_threshold(model.render_cfg, model.field.aabb))
    mesh, _ = extract_mesh(model, MeshSettings(resolution=40, clean=False, seen_only=False, region=region),
                           None, show_progress=False)
    middle = ndc.camera_frame(region.mean(0, keepdim=True))
    want = float(middle.norm() * middle[0, 2].abs())
    assert torch.allclose(cap(mesh), torch.tensor(want), rtol=0.03)


def test_an_ndc_runs_mesh_and_point_cloud_lie_on_the_object_in_the_world(ndc_run, tmp_path):
    """Mesh export of an NDC run works by default on the world box of its SfM points: the mesh loads back from its
    PLY with its vertices on the procedural object; without points its region is the reference frustum between
    the near and far bounds (around the object), where the mesh lies too; the point cloud keeps the SfM points'
    region, in world units."""
    import dataclasses

    import trimesh

    from fields.cli import main
    from fields.export.mesh import MeshSettings, extract_mesh
    from fields.export.region import export_region, padded
    from fields.run.folder import load_run
    from scenes.orient import bulk_box
    from scenes.procedural import sdf

    trainer, run_dir, _ = ndc_run
    run = load_run(run_dir)
    box = run.record.points_box
    assert torch.allclose(box, torch.tensor(bulk_box(trainer.data.points.numpy()), dtype=torch.float32))
    out = tmp_path / "mesh.ply"
    main(["export", "mesh", str(run_dir), "--resolution", "48", "--output", str(out), "--quiet"])
    v = torch.tensor(trimesh.load(out).vertices, dtype=torch.float32)
    assert len(v) > 300 and sdf(v).abs().median() < 0.15, (len(v), sdf(v).abs().median())

    frustum = export_region(run.model, dataclasses.replace(run.record, points_box=None))
    cams_y = float(trainer.data.cameras.centers[:, 1].mean())  # every camera looks down +Y
    assert frustum[0, 1] == pytest.approx(cams_y + 1.8, abs=1e-3) and frustum[1, 1] == pytest.approx(cams_y + 4.5)
    assert ((frustum[0] < box[0]) & (frustum[1] > box[1])).all()
    mesh, _ = extract_mesh(run.model, MeshSettings(resolution=48, region=frustum), run.record.cameras,
                           show_progress=False)
    v = torch.tensor(mesh.vertices, dtype=torch.float32)
    assert len(v) > 100 and ((v >= frustum[0]) & (v <= frustum[1])).all()
    assert sdf(v).abs().median() < 0.5, sdf(v).abs().median()  # the object, and the fog in front of it

    region = padded(box)
    cloud = tmp_path / "points.ply"
    main(["export", "pointcloud", str(run_dir), "--num-points", "300", "--min-opacity", "0.5", "--output",
          str(cloud), "--quiet"])
    points = torch.tensor(trimesh.load(cloud).vertices, dtype=torch.float32)
    assert len(points) == 300 and ((points >= region[0]) & (points <= region[1])).all()
    assert sdf(points).abs().median() < 0.3, sdf(points).abs().median()


def test_an_ndc_runs_default_video_is_the_forward_spiral(ndc_run, tmp_path):
    """``fields export video`` of an NDC run takes the forward spiral unless told otherwise."""
    import imageio.v3 as iio

    from fields.cli import main

    _, run_dir, _ = ndc_run
    main(["export", "video", str(run_dir), "--seconds", "0.1", "--fps", "20", "--resolution", "16", "--output",
          str(tmp_path), "--quiet"])
    (video,) = tmp_path.glob("video-*.mp4")
    assert video.name.startswith("video-forward-spiral-") and iio.imread(video).shape[0] == 2


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
