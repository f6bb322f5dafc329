"""Native kernels (cuda/) against their plain-PyTorch references: forward values, gradients, identical marching
samples, edge cases; the CUDA build compiles with nvcc, and the CUDA ops match where a GPU exists."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import devices, needs_device
from fields.backends.encodings import hash_encode_reference, level_resolutions
from renderers import native
from renderers.compositing import composite_reference, csr_offsets, transmittance_reference
from renderers.native import loader
from renderers.native.autograd import Composite, HashEncode
from renderers.marching import march_rays_reference

SOURCE_DIR = Path(__file__).resolve().parent.parent / "cuda"


# -- hash encoding -------------------------------------------------------------------------------------------

def hash_inputs(n=3000, levels=8, log2_t=14, features=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    res = torch.tensor(level_resolutions(levels, 8, 256))
    x = torch.rand(n, 3, generator=g)
    # Edge cases: the box faces (0 and 1, x == 1 stays in the last cell) and exact cell borders of each level.
    x[:8] = torch.tensor([[0.0, 0, 0], [1, 1, 1], [1, 0, 0.5], [0, 1, 1], [0.5, 0.5, 0.5], [1, 0.25, 0.75],
                          [0.125, 1, 0], [0.0625, 0.1875, 1]])
    for i, r in enumerate(res.tolist()):
        k = torch.randint(0, r + 1, (40, 3), generator=g).float()
        x[8 + 40 * i:8 + 40 * (i + 1)] = k / r
    table = torch.randn(levels, 2**log2_t, features, generator=g) * 0.1
    return x, table, res


@pytest.mark.parametrize("features", [2, 4, 3])  # specialised 2 and 4, the generic loop
@pytest.mark.parametrize("device", devices())
def test_hash_encode_matches_reference(ops, device, features):
    needs_device(device, ops)
    x, table, res = hash_inputs(features=features)
    assert ((res + 1) ** 3 <= table.shape[1]).any() and ((res + 1) ** 3 > table.shape[1]).any(), \
        "inputs must exercise both dense and hashed levels"
    xr, tr = x.clone().requires_grad_(), table.clone().requires_grad_()
    xn, tn = x.to(device).requires_grad_(), table.to(device).requires_grad_()
    ref = hash_encode_reference(xr, tr, res)  # the oracle runs on the CPU
    out = HashEncode.apply(xn, tn, res.to(device))
    assert (out.cpu() - ref).abs().max().item() < 1e-5
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    (out * g.to(device)).sum().backward()
    assert (tn.grad.cpu() - tr.grad).abs().max().item() < 1e-5
    scale = xr.grad.abs().max().item()
    assert (xn.grad.cpu() - xr.grad).abs().max().item() < 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 45])
def test_hash_encode_forward_of_ragged_batches_matches_reference(ops, n):
    """Point counts around the AVX-512 forward's 16-point blocks (a partial block alone, one past a block): the
    padded lanes of a partial block are computed but never written."""
    x, table, res = hash_inputs()
    x = x[-n:].contiguous()
    out = torch.ops.fields.hash_encode_fwd(x, table, res)
    assert out.shape == (n, table.shape[0] * table.shape[2])
    assert (out - hash_encode_reference(x, table, res)).abs().max().item() < 1e-5


def test_hash_encode_table_only_gradient(ops):
    x, table, res = hash_inputs(n=500)
    t = table.clone().requires_grad_()
    HashEncode.apply(x, t, res).sum().backward()
    tr = table.clone().requires_grad_()
    hash_encode_reference(x, tr, res).sum().backward()
    assert (t.grad - tr.grad).abs().max().item() < 1e-5


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_sh_encode_matches_reference_and_keeps_gradients_on_the_reference(ops, degree):
    """Values within float32 rounding of the reference for every degree (unit, non-unit, axis-aligned and zero
    directions, ragged sizes); a direction that needs a gradient goes through the reference and gets it."""
    from fields.backends.encodings import sh_encode, sh_encode_reference

    g = torch.Generator().manual_seed(degree)
    d = torch.cat([torch.nn.functional.normalize(torch.randn(5001, 3, generator=g), dim=-1),
                   torch.randn(7, 3, generator=g) * 3, torch.eye(3), -torch.eye(3), torch.zeros(1, 3)])
    got, want = sh_encode(d, degree), sh_encode_reference(d.double(), degree)
    assert got.shape == (len(d), degree * degree) and got.dtype == torch.float32
    assert (got.double() - want).abs().max().item() < 1e-5 * max(want.abs().max().item(), 1.0)
    assert sh_encode(d[:0], degree).shape == (0, degree * degree)
    if degree > 1:  # degree 1 is a constant
        dg = d[:100].clone().requires_grad_()
        (grad,) = torch.autograd.grad(sh_encode(dg, degree).sum(), [dg])
        (ref,) = torch.autograd.grad(sh_encode_reference(dg, degree).sum(), [dg])
        assert torch.equal(grad, ref)


@pytest.mark.parametrize("bands", [1, 2, 3, 4])
@pytest.mark.parametrize("device", devices())
def test_sh_color_matches_reference_values_and_gradients(ops, device, bands):
    """3DGS colours from SH coefficients: the native kernel against ``sh_color_reference`` in values and in the
    gradients of directions and both coefficient tensors, with shN holding more rows than the bands use (their
    gradient must be zero) and coefficients large enough that some channels are clamped at 0."""
    from fields.backends.encodings import sh_color, sh_color_reference
    from renderers.native.autograd import ShColor

    g = torch.Generator().manual_seed(bands)
    n = 4099
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    dirs[:6] = torch.cat([torch.eye(3), -torch.eye(3)])
    sh0 = torch.randn(n, 1, 3, generator=g)
    shN = torch.randn(n, 15, 3, generator=g) * 0.5
    leaves_ref = [t.clone().double().requires_grad_() for t in (dirs, sh0, shN)]
    leaves_nat = [t.clone().to(device).requires_grad_() for t in (dirs, sh0, shN)]
    ref = sh_color_reference(*leaves_ref, bands)
    out = ShColor.apply(*leaves_nat, bands)
    assert ((ref == 0).any(1)).float().mean() > 0.05, "inputs must exercise the clamp"
    assert (out.cpu().double() - ref).abs().max().item() < 1e-5
    w = torch.randn(n, 3, generator=g, dtype=torch.float64)
    (ref * w).sum().backward()
    (out * w.to(device, torch.float32)).sum().backward()
    for nat, r in zip(leaves_nat, leaves_ref):
        want = torch.zeros_like(r) if r.grad is None else r.grad  # one band: the colour ignores the direction
        assert (nat.grad.cpu().double() - want).abs().max().item() < 1e-4 * max(want.abs().max().item(), 1.0)
    assert torch.equal(leaves_nat[2].grad[:, bands * bands - 1:].cpu(), torch.zeros(n, 16 - bands * bands, 3))
    # the public function dispatches to the native op and the reference on what the build cannot take
    assert torch.equal(sh_color(dirs.to(device), sh0.to(device), shN.to(device), bands), out.detach())
    assert torch.equal(sh_color(dirs.double(), sh0.double(), shN.double(), bands), ref.detach())
    assert sh_color(dirs[:0].to(device), sh0[:0].to(device), shN[:0].to(device), bands).shape == (0, 3)


@pytest.mark.parametrize("size", [(64, 48), (7, 6), (37, 101)])
def test_ssim_matches_kornia_values_and_gradient(ops, size):
    """The native SSIM map against kornia's (the reference), values and the gradient w.r.t. the image, on images
    whose every pixel lies within the window of a border (7x6: the reflect padding is read on both sides) and on
    ragged sizes; a target that needs a gradient goes through the reference."""
    from renderers.imaging import ssim_map, ssim_map_reference
    from renderers.native.autograd import Ssim

    g = torch.Generator().manual_seed(size[0])
    h, w = size
    target = torch.rand(h, w, 3, generator=g)
    image = (target + 0.2 * torch.randn(h, w, 3, generator=g)).clamp(0, 1)
    xr, xn = image.double().requires_grad_(), image.clone().requires_grad_()
    ref = ssim_map_reference(xr, target.double())
    out = ssim_map(xn, target)
    assert out.grad_fn is not None and type(out.grad_fn).__name__ == Ssim.__name__ + "Backward"
    assert out.shape == (h, w) and (out.double() - ref).abs().max().item() < 1e-5
    v = torch.randn(h, w, generator=g, dtype=torch.float64)
    (ref * v).sum().backward()
    (out * v.float()).sum().backward()
    assert (xn.grad.double() - xr.grad).abs().max().item() < 1e-4 * xr.grad.abs().max().item()
    t = target.clone().requires_grad_()
    assert torch.equal(ssim_map(image, t), ssim_map_reference(image, t))


def test_field_dispatches_to_native_and_matches_reference(ops, monkeypatch):
    from fields.backends.hashgrid import HashGridConfig

    torch.manual_seed(0)
    aabb = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
    # float32 MLPs: the bf16 (AMX) mode has its own oracle test in test_fused_mlp.py
    field = HashGridConfig(n_levels=6, log2_table_size=12, max_resolution=128, bf16=False).build(aabb)
    x, d = torch.rand(700, 3) * 2.2 - 1.1, torch.nn.functional.normalize(torch.randn(700, 3), dim=-1)

    def run():
        field.zero_grad()
        sigma, rgb = field(x, d)
        (sigma.sum() + rgb.sum()).backward()
        return sigma.detach(), rgb.detach(), field.encoding.table.grad.clone()

    got = run()
    monkeypatch.setenv("FIELDS_NATIVE", "0")
    want = run()
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() < 1e-5 * max(b.abs().max().item(), 1.0)


# -- marching ------------------------------------------------------------------------------------------------

def ray_batch(n=2000, seed=0, inside_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    origins = torch.randn(n, 3, generator=g) * 2.5  # some rays miss the box, some start inside it
    k = int(n * inside_frac)
    origins[:k] = torch.rand(k, 3, generator=g) * 1.8 - 0.9
    return origins, dirs, torch.rand(n, generator=g)


def grid_cases():
    g = torch.Generator().manual_seed(1)
    return {
        "random": torch.rand(16, 24, 32, generator=g) < 0.3,
        "sparse": torch.rand(32, 32, 32, generator=g) < 0.03,  # mostly empty 4^3 blocks: jumped whole
        "odd": torch.rand(10, 12, 9, generator=g) < 0.1,  # sides not multiples of 4: no coarse blocks
        "empty": torch.zeros(16, 16, 16, dtype=torch.bool),
        "full": torch.ones(8, 8, 8, dtype=torch.bool),
    }


def assert_same_samples(got, ref):
    assert torch.equal(got.ray_indices, ref.ray_indices)
    assert torch.equal(got.t_starts, ref.t_starts)
    assert torch.equal(got.t_ends, ref.t_ends)


def native_march(ops, origins, dirs, binary, aabb, step, near=0.0, far=1e10, cone=0.0, max_step=1e10, jitter=None):
    from renderers.marching import Samples

    ray, ts, te = ops.march_rays(origins, dirs, binary, aabb, step, near, far, cone, max_step, jitter)
    return Samples(ray, ts, te, origins.shape[0])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("grid", list(grid_cases()))
@pytest.mark.parametrize("cone,jittered", [(0.0, False), (0.0, True), (1 / 64, True)])
def test_march_rays_identical_samples(ops, device, grid, cone, jittered):
    needs_device(device, ops)
    binary = grid_cases()[grid]
    aabb = torch.tensor([[-1.0, -1.2, -0.8], [1.0, 1.2, 0.8]])
    origins, dirs, jitter = ray_batch()
    step = (aabb[1] - aabb[0]).norm().item() / 256
    ref = march_rays_reference(origins, dirs, binary, aabb, step, cone_angle=cone, max_step=8 * step,
                               jitter=jitter if jittered else None)
    dev = lambda t: t.to(device)  # noqa: E731
    got = native_march(ops, dev(origins), dev(dirs), dev(binary), aabb, step, cone=cone, max_step=8 * step,
                       jitter=dev(jitter) if jittered else None)
    got_cpu = ref.__class__(got.ray_indices.cpu(), got.t_starts.cpu(), got.t_ends.cpu(), got.n_rays)
    assert_same_samples(got_cpu, ref)
    if grid == "empty":
        assert len(ref) == 0
    if grid == "full":
        assert len(ref) > 0


def test_march_rays_near_far_and_borders(ops):
    """Axis-aligned rays exactly on cell borders and box faces, origins on the faces, near/far bounds."""
    aabb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    binary = torch.zeros(8, 8, 8, dtype=torch.bool)
    binary[::2, 1::2, :] = True
    binary[3, :, 5] = True
    coords = torch.arange(9) / 8  # cell borders, including the faces 0 and 1
    a, b = torch.meshgrid(coords, coords, indexing="ij")
    a, b = a.flatten(), b.flatten()
    zeros = torch.zeros_like(a)
    origins = torch.cat([torch.stack([a, b, zeros - 0.5], -1), torch.stack([zeros, a, b], -1),
                         torch.stack([a, zeros + 1.0, b], -1)])
    dirs = torch.cat([torch.tensor([[0.0, 0, 1]]).expand(81, 3), torch.tensor([[1.0, 0, 0]]).expand(81, 3),
                      torch.tensor([[0.0, -1, 0]]).expand(81, 3)])
    diag = torch.nn.functional.normalize(torch.tensor([[1.0, 1, 1], [-1, 1, 1], [1, -1, 0]]), dim=-1)
    origins = torch.cat([origins, torch.tensor([[-0.5, -0.5, -0.5], [1.5, -0.5, -0.5], [0.0, 1.0, 0.5]])])
    dirs = torch.cat([dirs, diag]).contiguous()
    for step, near, far in [(1 / 64, 0.0, 1e10), (1 / 16, 0.3, 1.2), (1 / 8, 0.0, 0.5)]:
        ref = march_rays_reference(origins, dirs, binary, aabb, step, near, far)
        assert len(ref) > 0
        assert_same_samples(native_march(ops, origins, dirs, binary, aabb, step, near, far), ref)


def test_march_rays_dispatch_and_empty_batch(ops):
    from renderers.marching import march_rays

    aabb = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
    binary = torch.rand(16, 16, 16) < 0.5
    origins, dirs, jitter = ray_batch(300, seed=3)
    assert_same_samples(march_rays(origins, dirs, binary, aabb, 0.02, jitter=jitter),
                        march_rays_reference(origins, dirs, binary, aabb, 0.02, jitter=jitter))
    empty = march_rays(origins[:0], dirs[:0], binary, aabb, 0.02)
    assert len(empty) == 0 and empty.t_starts.dtype == torch.float32


# -- compositing ---------------------------------------------------------------------------------------------

def packed_samples(n_rays=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 60, (n_rays,), generator=g)
    counts[:5] = 0  # rays without samples
    counts[5] = 1
    counts[6] = 3000  # a long ray: sums over thousands of samples must stay accurate
    ray = torch.repeat_interleave(torch.arange(n_rays), counts)
    n = ray.shape[0]
    dt = torch.rand(n, generator=g) * 0.05 + 1e-3
    t_starts = torch.rand(n, generator=g) * 3
    sigmas = torch.rand(n, generator=g) * 40
    long_ray = ray == 6
    sigmas[long_ray] = 0.4  # stays partly transparent over its 3000 samples
    dt[long_ray] = 1e-3
    sigmas[::7] = 0.0
    rgbs = torch.rand(n, 3, generator=g)
    return [sigmas, rgbs, t_starts, t_starts + dt, ray, n_rays]


@pytest.mark.parametrize("device", devices())
def test_composite_matches_reference(ops, device):
    needs_device(device, ops)
    sigmas, rgbs, t_starts, t_ends, ray, n_rays = packed_samples()
    s_r, c_r = sigmas.clone().requires_grad_(), rgbs.clone().requires_grad_()
    s_n, c_n = sigmas.to(device).requires_grad_(), rgbs.to(device).requires_grad_()
    ref = composite_reference(s_r, c_r, t_starts, t_ends, ray, n_rays)  # the oracle runs on the CPU
    ray_d = ray.to(device)
    got = Composite.apply(s_n, c_n, t_starts.to(device), t_ends.to(device), csr_offsets(ray_d, n_rays))
    got = dict(zip(("weights", "rgb", "opacity", "depth"), got))
    g = torch.Generator().manual_seed(5)
    coef = {k: torch.randn(v.shape, generator=g) for k, v in ref.items()}
    for k in ref:
        assert (got[k].cpu() - ref[k]).abs().max().item() < 1e-5, k
    sum(((ref[k] * coef[k]).sum() for k in ref)).backward()
    sum(((got[k] * coef[k].to(device)).sum() for k in ref)).backward()
    assert (c_n.grad.cpu() - c_r.grad).abs().max().item() < 1e-5
    assert (s_n.grad.cpu() - s_r.grad).abs().max().item() < 1e-5
    tau = sigmas * (t_ends - t_starts)
    got_t = ops.transmittance(tau.to(device), csr_offsets(ray_d, n_rays))
    assert (got_t.cpu() - transmittance_reference(tau, ray, n_rays)).abs().max().item() < 1e-6


@pytest.mark.parametrize("prune", [(0.0, 0.0, 0.0), (1e-3, 0.0, 1e-3), (0.2, 0.05, 1e-2)])
@pytest.mark.parametrize("device", devices())
def test_composite_round_matches_reference(ops, device, prune):
    """One front-to-back image round over some of the rays (the long partly transparent one included), carrying
    optical depths in: weights, keep masks and the updated per-ray state agree with the reference."""
    needs_device(device, ops)
    from renderers.compositing import composite_round_reference

    sigmas, _, t_starts, t_ends, ray, n_rays = packed_samples(seed=3)
    counts = torch.bincount(ray, minlength=n_rays)
    live = torch.arange(n_rays)[(torch.arange(n_rays) % 3 != 1) | (torch.arange(n_rays) == 6)]  # gaps between rays
    sel = torch.isin(ray, live)
    per_ray = counts[live]
    offsets = torch.cat([per_ray.new_zeros(1), per_ray.cumsum(0)])
    g = torch.Generator().manual_seed(4)
    state = (torch.rand(n_rays, generator=g, dtype=torch.float64) * 3, torch.rand(n_rays, generator=g),
             torch.rand(n_rays, generator=g))
    ref_state = [t.clone() for t in state]
    got_state = [t.clone().to(device) for t in state]
    args = (sigmas[sel], t_starts[sel], t_ends[sel], offsets, live)
    w_ref, keep_ref = composite_round_reference(*args, *ref_state, *prune)
    w, keep = ops.composite_round(*(a.to(device) for a in args), *got_state, *prune)
    assert keep_ref.any() and (not keep_ref.all() or prune == (0.0, 0.0, 0.0))
    assert torch.equal(keep.cpu(), keep_ref)
    assert (w.cpu() - w_ref).abs().max().item() < 1e-6
    assert (got_state[0].cpu() - ref_state[0]).abs().max().item() < 1e-9
    for got, ref in zip(got_state[1:], ref_state[1:]):
        assert (got.cpu() - ref).abs().max().item() < 1e-5
    untouched = torch.ones(n_rays, dtype=torch.bool)
    untouched[live] = False
    assert all(torch.equal(t.cpu()[untouched], s[untouched]) for t, s in zip(got_state, state))
    assert not torch.equal(ref_state[0][live], state[0][live])  # the carried optical depth moved


@pytest.mark.parametrize("device", devices())
def test_round_samples_match_reference(ops, device):
    """A front-to-back round's samples (live rays with gaps between them, rays with fewer samples left than the
    round holds, a round that starts part-way along the rays): indices, rays, bounds, positions and directions
    equal the reference's exactly (positions with addcmul's single rounding)."""
    needs_device(device, ops)
    from renderers.marching import Samples, round_samples, round_samples_reference

    _, _, t_starts, t_ends, ray, n_rays = packed_samples(seed=5)
    g = torch.Generator().manual_seed(6)
    origins = torch.randn(n_rays, 3, generator=g)
    dirs = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=g), dim=-1)
    offsets = csr_offsets(ray, n_rays)
    counts = offsets[1:] - offsets[:-1]
    r0, size = 4, 8
    live = ((counts > r0) & (torch.arange(n_rays) % 4 != 2)).nonzero()[:, 0]
    per_ray = (counts[live] - r0).clamp_max(size)
    assert (per_ray < size).any() and (per_ray == size).any()
    round_offsets = torch.cat([per_ray.new_zeros(1), per_ray.cumsum(0)])
    first = offsets[live] + r0
    samples = Samples(ray, t_starts, t_ends, n_rays)
    ref = round_samples_reference(samples, origins, dirs, first, round_offsets)
    on = (lambda t: t.to(device))
    got = ops.round_samples(on(ray), on(t_starts), on(t_ends), on(origins), on(dirs), on(first), on(round_offsets))
    want = (ref[0], ref[1].ray_indices, ref[1].t_starts, ref[1].t_ends, ref[2], ref[3])
    assert len(want[0]) == int(per_ray.sum())
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)
    if device == "cpu":  # the dispatching function, natively
        idx, part, x, d = round_samples(samples, origins, dirs, first, round_offsets)
        assert torch.equal(idx, ref[0]) and torch.equal(part.t_ends, ref[1].t_ends) and torch.equal(x, ref[2])


def test_composite_dispatch_rgb_only_and_transmittance(ops):
    from renderers.compositing import composite, transmittance

    sigmas, rgbs, t_starts, t_ends, ray, n_rays = packed_samples(seed=2)
    s_n, s_r = sigmas.clone().requires_grad_(), sigmas.clone().requires_grad_()
    composite(s_n, rgbs, t_starts, t_ends, ray, n_rays)["rgb"].sum().backward()
    composite_reference(s_r, rgbs, t_starts, t_ends, ray, n_rays)["rgb"].sum().backward()
    assert (s_n.grad - s_r.grad).abs().max().item() < 1e-5
    tau = sigmas * (t_ends - t_starts)
    assert (transmittance(tau, ray, n_rays) - transmittance_reference(tau, ray, n_rays)).abs().max().item() < 1e-6


# -- loader: forced reference, build failure -----------------------------------------------------------------

@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="MXCSR flags are x86's")
def test_flushed_denormals_reach_every_thread_of_the_pool_and_end_with_the_block(ops):
    """A parallel op over denormal inputs (on two threads, each takes half) reads them as zero inside
    ``flushed_denormals``, so the pool thread's flag is set too (torch.set_flush_denormal sets only the
    caller's), and as themselves again after the block."""
    tiny = torch.full((1 << 20,), 1e-40)
    assert torch.count_nonzero(tiny).item() == tiny.numel(), "1e-40 must be a float32 denormal here"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with native.flushed_denormals():
            assert torch.count_nonzero(tiny * 1.0).item() == 0
        assert torch.count_nonzero(tiny * 1.0).item() == tiny.numel()
    finally:
        torch.set_num_threads(threads)


def test_fields_native_0_forces_reference(monkeypatch):
    monkeypatch.setenv("FIELDS_NATIVE", "0")
    assert native.native_ops() is None and native.ops_for(torch.zeros(1)) is None


def test_build_key_follows_the_cpus_instruction_sets(monkeypatch):
    """-march=native builds for this CPU: another CPU (a shared cache) must get its own build, not a SIGILL."""
    assert loader.cpu_signature()

    def key_on(flags: str) -> str:
        monkeypatch.setattr(loader, "cpu_signature", lambda: flags)
        return loader._build_key(False)

    avx2 = "fpu sse sse2 avx avx2 fma"
    assert key_on(avx2) == key_on(avx2)
    assert key_on(avx2) != key_on(avx2 + " avx512f avx512bw")


def test_build_key_covers_every_source_and_header():
    """Every file of cuda/ is compiled or hashed: an edited header must rebuild, not reuse a stale build."""
    on_disk = {str(f.relative_to(SOURCE_DIR)) for f in SOURCE_DIR.rglob("*") if f.suffix in (".cpp", ".cu", ".h", ".cuh")}
    listed = loader.CPU_SOURCES + loader.CUDA_SOURCES + loader.HEADERS
    assert len(set(listed)) == len(listed) and set(listed) == on_disk


def test_failed_build_falls_back_with_one_warning(monkeypatch, tmp_path):
    """A source that does not compile: one clear RuntimeWarning, then the reference path (no crash)."""
    for name in loader.CPU_SOURCES + loader.HEADERS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("this is not C++\n")
    monkeypatch.setenv("FIELDS_NATIVE", "1")
    monkeypatch.setattr(loader, "build_root", lambda: tmp_path / "build")
    monkeypatch.setattr(loader, "SOURCE_DIR", tmp_path)
    monkeypatch.setattr(loader, "_want_cuda", lambda: False)
    monkeypatch.setattr(loader, "_state", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.native_ops() is None
        assert native.native_ops() is None
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "PyTorch reference" in messages[0]
    # It quotes the compiler's diagnostic, not torch's "Error building extension" preamble.
    assert "error:" in messages[0] and "Error building extension" not in messages[0], messages[0]
    x, table, res = hash_inputs(n=400, levels=2, log2_t=10)
    from fields.backends.encodings import hash_encode

    assert torch.equal(hash_encode(x, table, res), hash_encode_reference(x, table, res))


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="checked for x86's SIMD")
def test_splat_pixel_loops_vectorise(tmp_path):
    """Every ``#pragma omp simd`` loop of the CPU splatting kernels (the rasterizer's per-pixel loops, forward and
    backward) is vectorised by g++ with the build's flags. A loop that falls back to scalar code gives the same
    numbers, so no value test notices: the rasterizer forward once ran scalar, 6.7x slower, unnoticed."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not on PATH")
    source = SOURCE_DIR / "cpu" / "splat.cpp"
    cmd = [gxx, *loader.CFLAGS, "-fopt-info-vec-optimized", "-I", str(SOURCE_DIR), "-c", str(source),
           "-o", str(tmp_path / "splat.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    vectorised = set()
    for line in result.stderr.splitlines():
        if line.startswith(str(source) + ":") and "loop vectorized" in line:
            vectorised.add(int(line.split(":")[1]))
    pragmas = [i for i, text in enumerate(source.read_text().splitlines(), 1) if "#pragma omp simd" in text]
    assert len(pragmas) >= 4
    # g++ reports a loop at its pragma, its header or its first statement.
    missed = [p for p in pragmas if not vectorised & {p, p + 1, p + 2}]
    assert not missed, f"scalar loops after the pragmas on lines {missed} of {source.name}"


# -- CUDA build ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cuda_compiles(tmp_path_factory) -> Iterator[dict[str, tuple[subprocess.Popen, Path, Path]]]:
    """Every CUDA source compiled by nvcc alone, all started at once (each nvcc runs one host compiler, so two
    cores build two files in the time of one): source -> (process, object file, its stderr log)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    out = tmp_path_factory.mktemp("nvcc")
    compiles = {}
    for i, source in enumerate(loader.CUDA_SOURCES):
        obj, log = out / f"{i}.o", out / f"{i}.log"
        with open(log, "w") as err:
            cmd = [nvcc, "-c", "-std=c++17", "--fmad=false", "-I", str(SOURCE_DIR), str(SOURCE_DIR / source),
                   "-o", str(obj)]
            compiles[source] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err), obj, log)
    yield compiles
    for proc, _, _ in compiles.values():
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("source", loader.CUDA_SOURCES)
def test_cuda_sources_compile_standalone(source, cuda_compiles):
    proc, obj, log = cuda_compiles[source]
    assert proc.wait() == 0, log.read_text()[-2000:]
    assert obj.stat().st_size > 0


def cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include folder (with cuda_runtime_api.h), where one is installed."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), "/usr/local/cuda", nvcc and Path(nvcc).resolve().parent.parent]
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_runtime_api.h").exists():
            return Path(c) / "include"
    return None


def test_bindings_compile_with_the_cuda_dispatch(tmp_path):
    """bindings.cpp as the CUDA build compiles it (-DFIELDS_WITH_CUDA), syntax-checked by g++ against this torch's
    headers. Nothing else compiles that branch on a machine without a GPU: a CPU-only helper called from it once
    broke the GPU build unseen until a GPU was lent."""
    from torch.utils.cpp_extension import include_paths

    cuda_include, gxx = cuda_include_dir(), shutil.which("g++")
    if cuda_include is None or gxx is None:
        pytest.skip("needs g++ and the CUDA toolkit's headers")
    torch_includes = include_paths()
    extra = []
    if not any((Path(d) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for d in torch_includes):
        # A CPU build of torch ships c10/cuda's headers but not this one, which CMake writes for CUDA builds.
        (tmp_path / "c10/cuda/impl").mkdir(parents=True)
        (tmp_path / "c10/cuda/impl/cuda_cmake_macros.h").write_text("#pragma once\n")
        extra = [str(tmp_path)]
    includes = [*torch_includes, *extra, str(cuda_include), sysconfig.get_paths()["include"]]
    cmd = [gxx, "-fsyntax-only", *loader.CFLAGS, "-DFIELDS_WITH_CUDA", "-I", str(SOURCE_DIR),
           *(a for d in includes for a in ("-isystem", d)), str(SOURCE_DIR / "bindings.cpp")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
