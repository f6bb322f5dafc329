"""Gaussian splatting: a single Gaussian projects to the expected ellipse, the tile rasterizer equals a brute-force
per-pixel oracle (values and gradients), gradients agree with finite differences in float64, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from renderers import splatting as sp
from scenes.cameras import Cameras


def look_at_origin(eye, width=40, height=32, fov=0.9) -> Cameras:
    """One camera at ``eye`` looking at the origin, world +Y up (OpenGL camera-to-world)."""
    eye = torch.tensor(eye, dtype=torch.float64)
    back = eye / eye.norm()
    right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), back)
    right = right / right.norm()
    up = torch.linalg.cross(back, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
    return Cameras.from_fov(c2w[None], width, height, fov)


def scene(n=40, seed=0, dtype=torch.float64, spread=0.8, opacity=(0.2, 0.95)):
    """Random Gaussians around the origin plus the edge cases: one behind the camera, one off screen, one on
    a tile border, and a stack of opaque ones that makes pixels stop early."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * spread
    scales = torch.exp(torch.rand(n, 3, generator=g) * 1.5 - 3.2)
    quats = torch.randn(n, 4, generator=g)
    opac = opacity[0] + torch.rand(n, generator=g) * (opacity[1] - opacity[0])
    colors = torch.rand(n, 3, generator=g)
    means[0] = torch.tensor([0.0, 0.0, 5.0])  # behind the camera at z = 3
    means[1] = torch.tensor([6.0, 0.0, 0.0])  # far off screen
    means[2:8] = torch.tensor([0.02, -0.01, 0.0]) + 0.01 * torch.arange(6.0)[:, None]  # an opaque stack
    scales[2:8] = 0.15
    opac[2:8] = 0.97
    return [t.to(dtype) for t in (means, quats, scales, opac, colors)]


def test_single_gaussian_projects_to_the_expected_ellipse():
    cams = look_at_origin([0.0, 0.0, 3.0], width=64, height=48)
    theta, sx, sy, sz = 0.4, 0.2, 0.08, 0.05
    quat = torch.tensor([[math.cos(theta / 2), 0.0, 0.0, math.sin(theta / 2)]], dtype=torch.float64)  # about z
    means = torch.tensor([[0.1, 0.05, 0.0]], dtype=torch.float64)
    scales = torch.tensor([[sx, sy, sz]], dtype=torch.float64)
    proj = sp.project_gaussians(means, quat, scales, cams, 0)
    f, cx, cy, d = float(cams.fx[0]), float(cams.cx[0]), float(cams.cy[0]), 3.0
    # The camera looks down -z from z = 3: world x -> image right, world y -> image up (pixel y down).
    assert torch.allclose(proj.means2d[0], torch.tensor([cx + f * 0.1 / d, cy - f * 0.05 / d], dtype=torch.float64))
    assert proj.depths[0].item() == pytest.approx(d)
    # Orthographic limit of EWA at the image centre plus the first-order x/z terms: build it exactly.
    x, y = 0.1, -0.05  # camera coordinates (OpenCV: y down)
    J = torch.tensor([[f / d, 0, -f * x / d**2], [0, f / d, -f * y / d**2]], dtype=torch.float64)
    rot = torch.tensor([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]],
                       dtype=torch.float64)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    cov3 = rot @ torch.diag(torch.tensor([sx, sy, sz], dtype=torch.float64) ** 2) @ rot.T
    cov2 = J @ flip @ cov3 @ flip.T @ J.T + 0.3 * torch.eye(2, dtype=torch.float64)
    conic = torch.linalg.inv(cov2)
    assert torch.allclose(proj.conics[0], torch.stack([conic[0, 0], conic[0, 1], conic[1, 1]]), rtol=1e-9)
    # Ellipse axes: the major axis (sx) is turned by -theta on screen (the y axis flips), the minor one is sy.
    evals, evecs = torch.linalg.eigh(cov2)
    assert math.sqrt(evals[1]) == pytest.approx(math.sqrt((f * sx / d) ** 2 + 0.3), rel=2e-2)
    major = evecs[:, 1] * torch.sign(evecs[0, 1])
    assert math.atan2(float(major[1]), float(major[0])) == pytest.approx(-theta, abs=2e-2)
    assert proj.radii[0].item() == math.ceil(3 * math.sqrt(float(evals[1])))
    # Rendered alpha is o * exp(-0.5 d^T conic d) at pixel centres (within the footprint, above 1/255).
    opac = torch.tensor([0.8], dtype=torch.float64)
    _, alpha = sp.rasterize_gaussians(proj, torch.ones(1, 3, dtype=torch.float64), opac, 64, 48)
    py, px = torch.meshgrid(torch.arange(48.0, dtype=torch.float64) + 0.5, torch.arange(64.0, dtype=torch.float64) + 0.5,
                            indexing="ij")
    dxy = torch.stack([px - proj.means2d[0, 0], py - proj.means2d[0, 1]], -1)
    expected = 0.8 * torch.exp(-0.5 * torch.einsum("hwi,ij,hwj->hw", dxy, conic, dxy))
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    inside = (dxy.abs() <= proj.radii[0].item()).all(-1)
    assert torch.allclose(alpha[inside], expected[inside], atol=1e-12)
    assert (alpha[~inside] == 0).all() or alpha[~inside].max() < 0.8 * math.exp(-4.5)


def test_culling_behind_camera_and_off_screen():
    cams = look_at_origin([0.0, 0.0, 3.0])
    means, quats, scales, opac, colors = scene()
    proj = sp.project_gaussians(means, quats, scales, cams, 0)
    assert proj.radii[0] == 0 and proj.radii[1] == 0
    assert (proj.radii[2:] > 0).sum() > 20
    assert proj.radii.dtype == torch.int32
    assert torch.isfinite(proj.means2d).all() and torch.isfinite(proj.conics).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_tile_reference_equals_brute_force(seed):
    cams = look_at_origin([0.4, 0.3, 3.0], width=40, height=35)
    leaves = [t.requires_grad_() for t in scene(seed=seed)]
    means, quats, scales, opac, colors = leaves
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    coef = torch.rand(35, 40, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    outs, grads = [], []
    for raster in (sp.rasterize_reference, sp.rasterize_brute_force):
        proj = sp.project_gaussians(means, quats, scales, cams, 0)
        image, alpha = raster(proj, colors, opac, 40, 35, bg)
        outs.append((image, alpha))
        loss = (image * coef[..., :3]).sum() + (alpha * coef[..., 3]).sum()
        grads.append(torch.autograd.grad(loss, leaves))
    (i_t, a_t), (i_b, a_b) = outs
    assert a_t.max() > 0.9 and (a_t > 0).float().mean() > 0.3  # the scene covers the image, some pixels stop
    assert torch.allclose(i_t, i_b, atol=1e-12) and torch.allclose(a_t, a_b, atol=1e-12)
    for g_t, g_b in zip(*grads):
        assert torch.allclose(g_t, g_b, atol=1e-10)
        assert g_t.abs().sum() > 0


def test_early_stop_leaves_transmittance_above_threshold():
    """A stack of opaque Gaussians: the pixel stops once T would fall below 1e-4, so alpha <= 1 - 1e-4."""
    cams = look_at_origin([0.0, 0.0, 3.0], width=17, height=17)  # pixel (8, 8) is centred on the Gaussians
    n = 12
    means = torch.zeros(n, 3, dtype=torch.float64)
    means[:, 2] = torch.linspace(0, 1, n, dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(n, 1)
    scales = torch.full((n, 3), 0.3, dtype=torch.float64)
    opac = torch.full((n,), 0.99, dtype=torch.float64)
    colors = torch.eye(n, 3, dtype=torch.float64)
    proj = sp.project_gaussians(means, quats, scales, cams, 0)
    image, alpha = sp.rasterize_gaussians(proj, colors, opac, 17, 17)
    centre = alpha[8, 8].item()
    # 0.99 capped alphas: T after k of them is 0.01^k; the third would give 1e-6 < 1e-4, so two are added.
    assert centre == pytest.approx(1 - 0.01**2, abs=1e-9)
    brute, alpha_b = sp.rasterize_brute_force(proj, colors, opac, 17, 17)
    assert torch.allclose(image, brute, atol=1e-12) and torch.allclose(alpha, alpha_b, atol=1e-12)


def test_zero_gaussians_give_the_background():
    cams = look_at_origin([0.0, 0.0, 3.0], width=20, height=10)
    z = torch.zeros(0, 3)
    out = sp.render_gaussians(z, torch.zeros(0, 4), z, torch.zeros(0), z, cams, 0, torch.tensor([0.1, 0.2, 0.3]))
    assert out["rgb"].shape == (10, 20, 3) and torch.allclose(out["rgb"], torch.tensor([0.1, 0.2, 0.3]).expand(10, 20, 3))
    assert (out["opacity"] == 0).all() and (out["depth"] == 0).all() and out["radii"].shape == (0,)


def test_render_gradients_match_finite_differences():
    """gradcheck in float64 on a tiny scene through projection, binning, compositing and the depth channel."""
    cams = look_at_origin([0.3, 0.2, 3.0], width=20, height=18, fov=0.6)
    means, quats, scales, opac, colors = scene(n=10, seed=3, spread=0.3)
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)

    def f(means, quats, scales, opac, colors):
        out = sp.render_gaussians(means, quats, scales, opac, colors, cams, 0, bg)
        return out["rgb"], out["depth"], out["opacity"]

    inputs = tuple(t.requires_grad_() for t in (means, quats, scales, opac, colors))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_render_outputs_and_means2d_gradient():
    cams = look_at_origin([0.0, 0.0, 3.0], width=24, height=24)
    means, quats, scales, opac, colors = (t.float() for t in scene(n=20, seed=4))
    means.requires_grad_()
    out = sp.render_gaussians(means, quats, scales, opac, colors, cams, 0, torch.zeros(3))
    hit = out["opacity"] > 0.5
    assert hit.any() and (out["depth"][hit] > 2).all() and (out["depth"][hit] < 4).all()
    out["rgb"].sum().backward()
    assert out["means2d"].grad is not None and out["means2d"].grad[out["radii"] > 0].abs().sum() > 0
