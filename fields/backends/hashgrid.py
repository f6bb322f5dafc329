"""Instant-NGP radiance field: multiresolution hash encoding, a small density MLP and a colour MLP on
spherical-harmonics-encoded view directions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fields.backends.base import Appearance, Field, FieldConfig, ImageField, bf16_enabled, mlp
from fields.backends.encodings import HashEncoding, sh_encode, trunc_exp
from fields.backends.positional import lift_uv


@dataclass
class HashGridConfig(FieldConfig):
    """Hash-grid backend. Defaults are sized for a 2-core CPU and 200x200 images: fewer levels and a smaller
    table than Instant-NGP's 16 x 2^19 keep the table in cache, and a finest resolution of 512 cells matches
    what 200-pixel views can resolve."""

    n_levels: int = 12
    """Number of resolution levels."""
    n_features: int = 2
    """Features per level."""
    log2_table_size: int = 17
    """log2 of the hash table size per level."""
    base_resolution: int = 16
    """Coarsest grid resolution."""
    max_resolution: int = 512
    """Finest grid resolution."""
    hidden: int = 64
    """Width of the density and colour MLPs."""
    geo_features: int = 15
    """Features passed from the density MLP to the colour MLP."""
    color_layers: int = 2
    """Hidden layers of the colour MLP."""
    grid_lr_scale: float = 1.0
    """Learning rate of the hash table relative to the base learning rate."""
    bf16: bool | None = None
    """Run the MLPs' matrix products in bfloat16 (float32 accumulation; weights, optimizer, hash table and
    activations stay float32), on AMX tiles or as AVX512-BF16 dot products; None: where the CPU has either
    (``relu_mlp``'s ``bf16``). Lego, 120 s, every 16th view, on a Zen 4 (AVX512-BF16): 31.25 dB in 3270 steps
    against 31.07 in 2649 in float32; on AMX: 31.11 in 2944 against 31.09 in 2660."""

    def build(self, aabb: torch.Tensor, appearance: Appearance = Appearance()) -> "HashGridField":
        return HashGridField(aabb, self, appearance)

    def build_image(self) -> "ImageHashGrid":
        return ImageHashGrid(self)

    def encoding(self) -> HashEncoding:
        return HashEncoding(self.n_levels, self.n_features, self.log2_table_size, self.base_resolution,
                            self.max_resolution)


class HashGridField(Field):
    def __init__(self, aabb: torch.Tensor, cfg: HashGridConfig, appearance: Appearance = Appearance()):
        super().__init__(aabb, appearance)
        self.cfg = cfg
        self.encoding = cfg.encoding()
        bf16 = bf16_enabled(cfg.bf16)
        self.density_net = mlp(self.encoding.out_dim, cfg.hidden, 1, 1 + cfg.geo_features, bf16)
        self.color_net = mlp(16 + cfg.geo_features + self.appearance_dim, cfg.hidden, cfg.color_layers, 3, bf16)

    def geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, scale = self.normalize(x)
        h = self.density_net(self.encoding(u))
        sigma = trunc_exp(h[:, 0] - 1.0) * scale  # the -1 starts training with a mostly empty box
        return sigma, h[:, 1:]

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self.geometry(x)[0]

    def color(self, geo: torch.Tensor, d: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        code = self.code_input(codes, d.shape[0])
        parts = (sh_encode(d), geo) if code is None else (sh_encode(d), geo, code)
        return torch.sigmoid(self.color_net(*parts))

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, geo = self.geometry(x)
        return sigma, self.color(geo, d)

    def param_groups(self, lr: float) -> list[dict]:
        return _groups(self, lr, self.cfg)


def _groups(module: torch.nn.Module, lr: float, cfg: HashGridConfig) -> list[dict]:
    nets = [p for n, p in module.named_parameters() if not n.startswith("encoding.")]
    return [{"name": "grid", "params": [module.encoding.table], "lr": lr * cfg.grid_lr_scale},
            {"name": "mlp", "params": nets, "lr": lr}]


class ImageHashGrid(ImageField):
    """The hash grid over pixel coordinates: the 3-D encoding on (u, v, 0.5), then a small MLP to RGB."""

    def __init__(self, cfg: HashGridConfig):
        super().__init__()
        self.cfg = cfg
        self.encoding = cfg.encoding()
        self.net = mlp(self.encoding.out_dim, cfg.hidden, 2, 3, bf16_enabled(cfg.bf16))

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(self.encoding(lift_uv(uv))))

    def param_groups(self, lr: float) -> list[dict]:
        return _groups(self, lr, self.cfg)
