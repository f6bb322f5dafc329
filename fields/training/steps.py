"""What one training step works on: the strategies of the one training loop (``fields.training.trainer``).

- ``RayBatches`` (``rays``): random rays from all training images, marched through the occupancy grid (volume
  fields); the batch size adapts to keep the number of samples near ``RunConfig.batch_samples()``.
- ``WholeImages`` (``images``): one whole training image per step, rendered by the field's scene model
  (gaussians: splatting), with the 3DGS loss ``(1 - w) L1 + w (1 - SSIM)`` (``w = ssim_weight``); images of
  distorted lenses are undistorted once for a model that projects through a pinhole only; the occupancy grid is
  filled from the field's density only before a checkpoint is written, since training does not march rays.
- ``PixelBatches``: random pixels of one image for a 2-D image field (``fields fit``).
- ``DistillSteps`` (``fields.training.distill``): a teacher run's points and renders.

The field config names ``rays`` or ``images`` (``training_steps``); the trainer builds them with ``build_steps``.
A strategy's ``loss(ctx)`` returns the loss, its metrics (``samples``: pixels or samples processed, and ``mse``
where the step compares images) and an ``info`` dict; ``after_step`` runs after the optimizer step (the field's
own ``after_step``: Gaussians densify there; the next batch's size); the other hooks have defaults in ``Steps``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fields.backends.base import Field
from fields.run.config import RunConfig
from fields.run.folder import build_model, model_box
from fields.training.camera_refinement import CameraRefinement
from renderers.compositing import distortion
from renderers.contraction import warped_distance
from renderers.imaging import on_background, ssim
from renderers.occupancy import OccupancyGrid
from scenes import SceneSplit, pixel_rays
from scenes.cameras import Cameras
from scenes.scene import to_float, window_of
from scenes.undistort import undistorted


@dataclass
class StepContext:
    """What a strategy knows of the step it computes."""

    step: int
    gen: torch.Generator
    """The step's random generator (seeded by (seed, step): a resumed run draws the same batches)."""
    progress: float
    """Fraction of the budget used (steps or time, whichever is further along)."""
    budget_spent: bool
    """The budget is used up; only strategies whose ``finished`` says otherwise still take steps."""
    own: torch.Generator | None = None
    """Data-parallel training: this rank's own stream for its share of the batch (``gen`` stays the draws every
    rank makes alike, e.g. the occupancy grid's). None: one process, which draws everything from ``gen``."""
    rank: int = 0
    world: int = 1

    @property
    def draws(self) -> torch.Generator:
        """The generator of this rank's share of the batch."""
        return self.gen if self.own is None else self.own

    def share(self, n: int) -> int:
        """This rank's part of a global batch of ``n`` (the first ``n % world`` ranks take one more)."""
        return n // self.world + (1 if self.rank < n % self.world else 0)


class Steps:
    """Base of the step strategies: the module trained (``field``; ``grid`` where rays are marched) and the
    optional hooks' defaults."""

    label: ClassVar[str] = "train"
    """Progress-bar caption."""
    gpu_ready: ClassVar[bool] = False
    """Whether this strategy can train on a CUDA device."""
    field: nn.Module
    grid: OccupancyGrid | None = None
    data: SceneSplit | None = None
    refinement: CameraRefinement | None = None
    """The training cameras' learned SE(3) corrections, where this strategy refines them (``refining``): their
    optimizer group, checkpoint state and refined split are handled here, the same for every strategy."""
    camera_group: dict | None = None
    """The corrections' optimizer group settings (learning rate, warm-up), set with ``refinement``."""

    def refining(self, cfg: RunConfig, device: torch.device) -> None:
        """Refine the training cameras (``self.data``'s) where ``capture.camera_refinement`` is on."""
        c = cfg.capture
        if c.camera_refinement == "on":
            self.refinement = CameraRefinement(self.data.cameras.c2w).to(device)
            self.camera_group = {"lr": c.camera_lr, "warmup_steps": c.camera_warmup_steps, "weight_decay": 0.0}

    def param_groups(self, lr: float) -> list[dict]:
        groups = self.field.param_groups(lr)
        if self.refinement is not None:
            groups.append({"params": [self.refinement.delta], **self.camera_group})
        return groups

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict, dict]:
        raise NotImplementedError

    def after_step(self, ctx: StepContext, optimizer: torch.optim.Optimizer, metrics: dict, info: dict) -> None:
        """After the optimizer step (skipped for an empty batch)."""

    def lr_scale(self, ctx: StepContext) -> float:
        """Factor on the schedule's learning rate for this step."""
        return 1.0

    def finished(self, step: int) -> bool:
        """Once the budget is spent: whether training stops (a strategy may add steps after it)."""
        return True

    def before_save(self, step: int) -> None:
        """Prepare what a saved run needs."""

    def log(self) -> dict:
        """Figures added to each metrics.jsonl line."""
        return {}

    def state_dict(self) -> dict:
        """What a resumed run needs beyond the field, grid and optimizer (merged into the checkpoint)."""
        return {} if self.refinement is None else {"camera_refinement": self.refinement.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.refinement is not None:
            self.refinement.load_state_dict(state["camera_refinement"])

    def config_sections(self) -> dict:
        """Sections written into config.yaml beside the run config (e.g. a distillation's teacher)."""
        return {}

    def refined_split(self) -> SceneSplit | None:
        """The training split with the cameras as refined so far, where this strategy refines them (the run's
        cameras.json is rewritten from it with each checkpoint); None where it does not."""
        if self.refinement is None:
            return None
        with torch.no_grad():
            c2w = self.refinement.refined_c2w().cpu()
        return dataclasses.replace(self.data, cameras=dataclasses.replace(self.data.cameras, c2w=c2w))


class TrainingRays:
    """All training pixels (those the scene's masks keep), drawn by flat index into the images' pixel buffer
    (``scenes.images.Images``: image after image, each at its own size): a batch's rays are built from the
    cameras when it is drawn (the same rays ``image_rays`` gives) and its colours gathered from the 8-bit
    images, so nothing per pixel is stored beyond the images (and, with masks, a 4-byte index of each kept
    pixel). Rays and colours move to ``device``."""

    def __init__(self, data: SceneSplit, device: torch.device | str = "cpu"):
        self.cameras, self.images, self.device = data.cameras, data.images, torch.device(device)
        self.rgba = data.images.pixels  # [P, 4] uint8, the images' own buffer (not a copy)
        self.kept = None if data.masks is None else data.masks.pixels.nonzero()[:, 0].to(torch.int32)
        if self.kept is not None and len(self.kept) == 0:
            raise ValueError(f"scene '{data.name}': the masks of its {data.split} split keep no pixel")

    def __len__(self) -> int:
        """How many pixels can be drawn."""
        return self.rgba.shape[0] if self.kept is None else len(self.kept)

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` random pixels (flat indices, CPU) among those the masks keep."""
        idx = torch.randint(0, len(self), (n,), generator=gen)
        return idx if self.kept is None else self.kept[idx].long()

    def image_of(self, idx: torch.Tensor) -> torch.Tensor:
        """The image (camera) index of each pixel ``idx`` (flat indices, CPU)."""
        return self.images.locate(idx)[0]

    def rays(self, idx: torch.Tensor, refinement: CameraRefinement | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Origins and unit directions [B, 3] through the centres of pixels ``idx`` (flat indices, CPU), moved by
        their cameras' learned corrections where ``refinement`` is given."""
        cam, x, y = self.images.locate(idx)
        origins, dirs = pixel_rays(self.cameras, cam, x.float() + 0.5, y.float() + 0.5)
        origins, dirs = origins.to(self.device), dirs.to(self.device)
        return (origins, dirs) if refinement is None else refinement.apply(cam, origins, dirs)

    def colors(self, idx: torch.Tensor) -> torch.Tensor:
        """Straight RGBA [B, 4] in [0, 1] of pixels ``idx``."""
        return to_float(self.rgba[idx]).to(self.device)


def backgrounds(cfg: RunConfig, data: SceneSplit, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` background colours [n, 3]: random ones with ``random_background``, else the scene's."""
    if cfg.train.random_background:
        return torch.rand(n, 3, generator=gen)
    return torch.tensor(data.background).expand(n, 3)


class RayBatches(Steps):
    """Random ray batches through the occupancy grid (volume fields), on the grid's device. Random draws come
    from the step's CPU generator (the same batches on every device) and move to the device.

    With ``capture.camera_refinement`` on, each training camera learns an SE(3) correction (its own parameter
    group, learning rate and warm-up) that moves its rays; with ``capture.distortion_weight`` > 0 the loss adds
    mip-NeRF 360's distortion loss, averaged over the batch's rays. Both off (and 'auto', as in runs recorded
    before they existed) leave the step as it was."""

    gpu_ready = True

    def __init__(self, cfg: RunConfig, data: SceneSplit, field: Field, grid: OccupancyGrid):
        self.cfg, self.data, self.field, self.grid = cfg, data, field, grid
        self.model = field.scene_model(grid, cfg.render)
        self.device = grid.aabb.device
        self.rays = TrainingRays(data, self.device)
        self.n_rays = cfg.train.init_rays
        self.prune_first = False  # see loss
        self.refining(cfg, self.device)
        weight = cfg.capture.distortion_weight
        self.distortion_weight = 0.0 if weight == "auto" else float(weight)

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict, dict]:
        t, gen = self.cfg.train, ctx.gen
        self.grid.update_every_n_steps(ctx.step, self.field.density, self.model.step_size, t.grid_every,
                                       t.grid_warmup, gen)
        dev, n, gen = self.device, ctx.share(self.n_rays), ctx.draws  # this rank's share, from its own stream
        idx = self.rays.draw(n, gen)
        bg = backgrounds(self.cfg, self.data, n, gen).to(dev)
        target = on_background(self.rays.colors(idx), bg)
        jitter = torch.rand(n, generator=gen).to(dev)
        codes = self.field.codes(self.rays.image_of(idx).to(dev))  # each ray's image's appearance (or None)
        out = self.model.render_rays(*self.rays.rays(idx, self.refinement), bg, jitter, codes, self.prune_first)
        # Next step, find the kept samples front to back first where that costs less than one autograd pass over
        # every marched sample: measured on fern and office_table (2 cores), it paid at 3.3 marched samples per
        # kept one (50 against 60 ms a step) and cost at 2.1 (67 against 60 ms).
        self.prune_first = int(out["marched"]) > 3 * int(out["samples"])
        mse = torch.nn.functional.mse_loss(out["rgb"], target)
        loss = mse
        if self.distortion_weight > 0:
            t0, t1 = out["t_starts"], out["t_ends"]
            if self.grid.contracted:
                t0, t1 = warped_distance(t0), warped_distance(t1)
            per_ray = distortion(out["weights"], t0, t1, out["ray_indices"], n)
            loss = loss + self.distortion_weight * per_ray.mean()
        return loss, {"mse": mse.item(), "samples": int(out["samples"])}, {}

    def after_step(self, ctx: StepContext, optimizer: torch.optim.Optimizer, metrics: dict, info: dict) -> None:
        self.field.after_step(ctx.step, optimizer, info)
        self.adapt(metrics["samples"], self.cfg.batch_samples())

    def adapt(self, found: int, wanted: int) -> None:
        """Scale the next batch's ray count so that it gives about ``wanted`` samples (nerfacc's dynamic batch)."""
        self.n_rays = int(min(max(self.n_rays * wanted / max(found, 1), 64), self.cfg.train.max_rays))

    def log(self) -> dict:
        return {"rays": self.n_rays, "occupied": self.grid.occupied_fraction()}

    def state_dict(self) -> dict:
        return {"n_rays": self.n_rays, **super().state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.n_rays = int(state["n_rays"])
        super().load_state_dict(state)


AUTO_COARSE_LEVELS = 3
"""Coarse-to-fine levels of ``GaussiansConfig.coarse_levels`` "auto" where training images are larger than the
crop window (see its docstring for the measurements)."""


class WholeImages(Steps):
    """One random training image per step, rendered by the field's scene model (gaussians): whole, or a random
    ``crop`` x ``crop`` window of it, or (coarse-to-fine, the first ``coarse_levels * coarse_every`` steps) at a
    reduced resolution with area-averaged targets. Both options are the field config's (``GaussiansConfig``).

    With ``capture.camera_refinement`` on, the image's camera is rendered from its refined pose, a tensor that
    carries the corrections' gradient through the splatting projection (as ``RayBatches`` moves its rays)."""

    gpu_ready = False  # the rasterizer has CUDA kernels; densification and the image loss are not moved yet

    def __init__(self, cfg: RunConfig, data: SceneSplit, field: Field, grid: OccupancyGrid):
        self.cfg, self.field, self.grid = cfg, field, grid
        self.model = field.scene_model(grid, cfg.render)
        self.data = undistorted(data) if self.model.pinhole_only else data  # once, not per step
        self.refining(cfg, grid.aabb.device)
        fc = cfg.field_config
        self.crop, self.coarse_levels = getattr(fc, "crop", 0), getattr(fc, "coarse_levels", 0)
        self.coarse_every = getattr(fc, "coarse_every", 1)
        if self.coarse_levels == "auto":
            self.coarse_levels = AUTO_COARSE_LEVELS if self.windowed() else 0
        for name, value, least in (("crop", self.crop, 0), ("coarse_levels", self.coarse_levels, 0),
                                   ("coarse_every", self.coarse_every, 1)):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"--{cfg.field}.{name.replace('_', '-')} must be a whole number >= {least}, "
                                 f"got {value!r}")

    def windowed(self) -> bool:
        """Whether some training image is larger than the crop window (its steps render windows of it)."""
        return any(self.cropped(*self.data.cameras.size(k)) for k in range(len(self.data)))

    def cropped(self, width: int, height: int) -> bool:
        """Whether a ``width`` x ``height`` image trains in ``crop``-sided windows (larger than one on a side)."""
        return self.crop > 0 and (width > self.crop or height > self.crop)

    def downscale(self, step: int) -> int:
        """The coarse-to-fine factor of step ``step`` (1: full resolution)."""
        return 2 ** max(self.coarse_levels - step // self.coarse_every, 0)

    def window(self, width: int, height: int, gen: torch.Generator) -> tuple[int, int, int, int] | None:
        """A random pixel window (x0, y0, w, h) of a ``width`` x ``height`` image, or None for the whole image:
        a ``crop``-sided square that may hang over the image's edges by up to half its side, cut to the image.
        Windows kept inside the image visit the border pixels up to ``crop`` times less often than the centre
        (which then trains sharp while the border stays blurred); these visit them at least half as often, and
        no window is thinner than half a crop (SSIM needs some extent)."""
        if not self.cropped(width, height):
            return None
        x0, x1 = self.span(self.crop, width, gen)
        y0, y1 = self.span(self.crop, height, gen)
        return x0, y0, x1 - x0, y1 - y0

    @staticmethod
    def span(side: int, size: int, gen: torch.Generator) -> tuple[int, int]:
        """[start, end) of a ``side``-long segment at a uniformly random offset, overhanging [0, size) by at most
        ``side // 2`` on either end, cut to it."""
        if side >= size:
            return 0, size
        start = int(torch.randint(-(side // 2), size - side + side // 2 + 1, (), generator=gen))
        return max(start, 0), min(start + side, size)

    def view(self, i: int, step: int, bg: torch.Tensor, gen: torch.Generator
             ) -> tuple[Cameras, tuple[int, int, int, int] | None, torch.Tensor, torch.Tensor | None]:
        """Camera ``i`` alone (a batch of one; refined, where cameras are, with the pose's gradient) at step
        ``step``'s resolution (each image at its own size), the pixel window this step trains (drawn from ``gen``;
        None: the whole image), and the window's target [h, w, 3] on ``bg`` and mask. At full resolution only the
        window's pixels are converted (the whole 960x540 image cost ~6 ms a step for a 256x256 window)."""
        cams, mask = self.data.cameras[i], None if self.data.masks is None else self.data.masks[i]
        if self.refinement is not None:
            cams = dataclasses.replace(cams, c2w=self.refinement.refined_c2w(i)[None])
        s, (width, height) = self.downscale(step), cams.size(0)
        if s == 1:
            window = self.window(width, height, gen)
            target = on_background(self.data.rgba(i, window), bg)
        else:
            w, h = max(width // s, 1), max(height // s, 1)
            cams = cams.resized(w, h)
            target = on_background(self.data.rgba(i), bg)
            target = torch.nn.functional.interpolate(target.permute(2, 0, 1)[None], (h, w), mode="area")[0]
            target = target.permute(1, 2, 0)
            if mask is not None:  # a coarse pixel is kept only where every pixel under it is
                mask = -torch.nn.functional.adaptive_max_pool2d(-mask[None].float(), (h, w))[0] > 0.5
            window = self.window(w, h, gen)
            target = window_of(target, window)
        return cams, window, target, None if mask is None else window_of(mask, window)

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict, dict]:
        i = int(torch.randint(0, len(self.data), (), generator=ctx.draws))  # each rank its own image
        bg = backgrounds(self.cfg, self.data, 1, ctx.draws)[0]
        cams, window, target, mask = self.view(i, ctx.step, bg, ctx.draws)
        width, height = cams.size(0)
        out = self.model.render(cams, 0, bg) if window is None else self.model.render(cams, 0, bg, window)
        if mask is not None and not bool(mask.any()):  # a window the masks keep nothing of: no step
            return out["rgb"].sum() * 0, {"samples": 0}, {}
        rgb, w = self.field.image_appearance(out, i, bg), self.cfg.train.ssim_weight
        l1 = (rgb - target).abs().mean(-1)
        loss = (1 - w) * (l1.mean() if mask is None else l1[mask].mean())
        if w > 0:
            loss = loss + w * (1 - ssim(rgb, target, mask))
        reg = self.field.regularization()
        if reg is not None:
            loss = loss + reg
        sq = (rgb.detach() - target).square().mean(-1)
        metrics = {"mse": (sq.mean() if mask is None else sq[mask].mean()).item(),
                   "samples": rgb[..., 0].numel() if mask is None else int(mask.sum())}
        # densification compares gradients of the whole image's mean loss: a window's are larger by its share
        share = rgb[..., 0].numel() / (width * height)
        return loss, metrics, {**out, "width": width, "height": height, "grad_scale": share,
                               "train_cameras": self.training_cameras}

    def training_cameras(self) -> Cameras:
        """The training cameras as refined so far (asked for by the field only when it needs them: building the
        refined split every step would be work in the hot path for the rare step that reads it)."""
        return self.data.cameras if self.refinement is None else self.refined_split().cameras

    def after_step(self, ctx: StepContext, optimizer: torch.optim.Optimizer, metrics: dict, info: dict) -> None:
        self.field.after_step(ctx.step, optimizer, info)

    def before_save(self, step: int) -> None:
        """Fill the occupancy grid from the field's density: training never marches rays, but what reads the
        saved run does (mesh export, video depth range, distillation with this run as the teacher)."""
        self.grid.update(self.field.density, self.model.step_size, warmup=True,
                         generator=torch.Generator().manual_seed(step))


STEPS: dict[str, type[Steps]] = {"rays": RayBatches, "images": WholeImages}


def build_steps(cfg: RunConfig, device: torch.device, data: SceneSplit | None = None,
                model: tuple[Field, OccupancyGrid] | None = None) -> Steps:
    """The strategy the field config names, over ``data`` (default: the scene's training split) and ``model``
    (default: a fresh field and grid, seeded from the scene's structure-from-motion points where it has them),
    with field and grid on ``device``."""
    data = cfg.scene.load("train") if data is None else data
    if model is None:
        model = build_model(cfg, model_box(cfg, data))
        model[0].seed(data)
    field, grid = model
    return STEPS[cfg.field_config.training_steps](cfg, data, field.to(device), grid.to(device))


def pixel_coords(height: int, width: int) -> torch.Tensor:
    """Pixel centres as (u, v) in [0, 1]^2 (u along the width), row-major [H * W, 2]."""
    v, u = torch.meshgrid((torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width,
                          indexing="ij")
    return torch.stack([u, v], -1).reshape(-1, 2)


class PixelBatches(Steps):
    """Random pixels of one image [H, W, 3] for a 2-D image field (``fields fit``)."""

    label = "fit"

    def __init__(self, field: nn.Module, target: torch.Tensor, batch: int):
        self.field = field
        self.uv, self.rgb = pixel_coords(*target.shape[:2]), target.reshape(-1, 3)
        self.batch = min(batch, self.uv.shape[0])

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict, dict]:
        idx = torch.randint(0, self.uv.shape[0], (self.batch,), generator=ctx.gen)
        loss = torch.nn.functional.mse_loss(self.field(self.uv[idx]), self.rgb[idx])
        return loss, {"mse": loss.item(), "samples": self.batch}, {}
