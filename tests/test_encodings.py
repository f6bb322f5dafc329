"""Hash encoding (values at vertices, trilinear interpolation, gradcheck), SH encoding and the hash-grid field."""

from __future__ import annotations

import torch

from fields.backends.encodings import HashEncoding, hash_encode, level_resolutions, sh_encode, trunc_exp
from fields.backends.hashgrid import HashGridConfig


def test_level_resolutions_are_geometric():
    assert level_resolutions(4, 16, 128) == [16, 32, 64, 128]
    assert level_resolutions(1, 16, 128) == [16]


def test_dense_level_reads_the_vertex_row():
    table = torch.randn(1, 64, 2)
    res = torch.tensor([3])  # (3+1)^3 = 64 vertices: dense
    i, j, k = 1, 2, 3
    x = torch.tensor([[i / 3, j / 3, k / 3]])
    assert torch.allclose(hash_encode(x, table, res), table[0, i + 4 * j + 16 * k][None], atol=1e-6)


def test_hashed_level_uses_instant_ngp_hash_and_trilinear_weights():
    table = torch.randn(1, 16, 1)
    res = torch.tensor([8])  # 729 vertices > 16: hashed
    x = torch.tensor([[0.3, 0.55, 0.9]])
    pos = x[0] * 8
    base = pos.floor().long()
    frac = pos - base
    expected = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                c = base + torch.tensor([dx, dy, dz])
                h = (int(c[0]) * 1 ^ int(c[1]) * 2654435761 ^ int(c[2]) * 805459861) % (1 << 32) % 16
                w = ((frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1])
                     * (frac[2] if dz else 1 - frac[2]))
                expected += w * table[0, h, 0]
    assert torch.allclose(hash_encode(x, table, res)[0, 0], expected, atol=1e-5)


def test_hash_encoding_gradcheck_table_and_inputs():
    table = torch.randn(2, 64, 2, dtype=torch.float64, requires_grad=True)
    res = torch.tensor([3, 7])  # one dense level, one hashed level
    x = (torch.rand(20, 3, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, p: hash_encode(p, t, res), (table, x), eps=1e-6, atol=1e-5)


def test_hash_encoding_handles_box_faces():
    enc = HashEncoding(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, max_resolution=32)
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.5, 0.0]])
    assert enc(x).shape == (3, 8) and torch.isfinite(enc(x)).all()


def test_sh_encoding_degree4_is_orthonormal_on_the_sphere():
    d = torch.nn.functional.normalize(torch.randn(200_000, 3, dtype=torch.float64), dim=-1)
    y = sh_encode(d)
    gram = (y.T @ y) * (4 * torch.pi / d.shape[0])
    assert y.shape == (200_000, 16) and torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.02)


def test_trunc_exp_clamps_gradient():
    x = torch.tensor([0.0, 30.0], requires_grad=True)
    trunc_exp(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1.0, float(torch.exp(torch.tensor(15.0)))]))


def test_hashgrid_field_shapes_ranges_and_gradients():
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    field = HashGridConfig(n_levels=4, log2_table_size=10, max_resolution=64, hidden=16).build(aabb)
    x = torch.rand(50, 3) * 2 - 1
    x[0] = torch.tensor([3.0, 0.0, 0.0])  # outside the box: no density
    d = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    sigma, rgb = field(x, d)
    assert sigma.shape == (50,) and rgb.shape == (50, 3)
    assert (sigma >= 0).all() and sigma[0] == 0 and ((rgb >= 0) & (rgb <= 1)).all()
    (sigma.sum() + rgb.sum()).backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.allclose(field.density(x), sigma)
    names = [g["name"] for g in field.param_groups(1e-2)]
    assert names == ["grid", "mlp"]
