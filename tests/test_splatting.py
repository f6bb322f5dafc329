"""Gaussian splatting: a single Gaussian projects to the expected ellipse, the tile rasterizer equals a brute-force
per-pixel oracle (values and gradients), gradients agree with finite differences in float64, edge cases."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import devices, needs_device
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


def rasterize_brute_force(proj: sp.Projection, colors: torch.Tensor, opacities: torch.Tensor, width: int,
                          height: int, background: torch.Tensor | None = None, tile_size: int = 16
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The tile rasterizer's oracle (tiny scenes only): every pixel at once, a sequential loop over all Gaussians in
    depth order, written as 3DGS's per-pixel loop (a Gaussian reaches a pixel iff its square covers the pixel's
    tile)."""
    dtype = colors.dtype
    py, px = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    T = torch.ones(px.numel(), dtype=dtype)
    acc = torch.zeros(px.numel(), colors.shape[1], dtype=dtype)
    weight = torch.zeros(px.numel(), dtype=dtype)
    done = torch.zeros(px.numel(), dtype=torch.bool)
    x0, x1, y0, y1 = sp.tile_rects(proj.means2d, proj.radii, width, height, tile_size)
    tx, ty = px // tile_size, py // tile_size
    for g in sorted(range(colors.shape[0]), key=lambda k: (float(proj.depths[k].detach()), k)):
        if int(proj.radii[g]) <= 0:
            continue
        covered = (tx >= x0[g]) & (tx <= x1[g]) & (ty >= y0[g]) & (ty <= y1[g])
        dx = proj.means2d[g, 0] - (px.to(dtype) + 0.5)
        dy = proj.means2d[g, 1] - (py.to(dtype) + 0.5)
        a, b, c = proj.conics[g]
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        alpha = torch.clamp(opacities[g] * torch.exp(power), max=sp.ALPHA_MAX)
        live = covered & ~done & (power <= 0) & (alpha >= sp.ALPHA_MIN)
        test_T = T * (1 - alpha)
        stop = live & (test_T < sp.T_MIN)
        done = done | stop
        live = live & ~stop
        w = torch.where(live, alpha * T, torch.zeros_like(alpha))
        acc = acc + w[:, None] * colors[g]
        weight = weight + w
        T = torch.where(live, test_T, T)
    image, alpha = acc.reshape(height, width, -1), weight.reshape(height, width)
    if background is not None:
        image = image + (1 - alpha)[..., None] * background.to(dtype)
    return image, alpha


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
    centres = [torch.arange(n, dtype=torch.float64) + 0.5 for n in (48, 64)]
    py, px = torch.meshgrid(*centres, indexing="ij")
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
    for raster in (sp.rasterize_reference, rasterize_brute_force):
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
    brute, alpha_b = rasterize_brute_force(proj, colors, opac, 17, 17)
    assert torch.allclose(image, brute, atol=1e-12) and torch.allclose(alpha, alpha_b, atol=1e-12)


def test_zero_gaussians_give_the_background():
    cams = look_at_origin([0.0, 0.0, 3.0], width=20, height=10)
    z = torch.zeros(0, 3)
    out = sp.render_gaussians(z, torch.zeros(0, 4), z, torch.zeros(0), z, cams, 0, torch.tensor([0.1, 0.2, 0.3]))
    assert out["rgb"].shape == (10, 20, 3)
    assert torch.allclose(out["rgb"], torch.tensor([0.1, 0.2, 0.3]).expand(10, 20, 3))
    assert (out["opacity"] == 0).all() and (out["depth"] == 0).all() and out["radii"].shape == (0,)


def posed(cams: Cameras, c2w: torch.Tensor) -> Cameras:
    """``cams`` with the camera-to-world matrices ``c2w`` (e.g. a tensor that requires grad)."""
    return dataclasses.replace(cams, c2w=c2w)


@pytest.mark.parametrize("antialiased", [False, True])
def test_render_gradients_match_finite_differences(antialiased):
    """gradcheck in float64 on a tiny scene through projection (and the anti-aliasing compensation), binning,
    compositing and the depth channel, w.r.t. the Gaussians and the camera's pose (c2w)."""
    cams = look_at_origin([0.3, 0.2, 3.0], width=20, height=18, fov=0.6)
    means, quats, scales, opac, colors = scene(n=10, seed=3, spread=0.3)
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)

    def f(means, quats, scales, opac, colors, c2w):
        out = sp.render_gaussians(means, quats, scales, opac, colors, posed(cams, c2w), 0, bg,
                                  antialiased=antialiased)
        return out["rgb"], out["depth"], out["opacity"]

    inputs = tuple(t.requires_grad_() for t in (means, quats, scales, opac, colors, cams.c2w.double()))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-5, rtol=1e-4, fast_mode=True)
    (pose_grad,) = torch.autograd.grad(f(*inputs)[0].sum(), inputs[-1])
    assert pose_grad[0, :3].abs().min() > 0  # every entry of R | t reaches the image


def energy_at(width: int, antialiased: bool) -> float:
    """Summed opacity of one tiny Gaussian (0.25 px wide at 32 px) in a ``width``-pixel square view, times the
    area of a pixel relative to the 32-pixel view's: the share of the image it covers, in 32-px pixels."""
    cams = look_at_origin([0.0, 0.0, 3.0], width=32, height=32, fov=0.6).resized(width, width)
    scale = 0.25 * 3.0 / float(look_at_origin([0.0, 0.0, 3.0], width=32, height=32, fov=0.6).fx[0])
    means, quats = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    out = sp.render_gaussians(means, quats, torch.full((1, 3), scale), torch.tensor([0.9]), torch.ones(1, 3), cams,
                              0, torch.zeros(3), antialiased=antialiased)
    return float(out["opacity"].sum()) * (32 / width) ** 2


def test_antialiased_tiny_gaussian_keeps_its_energy_across_resolutions():
    """A sub-pixel Gaussian at 32 and at 128 pixels: anti-aliased it covers the same share of the image (no
    flicker as the resolution changes); without it the 0.3 px^2 dilation makes it 4.5x larger at 32 px."""
    lo, hi = energy_at(32, antialiased=True), energy_at(128, antialiased=True)
    assert abs(lo / hi - 1) < 0.05, (lo, hi)
    lo, hi = energy_at(32, antialiased=False), energy_at(128, antialiased=False)
    assert lo / hi > 3, (lo, hi)


def test_render_outputs_and_means2d_gradient():
    cams = look_at_origin([0.0, 0.0, 3.0], width=24, height=24)
    means, quats, scales, opac, colors = (t.float() for t in scene(n=20, seed=4))
    means.requires_grad_()
    out = sp.render_gaussians(means, quats, scales, opac, colors, cams, 0, torch.zeros(3))
    hit = out["opacity"] > 0.5
    assert hit.any() and (out["depth"][hit] > 2).all() and (out["depth"][hit] < 4).all()
    out["rgb"].sum().backward()
    assert out["means2d"].grad is not None and out["means2d"].grad[out["radii"] > 0].abs().sum() > 0


# -- native kernels against the reference ----------------------------------------------------------------------

def close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> bool:
    """Max abs error below ``rel`` times the values' scale (at least 1): catches any misplaced index."""
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    return want.shape == got.shape and (got.cpu() - want).abs().max().item() <= rel * scale if want.numel() else True


def grads_of(fn, inputs, coefs):
    """Outputs of ``fn(*inputs)`` and the gradients of sum(out * coef) w.r.t. every input."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outs = fn(*leaves)
    loss = sum((o * c.to(o.device)).sum() for o, c in zip(outs, coefs))
    return [o.detach().cpu() for o in outs], [g.cpu() for g in torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("device", devices())
def test_native_projection_matches_reference(ops, device):
    needs_device(device, ops)
    cams = look_at_origin([0.4, 0.3, 3.0], width=40, height=35)
    means, quats, scales, _, _ = (t.float() for t in scene(n=300, seed=5, spread=1.2))
    means[8] = torch.tensor([1.8, 0.0, 0.0])  # outside the Jacobian's clamp, still projected
    quats[9] = 0.0  # degenerate quaternion
    cam = sp.Camera.of(cams, 0, torch.float32, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    scales[10] = torch.tensor([1e-4, 1e-4, 1e-4])  # sub-pixel: a compensation far below 1
    coefs = [torch.randn(300, 2, generator=g), torch.randn(300, 3, generator=g), torch.randn(300, generator=g),
             torch.randn(300, generator=g)]

    def ref(m, q, s, c2w):
        p = sp.project_reference(m, q, s, sp.Camera.of(posed(cams, c2w), 0, torch.float32, m.device))
        return p.means2d, p.conics, p.depths, p.compensations

    def nat(m, q, s, c2w):
        p = sp.project_gaussians(m, q, s, posed(cams, c2w), 0)
        nat.radii = p.radii.cpu()
        return p.means2d, p.conics, p.depths, p.compensations

    c2w = cams.c2w.float()  # the pose's gradient: the view matrix's, summed over the Gaussians, through Camera.of
    out_r, grad_r = grads_of(ref, (means, quats, scales, c2w), coefs)
    out_n, grad_n = grads_of(nat, [t.to(device) for t in (means, quats, scales)] + [c2w], coefs)
    for got, want in zip(out_n + grad_n, out_r + grad_r):
        assert close(got, want)
    assert grad_r[3][0, :3].abs().min() > 1  # every entry of R | t has a gradient, matched above
    proj_r = sp.project_reference(means, quats, scales, cam)
    radii_r, comps = proj_r.radii, proj_r.compensations
    assert torch.equal(nat.radii, radii_r) and radii_r[0] == 0 and radii_r[1] == 0 and (radii_r > 0).sum() > 100
    assert comps[10] < 0.01 and comps.max() < 1 and comps.median() > 0.5


def screen_scene(n=150, width=53, height=37, seed=0, channels=3):
    """Projected Gaussians drawn directly on screen: many means on tile borders (x or y a multiple of 16),
    some off screen, some culled, varied sizes and opacities, depths with ties, and an opaque stack."""
    g = torch.Generator().manual_seed(seed)
    m2 = torch.rand(n, 2, generator=g) * torch.tensor([width + 20.0, height + 20.0]) - 10
    m2[: n // 4, 0] = 16.0 * torch.randint(0, 4, (n // 4,), generator=g)
    m2[n // 4: n // 2, 1] = 16.0 * torch.randint(0, 3, (n // 2 - n // 4,), generator=g)
    theta = torch.rand(n, generator=g) * math.pi
    sd = torch.exp(torch.rand(n, 2, generator=g) * 2.5 - 0.5)
    m2[-10:] = torch.tensor([20.3, 17.6]) + torch.rand(10, 2, generator=g)  # a stack that stops pixels early
    sd[-10:] = 4.0
    c, s = torch.cos(theta), torch.sin(theta)
    a = (c * sd[:, 0]) ** 2 + (s * sd[:, 1]) ** 2 + 0.3
    b = c * s * (sd[:, 0] ** 2 - sd[:, 1] ** 2)
    cc = (s * sd[:, 0]) ** 2 + (c * sd[:, 1]) ** 2 + 0.3
    det = a * cc - b * b
    conics = torch.stack([cc / det, -b / det, a / det], -1)
    r = sp.screen_radius(torch.stack([a, b, cc], -1))
    on = (m2[:, 0] + r >= 0) & (m2[:, 0] - r < width) & (m2[:, 1] + r >= 0) & (m2[:, 1] - r < height)
    radii = torch.where(on, r, torch.zeros_like(r)).int()
    radii[::17] = 0
    depths = torch.randint(1, 40, (n,), generator=g).float() / 8  # ties: order by id
    opac = torch.rand(n, generator=g) * 0.98 + 0.01
    opac[::5] = 0.999  # above the 0.99 cap: no gradient through alpha there
    opac[-10:] = 0.95
    colors = torch.rand(n, channels, generator=g)
    return sp.Projection(m2, conics, depths, radii), colors, opac


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("channels,tile_size", [(3, 16), (1, 16), (7, 8)])
def test_native_rasterizer_matches_reference(ops, device, channels, tile_size):
    needs_device(device, ops)
    width, height = 53, 37
    proj, colors, opac = screen_scene(channels=channels)
    ids_r, off_r = sp.bin_gaussians(proj, opac, width, height, tile_size)
    ids_n, off_n = ops.splat_bin(*(t.to(device) for t in (proj.means2d, proj.conics, opac, proj.radii, proj.depths)),
                                 width, height, tile_size)
    assert torch.equal(ids_n.cpu().long(), ids_r) and torch.equal(off_n.cpu(), off_r)
    bg = torch.linspace(0.1, 0.9, channels)
    g = torch.Generator().manual_seed(3)
    coefs = [torch.randn(height, width, channels, generator=g), torch.randn(height, width, generator=g)]

    def run(raster, dev):
        def f(m2, con, col, op):
            return raster(sp.Projection(m2, con, proj.depths.to(dev), proj.radii.to(dev)), col, op, width, height,
                          bg.to(dev), tile_size)
        return grads_of(f, [t.to(dev) for t in (proj.means2d, proj.conics, colors, opac)], coefs)

    out_r, grad_r = run(sp.rasterize_reference, "cpu")
    out_n, grad_n = run(sp.rasterize_gaussians, device)
    alpha = out_r[1]
    assert alpha.max() > 0.999 and alpha.min() < 0.5  # opaque pixels (that stop early) and translucent ones
    for got, want in zip(out_n + grad_n, out_r + grad_r):
        assert close(got, want)
    assert all(g.abs().sum() > 0 for g in grad_r)
    capped = opac > 0.99
    assert (grad_r[3][capped] != 0).any()  # capped where exp(power) is small enough, not capped elsewhere


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("tile_size", [16, 8])
def test_binning_drops_only_tiles_where_no_pixel_takes_the_gaussian(ops, device, tile_size):
    """Binning keeps the tiles of a Gaussian's square that its ellipse of alpha >= 1/255 meets: every pixel where
    the rasterizer's test passes (power <= 0, alpha >= 1/255) lies in a tile binned for that Gaussian, including
    pixels on the ellipse's rim; faint and elongated Gaussians lose most of their square; opacities below 1/255 get
    no tile; a degenerate conic keeps its whole square; the native kernels bin exactly the reference's pairs."""
    needs_device(device, ops)
    width, height, n = 83, 61, 400
    g = torch.Generator().manual_seed(5)
    m2 = torch.rand(n, 2, generator=g) * torch.tensor([width + 30.0, height + 30.0]) - 15
    theta = torch.rand(n, generator=g) * math.pi
    sd = torch.exp(torch.rand(n, 2, generator=g) * 3.5 - 1.0)  # 0.37 to 12 px, up to 33:1 elongations
    c, s_ = torch.cos(theta), torch.sin(theta)
    a = (c * sd[:, 0]) ** 2 + (s_ * sd[:, 1]) ** 2 + 0.3
    b = c * s_ * (sd[:, 0] ** 2 - sd[:, 1] ** 2)
    cc = (s_ * sd[:, 0]) ** 2 + (c * sd[:, 1]) ** 2 + 0.3
    det = a * cc - b * b
    conics = torch.stack([cc / det, -b / det, a / det], -1)
    conics[:3] = torch.tensor([1.0, 2.0, 1.0])  # not positive definite: the whole square stays
    r = sp.screen_radius(torch.stack([a, b, cc], -1))
    r[:3] = 5.0
    on = (m2[:, 0] + r >= 0) & (m2[:, 0] - r < width) & (m2[:, 1] + r >= 0) & (m2[:, 1] - r < height)
    radii = torch.where(on, r, torch.zeros_like(r)).int()
    opac = torch.exp(torch.rand(n, generator=g) * 7.0 - 7.0)  # 0.001 to 1: some below 1/255
    opac[:3] = 0.5
    proj = sp.Projection(m2, conics, torch.rand(n, generator=g), radii)
    ids, offsets = sp.bin_gaussians(proj, opac, width, height, tile_size)
    ids_n, off_n = ops.splat_bin(*(t.to(device) for t in (m2, conics, opac, radii, proj.depths)), width, height,
                                 tile_size)
    assert torch.equal(ids_n.cpu().long(), ids) and torch.equal(off_n.cpu(), offsets)

    gw = (width + tile_size - 1) // tile_size
    tile_of = torch.repeat_interleave(torch.arange(len(offsets) - 1), offsets[1:] - offsets[:-1])
    binned = set(zip(ids.tolist(), tile_of.tolist()))
    py, px = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    alpha = sp.gaussian_alpha(px, py, m2, conics, opac)  # [P, N], 0 where the pixel skips the Gaussian
    x0, x1, y0, y1 = sp.tile_rects(m2, radii, width, height, tile_size)
    tx, ty = px // tile_size, py // tile_size
    n_square, rims = 0, 0
    for k in torch.nonzero(radii > 0)[:, 0].tolist():
        in_square = (tx >= x0[k]) & (tx <= x1[k]) & (ty >= y0[k]) & (ty <= y1[k])
        n_square += int((x1[k] - x0[k] + 1) * (y1[k] - y0[k] + 1))
        taken = in_square & (alpha[:, k] > 0)
        tiles = set((ty[taken] * gw + tx[taken]).tolist())
        assert tiles <= {t for i, t in binned if i == k}, k
        rims += int((taken & (alpha[:, k] < 2 * sp.ALPHA_MIN)).sum())
        if k < 3:  # degenerate: every tile of the square
            assert sum(i == k for i, _ in binned) == (x1[k] - x0[k] + 1) * (y1[k] - y0[k] + 1)
    assert rims > 50  # pixels just above the threshold, where a too-tight ellipse would drop a tile
    faint = (opac < sp.ALPHA_MIN) & (radii > 0)
    assert faint.sum() > 10 and not any(faint[i] for i, _ in binned)
    assert len(ids) < 0.6 * n_square


@pytest.mark.parametrize("device", devices())
def test_native_rasterizer_matches_reference_where_tiles_and_rows_saturate(ops, device):
    """Tiles whose pixels all stop partway through their Gaussians (the CPU forward recounts live pixels only
    every few Gaussians, then skips finished rows and ends finished tiles): the same image, alpha and gradients
    as the reference, and pixels of a tile that stop at different Gaussians."""
    needs_device(device, ops)
    width, height, n_wall, n_behind = 40, 24, 60, 60
    g = torch.Generator().manual_seed(11)
    # an opaque wall over the whole first tile (x, y < 16) and over the top rows of the second (16 <= x < 32,
    # y < 8), nearest first; then small Gaussians all over, some behind the walls and some in front of them
    wall = torch.rand(n_wall, 2, generator=g) * 16
    wall[n_wall // 2:] = wall[n_wall // 2:] * torch.tensor([1.0, 0.5]) + torch.tensor([16.0, 0.0])
    rest = torch.rand(n_behind, 2, generator=g) * torch.tensor([float(width), float(height)])
    means2d = torch.cat([wall, rest])
    sd = torch.cat([torch.full((n_wall,), 5.0), 0.8 + 2 * torch.rand(n_behind, generator=g)])
    conics = torch.stack([1 / sd ** 2, torch.zeros_like(sd), 1 / sd ** 2], -1)
    depths = torch.cat([torch.linspace(1.0, 2.0, n_wall), torch.rand(n_behind, generator=g) * 4])
    opac = torch.cat([torch.full((n_wall,), 0.98), torch.rand(n_behind, generator=g) * 0.9 + 0.05])
    radii = torch.ceil(3 * sd).int()
    colors = torch.rand(len(sd), 3, generator=g)
    proj = sp.Projection(means2d, conics, depths, radii)
    ids, offsets = sp.bin_gaussians(proj, opac, width, height)
    assert offsets[1] - offsets[0] > 40  # the saturated tile holds many more Gaussians than are taken
    bg = torch.tensor([0.3, 0.6, 0.9])
    coefs = [torch.randn(height, width, 3, generator=g), torch.randn(height, width, generator=g)]

    def run(raster, dev):
        def f(m2, con, col, op):
            return raster(sp.Projection(m2, con, depths.to(dev), radii.to(dev)), col, op, width, height, bg.to(dev))
        return grads_of(f, [t.to(dev) for t in (means2d, conics, colors, opac)], coefs)

    out_r, grad_r = run(sp.rasterize_reference, "cpu")
    out_n, grad_n = run(sp.rasterize_gaussians, device)
    for got, want in zip(out_n + grad_n, out_r + grad_r):
        assert close(got, want)
    alpha = out_r[1]
    for region in (alpha[:16, :16], alpha[:8, 16:32]):  # stopped there
        assert (region > 0.95).all() and (region > 0.999).float().mean() > 0.8
    assert (alpha[12:] < 0.99).any()  # translucent elsewhere
    with torch.no_grad():
        view = sp.rasterize_gaussians(proj, colors.to(device), opac.to(device), width, height, bg.to(device))
    assert all(torch.equal(v.cpu(), o) for v, o in zip(view, out_n))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("antialiased", [False, True])
def test_native_render_matches_reference_end_to_end(ops, device, antialiased, monkeypatch):
    cams = look_at_origin([0.4, 0.3, 3.0], width=45, height=33)
    inputs = [t.float() for t in scene(n=200, seed=6)]
    bg = torch.tensor([0.2, 0.5, 0.7])
    g = torch.Generator().manual_seed(4)
    coefs = [torch.randn(33, 45, 3, generator=g), torch.randn(33, 45, generator=g), torch.randn(33, 45, generator=g)]

    inputs[2][:20] = 3e-3  # small Gaussians, whose compensation matters

    def f(*args):  # the Gaussians and the pose (c2w), whose gradient is compared too
        out = sp.render_gaussians(*args[:-1], posed(cams, args[-1]), 0, bg.to(args[0].device),
                                  antialiased=antialiased)
        return out["rgb"], out["depth"], out["opacity"]

    needs_device(device, ops)
    c2w = cams.c2w.float()
    out_n, grad_n = grads_of(f, [t.to(device) for t in inputs] + [c2w], coefs)
    monkeypatch.setenv("FIELDS_NATIVE", "0")
    out_r, grad_r = grads_of(f, inputs + [c2w], coefs)
    for got, want in zip(out_n + grad_n, out_r + grad_r):
        assert close(got, want, rel=2e-5)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("antialiased", [False, True])
def test_viewing_render_equals_the_training_forward(ops, device, antialiased):
    """Without grad the native render finishes pixels in the kernel (splat_rasterize_render: background, depth
    as the weighted mean, nothing saved per pixel): the same numbers as the forward that training runs."""
    needs_device(device, ops)
    cams = look_at_origin([0.4, 0.3, 3.0], width=53, height=37)
    inputs = [t.float().to(device).requires_grad_() for t in scene(n=300, seed=7)]
    bg = torch.tensor([0.2, 0.5, 0.7], device=device)
    train = sp.render_gaussians(*inputs, cams, 0, bg, antialiased=antialiased)
    assert train["rgb"].requires_grad  # the training forward (RasterizeGaussians) ran
    with torch.no_grad():
        view = sp.render_gaussians(*inputs, cams, 0, bg, antialiased=antialiased)
    opacity = train["opacity"].detach()
    assert opacity.max() > 0.99 and (opacity == 0).any() and ((opacity > 0) & (opacity < 0.5)).any()
    for key in ("rgb", "depth", "opacity"):
        assert torch.equal(view[key], train[key].detach()), key
    assert torch.equal(view["radii"], train["radii"])
    bg4 = torch.tensor([0.2, 0.5, 0.7, 0.1, 0.3], device=device)
    with pytest.raises(RuntimeError, match="background"):  # more background channels than colour channels
        ops.splat_rasterize_render(*(torch.zeros(0, k, device=device) for k in (2, 3, 4)),
                                   torch.zeros(0, device=device), torch.zeros(0, dtype=torch.int32, device=device),
                                   torch.zeros(7, dtype=torch.long, device=device), bg4, 40, 20, 16)


def test_native_zero_gaussians_and_nothing_visible(ops):
    cams = look_at_origin([0.0, 0.0, 3.0], width=20, height=10)
    bg = torch.tensor([0.1, 0.2, 0.3])
    z = torch.zeros(0, 3, requires_grad=True)
    out = sp.render_gaussians(z, torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3), cams, 0, bg)
    assert torch.allclose(out["rgb"], bg.expand(10, 20, 3)) and (out["opacity"] == 0).all()
    out["rgb"].sum().backward()
    assert z.grad.shape == (0, 3)
    behind = torch.tensor([[0.0, 0.0, 5.0]], requires_grad=True)
    out = sp.render_gaussians(behind, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.5), torch.tensor([0.9]),
                              torch.ones(1, 3), cams, 0, bg)
    assert out["radii"].tolist() == [0] and torch.allclose(out["rgb"], bg.expand(10, 20, 3))
    out["rgb"].sum().backward()
    assert (behind.grad == 0).all()


def test_failed_native_build_falls_back_to_the_reference(monkeypatch):
    from renderers.native import loader

    monkeypatch.setattr(loader, "_state", {"ops": None})
    cams = look_at_origin([0.0, 0.0, 3.0], width=20, height=16)
    means, quats, scales, opac, colors = (t.float() for t in scene(n=20, seed=7))
    out = sp.render_gaussians(means, quats, scales, opac, colors, cams, 0, torch.zeros(3))
    monkeypatch.setattr(loader, "_state", {})
    monkeypatch.setenv("FIELDS_NATIVE", "0")
    ref = sp.render_gaussians(means, quats, scales, opac, colors, cams, 0, torch.zeros(3))
    assert torch.equal(out["rgb"], ref["rgb"]) and out["opacity"].max() > 0.5


# -- training crops --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("native_window", [False, True])
def test_a_window_has_the_gradients_of_the_whole_image_restricted_to_it(native_window, monkeypatch, request):
    """A training crop (tile-aligned window) renders the whole image's pixels there, and a loss on the crop has
    the gradients of the same loss on the whole image (plain-PyTorch reference) with zero weight elsewhere."""
    width, height, window = 70, 50, (16, 32, 37, 18)  # tile-aligned origin, ragged size reaching the image edge
    x0, y0, w, h = window
    if native_window:
        request.getfixturevalue("ops")  # the native build, or skip where FIELDS_NATIVE=0
    cams = look_at_origin([0.4, 0.3, 3.0], width=width, height=height)
    inputs = [t.float() for t in scene(n=200, seed=7)]
    bg = torch.tensor([0.2, 0.5, 0.7])
    g = torch.Generator().manual_seed(5)
    coefs = [torch.randn(h, w, 3, generator=g), torch.randn(h, w, generator=g)]

    def whole(*args):
        out = sp.render_gaussians(*args, cams, 0, bg)
        return out["rgb"][y0:y0 + h, x0:x0 + w], out["opacity"][y0:y0 + h, x0:x0 + w]

    def crop(*args):
        out = sp.render_gaussians(*args, cams, 0, bg, window)
        crop.radii = out["radii"]
        return out["rgb"], out["opacity"]

    monkeypatch.setenv("FIELDS_NATIVE", "0")
    out_r, grad_r = grads_of(whole, inputs, coefs)
    if native_window:
        monkeypatch.setenv("FIELDS_NATIVE", "1")
    out_c, grad_c = grads_of(crop, inputs, coefs)
    for got, want in zip(out_c + grad_c, out_r + grad_r):
        assert close(got, want, rel=2e-5)
    assert all(gr.abs().sum() > 0 for gr in grad_r)  # every input takes part
    seen_whole = sp.project_gaussians(*inputs[:3], cams, 0).radii > 0
    assert 0 < int((crop.radii > 0).sum()) < int(seen_whole.sum())  # Gaussians that miss the crop are culled
