"""The ``gaussians`` backend: explicit 3-D Gaussians (3D Gaussian Splatting, Kerbl et al. 2023) rendered by
splatting (``renderers/splatting.py``).

Each Gaussian has a mean, log-scales, a rotation quaternion (wxyz), a logit opacity and spherical-harmonics
colour coefficients (DC in ``sh0``, the rest in ``shN``; the active SH degree grows during training as in
3DGS). The number of Gaussians changes while training (a ``Strategy``: 3DGS's adaptive density control or
3DGS-MCMC's fixed budget): parameters are resized in place
(``param.data = ...``) so the optimizer keeps referring to the same tensors, and a checkpoint with another count
loads into a freshly built field by resizing first.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from fields.backends.base import Appearance, Field, FieldConfig
from fields.backends.encodings import sh_color
from fields.backends.gaussians.antialiasing import filter_variance, smoothed
from fields.backends.gaussians.density_control import build_strategy, edit_gaussians
from fields.backends.gaussians.params import PER_GAUSSIAN
from fields.backends.gaussians.spatial_index import GaussianIndex
from renderers.model import VolumeModel
from renderers.occupancy import OccupancyGrid
from renderers.render import RenderConfig
from renderers.splatting import render_gaussians
from scenes.cameras import Cameras
from scenes.scene import SceneSplit, points_in_view

SH_C0 = 0.28209479177387814  # the degree-0 SH basis value: colour = SH_C0 * sh0 + 0.5 (3DGS convention)


@dataclass
class GaussiansConfig(FieldConfig):
    """Gaussian-splatting backend. Defaults are sized for a 2-core CPU and 200x200 images: far fewer Gaussians
    than 3DGS (a cap of 200k) and 3DGS's schedule (densify every 100 steps until half-way) compressed to the
    ~2000-6000 steps a 300-600 s CPU run takes, without its opacity resets; learning rates are 3DGS's."""

    training_steps: ClassVar[str] = "images"  # one whole training image per step (fields/training/steps.py)

    num_init: int = 20_000
    """Gaussians at random points when a scene has no SfM points: over what the cameras see for a capture with
    a depth range, in the scene box otherwise."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    sh_degree: int = 3
    """Highest spherical-harmonics degree of the colours (0: view-independent colour)."""
    sh_degree_every: int = 200
    """Steps between raising the active SH degree by one (3DGS: 1000 of its 30000 steps)."""
    lr_means: float = 1.6e-4
    """Learning rate of the means, times the scene scale (half the scene box's diagonal; see ``seed``)."""
    lr_means_final: float = 0.01
    """Means learning rate at the end of the budget, relative to the start (the other groups stay constant)."""
    lr_scales: float = 5e-3
    """Learning rate of the log-scales."""
    lr_quats: float = 1e-3
    """Learning rate of the rotation quaternions."""
    lr_opacities: float = 5e-2
    """Learning rate of the logit opacities."""
    lr_sh0: float = 2.5e-3
    """Learning rate of the DC colour coefficients."""
    lr_shN: float = 1.25e-4
    """Learning rate of the higher SH coefficients (3DGS: sh0's / 20)."""
    lr_appearance: float = 1e-3
    """Learning rate of the per-image colour transforms (with appearance on: ``--appearance-dim`` above 0)."""
    densify_from: int = 100
    """First step of adaptive density control (clone / split / prune)."""
    densify_until: int = 1200
    """Last step of adaptive density control (and of opacity resets)."""
    densify_every: int = 100
    """Steps between density-control rounds."""
    grow_grad2d: float = 2e-4
    """Clone or split Gaussians whose mean view-space gradient of the 2-D mean (NDC units) exceeds this."""
    grow_scale3d: float = 0.01
    """Gaussians larger than this (times the scene scale) are split, smaller ones cloned."""
    prune_opacity: float = 0.005
    """Remove Gaussians less opaque than this."""
    prune_scale3d: float = 0.1
    """After the first opacity reset, remove Gaussians larger than this (times the scene scale); with resets off
    (the default), never."""
    reset_opacity_every: int = 0
    """Steps between opacity resets (to 2 x prune_opacity); 0 disables them. Off by default: 3DGS resets every 3000
    of 30000 steps to cull floaters, but a CPU run's few thousand steps do not recover from a reset. Measured
    (quiet, 300 s): office_table 25.52 dB without against 24.82 with resets every 500 steps (81k Gaussians against
    62k, render 16.5 fps against 16.1); lego at 3000 equal steps 30.99 against 30.95."""
    max_gaussians: int = 200_000
    """Never grow beyond this many Gaussians (the ones with the largest gradients are grown first); the mcmc
    strategy's fixed budget."""
    strategy: Literal["default", "mcmc"] = "default"
    """How the Gaussians change while training: "default" (3DGS's adaptive density control: clone, split, prune,
    opacity resets) or "mcmc" (3DGS-MCMC: dead Gaussians relocated onto live ones, growth by 5 % per round up to
    max_gaussians, noise on the means, opacity and scale regularizers; the grow_* / prune_scale3d / reset settings
    do not apply)."""
    noise_lr: float = 5e5
    """mcmc: noise on the means, times their learning rate (gsplat's default)."""
    opacity_reg: float = 0.01
    """mcmc: weight of the mean opacity in the loss."""
    scale_reg: float = 0.01
    """mcmc: weight of the mean scale in the loss."""
    antialiased: bool = False
    """Mip-Splatting's anti-aliasing: every render scales each opacity by sqrt(det(cov2d) / det(cov2d + 0.3 I))
    (gsplat's antialiased mode, the 2-D filter), and with ``filter3d`` each Gaussian gets a 3-D smoothing of
    variance 0.2 (depth / focal)^2 at the highest sampling rate any training camera sees it with (the 3-D filter,
    recomputed every densify_every steps): no aliasing or dilation artefacts when zooming out or in."""
    filter3d: bool = True
    """With ``antialiased``: Mip-Splatting's 3-D filter too (off: the 2-D filter alone). On lego at 1500 equal
    steps (seeds 0 / 1) the 3-D filter cost 1.2 dB at the training size (28.18 / 28.13 dB against 29.45 / 29.34
    with the 2-D filter alone, 28.70 / 28.68 without anti-aliasing); bench_antialias.py compares the three at
    other sizes."""
    crop: int = 256
    """Side in pixels of the random square window of the training image each step renders and compares
    (cheaper steps on large images); 0, or a side at least the image's, renders whole images (lego's 200x200
    views train whole). On office_table (960x540, 1 thread) 1500 steps on 256-pixel windows took 164 s, a whole
    image step ~0.46 s on 2 threads; 3000 windowed steps reached 21.0 dB held out."""
    coarse_levels: int | Literal["auto"] = "auto"
    """Coarse-to-fine: the first steps render training images at 1/2^coarse_levels of their resolution (the
    targets area-averaged), halving the downscale every ``coarse_every`` steps; 0 trains at full resolution.
    auto: 3 where training images are larger than the crop window (a coarse step's window then sees up to 64x
    more of the scene, and the smallest levels train whole images), else 0 (lego's 200x200 views: unchanged).
    Measured at equal steps (1500, 256-pixel windows, every held-out view): office_table 19.17 dB without,
    19.95 with 1 level of 750 steps, 21.14 with 2 of 500, 22.28 with 3 of 400 (in 426 s against 589 s on a
    loaded machine: coarse steps are cheaper); fern (504x378) 24.21 without, 25.08 with 1 level of 750, 24.79 with 3 of 400."""
    coarse_every: int = 400
    """Steps at each coarse resolution (with ``coarse_levels``)."""

    def build(self, aabb: torch.Tensor, appearance: Appearance = Appearance()) -> "GaussianField":
        return GaussianField(aabb, self, appearance)

    def build_image(self):
        raise ValueError("the gaussians backend has no 2-D image form for `fields fit`; use hashgrid, mlp, rbf or cam")


def neighbour_spacing(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Mean distance of each point [N, 3] to its ``k`` nearest neighbours, [N] (chunked brute force)."""
    k = min(k, len(points) - 1)
    if k < 1:
        return torch.ones(len(points))
    out = [torch.cdist(c, points).topk(k + 1, largest=False).values[:, 1:].mean(-1) for c in points.split(chunk)]
    return torch.cat(out)


def initial_gaussians(aabb: torch.Tensor, cfg: GaussiansConfig, points: torch.Tensor | None = None,
                      colors: torch.Tensor | None = None, sizes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-Gaussian tensors (the ``PER_GAUSSIAN`` names) for ``cfg.num_init`` random points in the box ``aabb``,
    or for given ``points`` [N, 3] with colours [N, 3] in [0, 1] (default grey) and isotropic sizes [N]
    (default: the mean distance to the 3 nearest points); rotations identity, opacity ``init_opacity``."""
    if points is None:
        points = aabb[0] + torch.rand(cfg.num_init, 3) * (aabb[1] - aabb[0])
        sizes = torch.full((cfg.num_init,), 0.5 * ((aabb[1] - aabb[0]).prod().item() / cfg.num_init) ** (1 / 3))
    elif sizes is None:
        sizes = neighbour_spacing(points)
    n = len(points)
    rgb = torch.full((n, 3), 0.5) if colors is None else colors.float().clamp(0, 1)
    return {"means": points.float().clone(), "scales": sizes.float().clamp_min(1e-7).log()[:, None].repeat(1, 3),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
            "opacities": torch.full((n,), math.log(cfg.init_opacity / (1 - cfg.init_opacity))),
            "sh0": ((rgb - 0.5) / SH_C0)[:, None, :], "shN": torch.zeros(n, (cfg.sh_degree + 1) ** 2 - 1, 3)}


class GaussianField(Field):
    """A set of 3-D Gaussians over the scene box ``aabb``; renders images by splatting.

    With ``appearance`` on, each training image has a learned colour transform (3x3 matrix and bias, identity at
    the start) of what the Gaussians render in it (``image_appearance``; the size of a code does not apply);
    views that are no training image are rendered untransformed."""

    def __init__(self, aabb: torch.Tensor, cfg: GaussiansConfig, appearance: Appearance = Appearance()):
        super().__init__(aabb)
        self.cfg = cfg
        self.scene_scale = 0.5 * (self.aabb[1] - self.aabb[0]).norm().item()
        for name, t in initial_gaussians(self.aabb, cfg).items():
            setattr(self, name, nn.Parameter(t))
        n = len(self.means)
        self.register_buffer("active_sh_degree", torch.zeros((), dtype=torch.long))
        self.register_buffer("grad2d", torch.zeros(n))  # densification statistics (DensityControl)
        self.register_buffer("grad_count", torch.zeros(n))
        self.register_buffer("filter3d", torch.zeros(n) if cfg.antialiased and cfg.filter3d else None)  # variances
        self.control = build_strategy(self, cfg)
        self.lock = threading.Lock()  # held while the set of Gaussians changes (the viewer renders concurrently)
        self._index: GaussianIndex | None = None
        self.color_transforms = (nn.Parameter(torch.eye(3, 4).repeat(appearance.images, 1, 1)) if appearance.on
                                 else None)  # [images, 3, 4]: matrix | bias

    def __len__(self) -> int:
        return self.means.shape[0]

    def gaussians(self) -> dict[str, torch.Tensor]:
        """The per-Gaussian parameters (detached): means, log-scales, quats, logit opacities, sh0, shN. Anti-aliased,
        with the 3-D filter baked into the scales and opacities: what exports give viewers that know no filter."""
        g = {name: getattr(self, name).detach() for name in PER_GAUSSIAN}
        if self.filter3d is not None:
            scales, opac = smoothed(g["scales"].exp(), torch.sigmoid(g["opacities"]), self.filter3d)
            g["scales"], g["opacities"] = scales.log(), torch.logit(opac, eps=1e-6)
        return g

    def seed(self, data: SceneSplit) -> None:
        """One Gaussian on each SfM point of ``data`` with its colour, as 3DGS starts; without points, for a
        capture with a depth range, ``num_init`` over what its cameras see (``points_in_view``: walls and sky
        far outside the scene box included); each sized by the mean distance to its 3 nearest points. Otherwise
        the random Gaussians in the box stay. (Adding in-view points beside the SfM points lost 1.6 dB on
        office_table: 17.2 against 18.8 dB after 1500 steps on 256-pixel crops.)

        The scene scale (the means' learning rate, the grow and prune sizes) becomes half the diagonal of the
        scene's own box, where the field was built over the inner region of a scene contraction ([-1, 1]^3,
        which Gaussians, unlike ray-marched fields, do not use). At equal steps (1500, coarse-to-fine):
        office_table 23.77 dB with its box's 6.0 against 22.28 with the inner region's 1.73 (and 16.37 with
        3DGS's 1.1 x the cameras' radius, 0.74); fern 24.58 with 1.09 against 24.79 with 1.73."""
        self.scene_scale = 0.5 * (data.aabb[1] - data.aabb[0]).norm().item()
        if data.points is not None and len(data.points):
            points, colors = data.points.float(), data.point_colors
        elif data.near_far is not None:
            points, colors = points_in_view(data, self.cfg.num_init, torch.Generator().manual_seed(0))
        else:
            return
        self.set_gaussians(initial_gaussians(self.aabb, self.cfg, points, colors.float() / 255))

    def set_gaussians(self, g: dict[str, torch.Tensor]) -> None:
        """Replace all Gaussians (before training: optimizer state is not carried over)."""
        edit_gaussians(self, None, lambda t: t[:0], {name: g[name].float() for name in PER_GAUSSIAN})

    def stats(self) -> dict[str, float]:
        return {"gaussians": len(self)}

    # -- appearance ----------------------------------------------------------------------------------------
    def colors(self, eye: torch.Tensor, means: torch.Tensor | None = None) -> torch.Tensor:
        """RGB [N, 3] (>= 0) of every Gaussian seen from the point ``eye`` [3] (or along directions [N, 3])."""
        means = self.means if means is None else means
        dirs = torch.nn.functional.normalize(means - eye, dim=-1)
        return self.sh_color(dirs)

    def sh_color(self, dirs: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """RGB of Gaussians ``idx`` (default all) seen along unit directions ``dirs``, with the active degree."""
        sh0, shN = (self.sh0, self.shN) if idx is None else (self.sh0[idx], self.shN[idx])
        return sh_color(dirs, sh0, shN, int(self.active_sh_degree) + 1)

    def image_appearance(self, out: dict[str, torch.Tensor], i: int, background: torch.Tensor) -> torch.Tensor:
        """Training image ``i``'s render ``out`` (``rgb`` on ``background``, ``opacity``) through that image's
        colour transform, which acts on the Gaussians' colour and leaves the background as it is."""
        if self.color_transforms is None:
            return out["rgb"]
        alpha = out["opacity"][..., None]
        bg = (1 - alpha) * background
        t = self.color_transforms[i]
        return (out["rgb"] - bg) @ t[:, :3].t() + alpha * t[:, 3] + bg

    def held_out_appearance(self) -> str | None:
        if self.color_transforms is None:
            return None
        return "no per-image colour transform (identity)"

    # -- rendering -----------------------------------------------------------------------------------------
    def scene_model(self, grid: OccupancyGrid, render_cfg: RenderConfig) -> "SplatModel":
        return SplatModel(self, grid, render_cfg)

    def splat(self, cams: Cameras, i: int, background: torch.Tensor,
              window: tuple[int, int, int, int] | None = None) -> dict[str, torch.Tensor]:
        """Splat camera ``i`` (or the pixel ``window`` (x0, y0, width, height) of it): ``rgb`` [H, W, 3],
        ``depth``, ``opacity`` and, for densification, ``means2d`` (its gradient retained) and ``radii``.
        Differentiable when grad is enabled."""
        with self.lock:  # one consistent set of Gaussians even while training edits them
            means, quats = self.means * 1, self.quats * 1
            scales, opac = self.scales.exp(), torch.sigmoid(self.opacities)
            if self.filter3d is not None:
                scales, opac = smoothed(scales, opac, self.filter3d.clone())
            eye = cams.centers[i]
            colors = self.colors(eye, means) if len(means) else means.new_zeros(0, 3)
        return render_gaussians(means, quats, scales, opac, colors, cams, i, background, window,
                                antialiased=self.cfg.antialiased)

    # -- volume-field view (occupancy grid, meshes, distillation as a teacher) ------------------------------
    def index(self) -> GaussianIndex:
        """Spatial index of the Gaussians for point queries (rebuilt when the Gaussians changed)."""
        if self._index is None or not self._index.matches(self):
            self._index = GaussianIndex(self)
        return self._index

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self.index().query(x, with_color=False)[0]

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.index().query(x, d)

    # -- optimisation --------------------------------------------------------------------------------------
    def param_groups(self, lr: float) -> list[dict]:
        """3DGS's per-parameter learning rates, all scaled by ``lr / 1e-2`` (so ``--lr`` still scales them);
        only the means decay (to ``lr_means_final``), and no weight decay."""
        s, c = lr / 1e-2, self.cfg
        rates = {"means": c.lr_means * self.scene_scale, "scales": c.lr_scales, "quats": c.lr_quats,
                 "opacities": c.lr_opacities, "sh0": c.lr_sh0, "shN": c.lr_shN}
        if self.color_transforms is not None:
            rates["color_transforms"] = c.lr_appearance
        return [{"name": name, "params": [getattr(self, name)], "lr": rate * s, "weight_decay": 0.0,
                 "lr_final": c.lr_means_final if name == "means" else 1.0} for name, rate in rates.items()]

    def regularization(self) -> torch.Tensor | None:
        return self.control.regularization()

    def after_step(self, step: int, optimizer: torch.optim.Optimizer, info: dict) -> None:
        """Grow the SH degree, change the set of Gaussians (the strategy's ``step``) and, anti-aliased, recompute
        the 3-D filter from the training cameras (``info["train_cameras"]()``) every ``densify_every`` steps."""
        if self.cfg.sh_degree_every > 0:
            self.active_sh_degree.fill_(min(self.cfg.sh_degree, (step + 1) // self.cfg.sh_degree_every))
        self.control.step(step, optimizer, info)
        if self.filter3d is not None and "train_cameras" in info and step % self.cfg.densify_every == 0:
            self.update_filter3d(info["train_cameras"]())

    def update_filter3d(self, cams: Cameras) -> None:
        """Mip-Splatting's 3-D filter of every Gaussian from the cameras ``cams`` (see ``antialiasing``)."""
        variance = filter_variance(self.means.detach(), cams)
        with self.lock:
            self.filter3d.data = variance

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Resize per-Gaussian tensors to the checkpoint's count before loading (other shapes must match)."""
        for name, t in [*self._parameters.items(), *self._buffers.items()]:
            saved = state_dict.get(prefix + name)
            if (t is not None and saved is not None and t.dim() > 0 and saved.dim() == t.dim()
                    and saved.shape[1:] == t.shape[1:] and saved.shape[0] != t.shape[0]):
                t.data = t.new_zeros(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class SplatModel(VolumeModel):
    """Gaussians drawn by splatting. Its ``grid`` and ``render_cfg`` serve point queries through the Gaussians'
    density (mesh export, point clouds, distillation as a teacher); rendering does not march rays."""

    field: GaussianField
    pinhole_only: ClassVar[bool] = True  # the rasterizer projects through an ideal pinhole

    def render(self, cams: Cameras, i: int, background: torch.Tensor,
               window: tuple[int, int, int, int] | None = None) -> dict[str, torch.Tensor]:
        """Camera ``i`` (or its pixel ``window``) splatted (differentiable when grad is enabled; see
        ``GaussianField.splat``)."""
        return self.field.splat(cams, i, background, window)
