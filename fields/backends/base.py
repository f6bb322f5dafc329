"""The one interface every field backend implements, and the registry that picks a backend by name.

A field maps points (and view directions) to density and colour; ``ImageField`` is the same backend over 2-D
pixel coordinates (``fields fit``). What is rendered is the field's
``scene_model`` (a ``VolumeModel`` drawn by ray marching, or the Gaussians' own); training, evaluation, export
and the viewer only ever call that, ``density``, ``forward``, ``param_groups`` and ``after_step``. Only the config
decides which backend runs (and, by ``training_steps``, what one training step works on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fields.backends.fused_mlp import ReLUMLP
from renderers.contraction import contract_unit
from renderers.model import VolumeModel
from renderers.ndc import NDC
from renderers.native import has_native_bf16
from renderers.occupancy import OccupancyGrid
from renderers.render import RenderConfig
from scenes.scene import SceneSplit


@dataclass(frozen=True)
class Appearance:
    """Per-image appearance a field learns (nerfacto's appearance embedding): a code of ``dim`` numbers for each of
    ``images`` training images, fed to the colour network, so that exposure and white balance that differ between
    photos need not be explained by the scene. ``dim`` 0 (or no images): none, and the field is as without it."""

    dim: int = 0
    images: int = 0

    @property
    def on(self) -> bool:
        return self.dim > 0 and self.images > 0


CODE_SCALE = 10.0
"""Appearance codes enter the colour networks times this: Adam moves each parameter by about the learning rate
per step whatever its gradient, so codes learned in a few hundred steps need a larger step than the networks."""


class Field(nn.Module):
    """Base class of radiance fields over an axis-aligned scene box ``aabb`` [2, 3].

    With ``appearance`` on, the field holds one learned code per training image (``appearance_codes``, zeros at
    the start); ``codes(images)`` gives a batch's codes for the renderer to pass to ``color``, and ``color``
    without codes (novel and held-out views: eval, viewer, export, a distillation teacher) uses their mean.
    A backend adds ``appearance_dim`` inputs to its colour network and reads them with ``code_input``."""

    contracted: bool = False
    """Whether the field covers the whole world through scene contraction (``renderers.contraction``): its
    inputs are then the contracted cube over ``aabb``, and nothing is outside. Set by ``build_field``."""
    ndc: NDC | None = None
    """The NDC map of a forward-facing capture (``renderers.ndc``): ``aabb`` is then a box of NDC space, which
    every ray is mapped into before marching. Set by ``build_field``."""

    def __init__(self, aabb: torch.Tensor, appearance: Appearance = Appearance()):
        super().__init__()
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
        self.appearance_codes = (nn.Parameter(torch.zeros(appearance.images, appearance.dim)) if appearance.on
                                 else None)

    @property
    def appearance_dim(self) -> int:
        """Size of the per-image codes (0 without them)."""
        return 0 if self.appearance_codes is None else self.appearance_codes.shape[1]

    def codes(self, images: torch.Tensor) -> torch.Tensor | None:
        """The appearance codes [R, appearance_dim] of training images ``images`` [R] (None without codes)."""
        return None if self.appearance_codes is None else self.appearance_codes.index_select(0, images)

    def code_input(self, codes: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """What ``color`` feeds its network for ``n`` samples: the given per-sample ``codes``, else the mean code
        (a view that is no training image); None when the field has no codes."""
        if self.appearance_codes is None:
            return None
        return CODE_SCALE * (self.appearance_codes.mean(0).expand(n, -1) if codes is None else codes)

    def held_out_appearance(self) -> str | None:
        """What views that are no training image are rendered with, said in eval's output (None: nothing
        per-image)."""
        if self.appearance_codes is None:
            return None
        return f"the mean of the {self.appearance_codes.shape[0]} training images' appearance codes"

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points mapped to [0, 1]^3 over the box (clamped), and what turns the density network's output there
        into world density: 1 inside the box, 0 outside it; with contraction, the contracted cube mapped to
        [0, 1]^3 and the contraction's stretch (``renderers.contraction.density_scale``), so that the network
        gives density per unit of contracted length, the measure the occupancy grid and the marcher use."""
        if self.contracted:
            return contract_unit(x, self.aabb)
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((u >= 0) & (u <= 1)).all(-1)
        return u.clamp(0, 1), inside.to(u.dtype)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Volume density ``sigma >= 0`` at points ``x`` [N, 3] -> [N] (zero outside the box)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density [N] and colour [N, 3] in [0, 1] at points ``x`` seen along unit directions ``d``."""
        raise NotImplementedError

    def geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density [N] and the per-point features ``color`` needs. The renderer prunes samples with this
        density and shades the kept ones from the same features, so a field that overrides the pair evaluates
        its view-independent part once per sample. Default: the points themselves are the features."""
        return self.density(x), x

    def color(self, features: torch.Tensor, d: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Colour [N, 3] from ``geometry``'s features and unit view directions ``d``, with the samples' appearance
        ``codes`` [N, appearance_dim] (None: the mean code; see ``code_input``)."""
        return self.forward(features, d)[1]

    def image_appearance(self, out: dict[str, torch.Tensor], i: int, background: torch.Tensor) -> torch.Tensor:
        """A whole training image ``i`` rendered by ``scene_model`` (``out``: ``rgb`` on ``background``,
        ``opacity``) as that image's appearance shows it, for training on whole images; ``out["rgb"]`` by default
        (fields of a volume take the codes per ray, ``codes``)."""
        return out["rgb"]

    def scene_model(self, grid: OccupancyGrid, render_cfg: RenderConfig) -> VolumeModel:
        """What renders this field: a ``VolumeModel`` that ray-marches through ``grid``; explicit backends
        (gaussians) return their own kind, with the same ``field`` / ``grid`` / ``render_cfg``."""
        return VolumeModel(self, grid, render_cfg, self.ndc)

    def seed(self, data: SceneSplit) -> None:
        """Place primitives from what the training split ``data`` knows of the scene (its structure-from-motion
        points, what its cameras see) where the backend has primitives (Gaussians, as 3DGS starts on the SfM
        points); fields of a volume learn from the images alone."""

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups with per-group learning rates (override to give grids their own). A group
        may set ``lr_final`` (its own end-of-budget factor, instead of the trainer's ``lr_final``)."""
        return [{"name": "all", "params": list(self.parameters()), "lr": lr}]

    def stats(self) -> dict[str, float]:
        """Figures worth logging while training (e.g. the number of Gaussians); none by default."""
        return {}

    def regularization(self) -> torch.Tensor | None:
        """A term the image-based training steps add to their loss (gaussians: the MCMC strategy's opacity and
        scale regularizers), or None."""
        return None

    def after_step(self, step: int, optimizer: torch.optim.Optimizer, info: dict) -> None:
        """Called after each optimizer step with what the training render returned (``info``); backends that
        change their parameters' shapes (gaussians) do it here and keep ``optimizer``'s state consistent."""


@dataclass
class FieldConfig:
    """Base of every backend's config; ``build`` returns the field for a scene box."""

    training_steps: ClassVar[str] = "rays"
    """What one training step works on (a name in ``fields/training/steps.py``): random ray batches for volume fields."""
    batch_samples: ClassVar[int] = 1 << 15
    """Samples per ray batch unless ``--train.target-samples`` is given. Backends whose samples are expensive
    (the MLPs) use smaller batches: in a fixed time, more and noisier steps converge further."""

    def build(self, aabb: torch.Tensor, appearance: Appearance = Appearance()) -> Field:
        """The field over the scene box ``aabb`` with per-image ``appearance`` (none by default)."""
        raise NotImplementedError

    def build_image(self) -> "ImageField":
        """The same backend as a 2-D neural field (``fields fit``)."""
        raise NotImplementedError


class ImageField(nn.Module):
    """A 2-D neural field: pixel coordinates ``uv`` [N, 2] in [0, 1]^2 -> colour [N, 3] in [0, 1]."""

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups, as ``Field.param_groups``."""
        return [{"name": "all", "params": list(self.parameters()), "lr": lr}]

    def stats(self) -> dict[str, float]:
        """Figures worth logging while fitting, as ``Field.stats``; none by default."""
        return {}


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int, bf16: bool = False) -> ReLUMLP:
    """A ReLU MLP with ``layers`` hidden layers of width ``hidden`` (fused native kernel on CPU; ``bf16``: its
    matrix products in bfloat16 where the CPU multiplies bfloat16 natively)."""
    return ReLUMLP([in_dim] + [hidden] * layers + [out_dim], bf16)


def bf16_enabled(flag: bool | None) -> bool:
    """A backend's ``bf16`` setting with None resolved for this machine: on where the CPU multiplies bfloat16
    natively (AMX-BF16 or AVX512-BF16, ``has_native_bf16``)."""
    return has_native_bf16() if flag is None else flag
