"""Scene contraction: the map itself, the contracted occupancy grid, and the contracted marcher (native kernel
against the plain-PyTorch reference: the same samples, bit for bit)."""

from __future__ import annotations

import pytest
import torch

from conftest import devices, needs_device
from renderers.contraction import (contract, contract_unit, contract_unit_reference, contracted_cell, density_scale,
                                   normalized, uncontract)
from renderers.marching import Samples, march_rays_reference, ray_aabb
from renderers.occupancy import OccupancyGrid

AABB = torch.tensor([[-1.0, -1.5, -0.5], [2.0, 1.5, 1.0]])


def test_contraction_is_identity_inside_and_bounded_outside():
    g = torch.Generator().manual_seed(0)
    inside = AABB[0] + torch.rand(1000, 3, generator=g) * (AABB[1] - AABB[0])
    u = contract(inside, AABB)
    centre, half = AABB.mean(0), (AABB[1] - AABB[0]) / 2
    assert torch.allclose(u, (inside - centre) / half, atol=1e-6)
    far = torch.randn(1000, 3, generator=g) * torch.logspace(0, 6, 1000)[:, None]
    c = contract(far, AABB)
    assert (c.abs() <= 2).all() and (c.abs().amax(-1) > 1).sum() > 900
    near = far.norm(dim=-1) < 300  # a bijection; float32 keeps ~1e-3 relative precision out to a few hundred boxes
    assert torch.allclose(uncontract(c[near], AABB), far[near], rtol=1e-3, atol=1e-4)


def test_contraction_is_monotone_along_rays():
    g = torch.Generator().manual_seed(1)
    o = AABB.mean(0) + torch.rand(64, 3, generator=g) - 0.5
    d = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    t = torch.logspace(-2, 5, 400)
    x = o[:, None] + t[None, :, None] * d[:, None]
    c = contract(x.reshape(-1, 3), AABB).reshape(64, 400, 3)
    dist = (c - contract(o, AABB)[:, None]).norm(dim=-1)  # distance from the ray's start grows with t
    assert (dist[:, 1:] >= dist[:, :-1] - 1e-6).all()
    assert (c[:, -1].abs().amax(-1) > 1.99).all()  # and reaches the cube's surface at infinity


def test_contracted_grid_cells_round_trip():
    grid = OccupancyGrid(AABB, 16, contracted=True)
    idx = torch.arange(16**3)
    x = grid.cell_centers(idx)
    ijk = contracted_cell(x, AABB, torch.tensor([16, 16, 16]))
    assert torch.equal((ijk[:, 0] * 16 + ijk[:, 1]) * 16 + ijk[:, 2], idx)
    grid.binary.zero_()
    grid.binary.view(-1)[idx[::7]] = True
    assert torch.equal(grid.query(x), grid.binary.view(-1))


def test_density_scale_is_the_contractions_stretch_along_rays():
    """1 in the box; beyond it, contracted length per world length relative to the box's (finite differences
    along axis rays from the centre, where the L-inf norm is that axis' coordinate)."""
    g = torch.Generator().manual_seed(2)
    inside = AABB[0] + torch.rand(100, 3, generator=g) * (AABB[1] - AABB[0])
    assert torch.equal(density_scale(inside, AABB), torch.ones(100))
    half = (AABB[1] - AABB[0]) / 2
    for axis in range(3):
        s = torch.logspace(0.05, 2, 50, dtype=torch.float64)  # |u|_inf from 1.1 to 100 along the axis
        x = AABB.mean(0).double().repeat(50, 1)
        x[:, axis] += s * half[axis]
        dx = 1e-4 * half[axis]
        step = torch.zeros(3, dtype=torch.float64)
        step[axis] = dx
        stretch = (contract(x + step, AABB.double()) - contract(x - step, AABB.double()))[:, axis] / (2 * dx)
        expected = stretch * half[axis]  # the box's own stretch is 1 / half
        assert torch.allclose(density_scale(x.float(), AABB).double(), expected, rtol=1e-4)


def test_grid_step_lengths_follow_the_contracted_marchers_samples():
    """What the grid (and distillation) take a marching step at a point to be: the box step inside, and beyond
    the box about the length of the contracted marcher's samples there, out to hundreds of boxes."""
    from renderers.render import RenderConfig

    cfg = RenderConfig()
    step = cfg.step_size(AABB)
    grid = OccupancyGrid(AABB, 32, contracted=True)
    g = torch.Generator().manual_seed(4)
    origins = AABB[0] + (0.1 + 0.8 * torch.rand(300, 3, generator=g)) * (AABB[1] - AABB[0])
    dirs = torch.nn.functional.normalize(torch.randn(300, 3, generator=g), dim=-1)
    s = march_rays_reference(origins, dirs, grid.binary, AABB, step, contract=True, n_outer=cfg.outer_samples)
    x = s.positions(origins, dirs)[0]
    m = normalized(x, AABB).abs().amax(-1)
    ratio = (s.t_ends - s.t_starts) / grid.step_lengths(x, step)
    assert torch.allclose(ratio[m < 0.99], torch.ones(1), rtol=1e-3)
    for lo, hi in ((1.5, 3), (3, 10), (10, 100)):
        r = ratio[(m > lo) & (m <= hi)]
        assert len(r) > 1000 and 0.7 < r.median() < 1.6, (lo, hi, r.median())
        assert 1 / 3 < r.quantile(0.05) and r.quantile(0.95) < 4, (lo, hi, r.quantile(0.05), r.quantile(0.95))
    assert OccupancyGrid(AABB, 32).step_lengths(x, step) == step  # a grid over the box alone: the box step


def test_the_contracted_grid_keeps_faint_far_content_that_renders():
    """A dense object in the box and a faint far shell (a wall beyond the box whose world density times one box
    step is far below ``occ_thre``, yet which renders half opaque along the marcher's long outer steps): the
    grid, filled from the world density, renders what a grid with every cell occupied renders."""
    from renderers.render import RenderConfig, render_rays

    def density(x, rho):
        m = normalized(x, AABB).abs().amax(-1)
        wall = ((m > 4) & (m < 16)).float() * rho * density_scale(x, AABB)  # rho per unit of contracted length
        return torch.where(m < 0.3, torch.full_like(m, 200.0), wall)

    cfg = RenderConfig()
    step = cfg.step_size(AABB)
    g = torch.Generator().manual_seed(3)
    origins = AABB[0] + (0.2 + 0.6 * torch.rand(400, 3, generator=g)) * (AABB[1] - AABB[0])
    dirs = torch.nn.functional.normalize(torch.randn(400, 3, generator=g), dim=-1)
    inner_face = AABB.mean(0) + torch.tensor([4.0, 0, 0]) * (AABB[1] - AABB[0]) / 2  # the shell's densest
    for rho in (3.0, 10.0):  # above occ_thre per contracted step of the marcher
        world_opacity_per_step = (rho * density_scale(inner_face[None], AABB) * step).item()
        full = OccupancyGrid(AABB, 32, contracted=True)  # every cell occupied
        grid = OccupancyGrid(AABB, 32, contracted=True)
        for _ in range(16):
            grid.update(lambda x: density(x, rho), step, generator=g)
        geometry = lambda x: (density(x, rho), x)  # noqa: E731
        color = lambda f, d: torch.ones_like(f)  # noqa: E731
        opacity = {name: render_rays(geometry, color, gr, origins, dirs, cfg, torch.zeros(3))["opacity"]
                   for name, gr in (("full", full), ("grid", grid))}
        assert opacity["full"].mean() > 0.05 and world_opacity_per_step < 0.01  # faint per box step
        assert (opacity["grid"] - opacity["full"]).abs().mean() < 0.02, (rho, opacity["full"].mean(),
                                                                       opacity["grid"].mean())


def rays(n=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    origins = AABB[0] + torch.rand(n, 3, generator=g) * (AABB[1] - AABB[0])  # cameras inside the box
    origins[: n // 5] = torch.randn(n // 5, 3, generator=g) * 6  # and some outside it
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    dirs[:20] = torch.eye(3).repeat(7, 1)[:20]  # axis-aligned ones along cell borders
    return origins, dirs.contiguous(), torch.rand(n, generator=g)


def test_contract_unit_native_is_the_reference_bit_for_bit(ops):
    """The field's contracted inputs from the native CPU op equal the reference's exactly (the field must see what it
    trained on), inside, on the box faces and far out; with a gradient wanted the reference (differentiable) runs."""
    g = torch.Generator().manual_seed(7)
    x = torch.cat([torch.rand(5000, 3, generator=g) * 4 - 1.5, torch.randn(5000, 3, generator=g) * 50,
                   AABB, AABB.mean(0, keepdim=True), torch.tensor([[1e8, -3.0, 0.2], [0.5, 0.0, -1e9]])])
    (got, got_scale), (ref, ref_scale) = ops.contract_unit(x, AABB), contract_unit_reference(x, AABB)
    assert torch.equal(got, ref) and torch.equal(got_scale, ref_scale)
    assert torch.equal(contract_unit(x, AABB)[0], ref) and ((ref >= 0) & (ref <= 1)).all()
    assert ((ref_scale > 0) & (ref_scale <= 1)).all() and (ref_scale < 1).sum() > 4000
    xg = x[:100].clone().requires_grad_()
    sum(t.sum() for t in contract_unit(xg, AABB)).backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_contracted_reference_samples_reach_far_and_follow_the_lattice():
    origins, dirs, _ = rays(50)
    step = 0.05
    full = torch.ones(16, 16, 16, dtype=torch.bool)
    s = march_rays_reference(origins, dirs, full, AABB, step, near=0.1, contract=True, n_outer=32)
    _, exits = ray_aabb(origins, dirs, AABB)
    for r in range(10, 50):  # the rays that start inside the box
        ts, te = s.t_starts[s.ray_indices == r], s.t_ends[s.ray_indices == r]
        assert torch.equal(ts[1:], te[:-1])  # contiguous lattice
        assert ts[0] == pytest.approx(0.1, rel=1e-6)  # from near
        assert te[-1] >= 31 * exits[r]  # to N - 1 times the box's exit distance (disparity 1/N of the exit's)
        widths = te - ts
        outer = widths[-31:]
        assert (outer[1:] > outer[:-1]).all()  # disparity steps grow


def native_contracted(ops, origins, dirs, binary, step, near, far, jitter, n_outer):
    ray, ts, te = ops.march_rays(origins, dirs, binary, AABB, step, near, far, 0.0, 1e10, jitter, True, n_outer)
    return Samples(ray.cpu(), ts.cpu(), te.cpu(), origins.shape[0])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("density", [0.0, 0.03, 0.3, 1.0])
@pytest.mark.parametrize("jittered,near,far", [(False, 0.0, 1e10), (True, 0.05, 1e10), (True, 0.2, 30.0)])
@pytest.mark.parametrize("n_outer", [64, 2, 97])  # the outer points go in blocks of 32: 63, 1 and 96 + 0 of them
def test_contracted_march_native_matches_reference(ops, device, density, jittered, near, far, n_outer):
    needs_device(device, ops)
    g = torch.Generator().manual_seed(2)
    binary = torch.rand(32, 32, 32, generator=g) < density
    origins, dirs, jitter = rays()
    step = (AABB[1] - AABB[0]).norm().item() / 128
    jitter = jitter if jittered else None
    ref = march_rays_reference(origins, dirs, binary, AABB, step, near, far, jitter=jitter, contract=True,
                               n_outer=n_outer)
    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    got = native_contracted(ops, dev(origins), dev(dirs), dev(binary), step, near, far, dev(jitter), n_outer)
    assert torch.equal(got.ray_indices, ref.ray_indices)
    assert torch.equal(got.t_starts, ref.t_starts)
    assert torch.equal(got.t_ends, ref.t_ends)
    if density > 0:
        assert len(ref) > 0


# -- an unbounded scene: a ball in the box under a textured sky at infinity -------------------------------------

def sky_scene(n: int, seed: int, size: int = 40):
    """Cameras inside the box [-1, 1]^3 looking at a red-blue ball at the centre, every pixel opaque: the ball, or
    behind it a sky whose colour depends on the direction only (content at infinity, far outside any box)."""
    from scenes import SceneSplit
    from scenes.cameras import Cameras, image_rays
    from scenes.images import Images
    from scenes.scene import to_uint8

    g = torch.Generator().manual_seed(seed)
    eyes = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 0.85
    c2w = torch.eye(4).repeat(n, 1, 1)
    for i, eye in enumerate(eyes):
        back = torch.nn.functional.normalize(eye, dim=0)  # the camera looks down -Z, at the centre
        right = torch.nn.functional.normalize(torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0]), back), dim=0)
        c2w[i, :3, :3] = torch.stack([right, torch.linalg.cross(back, right), back], 1)
        c2w[i, :3, 3] = eye
    f = torch.full((n,), size * 0.6)
    cams = Cameras(c2w, f, f, torch.full((n,), size / 2), torch.full((n,), size / 2), size, size)
    images = []
    for i in range(n):
        o, d = (t.reshape(-1, 3) for t in image_rays(cams, i))
        b = (o * d).sum(-1)
        disc = b * b - (o * o).sum(-1) + 0.3**2
        t_hit = -b - disc.clamp_min(0).sqrt()
        hit = (disc > 0) & (t_hit > 0)
        p = o + t_hit[:, None] * d
        ball = torch.stack([0.8 * (p[:, 2] > 0) + 0.1, 0.2 + 0 * p[:, 0], 0.8 * (p[:, 2] <= 0) + 0.1], -1)
        sky = 0.5 + 0.4 * torch.stack([torch.sin(5 * d[:, 0]), torch.sin(4 * d[:, 1] + 1), torch.cos(6 * d[:, 2])], -1)
        rgb = torch.where(hit[:, None], ball, sky)
        images.append(to_uint8(torch.cat([rgb, torch.ones_like(rgb[:, :1])], -1)).reshape(size, size, 4))
    box = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
    return SceneSplit("sky", "train", cams, Images.stack(images), box)


def sky_psnr(contraction: str) -> float:
    """Held-out PSNR on the sky scene after a short training with contraction on or off."""
    from conftest import tiny_config
    from fields.run.config import CaptureConfig
    from fields.training.trainer import Trainer
    from renderers.imaging import psnr

    cfg = tiny_config(max_steps=300)
    cfg.train.random_background = False
    cfg.capture = CaptureConfig(contraction=contraction, appearance_dim=0, camera_refinement="off",
                                distortion_weight=0.0)
    trainer = Trainer(cfg, None, data=sky_scene(40, seed=0))
    assert trainer.grid.contracted == trainer.field.contracted == (contraction == "on")
    trainer.train(show_progress=False)
    held_out = sky_scene(6, seed=1)
    model = trainer.model
    scores = [psnr(model.render(held_out.cameras, i, torch.zeros(3))["rgb"], held_out.rgba(i)[..., :3])
              for i in range(len(held_out))]
    return sum(scores) / len(scores)


def test_far_background_is_learned_with_contraction_and_missed_without():
    on, off = sky_psnr("on"), sky_psnr("off")
    assert on > off + 3, (on, off)


def test_scenes_in_a_box_keep_their_image_pruning(procedural_root):
    """Only runs with contraction start with the image-only pruning: lego and the procedural scene render as
    before."""
    from conftest import tiny_config

    cfg = tiny_config()
    decided = cfg.for_scene(cfg.scene.load("train"))
    assert decided.capture.contraction == "off"
    assert decided.render == cfg.render and decided.render.for_images() == cfg.render
    assert (decided.render.image_stop_eps, decided.render.image_weight_thre) == (None, 0.0)


def test_a_contracted_run_evaluates_exports_and_resumes(tmp_path, procedural_root):
    """Everything downstream of training works on a run with scene contraction: eval, mesh, point cloud (of the
    foreground box), video, and resume."""
    import imageio.v3 as iio
    import trimesh

    from conftest import tiny_config
    from fields.cli import main
    from fields.run.config import CaptureConfig, RunConfig
    from fields.run.folder import load_run
    from fields.training.trainer import Trainer

    cfg = tiny_config(max_steps=300)
    cfg.capture = CaptureConfig(contraction="on", appearance_dim=0, camera_refinement="off", distortion_weight=0.0)
    run_dir = tmp_path / "run"
    Trainer(cfg, run_dir).train(show_progress=False)
    saved = RunConfig.load(run_dir / "config.yaml")
    assert saved.capture.contraction == "on" and saved.render.near == 0.05
    assert (saved.render.image_stop_eps, saved.render.image_weight_thre) == (1e-3, 1e-3)  # recorded as decided
    run = load_run(run_dir)
    assert run.grid.contracted and run.field.contracted
    main(["eval", str(run_dir), "--every", "8", "--quiet"])
    main(["export", "mesh", str(run_dir), "--resolution", "48", "--no-clean", "--quiet",
          "--output", str(tmp_path / "mesh.ply")])
    mesh = trimesh.load(tmp_path / "mesh.ply")
    assert len(mesh.vertices) > 0 and (abs(mesh.vertices) <= 1.0 + 1e-4).all()  # the inner box only
    main(["export", "pointcloud", str(run_dir), "--num-points", "500", "--min-opacity", "0.5", "--quiet",
          "--output", str(tmp_path / "points.ply")])
    points = trimesh.load(tmp_path / "points.ply")
    assert (abs(points.vertices) <= 1.0 + 1e-4).all()
    main(["export", "video", str(run_dir), "--seconds", "0.5", "--fps", "8", "--resolution", "32", "--quiet",
          "--output", str(tmp_path / "orbit.mp4")])
    assert iio.imread(tmp_path / "orbit.mp4").shape[0] == 4
    saved.train.max_steps = 320
    resumed = Trainer(saved, run_dir)
    resumed.resume()
    assert resumed.step == 300 and resumed.grid.contracted and resumed.cfg.capture == saved.capture
    assert torch.equal(resumed.grid.binary, run.grid.binary)
    resumed.train(show_progress=False)
    assert load_run(run_dir).step == 320
