"""Differentiable 3D Gaussian splatting (the math of 3DGS, Kerbl et al. 2023), as a tile rasterizer.

``project_gaussians`` maps 3-D Gaussians (means, unnormalised wxyz quaternions, linear scales) to screen-space
ellipses with the EWA Jacobian (view-space x/z and y/z clamped to 1.3x the image's half extent, as 3DGS does)
and a +0.3 px dilation of the 2-D covariance; the 3-sigma radius is ``ceil(3 sqrt(largest eigenvalue))``.
Anti-aliased rendering (gsplat's ``rasterize_mode="antialiased"``, the 2-D filter of Mip-Splatting) also scales
each opacity by ``sqrt(det(cov2d) / det(cov2d + 0.3 I))``, which the projection returns as ``compensations``: the
dilation then blurs a Gaussian without adding to its energy, so a sub-pixel Gaussian covers the same share of
the image at every resolution instead of a fixed 0.3 px^2 blob.
``rasterize_gaussians`` bins each visible Gaussian into the ``tile_size`` square tiles of its ``means2d +- radius``
square that its ellipse of alpha >= 1/255 meets (``tile_row_spans``: the other tiles have no pixel that takes it),
sorts each tile's Gaussians by depth and composites them front to back:
``alpha = min(0.99, o exp(-0.5 d^T conic d))``, Gaussians with ``alpha < 1/255`` skipped, and a pixel stops at the
first Gaussian that would bring its transmittance below 1e-4 (that one is not added). ``render_gaussians``
puts both together and also renders depth as an extra colour channel.

Conventions: cameras are ``scenes.cameras.Cameras`` (OpenGL camera-to-world, turned into an OpenCV view with
z forward), pixel centres at +0.5. A ``c2w`` that requires grad (a training camera whose pose is being refined)
makes a render differentiable w.r.t. the pose as well: through the projection (means2d, depths, the EWA Jacobian
and the covariance's rotation) and whatever else is computed from it (e.g. view-dependent colours from
``Cameras.centers``). Float32 tensors run the native kernels of ``cuda/`` (projection, binning and
rasterization, forward and backward, wrapped in ``renderers.native.autograd``'s Functions) when they are built;
otherwise, and for other dtypes, the plain-PyTorch ``*_reference`` functions here run instead: differentiable by
autograd, they are the oracle of the native kernels and their fallback (``FIELDS_NATIVE=0`` forces them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from renderers import native
from renderers.native.autograd import ProjectGaussians, RasterizeGaussians
from scenes.cameras import Cameras

ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
DILATION = 0.3
CLAMP_FOV = 1.3

TILE = 16  # pixels on a side of the rasterizer's tiles (the native CPU kernel specialises this size)


@dataclass
class Projection:
    """Screen-space Gaussians, as ``project_gaussians`` returns them."""

    means2d: torch.Tensor  # [N, 2] pixel coordinates (pixel centres at +0.5), differentiable
    conics: torch.Tensor  # [N, 3] inverse 2-D covariance (a, b, c) of [[a, b], [b, c]] incl. the dilation
    depths: torch.Tensor  # [N] camera-space z (OpenCV: z forward), differentiable
    radii: torch.Tensor  # [N] int32 3-sigma pixel radius; 0 = culled (behind the near plane / off screen)
    compensations: torch.Tensor | None = None  # [N] sqrt(det(cov2d) / det(cov2d + dilation)), differentiable


@dataclass
class Camera:
    """One pinhole camera as plain numbers: OpenCV world-to-camera rotation ``R`` [3, 3] and translation ``t``
    (differentiable functions of the ``Cameras``' ``c2w`` where that requires grad: a pose being refined)."""

    R: torch.Tensor
    t: torch.Tensor
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @staticmethod
    def of(cams: Cameras, i: int, dtype: torch.dtype, device: torch.device) -> "Camera":
        c2w = cams.c2w[i].to(device=device, dtype=torch.float64)
        rot = c2w[:3, :3] * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64, device=device)  # GL -> CV axes
        R = rot.T
        t = -R @ c2w[:3, 3]
        return Camera(R.to(dtype), t.to(dtype), float(cams.fx[i]), float(cams.fy[i]), float(cams.cx[i]),
                      float(cams.cy[i]), *cams.size(i))


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] of wxyz quaternions [N, 4] (normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def screen_radius(cov2d: torch.Tensor) -> torch.Tensor:
    """``ceil(3 sqrt(lambda_max))`` of 2-D covariances (a, b, c), as 3DGS computes it (float)."""
    a, b, c = cov2d.unbind(-1)
    det = a * c - b * b
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
    return torch.ceil(3.0 * torch.sqrt(lam))


def compensation(a0: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """``sqrt(det / det_dilated)`` of 2-D covariances [[a0, b], [b, c0]] before the dilation, 0 where the ratio is
    not positive (gradient 0 there too, without the NaN of sqrt at 0)."""
    ratio = (a0 * c0 - b * b) / ((a0 + DILATION) * (c0 + DILATION) - b * b)
    positive = ratio > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, ratio, torch.ones_like(ratio))),
                       torch.zeros_like(ratio))


def project_reference(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, cam: Camera,
                      near: float = 0.01) -> Projection:
    """Plain-PyTorch projection (see the module docstring); differentiable w.r.t. means, quats, scales and the
    camera's ``R`` and ``t``."""
    p = means @ cam.R.T + cam.t
    x, y, z = p.unbind(-1)
    valid = z > near
    zs = torch.where(valid, z, torch.ones_like(z))
    u, v = x / zs, y / zs
    lim_xp, lim_xn = CLAMP_FOV * (cam.width - cam.cx) / cam.fx, CLAMP_FOV * cam.cx / cam.fx
    lim_yp, lim_yn = CLAMP_FOV * (cam.height - cam.cy) / cam.fy, CLAMP_FOV * cam.cy / cam.fy
    uc, vc = torch.clamp(u, -lim_xn, lim_xp), torch.clamp(v, -lim_yn, lim_yp)
    zero = torch.zeros_like(z)
    J = torch.stack([cam.fx / zs, zero, -cam.fx * uc / zs, zero, cam.fy / zs, -cam.fy * vc / zs], -1).reshape(-1, 2, 3)
    M = quat_to_rotmat(quats) * scales[:, None, :]  # covariance = M M^T
    A = J @ cam.R @ M  # [N, 2, 3]; 2-D covariance = A A^T
    a0 = (A[:, 0] * A[:, 0]).sum(-1)
    b = (A[:, 0] * A[:, 1]).sum(-1)
    c0 = (A[:, 1] * A[:, 1]).sum(-1)
    a, c = a0 + DILATION, c0 + DILATION
    det = a * c - b * b
    conics = torch.stack([c / det, -b / det, a / det], -1)
    means2d = torch.stack([cam.fx * u + cam.cx, cam.fy * v + cam.cy], -1)
    with torch.no_grad():
        r = screen_radius(torch.stack([a, b, c], -1))
        mx, my = means2d.unbind(-1)
        on_screen = (mx + r >= 0) & (mx - r < cam.width) & (my + r >= 0) & (my - r < cam.height)
        radii = torch.where(valid & on_screen, r, torch.zeros_like(r)).to(torch.int32)
    return Projection(means2d, conics, z, radii, compensation(a0, b, c0))


def project_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, cams: Cameras, i: int,
                      near: float = 0.01) -> Projection:
    """Screen-space means, conics, depths, radii and compensations of Gaussians seen by camera ``i`` of ``cams``;
    differentiable w.r.t. the camera's pose too where ``cams.c2w`` requires grad."""
    cam = Camera.of(cams, i, means.dtype, means.device)
    if native.ops_for(means, quats, scales) is None:
        return project_reference(means, quats, scales, cam, near)
    viewmat = torch.cat([cam.R, cam.t[:, None]], 1).cpu()
    intrinsics = (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height, float(near))
    return Projection(*ProjectGaussians.apply(means.contiguous(), quats.contiguous(), scales.contiguous(), viewmat,
                                           intrinsics))


def tile_rects(means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int, tile_size: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inclusive tile ranges x0, x1, y0, y1 (int64) of each Gaussian's ``means2d +- radius`` square, clamped to
    the tile grid. Only meaningful for visible Gaussians (radius > 0)."""
    gw, gh = (width + tile_size - 1) // tile_size, (height + tile_size - 1) // tile_size
    m = means2d.detach()
    r = radii.to(m.dtype)
    x0 = torch.floor((m[:, 0] - r) / tile_size).clamp(0, gw - 1).long()
    x1 = torch.floor((m[:, 0] + r) / tile_size).clamp(0, gw - 1).long()
    y0 = torch.floor((m[:, 1] - r) / tile_size).clamp(0, gh - 1).long()
    y1 = torch.floor((m[:, 1] + r) / tile_size).clamp(0, gh - 1).long()
    return x0, x1, y0, y1


def tile_row_spans(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, x0: torch.Tensor,
                   x1: torch.Tensor, ty: torch.Tensor, tile_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per element (a Gaussian and a tile row ``ty`` of its square, whose tile columns are ``[x0, x1]``): the tiles
    ``[tx0, tx1]`` of that row whose pixel area meets the ellipse where the Gaussian's alpha can reach 1/255, and
    whether there are any. Binning leaves out the other tiles of the square: none of their pixels takes the
    Gaussian, so images and gradients are unchanged and the rasterizer gets fewer (tile, Gaussian) pairs. The
    ellipse is ``d^T conic d <= k``, ``k = 2 ln(255 o)`` widened by 0.1% + 1e-4 (rounding, polynomial exp); a
    degenerate conic keeps the whole row. The twin of ``splat_tile_row_span`` in cuda/common/fields_math.h,
    operation for operation in float32, so that both bin the same pairs."""
    mx, my = means2d.detach().unbind(-1)
    a, b, c = conics.detach().unbind(-1)
    o = opacities.detach()
    k = 2 * torch.log((255 * o).double()).to(o.dtype) * 1.001 + 1e-4  # ln in double, as the kernel does
    det = a * c - b * b
    inv_a, ak, inv_ts = 1 / a, a * k, 1 / torch.tensor(float(tile_size), dtype=o.dtype)
    ex, ey = torch.sqrt(k * c / det), torch.sqrt(k * a / det)
    s = b * ex / c  # dy of the ellipse's leftmost point; the rightmost is at -s
    exact = (det > 0) & (a > 0) & (c > 0) & (ex < 1e6) & (ey < 1e6)
    u0 = torch.clamp(ty.to(o.dtype) * tile_size - my, -ey, ey)
    u1 = torch.clamp((ty + 1).to(o.dtype) * tile_size - my, -ey, ey)
    dl, dr = torch.clamp(s, u0, u1), torch.clamp(-s, u0, u1)
    xl = (-b * dl - torch.sqrt(torch.clamp(ak - det * dl * dl, min=0))) * inv_a
    xr = (-b * dr + torch.sqrt(torch.clamp(ak - det * dr * dr, min=0))) * inv_a
    fl, fr = torch.floor((mx + xl) * inv_ts), torch.floor((mx + xr) * inv_ts)
    lo, hi = x0.to(o.dtype), x1.to(o.dtype)
    hit = torch.where(exact, (u0 < u1) & (fl <= hi) & (fr >= lo), torch.ones_like(exact)) & (o >= ALPHA_MIN)
    tx0 = torch.where(exact, torch.maximum(fl, lo), lo).long()
    tx1 = torch.where(exact, torch.minimum(fr, hi), hi).long()
    return tx0, tx1, hit


def bin_gaussians(proj: Projection, opacities: torch.Tensor, width: int, height: int, tile_size: int = TILE
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile depth-sorted Gaussian ids: ``(ids [M] int64, offsets [n_tiles + 1] int64)``; tile ``k`` (row-major)
    holds ``ids[offsets[k]:offsets[k + 1]]``, nearest first (ties by index): the tiles of each visible Gaussian's
    ``means2d +- radius`` square that ``tile_row_spans`` keeps."""
    gw, gh = (width + tile_size - 1) // tile_size, (height + tile_size - 1) // tile_size
    device = proj.means2d.device
    vis = torch.nonzero(proj.radii > 0)[:, 0]
    x0, x1, y0, y1 = tile_rects(proj.means2d[vis], proj.radii[vis], width, height, tile_size)
    nx = x1 - x0 + 1
    counts = nx * (y1 - y0 + 1)
    owner = torch.repeat_interleave(torch.arange(vis.numel(), device=device), counts)
    local = torch.arange(owner.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[owner]
    tx, ty = x0[owner] + local % nx[owner], y0[owner] + local // nx[owner]
    g = vis[owner]
    tx0, tx1, hit = tile_row_spans(proj.means2d[g], proj.conics[g], opacities[g], x0[owner], x1[owner], ty, tile_size)
    keep = hit & (tx >= tx0) & (tx <= tx1)
    tiles, ids = (ty * gw + tx)[keep], g[keep]
    order = torch.argsort(proj.depths.detach()[ids], stable=True)
    order = order[torch.argsort(tiles[order], stable=True)]
    ids, tiles = ids[order], tiles[order]
    offsets = torch.searchsorted(tiles, torch.arange(gw * gh + 1, device=device))
    return ids, offsets


def tile_pixels(tile: int, width: int, height: int, tile_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer pixel coordinates (px, py) [P] of one tile, row-major."""
    gw = (width + tile_size - 1) // tile_size
    tx, ty = tile % gw, tile // gw
    xs = torch.arange(tx * tile_size, min(width, (tx + 1) * tile_size), device=device)
    ys = torch.arange(ty * tile_size, min(height, (ty + 1) * tile_size), device=device)
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    return px.reshape(-1), py.reshape(-1)


def gaussian_alpha(px: torch.Tensor, py: torch.Tensor, means2d: torch.Tensor, conics: torch.Tensor,
                   opacities: torch.Tensor) -> torch.Tensor:
    """``alpha [P, K]`` of Gaussians at pixel centres, 0 where skipped (``alpha < 1/255`` or positive power)."""
    dx = means2d[:, 0] - (px.to(means2d.dtype) + 0.5)[:, None]
    dy = means2d[:, 1] - (py.to(means2d.dtype) + 0.5)[:, None]
    a, b, c = conics.unbind(-1)
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = torch.clamp(opacities * torch.exp(power), max=ALPHA_MAX)
    return torch.where((power <= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))


def rasterize_reference(proj: Projection, colors: torch.Tensor, opacities: torch.Tensor, width: int, height: int,
                        background: torch.Tensor | None = None, tile_size: int = TILE, chunk: int = 256
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch tile rasterizer: a Python loop over tiles, each tile's pixels x a chunk of its Gaussians at
    once; chunks continue from the previous one's transmittance and stop when every pixel of the tile is done."""
    device, dtype = colors.device, colors.dtype
    n_ch = colors.shape[1]
    ids, offsets = bin_gaussians(proj, opacities, width, height, tile_size)
    bounds = offsets.tolist()
    n_tiles = len(bounds) - 1
    values, pixels = [], []
    for tile in range(n_tiles):
        px, py = tile_pixels(tile, width, height, tile_size, device)
        T = torch.ones(px.numel(), dtype=dtype, device=device)
        done = torch.zeros(px.numel(), dtype=torch.bool, device=device)
        acc = torch.zeros(px.numel(), n_ch + 1, dtype=dtype, device=device)
        for s in range(bounds[tile], bounds[tile + 1], chunk):
            if bool(done.all()):
                break
            g = ids[s:min(s + chunk, bounds[tile + 1])]
            alpha = gaussian_alpha(px, py, proj.means2d[g], proj.conics[g], opacities[g])
            with torch.no_grad():  # which Gaussians each pixel takes before it stops
                stop = (T[:, None] * torch.cumprod(1 - alpha, 1) < T_MIN) | done[:, None]
                keep = torch.cumsum(stop.int(), 1) == 0
                done = done | stop.any(1)
            alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
            incl = T[:, None] * torch.cumprod(1 - alpha, 1)
            excl = torch.cat([T[:, None], incl[:, :-1]], 1)
            w = alpha * excl
            acc = acc + w @ torch.cat([colors[g], torch.ones_like(colors[g][:, :1])], 1)
            T = incl[:, -1]
        values.append(acc)
        pixels.append(py * width + px)
    flat = torch.zeros(height * width, n_ch + 1, dtype=dtype, device=device).index_copy(
        0, torch.cat(pixels), torch.cat(values))
    image, alpha = flat[:, :n_ch].reshape(height, width, n_ch), flat[:, n_ch].reshape(height, width)
    if background is not None:
        image = image + (1 - alpha)[..., None] * background.to(dtype)
    return image, alpha


def rasterize_gaussians(proj: Projection, colors: torch.Tensor, opacities: torch.Tensor, width: int, height: int,
                        background: torch.Tensor | None = None, tile_size: int = TILE
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite projected Gaussians into an ``[H, W, C]`` image and its ``[H, W]`` alpha (sum of weights);
    ``image = sum w c + (1 - alpha) * background``."""
    ops = native.ops_for(proj.means2d, proj.conics, colors, opacities)
    if ops is None:
        return rasterize_reference(proj, colors, opacities, width, height, background, tile_size)
    ids, offsets = native_bins(ops, proj, opacities, width, height, tile_size)
    image, alpha = RasterizeGaussians.apply(proj.means2d, proj.conics, colors.contiguous(), opacities.contiguous(), ids,
                                         offsets, (width, height, tile_size))
    if background is not None:
        image = image + (1 - alpha)[..., None] * background.to(image)
    return image, alpha


def native_bins(ops, proj: Projection, opacities: torch.Tensor, width: int, height: int, tile_size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``bin_gaussians`` by the native ops ``ops`` (``splat_bin``); no gradient flows through binning."""
    return ops.splat_bin(proj.means2d.detach(), proj.conics.detach(), opacities.detach(), proj.radii,
                         proj.depths.detach(), width, height, tile_size)


def crop_projection(proj: Projection, window: tuple[int, int, int, int]) -> Projection:
    """The projection seen through the pixel window ``(x0, y0, width, height)`` of its image: means shifted to
    the window's origin (differentiably) and Gaussians whose ``means2d +- radius`` square misses the window
    culled (radius 0), so that binning the window's tiles sees only Gaussians that touch them."""
    x0, y0, w, h = window
    means2d = proj.means2d - proj.means2d.new_tensor([float(x0), float(y0)])
    m, r = means2d.detach(), proj.radii.to(means2d.dtype)
    inside = (m[:, 0] + r >= 0) & (m[:, 0] - r < w) & (m[:, 1] + r >= 0) & (m[:, 1] - r < h)
    return Projection(means2d, proj.conics, proj.depths, torch.where(inside, proj.radii, torch.zeros_like(proj.radii)),
                      proj.compensations)


def render_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                     colors: torch.Tensor, cams: Cameras, i: int, background: torch.Tensor,
                     window: tuple[int, int, int, int] | None = None, antialiased: bool = False
                     ) -> dict[str, torch.Tensor]:
    """Render camera ``i``: rgb [H, W, 3], expected depth [H, W] (0 where nothing is hit), opacity [H, W], and the
    projection's ``means2d`` (gradient retained, for densification) and ``radii``. ``antialiased`` scales each
    opacity by its compensation (see the module docstring).

    ``window = (x0, y0, width, height)`` renders only those pixels of the image (a training crop): the
    projection is the whole camera's (so each Gaussian's footprint is the same), the tile grid starts at the
    window's origin, and ``radii`` are 0 for Gaussians that miss the window. With ``x0``, ``y0`` multiples of
    the tile size (``TILE``) the pixels equal those of the whole image there exactly.

    When nothing needs a gradient (viewing, evaluation, export) the native kernel also puts the colours on the
    background and divides the depth in its tiles (``splat_rasterize_render``) and saves nothing per pixel for a
    backward pass: the training forward's numbers, without its per-pixel state and the torch passes after it."""
    proj = project_gaussians(means, quats, scales, cams, i)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    width, height = cams.size(i)
    seen = proj
    if window is not None:
        seen, (width, height) = crop_projection(proj, window), window[2:]
    feats = torch.cat([colors, proj.depths[:, None].to(colors.dtype)], 1)
    if antialiased:
        opacities = opacities * proj.compensations
    ops = native.ops_for(seen.means2d, seen.conics, feats, opacities)
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (seen.means2d, seen.conics, feats, opacities))
    if ops is not None and not wants_grad:  # viewing: the kernel finishes the pixels and saves nothing for backward
        ids, offsets = native_bins(ops, seen, opacities, width, height, TILE)
        image, alpha = ops.splat_rasterize_render(seen.means2d, seen.conics, feats, opacities.contiguous(), ids,
                                                  offsets, background.to(feats), width, height, TILE)
        return {"rgb": image[..., :-1], "depth": image[..., -1], "opacity": alpha, "means2d": proj.means2d,
                "radii": seen.radii}
    bg = torch.cat([background.to(colors), colors.new_zeros(1)])
    image, alpha = rasterize_gaussians(seen, feats, opacities, width, height, bg)
    hit = alpha > 0
    depth = torch.where(hit, image[..., -1] / torch.where(hit, alpha, torch.ones_like(alpha)),
                        torch.zeros_like(alpha))
    return {"rgb": image[..., :-1], "depth": depth, "opacity": alpha, "means2d": proj.means2d, "radii": seen.radii}
