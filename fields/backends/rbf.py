"""Gaussian RBF network (Bouzidi et al., "Gaussian RBFNet", code AbdelazizBouzidi/GNF): a feature grid feeds
one layer of Gaussian radial basis units defined in feature space, then a linear read-out to density and
spherical-harmonics colour coefficients. There is no MLP: the RBF layer is the only non-linearity.

Unit ``k`` has a learnable centre ``c_k`` and learnable per-dimension widths ``beta_k = exp(b_k)``; its response
to a feature vector ``f`` is ``exp(-0.5 * sum_j beta_kj (f_j - c_kj)^2)``. As in the official code the squared
distances of all units are expanded into matrix products (``f^2 beta^T - 2 f (beta c)^T + sum beta c^2``; here one
product over ``[f^2, f]``), centres start at U(-1e-4, 1e-4) and widths at 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fields.backends.base import Appearance, Field, FieldConfig, ImageField
from fields.backends.encodings import HashEncoding, sh_encode, trunc_exp
from fields.backends.positional import lift_uv


@dataclass
class RBFConfig(FieldConfig):
    """RBF backend. The official radiance-field setup uses a factorised DiF-grid encoding (32 features) and 32
    Gaussian units with degree-3 SH colour; here the feature grid is the multiresolution hash grid (also an
    encoder option in the official code, and the one with a native CPU kernel in fields), kept coarser than
    the hashgrid backend's (8 levels up to 256 cells) because the RBF head cannot sharpen detail an MLP would,
    and 4 features per level give the same 32-D feature space."""

    n_levels: int = 8
    """Levels of the feature grid."""
    n_features: int = 4
    """Features per level (the RBF units live in a space of n_levels * n_features dimensions)."""
    log2_table_size: int = 17
    """log2 of the feature grid's table size per level."""
    base_resolution: int = 16
    """Coarsest grid resolution."""
    max_resolution: int = 256
    """Finest grid resolution."""
    n_rbfs: int = 32
    """Gaussian RBF units (the official code uses 32 for radiance fields, 64 for images)."""
    sh_degree: int = 3
    """Spherical-harmonics degree of the colour coefficients (0-3)."""
    grid_lr_scale: float = 2.0
    """Learning rate of the feature grid relative to the base one (2: the official code's 2e-2)."""
    rbf_lr_scale: float = 2.0
    """Learning rate of centres, widths and read-out relative to the base one (2: the official code uses one
    large rate, 2e-2, for grid and RBF layer alike; on lego it gave 23.9-24.4 dB after 60 s where 1e-2 gave
    19.1-21.8)."""

    def build(self, aabb: torch.Tensor, appearance: Appearance = Appearance()) -> "RBFField":
        return RBFField(aabb, self, appearance)

    def build_image(self) -> "ImageRBF":
        return ImageRBF(self)

    def encoding(self) -> HashEncoding:
        return HashEncoding(self.n_levels, self.n_features, self.log2_table_size, self.base_resolution,
                            self.max_resolution)


def rbf_activations_reference(f: torch.Tensor, beta: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """The Gaussian units' responses in plain autograd ops: the oracle of ``_RBFActivation``."""
    dist_sq = (f * f) @ beta.t() - 2 * f @ (beta * centers).t() + (beta * centers ** 2).sum(1)
    return torch.exp(-0.5 * dist_sq.clamp_min(0))


class _RBFActivation(torch.autograd.Function):
    """``exp(-0.5 max(0, [f^2, f] @ weight + bias))``: the squared distances of every unit as one matrix product
    over the concatenated ``[f^2, f]``, with a hand-written backward. Autograd through the plain expression
    spends most of an rbf training step on element-wise passes and temporaries (mul, sub, add, clamp, expand,
    sum); this keeps two products forward and two backward plus a few in-place passes. The clamp only stops
    rounding from pushing a distance below 0 (phi > 1); it needs no mask in the backward, since a distance is 0
    only at ``f = c``, where its derivatives by ``f``, ``c`` and the widths all vanish."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        d = f.shape[1]
        stacked = f.new_empty(f.shape[0], 2 * d)
        torch.mul(f, f, out=stacked[:, :d])
        stacked[:, d:] = f
        phi = torch.addmm(bias, stacked, weight)
        phi.clamp_min_(0).mul_(-0.5).exp_()
        ctx.save_for_backward(f, weight, stacked, phi)
        return phi

    @staticmethod
    def backward(ctx, grad_phi: torch.Tensor):
        f, weight, stacked, phi = ctx.saved_tensors
        grad_dist = (grad_phi * phi).mul_(-0.5)  # d phi / d dist
        grad_f = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_stacked = grad_dist @ weight.t()
            d = f.shape[1]
            grad_f = torch.addcmul(grad_stacked[:, d:], grad_stacked[:, :d], f, value=2.0)
        if ctx.needs_input_grad[1]:
            grad_weight = stacked.t() @ grad_dist
        if ctx.needs_input_grad[2]:
            grad_bias = grad_dist.sum(0)
        return grad_f, grad_weight, grad_bias


class GaussianRBF(nn.Module):
    """One layer of Gaussian RBF units over ``in_dim``-D features, followed by a linear read-out."""

    def __init__(self, in_dim: int, n_rbfs: int, out_dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.empty(n_rbfs, in_dim).uniform_(-1e-4, 1e-4))
        self.log_widths = nn.Parameter(torch.zeros(n_rbfs, in_dim))
        self.readout = nn.Linear(n_rbfs, out_dim)

    def activations(self, f: torch.Tensor) -> torch.Tensor:
        """Responses of every unit to features ``f`` [N, in_dim] -> [N, n_rbfs] in (0, 1]."""
        beta = self.log_widths.exp()
        beta_c = beta * self.centers
        weight = torch.cat([beta.t(), -2 * beta_c.t()])  # [2 in_dim, n_rbfs]
        return _RBFActivation.apply(f, weight, (beta_c * self.centers).sum(1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.readout(self.activations(f))


def spread_features(encoding: HashEncoding, scale: float = 0.05) -> HashEncoding:
    """Re-initialise the feature table to U(-scale, scale). With the hash grid's usual 1e-4 every point starts
    with the same RBF responses, hence the same density everywhere, and the occupancy grid (which keeps cells
    above the mean) then marks the whole box empty before the first step."""
    with torch.no_grad():
        encoding.table.uniform_(-scale, scale)
    return encoding


def _groups(module: nn.Module, lr: float, cfg: RBFConfig) -> list[dict]:
    table = module.encoding.table
    rest = [p for p in module.parameters() if p is not table]  # the RBF layer, and appearance codes and head
    return [{"name": "grid", "params": [table], "lr": lr * cfg.grid_lr_scale},
            {"name": "rbf", "params": rest, "lr": lr * cfg.rbf_lr_scale}]


class RBFField(Field):
    def __init__(self, aabb: torch.Tensor, cfg: RBFConfig, appearance: Appearance = Appearance()):
        super().__init__(aabb, appearance)
        if not 0 <= cfg.sh_degree <= 3:
            raise ValueError(f"rbf: sh_degree must be 0..3, got {cfg.sh_degree}")
        self.cfg = cfg
        self.encoding = spread_features(cfg.encoding())
        self.n_sh = (cfg.sh_degree + 1) ** 2
        self.rbf = GaussianRBF(self.encoding.out_dim, cfg.n_rbfs, 1 + 3 * self.n_sh)
        # No colour network to feed the codes to: they set a per-channel gain and offset of the colour logits.
        self.appearance_head = nn.Linear(self.appearance_dim, 6, bias=False) if self.appearance_dim else None

    def _outputs(self, x: torch.Tensor, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        u, scale = self.normalize(x)
        phi = self.rbf.activations(self.encoding(u))
        out = nn.functional.linear(phi, self.rbf.readout.weight[:n_out], self.rbf.readout.bias[:n_out])
        sigma = trunc_exp(out[:, 0] - 1.0) * scale  # -1: start with a mostly empty box
        return sigma, out[:, 1:]

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self._outputs(x, 1)[0]

    def geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._outputs(x, 1 + 3 * self.n_sh)

    def color(self, coeffs: torch.Tensor, d: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        sh = sh_encode(d, self.cfg.sh_degree + 1)  # [N, n_sh]
        logits = (coeffs.reshape(coeffs.shape[0], 3, self.n_sh) * sh[:, None, :]).sum(-1)
        code = self.code_input(codes, d.shape[0])
        if code is not None:
            gain, offset = self.appearance_head(code).chunk(2, -1)
            logits = logits * (1 + gain) + offset
        return torch.sigmoid(logits)

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, coeffs = self.geometry(x)
        return sigma, self.color(coeffs, d)

    def param_groups(self, lr: float) -> list[dict]:
        return _groups(self, lr, self.cfg)


class ImageRBF(ImageField):
    """The RBF network over pixel coordinates: feature grid on (u, v, 0.5) -> Gaussian units -> sigmoid RGB."""

    def __init__(self, cfg: RBFConfig):
        super().__init__()
        self.cfg = cfg
        self.encoding = spread_features(cfg.encoding())
        self.rbf = GaussianRBF(self.encoding.out_dim, cfg.n_rbfs, 3)

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.rbf(self.encoding(lift_uv(uv))))

    def param_groups(self, lr: float) -> list[dict]:
        return _groups(self, lr, self.cfg)
