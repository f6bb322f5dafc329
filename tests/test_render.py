"""Rays, marching, compositing and the occupancy grid against hand-computed values and closed forms."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from renderers import OccupancyGrid, composite, march_rays, ray_aabb
from renderers.marching import lattice
from renderers.render import RenderConfig, march, render_rays
from scenes import Cameras, image_rays, pixel_rays
from scenes.cameras import distort, undistort


def _camera(distortion=None) -> Cameras:
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return Cameras(torch.eye(4)[None], one(100), one(50), one(20), one(10), 40, 20, distortion)


def test_pixel_rays_match_hand_computed_directions():
    cams = _camera()
    o, d = pixel_rays(cams, torch.tensor([0]), torch.tensor([20.5]), torch.tensor([10.0]))
    # 0.5 px right of the principal point, on its row: direction (0.005, 0, -1) normalised, OpenGL axes
    assert torch.allclose(o, torch.zeros(1, 3))
    assert torch.allclose(d, torch.nn.functional.normalize(torch.tensor([[0.005, 0.0, -1.0]]), dim=-1))
    _, d = pixel_rays(cams, torch.tensor([0]), torch.tensor([20.0]), torch.tensor([15.0]))  # below centre -> -y
    assert torch.allclose(d, torch.nn.functional.normalize(torch.tensor([[0.0, -0.1, -1.0]]), dim=-1))
    o, d = image_rays(cams, 0)
    assert o.shape == (20, 40, 3) and torch.allclose(d.norm(dim=-1), torch.ones(20, 40))
    # pixel (0, 0) is centred at (0.5, 0.5)
    expected = torch.tensor([(0.5 - 20) / 100, -(0.5 - 10) / 50, -1.0])
    assert torch.allclose(d[0, 0], expected / expected.norm())


def test_camera_pose_is_applied():
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # rotate 90 degrees about +y
    c2w[:3, 3] = torch.tensor([1.0, 2, 3])
    cams = Cameras.from_fov(c2w[None], 10, 10, math.pi / 2)
    o, d = pixel_rays(cams, torch.tensor([0]), torch.tensor([5.0]), torch.tensor([5.0]))
    assert torch.allclose(o, torch.tensor([[1.0, 2, 3]])) and torch.allclose(d, torch.tensor([[-1.0, 0, 0]]))


def test_undistort_inverts_distort():
    dist = torch.tensor([0.1, -0.05, 0.002, -0.003])
    x, y = torch.meshgrid(torch.linspace(-0.6, 0.6, 9), torch.linspace(-0.5, 0.5, 7), indexing="ij")
    u, v = distort(x, y, dist)
    xu, yu = undistort(u, v, dist.expand(*u.shape, 4))
    assert torch.allclose(xu, x, atol=1e-6) and torch.allclose(yu, y, atol=1e-6)
    # and rays of a distorted camera go through the undistorted point
    cams = _camera(dist[None])
    px, py = u[3, 2] * 100 + 20, v[3, 2] * 50 + 10
    _, d = pixel_rays(cams, torch.tensor([0]), px[None], py[None])
    assert torch.allclose(d[0, :2] / -d[0, 2], torch.stack([x[3, 2], -y[3, 2]]), atol=1e-5)


def test_ray_aabb_hits_misses_and_inside():
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    o = torch.tensor([[0.0, 0, 5], [3.0, 3, 5], [0.0, 0, 0]])
    d = torch.tensor([[0.0, 0, -1], [0.0, 0, -1], [1.0, 0, 0]])
    near, far = ray_aabb(o, d, aabb)
    assert torch.allclose(near[0], torch.tensor(4.0)) and torch.allclose(far[0], torch.tensor(6.0))
    assert far[1] < near[1]
    assert near[2] < 0 and torch.allclose(far[2], torch.tensor(1.0))


def test_composite_matches_constant_density_slab():
    sigma, a, b, n = 2.0, 1.0, 2.5, 3000
    t = torch.linspace(a, b, n + 1)
    out = composite(torch.full((n,), sigma), torch.tensor([0.2, 0.5, 0.9]).expand(n, 3), t[:-1], t[1:],
                    torch.zeros(n, dtype=torch.long), 1)
    opacity = 1 - math.exp(-sigma * (b - a))
    # expected depth: integral of t * sigma * exp(-sigma (t - a)) over [a, b]
    depth = (a + 1 / sigma) - (b + 1 / sigma) * math.exp(-sigma * (b - a))
    assert abs(out["opacity"].item() - opacity) < 1e-5
    assert abs(out["depth"].item() - depth) < 1e-3
    assert torch.allclose(out["rgb"][0], torch.tensor([0.2, 0.5, 0.9]) * opacity, atol=1e-5)
    assert torch.allclose(out["weights"].sum(), torch.tensor(opacity), atol=1e-5)


def test_composite_keeps_rays_apart_and_gradients_flow():
    ray = torch.tensor([0, 0, 1, 1, 1])
    sig = torch.tensor([1.0, 3.0, 0.5, 0.5, 10.0], requires_grad=True)
    ts = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.4])
    te = ts + torch.tensor([0.5, 0.5, 0.2, 0.2, 0.2])
    out = composite(sig, torch.ones(5, 3), ts, te, ray, 3)
    assert torch.allclose(out["opacity"][0], torch.tensor(1 - math.exp(-0.5 - 1.5)))
    assert torch.allclose(out["opacity"][1], torch.tensor(1 - math.exp(-0.1 - 0.1 - 2.0)))
    assert out["opacity"][2] == 0
    out["opacity"].sum().backward()
    assert torch.isfinite(sig.grad).all() and (sig.grad > 0).all()


def test_march_emits_nothing_in_empty_cells_and_every_lattice_point_in_occupied_ones():
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    binary = torch.zeros(4, 4, 4, dtype=torch.bool)
    o, d = torch.tensor([[-0.9, -0.9, 5.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    assert len(march_rays(o, d, binary, aabb, 0.1)) == 0
    binary[0, 0, 2] = True  # z in [0, 0.5]
    s = march_rays(o, d, binary, aabb, 0.1)
    mids = 0.5 * (s.t_starts + s.t_ends)
    z = 5.0 - mids
    assert len(s) == 5 and bool(((z >= 0) & (z < 0.5)).all())
    binary[:] = True
    s = march_rays(o, d, binary, aabb, 0.1)
    assert len(s) == 20 and torch.allclose(s.t_starts, 4.0 + 0.1 * torch.arange(20.0), atol=1e-5)


def test_march_jitter_cone_and_ray_order():
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    binary = torch.ones(8, 8, 8, dtype=torch.bool)
    o = torch.tensor([[0.0, 0, 5], [5.0, 0, 0], [0.0, 9, 0]])
    d = torch.tensor([[0.0, 0, -1], [-1.0, 0, 0], [0.0, 0, 1]])  # the third ray misses
    s = march_rays(o, d, binary, aabb, 0.05, jitter=torch.tensor([0.5, 0.0, 0.0]))
    assert s.ray_indices.tolist() == sorted(s.ray_indices.tolist()) and 2 not in s.ray_indices.tolist()
    assert abs(s.t_starts[0].item() - 4.025) < 1e-5
    s = march_rays(o[:1], d[:1], binary, aabb, 0.01, cone_angle=0.01)
    steps = s.t_ends - s.t_starts
    expected = (s.t_starts * 0.01).clamp_min(0.01)
    assert torch.allclose(steps, expected, rtol=1e-3)  # steps grow with distance once t * cone > step
    assert torch.allclose(s.t_ends[:-1], s.t_starts[1:], atol=1e-5)
    t = lattice(torch.tensor([0.5]), torch.tensor([0.0, 10.0]), 0.01, 0.0, 1e10)
    assert torch.allclose(t, torch.tensor([0.5, 0.6]))


def test_occupancy_grid_update_marks_dense_cells():
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=8)
    sphere = lambda x: 50.0 * (x.norm(dim=-1) < 0.5).float()  # noqa: E731
    grid.update(sphere, step_size=0.01, warmup=True, generator=torch.Generator().manual_seed(0))
    assert grid.query(torch.zeros(1, 3)).item() and not grid.query(torch.tensor([[0.9, 0.9, 0.9]])).item()
    assert not grid.query(torch.tensor([[2.0, 0.0, 0.0]])).item()  # outside the box
    assert 0 < grid.occupied_fraction() < 0.2


def test_occupancy_grid_keeps_a_uniform_field_occupied():
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=4)
    grid.update(lambda x: torch.full(x.shape[:1], 0.3), step_size=0.01, warmup=True)
    assert grid.occupied_fraction() == 1.0  # nothing stands out, so nothing may be culled yet


def ball_scene(alpha_thre: float, contracted: bool):
    """A dense ball and a faint shell outside the box, with rays towards the ball and rays past it; the ball's
    density scale is a parameter (for gradients)."""
    g = torch.Generator().manual_seed(0)
    aabb = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
    grid = OccupancyGrid(aabb, 32, contracted=contracted)
    scale = torch.tensor(40.0, requires_grad=True)

    def geometry(x):
        r = x.norm(dim=-1)
        sigma = scale * (r < 0.6) + 2.0 * ((r > 3) & (r < 4))
        return sigma, torch.sin(3 * x) * scale / 40

    def color(feats, d):
        return torch.sigmoid(feats + d)

    origins = torch.randn(2000, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 0.9])
    dirs = torch.nn.functional.normalize(torch.randn(2000, 3, generator=g), dim=-1)
    dirs[:1000] = torch.nn.functional.normalize(-origins[:1000] + 0.2 * dirs[:1000], dim=-1)  # towards the ball
    cfg = RenderConfig(samples_per_diagonal=256, alpha_thre=alpha_thre, outer_samples=64)
    return geometry, color, grid, origins, dirs, cfg, torch.tensor([0.2, 0.5, 0.9]), scale


@pytest.mark.parametrize("alpha_thre", [0.0, 1e-3])
@pytest.mark.parametrize("contracted", [False, True])
def test_front_to_back_rendering_matches_render_rays(alpha_thre, contracted):
    """Rendering in rounds with early termination keeps and shades the same samples as the one-pass renderer."""
    from renderers.render import render_rays_front_to_back

    geometry, color, grid, origins, dirs, cfg, bg, _ = ball_scene(alpha_thre, contracted)
    with torch.no_grad():
        ref = render_rays(geometry, color, grid, origins, dirs, cfg, bg)
    got = render_rays_front_to_back(geometry, color, grid, origins, dirs, cfg, bg, round_samples=8)
    for key in ("rgb", "opacity", "depth"):
        assert torch.allclose(got[key], ref[key], atol=2e-4), key
    assert 0.3 < (ref["opacity"] > 0.99).float().mean() < 1  # some rays end in the ball, some pass it
    marched = len(march(origins, dirs, grid, cfg))
    assert int(got["samples"]) < 0.7 * marched  # and samples behind the ball were never evaluated


@pytest.mark.parametrize("contracted", [False, True])
def test_image_pruning_settings_change_images_only(contracted):
    """``image_stop_eps`` / ``image_weight_thre`` stop rays earlier and leave light samples out of images, by at
    most about the light samples' weight and the stopping transmittance per ray; training's renderer ignores
    them."""
    from renderers.render import render_rays_front_to_back

    geometry, color, grid, origins, dirs, cfg, bg, _ = ball_scene(0.0, contracted)
    loose = dataclasses.replace(cfg, image_stop_eps=1e-2, image_weight_thre=1e-3)
    assert loose.for_images().early_stop_eps == 1e-2 and cfg.for_images() is cfg
    with torch.no_grad():
        a, b = render_rays(geometry, color, grid, origins, dirs, cfg, bg), render_rays(geometry, color, grid,
                                                                                         origins, dirs, loose, bg)
    assert all(torch.equal(a[k], b[k]) for k in ("rgb", "opacity", "depth", "samples"))
    full = render_rays_front_to_back(geometry, color, grid, origins, dirs, cfg, bg)
    fast = render_rays_front_to_back(geometry, color, grid, origins, dirs, loose.for_images(), bg)
    assert int(fast["samples"]) < int(full["samples"])  # rays stopped earlier
    gap = full["opacity"] - fast["opacity"]
    assert (gap >= -1e-6).all() and gap.max() > 1e-4  # light samples were left out
    n_light = (full["samples"] / len(origins)).item()  # a generous bound on the light samples of a ray
    assert (full["rgb"] - fast["rgb"]).abs().max() <= 1e-2 + 1e-3 * n_light


@pytest.mark.parametrize("contracted", [False, True])
def test_pruning_first_keeps_the_same_samples_and_gradients(contracted):
    """Training's two ways to prune (one autograd pass over every marched sample, or the kept samples found front
    to back first) render the same colours with the same gradients."""
    geometry, color, grid, origins, dirs, cfg, bg, scale = ball_scene(1e-3, contracted)
    outs, grads = [], []
    for prune_first in (False, True):
        out = render_rays(geometry, color, grid, origins, dirs, cfg, bg, prune_first=prune_first)
        (grad,) = torch.autograd.grad(out["rgb"].square().sum(), scale)
        outs.append(out)
        grads.append(grad)
    assert int(outs[0]["samples"]) == int(outs[1]["samples"]) < 0.7 * int(outs[0]["marched"])
    assert int(outs[0]["marched"]) == int(outs[1]["marched"])
    assert torch.allclose(outs[0]["rgb"], outs[1]["rgb"], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4) and grads[0].abs() > 0
