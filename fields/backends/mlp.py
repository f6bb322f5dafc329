"""NeRF-style coordinate MLP (Mildenhall et al. 2020): positionally encoded points through a ReLU trunk with a
skip connection, a density head, and a colour head on the trunk's features plus the encoded view direction.

``ModulatedMLP`` is the trunk; with ``gamma``/``beta`` it normalises each hidden layer (no learned affine) and
applies the given scale and shift before the activation, which is how the ``cam`` backend reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fields.backends.base import Appearance, Field, FieldConfig, ImageField, bf16_enabled
from fields.backends.encodings import trunc_exp
from fields.backends.fused_mlp import modulated_relu, relu_mlp
from fields.backends.positional import CoordinateEncoding, fourier_dim, fourier_encode


@dataclass
class MLPConfig(FieldConfig):
    """Coordinate-MLP backend. NeRF uses 8 layers of 256 with a skip at layer 4; on a 2-core CPU that costs
    ~10x more per sample than the hash grid, so the defaults are 4 layers of 128 (skip after layer 2): about
    1/8 of the multiply-adds, which buys enough steps in a few minutes to converge further than the big
    network would. The positional and view encodings keep NeRF's 10 and 4 frequencies (they are cheap).
    Batches of 8192 samples instead of 32768: on lego, 120 s of training gave 21.2 dB instead of 19.6."""

    batch_samples: ClassVar[int] = 1 << 13

    encoding: Literal["fourier", "gaussian"] = "fourier"
    """Point encoding: NeRF's Fourier features, or the shifted Gaussian basis of "Rethinking Positional
    Encoding" (Zheng et al. 2021)."""
    pos_freqs: int = 10
    """Fourier frequencies per point coordinate (and per pixel coordinate for `fields fit`)."""
    dir_freqs: int = 4
    """Fourier frequencies per view-direction coordinate."""
    gaussian_basis: int = 64
    """Gaussian encoding: shifted Gaussians per coordinate."""
    gaussian_sigma: float = 1.0
    """Gaussian encoding: width in units of the spacing between shifts."""
    width: int = 128
    """Width of the trunk."""
    layers: int = 4
    """Hidden layers of the trunk."""
    skip: int | None = 2
    """Concatenate the encoded input again after this many layers (None: no skip)."""
    color_width: int = 64
    """Width of the colour head's hidden layer."""
    lr_scale: float = 0.3
    """Learning rate relative to the base one (--lr, 1e-2 by default). NeRF trains for hours at 5e-4; a budget
    of minutes needs a larger rate, and 3e-3 (decaying with the schedule) still trains stably."""
    bf16: bool | None = None
    """Run the radiance field's matrix products in bfloat16 on the CPU (torch autocast; weights, optimizer,
    densities and colours stay float32); None: where the CPU multiplies bfloat16 natively (AMX-BF16 or
    AVX512-BF16). There the network's forward+backward is ~2.5x (AMX) or ~1.6x (AVX512-BF16 on a Zen 4) faster
    than in float32, and lego at 120 s scores higher (AMX: mlp 23.9 vs 22.7 dB, cam 22.1 vs 21.7; Zen 4: mlp 23.61
    vs 21.61, cam 24.63 vs 20.98).
    Batches are padded to a multiple of ``BF16_ROWS`` rows: oneDNN builds a kernel for every new batch size, and
    training batches change size every step."""

    def build(self, aabb: torch.Tensor, appearance: Appearance = Appearance()) -> "MLPField":
        return MLPField(aabb, self, appearance)

    def build_image(self) -> "ImageMLP":
        return ImageMLP(self)

    def encoding_for(self, in_dim: int) -> CoordinateEncoding:
        return CoordinateEncoding(in_dim, self.encoding, self.pos_freqs, self.gaussian_basis, self.gaussian_sigma)


BF16_ROWS = 1024
"""Row multiple of bfloat16 batches (see ``MLPConfig.bf16``): at most 1023 padded rows, a few dozen kernel shapes."""


def pad_rows(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """``t`` with zero rows appended up to a multiple of ``multiple`` rows (``t`` itself when it has them)."""
    extra = -t.shape[0] % multiple
    return F.pad(t, (0, 0, 0, extra)) if extra else t


class ModulatedMLP(nn.Module):
    """A ReLU trunk of ``layers`` hidden layers of ``width``, re-reading the input after layer ``skip``.

    ``forward(x, gamma, beta)`` with ``gamma``/``beta`` [layers, N, 1] layer-normalises each hidden layer without
    an affine and applies ``h * gamma + beta`` (one scalar per layer and point, as in CAM) before the ReLU.
    """

    def __init__(self, in_dim: int, width: int, layers: int, skip: int | None = None):
        super().__init__()
        self.skip, self.width = skip, width
        dims = [in_dim]
        for i in range(1, layers):
            dims.append(width + (in_dim if skip is not None and i == skip else 0))
        self.linears = nn.ModuleList(nn.Linear(a, width) for a in dims)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor | None = None,
                beta: torch.Tensor | None = None) -> torch.Tensor:
        if gamma is None:  # plain ReLU layers: the fused MLP, split at the skip
            lin = list(self.linears)
            cut = self.skip if self.skip is not None and 0 < self.skip < len(lin) else len(lin)
            h = relu_mlp([x], [m.weight for m in lin[:cut]], [m.bias for m in lin[:cut]], relu_out=True)
            if cut == len(lin):
                return h
            return relu_mlp([h, x], [m.weight for m in lin[cut:]], [m.bias for m in lin[cut:]], relu_out=True)
        h = x
        for i, linear in enumerate(self.linears):
            if self.skip is not None and i == self.skip:
                h = torch.cat([h, x.to(h.dtype)], -1)  # bfloat16 under autocast: no float32 copy
            h = modulated_relu(linear(h), gamma[i], beta[i])
        return h


class MLPField(Field):
    def __init__(self, aabb: torch.Tensor, cfg: MLPConfig, appearance: Appearance = Appearance()):
        super().__init__(aabb, appearance)
        self.cfg, self._use_bf16 = cfg, bf16_enabled(cfg.bf16)
        self.encoding = cfg.encoding_for(3)
        self.trunk = ModulatedMLP(self.encoding.out_dim, cfg.width, cfg.layers, cfg.skip)
        self.density_head = nn.Linear(cfg.width, 1)
        self.bottleneck = nn.Linear(cfg.width, cfg.width)
        self.color_hidden = ModulatedMLP(cfg.width + fourier_dim(3, cfg.dir_freqs) + self.appearance_dim,
                                         cfg.color_width, 1)
        self.color_head = nn.Linear(cfg.color_width, 3)

    def trunk_modulation(self, u: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Scale and shift of the trunk's layers at normalised points ``u`` (none for the plain MLP)."""
        return None, None

    def color_modulation(self, d: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Scale and shift of the colour head's layer for view directions ``d`` (none for the plain MLP)."""
        return None, None

    def _bf16(self, x: torch.Tensor) -> bool:
        return self._use_bf16 and x.device.type == "cpu"

    def geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, scale = self.normalize(x)
        n, bf16 = u.shape[0], self._bf16(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            u = pad_rows(u, BF16_ROWS if bf16 else 1)
            h = self.trunk(self.encoding(u), *self.trunk_modulation(u))
            s = self.density_head(h)[:n, 0]
        sigma = trunc_exp(s.float() - 1.0) * scale  # -1: start with a mostly empty box
        return sigma, h[:n]

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self.geometry(x)[0]

    def color(self, h: torch.Tensor, d: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        n, bf16 = d.shape[0], self._bf16(d)
        rows = BF16_ROWS if bf16 else 1
        code = self.code_input(codes, n)
        h, d = pad_rows(h, rows), pad_rows(d, rows)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            b = self.bottleneck(h)
            inputs = [b, fourier_encode(d, self.cfg.dir_freqs).to(b.dtype)]
            if code is not None:
                inputs.append(pad_rows(code, rows).to(b.dtype))
            c = torch.cat(inputs, -1)
            out = self.color_head(self.color_hidden(c, *self.color_modulation(d)))
        return torch.sigmoid(out[:n].float())

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, h = self.geometry(x)
        return sigma, self.color(h, d)

    def param_groups(self, lr: float) -> list[dict]:
        return [{"name": "mlp", "params": list(self.parameters()), "lr": lr * self.cfg.lr_scale}]


class ImageMLP(ImageField):
    """The coordinate MLP over pixel coordinates: encoded (u, v) -> trunk -> sigmoid RGB."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.encoding = cfg.encoding_for(2)
        self.trunk = ModulatedMLP(self.encoding.out_dim, cfg.width, cfg.layers, cfg.skip)
        self.head = nn.Linear(cfg.width, 3)

    def modulation(self, uv: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.trunk(self.encoding(uv), *self.modulation(uv))))

    def param_groups(self, lr: float) -> list[dict]:
        return [{"name": "mlp", "params": list(self.parameters()), "lr": lr * self.cfg.lr_scale}]
