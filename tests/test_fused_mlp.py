"""The fused native MLP (cuda/cpu/mlp.cpp) against its plain-PyTorch reference: values and gradients of every
input part, weight and bias, for the shapes the backends use, ragged batch sizes and empty batches; dispatch and
parameter names of ``fields.backends.base.mlp``; the bf16 (AMX) mode against a bfloat16 oracle. The same for CAM's fused
modulated activation (cuda/cpu/modulate.cpp), in float32 and bfloat16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fields.backends.base import mlp
from fields.backends.fused_mlp import modulated_relu, modulated_relu_reference, relu_mlp, relu_mlp_reference
from renderers import native


@pytest.fixture(scope="module", autouse=True)
def built():
    if not native.enabled():
        pytest.skip("FIELDS_NATIVE=0 forces the reference")
    assert native.native_ops() is not None, "the native build failed (see the warning)"


def net(dims, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [(torch.randn(b, a, generator=g) / a**0.5).requires_grad_() for a, b in zip(dims[:-1], dims[1:])]
    bs = [(torch.randn(b, generator=g) * 0.3).requires_grad_() for b in dims[1:]]
    return ws, bs


def near_kink(xs, ws, bs, eps=1e-4):
    """Rows with a pre-activation within ``eps`` of a ReLU kink, where float32 and float64 may pick different
    sides; the tests give them no upstream gradient (their values still count)."""
    h = torch.cat([x.detach().double() for x in xs], -1)
    near = torch.zeros(h.shape[0], dtype=torch.bool)
    for w, b in zip(ws, bs):
        h = h @ w.detach().double().t() + b.detach().double()
        near |= (h.abs() < eps).any(-1)
        h = h.clamp(min=0)
    return near


def grads(out, tensors, g):
    return torch.autograd.grad(out, [t for t in tensors if t.requires_grad], g)


@pytest.mark.parametrize("dims,parts,relu_out", [
    ((24, 64, 16), [24], False),                # hash grid: density net
    ((31, 64, 64, 3), [16, 15], False),          # hash grid: colour net on [sh, geo]
    ((63, 128, 128), [63], True),                # NeRF trunk: ReLU after the last layer too
    ((191, 128, 128), [128, 63], True),          # NeRF trunk after the skip
    ((7, 5), [3, 4], False),                     # one layer, widths far from a multiple of 16
])
@pytest.mark.parametrize("n", [1, 31, 32, 1000])
def test_values_and_gradients_match_reference(dims, parts, relu_out, n):
    """Fused forward and backward against the reference in float64 (max abs error < 1e-5, relative to scale)."""
    g = torch.Generator().manual_seed(n)
    ws, bs = net(dims)
    xs = [torch.randn(n, k, generator=g).requires_grad_() for k in parts]
    out = relu_mlp(xs, ws, bs, relu_out)
    assert out.shape == (n, dims[-1])
    grad_out = torch.randn(out.shape, generator=g)
    grad_out[near_kink(xs, ws, bs)] = 0
    got = grads(out, xs + ws + bs, grad_out)

    d64 = [[t.detach().double().requires_grad_() for t in ts] for ts in (xs, ws, bs)]
    ref = relu_mlp_reference(*d64, relu_out)
    want = grads(ref, sum(d64, []), grad_out.double())
    assert (out - ref).abs().max().item() < 1e-5 * max(ref.abs().max().item(), 1.0)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-5 * max(b.abs().max().item(), 1.0)


def bf16_oracle(xs, ws, bs, relu_out):
    """The bf16 mode's arithmetic in float64: every layer's input and weights rounded to bfloat16, exact products
    and sums; and the rows whose pre-activation comes within 1e-4 of a ReLU kink."""
    r = lambda t: t.bfloat16().double()  # noqa: E731  (rounding with a straight-through gradient)
    h = torch.cat(xs, -1)
    near = torch.zeros(h.shape[0], dtype=torch.bool)
    for i, (w, b) in enumerate(zip(ws, bs)):
        h = r(h) @ r(w).t() + b
        near |= (h.detach().abs() < 1e-4).any(-1)
        if relu_out or i < len(ws) - 1:
            h = torch.relu(h)
    return h, near


@pytest.mark.parametrize("dims,parts,relu_out", [
    ((24, 64, 16), [24], False),
    ((31, 64, 64, 3), [16, 15], False),
    ((191, 128, 128), [128, 63], True),
    ((7, 5), [3, 4], False),
])
@pytest.mark.parametrize("n", [1, 33, 1000])
def test_bf16_mode_matches_a_bfloat16_oracle_where_it_runs_and_is_float32_elsewhere(dims, parts, relu_out, n):
    """Where bf16 mode runs (AMX tiles, or AVX512-BF16 dot products): forward values within 1e-3 of their scale
    (float32 sums round a hidden value to the other neighbouring bfloat16 now and then: one bfloat16 step, 0.4%, of
    one input of the next layer); gradients (whose output and layer gradients the kernel also rounds to bfloat16)
    within 2% of their scale; outputs different from float32's. Elsewhere the flag changes nothing. An indexing or
    layout bug errs by the whole scale."""
    g = torch.Generator().manual_seed(n)
    ws, bs = net(dims)
    xs = [torch.randn(n, k, generator=g).requires_grad_() for k in parts]
    out = relu_mlp(xs, ws, bs, relu_out, bf16=True)
    if not torch.ops.fields.mlp_bf16():
        assert torch.equal(out, relu_mlp(xs, ws, bs, relu_out))
        return
    d64 = [[t.detach().double().requires_grad_() for t in ts] for ts in (xs, ws, bs)]
    ref, near = bf16_oracle(*d64, relu_out)
    grad_out = torch.randn(out.shape, generator=g)
    grad_out[near] = 0
    got = grads(out, xs + ws + bs, grad_out)
    want = grads(ref, sum(d64, []), grad_out.double())
    assert (out - ref).abs().max().item() < 1e-3 * max(ref.abs().max().item(), 1.0)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 2e-2 * max(b.abs().max().item(), 1e-3)
    if n > 1:
        assert (out - relu_mlp(xs, ws, bs, relu_out)).abs().max().item() > 0, "bf16 mode ran in float32"


def test_only_requested_input_gradients_and_no_grad_path():
    ws, bs = net((31, 64, 3))
    sh, geo = torch.randn(100, 16), torch.randn(100, 15).requires_grad_()
    out = relu_mlp([sh, geo], ws, bs)
    (g_geo,) = torch.autograd.grad(out.sum(), [geo])
    want = torch.autograd.grad(relu_mlp_reference([sh, geo], ws, bs).sum(), [geo])[0]
    assert (g_geo - want).abs().max().item() < 1e-5
    with torch.no_grad():
        assert (relu_mlp([sh, geo], ws, bs) - out.detach()).abs().max().item() == 0.0


def test_empty_batch():
    ws, bs = net((24, 64, 16))
    x = torch.zeros(0, 24, requires_grad=True)
    out = relu_mlp([x], ws, bs)
    assert out.shape == (0, 16)
    gx, gw = torch.autograd.grad(out.sum(), [x, ws[0]])
    assert gx.shape == (0, 24) and gw.abs().max().item() == 0.0


def test_mlp_module_dispatches_and_keeps_sequential_names(monkeypatch):
    """``fields.backends.base.mlp`` keeps nn.Sequential's parameter names (old checkpoints load) and runs the fused op,
    which agrees with the reference path that FIELDS_NATIVE=0 selects."""
    torch.manual_seed(0)
    m = mlp(24, 64, 2, 16)
    plain = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))
    assert list(m.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(m.state_dict())
    x = torch.randn(500, 24)
    calls = []
    real = torch.ops.fields.mlp_fwd
    monkeypatch.setattr(torch.ops.fields, "mlp_fwd", lambda *a: calls.append(1) or real(*a), raising=False)
    got = m(x)
    assert calls, "the fused op did not run"
    monkeypatch.setenv("FIELDS_NATIVE", "0")
    assert (m(x) - plain(x)).abs().max().item() == 0.0
    assert (got - plain(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("skip", [None, 2])
def test_nerf_trunk_runs_fused_and_matches_reference(skip, monkeypatch):
    """The NeRF backend's unmodulated trunk (split at its skip) agrees with the reference path."""
    from fields.backends.mlp import ModulatedMLP

    torch.manual_seed(0)
    trunk = ModulatedMLP(27, 64, 4, skip)
    x = torch.randn(300, 27)

    def run():
        trunk.zero_grad(set_to_none=True)
        out = trunk(x)
        out.square().sum().backward()
        return [out.detach()] + [p.grad.clone() for p in trunk.parameters()]

    got = run()
    monkeypatch.setenv("FIELDS_NATIVE", "0")
    for a, b in zip(got, run()):
        assert (a - b).abs().max().item() < 1e-5 * max(b.abs().max().item(), 1.0)


def modulation_case(n, w, seed, dtype=torch.float32):
    """Rows ``h`` (one of them constant: zero variance), per-row ``gamma``/``beta`` and an upstream gradient that
    is zero where the pre-activation is within 1e-3 of the ReLU kink (float32 and float64 may disagree there)."""
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, w, generator=g) * 3 + 1).to(dtype)
    h[n // 2] = 0.7
    gamma, beta = torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g) * 0.5
    z = modulated_relu_reference(h.double(), gamma.double(), beta.double())
    pre = torch.addcmul(beta.double(), torch.nn.functional.layer_norm(h.double(), (w,)), gamma.double())
    grad = torch.randn(n, w, generator=g)
    grad[(pre.abs() < 1e-3)] = 0
    return [t.requires_grad_() for t in (h, gamma, beta)], grad, z


@pytest.mark.parametrize("w", [128, 64, 7])
@pytest.mark.parametrize("n", [1, 33, 1000])
def test_modulated_relu_matches_reference(n, w):
    """relu(gamma * layer_norm(h) + beta), fused, against the float64 reference: values and the gradients of h,
    gamma and beta (max abs error < 1e-5 relative to scale), including a constant row."""
    (h, gamma, beta), grad, want_out = modulation_case(n, w, seed=n + w)
    out = modulated_relu(h, gamma, beta)
    got = torch.autograd.grad(out, [h, gamma, beta], grad)
    d64 = [t.detach().double().requires_grad_() for t in (h, gamma, beta)]
    want = torch.autograd.grad(modulated_relu_reference(*d64), d64, grad.double())
    assert out.dtype == torch.float32 and out.shape == (n, w)
    assert (out - want_out).abs().max().item() < 1e-5 * max(want_out.abs().max().item(), 1.0)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-5 * max(b.abs().max().item(), 1.0)


def test_modulated_relu_in_bfloat16_keeps_the_dtype_and_rounds_only_at_the_ends():
    """bfloat16 rows (what a linear layer gives under CPU autocast) stay bfloat16 through the op, and agree with
    the float64 reference on the same values to within bfloat16 rounding of the result."""
    (h, gamma, beta), grad, want_out = modulation_case(500, 128, seed=1, dtype=torch.bfloat16)
    grad = grad.to(torch.bfloat16)
    out = modulated_relu(h, gamma, beta)
    assert out.dtype == torch.bfloat16
    got = torch.autograd.grad(out, [h, gamma, beta], grad)
    d64 = [t.detach().double().requires_grad_() for t in (h, gamma, beta)]
    want = torch.autograd.grad(modulated_relu_reference(*d64), d64, grad.double())
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    assert (out.double() - want_out).abs().max().item() < 2 ** -7 * max(want_out.abs().max().item(), 1.0)
    for a, b in zip(got, want):
        assert (a.double() - b).abs().max().item() < 2 ** -7 * max(b.abs().max().item(), 1.0)


def test_cam_trunk_runs_the_fused_activation_and_matches_reference(monkeypatch):
    """A modulated trunk (CAM) calls the fused op and agrees with the reference path (FIELDS_NATIVE=0)."""
    from fields.backends.mlp import ModulatedMLP

    torch.manual_seed(0)
    trunk = ModulatedMLP(27, 64, 3, 1)
    x = torch.randn(300, 27)
    gamma = (1 + 0.3 * torch.randn(3, 300, 1)).requires_grad_()
    beta = (0.3 * torch.randn(3, 300, 1)).requires_grad_()
    calls = []
    real = torch.ops.fields.modulated_relu_fwd
    monkeypatch.setattr(torch.ops.fields, "modulated_relu_fwd", lambda *a: calls.append(1) or real(*a),
                        raising=False)

    def run():
        trunk.zero_grad(set_to_none=True)
        gamma.grad = beta.grad = None
        out = trunk(x, gamma, beta)
        out.square().sum().backward()
        return [out.detach(), gamma.grad, beta.grad] + [p.grad.clone() for p in trunk.parameters()]

    got = run()
    assert len(calls) == 3, "the fused op did not run on every layer"
    monkeypatch.setenv("FIELDS_NATIVE", "0")
    for a, b in zip(got, run()):
        assert (a - b).abs().max().item() < 1e-5 * max(b.abs().max().item(), 1.0)
    assert len(calls) == 3
