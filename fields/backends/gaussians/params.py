"""What the Gaussians' helpers (density control, the spatial index) see of the Gaussian field: its per-Gaussian
tensors by name and a few properties, so that they never import the field (the field imports them)."""

from __future__ import annotations

import threading
from typing import Protocol

import torch

PER_GAUSSIAN = ("means", "scales", "quats", "opacities", "sh0", "shN")
"""The per-Gaussian parameters: means [N, 3], log-scales [N, 3], wxyz quaternions [N, 4], logit opacities [N],
SH DC [N, 1, 3] and the higher SH coefficients [N, K, 3]."""
STATS = ("grad2d", "grad_count")
"""Per-Gaussian densification statistics (buffers)."""


class GaussianSet(Protocol):
    """The per-Gaussian tensors (``PER_GAUSSIAN`` parameters, ``STATS`` buffers), the scene box and scale, the lock
    held while the set changes, and the colour of chosen Gaussians along given directions."""

    means: torch.nn.Parameter
    scales: torch.nn.Parameter
    quats: torch.nn.Parameter
    opacities: torch.nn.Parameter
    sh0: torch.nn.Parameter
    shN: torch.nn.Parameter
    grad2d: torch.Tensor
    grad_count: torch.Tensor
    filter3d: torch.Tensor | None  # anti-aliased: Mip-Splatting's 3-D filter variance [N], recomputed after edits
    aabb: torch.Tensor
    scene_scale: float
    lock: threading.Lock

    def __len__(self) -> int: ...

    def sh_color(self, dirs: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor: ...
