"""What one training step works on, chosen by the field config's ``training_steps`` name, so that the Trainer
keeps one loop (budget, schedule, metrics, checkpoints, resume, callbacks) for every backend.

- ``rays``: random rays from all training images, marched through the occupancy grid (volume fields); the
  batch size adapts to keep the number of samples near ``RunConfig.batch_samples()``.
- ``images``: one whole training image per step, rendered by the field's ``render_image`` (gaussians), with
  the 3DGS loss ``(1 - w) L1 + w (1 - SSIM)`` (``w = ssim_weight``); the occupancy grid is filled from the
  field's density only before a checkpoint is written, since training does not march rays.

A step object's ``loss(step, gen)`` returns the loss, its metrics (``mse`` and ``samples``: pixels or samples
processed) and an ``info`` dict for the field's ``after_step``; its own ``after_step`` adapts the next batch;
``before_save`` prepares what a saved run needs; ``log()`` adds figures to metrics.jsonl; ``state_dict()`` (what
a resumed run needs) is merged into the trainer's checkpoint.
"""

from __future__ import annotations

import kornia
import torch

from fields.backends.base import Field
from fields.run.config import RunConfig
from renderers.occupancy import OccupancyGrid
from renderers.render import render_rays
from scenes import SceneSplit, image_rays


class TrainingRays:
    """All training pixels as rays, flattened once (on the training device) so a batch is a single gather."""

    def __init__(self, data: SceneSplit, device: torch.device | str = "cpu"):
        rays = [image_rays(data.cameras, i) for i in range(len(data))]
        self.origins = torch.cat([o.reshape(-1, 3) for o, _ in rays]).to(device)
        self.dirs = torch.cat([d.reshape(-1, 3) for _, d in rays]).to(device)
        self.rgba = data.images.reshape(-1, 4).to(device)

    def __len__(self) -> int:
        return self.rgba.shape[0]


def backgrounds(cfg: RunConfig, data: SceneSplit, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` background colours [n, 3]: random ones with ``random_background``, else the scene's."""
    if cfg.train.random_background:
        return torch.rand(n, 3, generator=gen)
    return torch.tensor(data.background).expand(n, 3)


class RayBatches:
    """Random ray batches through the occupancy grid (volume fields), on the grid's device. Random draws come
    from the step's CPU generator (the same batches on every device) and move to the device."""

    gpu_ready = True

    def __init__(self, cfg: RunConfig, data: SceneSplit, field: Field, grid: OccupancyGrid, step_size: float):
        self.cfg, self.data, self.field, self.grid, self.step_size = cfg, data, field, grid, step_size
        self.device = grid.aabb.device
        self.rays = TrainingRays(data, self.device)
        self.n_rays = cfg.train.init_rays

    def loss(self, step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict, dict]:
        t = self.cfg.train
        if step % t.grid_every == 0:
            self.grid.update(self.field.density, self.step_size, warmup=step < t.grid_warmup, generator=gen)
        dev = self.device
        idx = torch.randint(0, len(self.rays), (self.n_rays,), generator=gen).to(dev)
        rgba = self.rays.rgba[idx]
        bg = backgrounds(self.cfg, self.data, self.n_rays, gen).to(dev)
        target = rgba[:, :3] * rgba[:, 3:] + bg * (1 - rgba[:, 3:])
        jitter = torch.rand(self.n_rays, generator=gen).to(dev)
        out = render_rays(self.field, self.grid, self.rays.origins[idx], self.rays.dirs[idx], self.cfg.render, bg,
                          jitter=jitter, geometry_fn=self.field.geometry, color_fn=self.field.color)
        loss = torch.nn.functional.mse_loss(out["rgb"], target)
        return loss, {"mse": loss.item(), "samples": int(out["samples"])}, {}

    def after_step(self, metrics: dict) -> None:
        self.adapt(metrics["samples"], self.cfg.batch_samples())

    def adapt(self, found: int, wanted: int) -> None:
        """Scale the next batch's ray count so that it gives about ``wanted`` samples (nerfacc's dynamic batch)."""
        self.n_rays = int(min(max(self.n_rays * wanted / max(found, 1), 64), self.cfg.train.max_rays))

    def before_save(self, step: int) -> None:
        pass  # the grid is kept up to date while training

    def log(self) -> dict:
        return {"rays": self.n_rays, "occupied": self.grid.occupied_fraction()}

    def state_dict(self) -> dict:
        return {"n_rays": self.n_rays}

    def load_state_dict(self, state: dict) -> None:
        self.n_rays = int(state["n_rays"])


class WholeImages:
    """One random training image per step, rendered whole by ``field.render_image`` (gaussians)."""

    gpu_ready = False  # the rasterizer has CUDA kernels; densification and the image loss are not moved yet

    def __init__(self, cfg: RunConfig, data: SceneSplit, field: Field, grid: OccupancyGrid, step_size: float):
        self.cfg, self.data, self.field, self.grid, self.step_size = cfg, data, field, grid, step_size

    def loss(self, step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict, dict]:
        i = int(torch.randint(0, len(self.data), (), generator=gen))
        bg = backgrounds(self.cfg, self.data, 1, gen)[0]
        rgba = self.data.images[i]
        target = rgba[..., :3] * rgba[..., 3:] + bg * (1 - rgba[..., 3:])
        out = self.field.render_image(self.data.cameras, i, bg, self.grid, self.cfg.render)
        rgb, w = out["rgb"], self.cfg.train.ssim_weight
        loss = (1 - w) * (rgb - target).abs().mean()
        if w > 0:
            ssim = kornia.metrics.ssim(rgb.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None], window_size=11)
            loss = loss + w * (1 - ssim.mean())
        metrics = {"mse": torch.nn.functional.mse_loss(rgb.detach(), target).item(), "samples": rgb[..., 0].numel()}
        return loss, metrics, {**out, "width": self.data.cameras.width, "height": self.data.cameras.height}

    def after_step(self, metrics: dict) -> None:
        pass

    def before_save(self, step: int) -> None:
        """Fill the occupancy grid from the field's density: training never marches rays, but what reads the
        saved run does (mesh export, video depth range, distillation with this run as the teacher)."""
        self.grid.update(self.field.density, self.step_size, warmup=True,
                         generator=torch.Generator().manual_seed(step))

    def log(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


STEPS = {"rays": RayBatches, "images": WholeImages}
