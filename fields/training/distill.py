"""Distillation between field backends: a trained teacher run teaches a student of any backend (Progressive
Volume Distillation, Fang et al., AAAI 2023; active learning as in PVD-AL).

Only the Field interface is used (``density``, ``forward`` and rendered colour through the renderer), so any
backend teaches any other. The student inherits the teacher's scene, render settings, scene box and occupancy
grid, and is trained by the ``Trainer`` loop (budgets, metrics, checkpoints, resume) with ``DistillSteps`` as
its step strategy, in stages over the distillation budget (``--max-time`` / ``--max-steps``):

1. ``points``: density and colour at points from the teacher's occupied cells and from samples of rays through
   the grid. Density is compared as the log-opacity of one marching step, ``log(sigma * step)``, with the
   teacher's value clamped to ``log_opacity_range`` (PVD's clamped raw density: beyond fully opaque or
   invisible the exact value does not matter and would dominate the loss); colour is weighted by the teacher's
   opacity per step, since colour where there is nothing to see is arbitrary.
2. ``render``: rendered RGB against the teacher's renders of rays from training cameras and from random
   viewpoints around the scene (on the training cameras' sphere and elevations, aimed at occupied cells).
3. ``finetune`` (``finetune_steps`` > 0): the Trainer's own photometric step on the training images, at the
   schedule's final learning rate.

With ``active_learning``, the rays and points with the largest error of one step are replayed in the next.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from rich.console import Console

from fields.backends.base import Field, FieldConfig
from fields.run.config import ConfigError, RunConfig, TrainConfig, build_section
from fields.run.folder import LoadedRun, build_model
from fields.training.steps import RayBatches, StepContext, Steps
from fields.training.trainer import Trainer, TrainingError
from renderers.occupancy import OccupancyGrid
from renderers.render import sample_rays
from scenes import SceneSplit
from scenes.camera_paths import scene_frame


@dataclass
class DistillConfig:
    """The stage schedule and the distillation losses."""

    points_until: float = 0.5
    """Fraction of the distillation budget (steps or time, whichever is further along) spent on point losses;
    the rest is spent on the rendered-RGB loss. Point losses converge faster at first (procedural scene, 100 steps,
    MLP student: -3.9 dB from the teacher at 0.5 and 0.7, -4.4 at 0.3) but flatten, while the rendered loss is
    what the images are judged by. lego, MLP student (every 8th test view): 28.0-28.2 dB at 120 s for any split
    from 0.2 to 0.9; at 900 s 30.49 dB at 0.2, 30.34 at 0.5, 30.13 at 0.7, whose points stage stalls near 29.9."""
    points_lr_scale: float = 3.0
    """Learning rate of the points stage relative to the training schedule's. Point targets are exact and far less
    noisy than photometric ones, so a larger rate is stable (lego, MLP student, 120 s: 27.7 dB at 1x, 28.0-28.2
    at 3x, 28.2 at 10x)."""
    finetune_steps: int = 0
    """Steps of ordinary training on the training images after distillation (0: none)."""
    occupied_fraction: float = 0.5
    """Share of the points that come from the teacher's occupied cells (the rest are ray samples)."""
    random_view_fraction: float = 0.5
    """Share of the rays that come from random viewpoints around the scene (the rest from training cameras)."""
    density_weight: float = 0.1
    """Weight of the log-opacity loss (points stage)."""
    color_weight: float = 1.0
    """Weight of the point colour loss (points stage)."""
    log_opacity_range: tuple[float, float] = (-10.0, 2.0)
    """Teacher log-opacity per marching step is clamped to this range (e^2: opaque; e^-10: invisible)."""
    active_learning: bool = False
    """Replay the rays and points with the largest error of each step in the next one (PVD-AL)."""
    replay_fraction: float = 0.25
    """Share of each batch replayed with active learning."""


def student_config(teacher: RunConfig, field_config: FieldConfig, train: TrainConfig) -> RunConfig:
    """The student's run config: the teacher's scene, renderer, capture settings (contraction...) and grid size
    with the student's backend."""
    return RunConfig(scene=teacher.scene, field_config=field_config, render=teacher.render, train=train,
                     capture=teacher.capture, grid_resolution=teacher.grid_resolution)


def build_student(cfg: RunConfig, teacher: LoadedRun) -> tuple[Field, OccupancyGrid]:
    """The student field over the teacher's scene box, and a copy of the teacher's occupancy grid.

    The one place a student is made: a backend that initialises itself from the teacher hooks in here.
    """
    torch.manual_seed(cfg.train.seed)
    field, grid = build_model(cfg, teacher.field.aabb.clone())  # cfg carries the teacher's contraction
    grid.load_state_dict(teacher.grid.state_dict())
    return field, grid


def log_opacity(sigma: torch.Tensor, step: torch.Tensor | float) -> torch.Tensor:
    return torch.log(sigma * step + 1e-12)


def density_error(student: torch.Tensor, teacher: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Squared log-opacity error with the teacher clamped to [lo, hi]; where the teacher sits at a bound the
    student is only pulled back to it (no gradient beyond it), elsewhere it is pulled to the teacher's value."""
    t = teacher.clamp(lo, hi)
    s = torch.where(t <= lo, student.clamp(min=lo), torch.where(t >= hi, student.clamp(max=hi), student))
    return (s - t) ** 2


class DistillSteps(Steps):
    """The distillation strategy: a teacher run's points and renders teach ``field`` (see the module docstring).
    The training rays, the batch-size adaptation and the finetune stage are those of ``photo``, the ordinary
    photometric ``RayBatches`` of the student."""

    label = "distill"
    gpu_ready = False  # the teacher, its points and rays stay on the CPU

    def __init__(self, cfg: RunConfig, teacher: LoadedRun, dcfg: DistillConfig, data: SceneSplit | None = None):
        for p in teacher.field.parameters():
            p.requires_grad_(False)
        self.cfg, self.teacher, self.dcfg = cfg, teacher, dcfg
        self.photo = RayBatches(cfg, cfg.scene.load("train") if data is None else data, *build_student(cfg, teacher))
        self.field, self.grid, self.data = self.photo.field, self.photo.grid, self.photo.data
        self.teacher_model = teacher.model
        self.frame = scene_frame(self.data.cameras)
        self.finetune_start: int | None = None
        self.replay: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- schedule ------------------------------------------------------------------------------------------
    def stage(self, ctx: StepContext) -> str:
        if ctx.budget_spent:
            return "finetune"
        return "points" if ctx.progress < self.dcfg.points_until else "render"

    def finished(self, step: int) -> bool:
        n = self.dcfg.finetune_steps
        return n <= 0 or (self.finetune_start is not None and step >= self.finetune_start + n)

    def lr_scale(self, ctx: StepContext) -> float:
        """``points_lr_scale`` in the points stage, else the schedule's rate."""
        return self.dcfg.points_lr_scale if self.stage(ctx) == "points" else 1.0

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        replay = {f"{k}_{i}": t for k, pair in self.replay.items() for i, t in enumerate(pair)}
        return {**self.photo.state_dict(), "finetune_start": -1 if self.finetune_start is None else self.finetune_start,
                "replay": replay}

    def load_state_dict(self, state: dict) -> None:
        self.photo.load_state_dict(state)
        start = int(state.get("finetune_start", -1))
        self.finetune_start = None if start < 0 else start
        r = state.get("replay", {})
        self.replay = {k: (r[f"{k}_0"], r[f"{k}_1"]) for k in ("rays", "points") if f"{k}_0" in r}

    def config_sections(self) -> dict:
        teacher = {"teacher": str(self.teacher.path.resolve()), **asdict(self.dcfg)}
        teacher["log_opacity_range"] = list(self.dcfg.log_opacity_range)
        return {"distill": teacher}

    def log(self) -> dict:
        return self.photo.log()

    # -- batches -------------------------------------------------------------------------------------------
    def _occupied_points(self, n: int, gen: torch.Generator) -> torch.Tensor:
        cells = self.grid.binary.flatten().nonzero()[:, 0]
        if cells.numel() == 0:
            raise TrainingError("the teacher's occupancy grid is empty: nothing to distil")
        idx = cells[torch.randint(0, cells.numel(), (n,), generator=gen)]
        return self.grid.cell_centers(idx, torch.rand(n, 3, generator=gen))

    def _rays(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays of random training pixels and from random viewpoints at the training cameras' distance and
        elevations, aimed at random points of occupied cells; replayed rays first with active learning."""
        o, d = self._replayed("rays", n)
        n_new = n - o.shape[0]
        n_rand = int(round(n_new * self.dcfg.random_view_fraction))
        o_train, d_train = self.photo.rays.rays(self.photo.rays.draw(n_new - n_rand, gen))
        f = self.frame
        up = f.up
        a = torch.nn.functional.normalize(torch.linalg.cross(up, torch.eye(3)[int(up.abs().argmin())]), dim=0)
        b = torch.linalg.cross(up, a)
        az = 2 * math.pi * torch.rand(n_rand, 1, generator=gen)
        lo, hi = f.elevations.min().item(), f.elevations.max().item()
        el = lo + (hi - lo) * torch.rand(n_rand, 1, generator=gen)
        eye = f.centre + f.radius * (torch.cos(el) * (torch.cos(az) * a + torch.sin(az) * b) + torch.sin(el) * up)
        aim = torch.nn.functional.normalize(self._occupied_points(n_rand, gen) - eye, dim=-1)
        return torch.cat([o, o_train, eye]), torch.cat([d, d_train, aim])

    def _points(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Points from occupied cells (random directions) and visible samples of rays through the grid."""
        xr, dr = self._replayed("points", n)
        n_new = n - xr.shape[0]
        n_occ = int(round(n_new * self.dcfg.occupied_fraction))
        x_occ = self._occupied_points(n_occ, gen)
        d_occ = torch.nn.functional.normalize(torch.randn(n_occ, 3, generator=gen), dim=-1)
        o, d = self._rays(self.photo.n_rays, gen)
        samples = sample_rays(o, d, self.grid, self.cfg.render, self.teacher.field.density,
                              jitter=torch.rand(o.shape[0], generator=gen))
        x_ray, d_ray = samples.positions(o, d)
        self.photo.adapt(len(samples), n_new - n_occ)
        pick = torch.randperm(len(samples), generator=gen)[: n_new - n_occ]
        return torch.cat([xr, x_occ, x_ray[pick]]), torch.cat([dr, d_occ, d_ray[pick]])

    def _replayed(self, kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's replayed rays or points (batches start with them)."""
        a, b = self.replay.get(kind, (torch.zeros(0, 3), torch.zeros(0, 3)))
        return a[:n], b[:n]

    def _remember(self, kind: str, a: torch.Tensor, b: torch.Tensor, error: torch.Tensor) -> None:
        """Keep the largest-error fresh rays or points of this batch for the next step (each is replayed once:
        always replaying the hardest ones made the student worse on the procedural scene)."""
        if self.dcfg.active_learning:
            n_old = self._replayed(kind, error.shape[0])[0].shape[0]
            fresh = error.detach()[n_old:]
            top = fresh.topk(min(int(self.dcfg.replay_fraction * error.shape[0]), fresh.shape[0])).indices + n_old
            self.replay[kind] = (a[top].detach(), b[top].detach())

    # -- steps ---------------------------------------------------------------------------------------------
    def _points_loss(self, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        x, d = self._points(self.cfg.batch_samples(), gen)
        with torch.no_grad():
            sigma_t, rgb_t = self.teacher.field(x, d)
        sigma_s, rgb_s = self.field(x, d)
        lo, hi = self.dcfg.log_opacity_range
        step = self.grid.step_lengths(x, self.photo.model.step_size)  # opacities of marching steps, far out too
        dens = density_error(log_opacity(sigma_s, step), log_opacity(sigma_t, step), lo, hi)
        alpha = 1 - torch.exp(-sigma_t * step)
        col = alpha * ((rgb_s - rgb_t) ** 2).mean(-1)
        color_loss = col.sum() / alpha.sum().clamp_min(1e-6)
        loss = self.dcfg.density_weight * dens.mean() + self.dcfg.color_weight * color_loss
        self._remember("points", x, d, dens + col)
        return loss, {"density_loss": dens.mean().item(), "color_loss": color_loss.item(), "samples": x.shape[0]}

    def _render_loss(self, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        o, d = self._rays(self.photo.n_rays, gen)
        bg = torch.rand(o.shape[0], 3, generator=gen)
        jitter = torch.rand(o.shape[0], generator=gen)
        with torch.no_grad():
            target = self.teacher_model.render_rays(o, d, bg, jitter)["rgb"]
        out = self.photo.model.render_rays(o, d, bg, jitter)
        n_samples = int(out["samples"])
        self.photo.adapt(n_samples, self.cfg.batch_samples())
        err = ((out["rgb"] - target) ** 2).mean(-1)
        self._remember("rays", o, d, err)
        loss = err.mean()
        return loss, {"mse": loss.item(), "samples": n_samples}

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict, dict]:
        """The current stage's loss; ``mse`` is rendered RGB against the teacher (render stage) or the images
        (finetune)."""
        stage = self.stage(ctx)
        if stage == "finetune":
            if self.finetune_start is None:
                self.finetune_start = ctx.step
            loss, metrics, info = self.photo.loss(ctx)
            return loss, {**metrics, "stage": stage}, info
        loss, metrics = self._points_loss(ctx.gen) if stage == "points" else self._render_loss(ctx.gen)
        return loss, {**metrics, "stage": stage}, {}

    def after_step(self, ctx: StepContext, optimizer: torch.optim.Optimizer, metrics: dict, info: dict) -> None:
        if self.stage(ctx) == "finetune":  # the photometric step; the distillation stages adapted their batch
            self.photo.after_step(ctx, optimizer, metrics, info)
        else:
            self.field.after_step(ctx.step, optimizer, info)


def distiller(cfg: RunConfig, run_dir: Path | None, teacher: LoadedRun, dcfg: DistillConfig,
              console: Console | None = None) -> Trainer:
    """The trainer of a distillation of ``teacher`` into the student that ``cfg`` names."""
    return Trainer(cfg, run_dir, console, steps=DistillSteps(cfg, teacher, dcfg))


def load_distill_config(run_dir: Path) -> tuple[Path, DistillConfig]:
    """The teacher path and DistillConfig recorded in a distilled run's ``config.yaml`` (for resume)."""
    path = Path(run_dir) / "config.yaml"
    raw = yaml.safe_load(path.read_text()).get("distill")
    if not isinstance(raw, dict) or "teacher" not in raw:
        raise ConfigError(f"{path}: not a distilled run (no 'distill' section naming the teacher)")
    raw = dict(raw)
    return Path(raw.pop("teacher")), build_section(DistillConfig, raw, path, "distill")

