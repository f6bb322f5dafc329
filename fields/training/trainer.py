"""Training: one loop for every backend and every kind of training (budget in steps or seconds, warm-up and
decaying learning rates per parameter group, metrics, checkpoints, resume, callbacks). What a step works on is a
strategy of ``fields.training.steps``: ray batches or whole images (as the field config names), a teacher's
points and renders (distillation), the pixels of one image (``fields fit``).

Every random draw of step ``s`` comes from a generator seeded with ``(seed, s)``, so a run resumed from a
checkpoint draws exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from fields.backends.base import Field
from fields.run.checkpoint import atomic_write, checkpoint_path, list_checkpoints, remove_partial_writes, save_checkpoint
from fields.run.config import ConfigError, RunConfig
from fields.run.folder import RunLock, newest_checkpoint
from fields.run.scene_record import write_scene_record
from fields.training.distributed import Distributed, RankFailure
from fields.training.steps import STEPS, StepContext, Steps, build_steps
from renderers import native
from renderers.imaging import psnr_from_mse
from renderers.model import VolumeModel
from renderers.occupancy import OccupancyGrid
from scenes import SceneSplit


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


def training_device(requested: str, gpu_ready: bool = True, what: str = "this run") -> torch.device:
    """The device a ``--device`` value names; ``auto``: the GPU where torch sees one, else the CPU. Where
    ``what`` is not ``gpu_ready`` yet: the CPU for ``auto``, an error for a GPU asked for by name."""
    if requested == "auto":
        return torch.device("cuda" if gpu_ready and torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {requested!r}: not a device (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: torch sees no CUDA GPU here (torch {torch.__version__}); use "
                          "--device cpu (for a resumed run: train.device in its config.yaml)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {requested}: fields trains on 'cpu' or 'cuda' devices")
    if device.type != "cpu" and not gpu_ready:
        raise ConfigError(f"--device {requested}: {what} trains on the CPU only for now")
    return device


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line that does not parse (cut short by a kill)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class Trainer:
    """The training loop of one run: field, occupancy grid and optimizer, budget, schedule, metrics, checkpoints.

    What a step works on is ``steps`` (a ``fields.training.steps.Steps``); by default the strategy the field
    config names, over ``data`` (default: the scene's training split) and ``model`` (default: a fresh field and
    grid). ``run_dir`` None writes nothing (no config, metrics or checkpoints). ``dist``: data-parallel training,
    one trainer per rank (``fields.training.distributed``; rank 0 alone is given the ``run_dir``).
    """

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None, console: Console | None = None,
                 model: tuple[Field, OccupancyGrid] | None = None, data: SceneSplit | None = None,
                 steps: Steps | None = None, dist: Distributed | None = None):
        self.dist = dist
        self.cfg, self.run_dir = cfg, None if run_dir is None else Path(run_dir)
        self.console = console or Console()
        torch.manual_seed(cfg.train.seed)  # same seed, same initial weights
        if steps is None:
            kind = STEPS[cfg.field_config.training_steps]
            self.device = training_device(cfg.train.device, kind.gpu_ready, f"the {cfg.field} backend")
            data = cfg.scene.load("train") if data is None else data
            self.cfg = cfg = cfg.for_scene(data)  # 'auto' capture settings decided and recorded as decided
            steps = build_steps(cfg, self.device, data, model)
        else:
            self.device = training_device(cfg.train.device, steps.gpu_ready, f"'fields {steps.label}'")
        self.steps = steps
        self.field, self.grid, self.data = steps.field, steps.grid, steps.data
        groups = steps.param_groups(cfg.train.lr)
        for g in groups:
            g["base_lr"] = g["lr"]
        # fused: one pass over each tensor instead of ~8 (25x faster on the 2-core CPU for a 2^17 x 12 table).
        self.optimizer = torch.optim.Adam(groups, eps=1e-15, weight_decay=cfg.train.weight_decay, fused=True)
        self.step, self.elapsed = 0, 0.0
        self.saved_at = 0.0  # training time of the last checkpoint
        self.last: dict = {}
        self.lock: RunLock | None = None

    @property
    def model(self) -> VolumeModel:
        """The field being trained as what renders it (with the trainer's grid and render settings)."""
        return self.field.scene_model(self.grid, self.cfg.render)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        grid = {} if self.grid is None else {"grid": self.grid.state_dict()}
        return {"step": self.step, "elapsed": self.elapsed, **self.steps.state_dict(),
                "field": self.field.state_dict(), **grid, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        if self.grid is not None:
            self.grid.load_state_dict(state["grid"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps.load_state_dict(state)
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])

    def save(self) -> Path:
        """Write a checkpoint of the current step; never one with NaN/inf weights (it would hide the good ones)."""
        if not all(bool(torch.isfinite(p).all()) for p in self.field.parameters()):
            raise TrainingError(f"field parameters became NaN/inf at step {self.step}; not saving them")
        self.steps.before_save(self.step)
        path = checkpoint_path(self.run_dir, self.step)
        self.saved_at = self.elapsed
        try:
            saved = save_checkpoint(path, self.state_dict())
            if (refined := self.steps.refined_split()) is not None:  # the viewer and export use the refined poses
                write_scene_record(self.run_dir, refined)
            return saved
        except OSError as e:  # disk full, read-only folder...: the previous checkpoints are untouched
            raise TrainingError(f"cannot write checkpoint {path} ({e.strerror or e})") from None

    def write_config(self) -> None:
        self.cfg.save(self.run_dir / "config.yaml", self.steps.config_sections())
        if self.data is not None:  # cameras.json: the run can be viewed and exported without the images
            write_scene_record(self.run_dir, self.steps.refined_split() or self.data)

    def resume(self) -> None:
        """Continue from the newest loadable checkpoint, dropping metrics logged after it (and a line cut short
        by a killed process) and temporary files of an interrupted checkpoint write."""
        self.hold_lock()
        path, state = newest_checkpoint(self.run_dir)
        self.load_state_dict(state)
        self.saved_at = self.elapsed
        remove_partial_writes(self.run_dir)
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.is_file():
            kept = [line for line in metrics.read_text(errors="replace").splitlines() if _logged_step(line) <= self.step]
            text = "".join(line + "\n" for line in kept).encode()
            try:
                atomic_write(metrics, lambda f: f.write(text))
            except OSError as e:  # read-only or full disk
                raise self._stopped(f"cannot write to the run folder {self.run_dir} ({e.strerror or e})") from None
        self.console.print(f"Resumed {self.run_dir} from {path.name} (step {self.step}, {self.elapsed:.1f} s)")

    # -- schedule ------------------------------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of the budget used, by steps or by time, whichever is further along."""
        t = self.cfg.train
        fractions = [0.0]
        if t.max_steps:
            fractions.append(self.step / t.max_steps)
        if t.max_time:
            fractions.append(self.elapsed / t.max_time)
        return min(max(fractions), 1.0)

    def budget_spent(self) -> bool:
        t = self.cfg.train
        return bool((t.max_steps and self.step >= t.max_steps) or (t.max_time and self.elapsed >= t.max_time))

    def done(self) -> bool:
        """The budget is spent and the strategy adds no steps after it."""
        return self.budget_spent() and self.steps.finished(self.step)

    def _set_lr(self, ctx: StepContext) -> float:
        """Warm-up (over each group's ``warmup_steps``, default ``train.warmup_steps``), then exponential decay to
        each group's ``lr_final`` over the budget, times the strategy's factor for this step."""
        t = self.cfg.train
        scale = self.steps.lr_scale(ctx)
        for g in self.optimizer.param_groups:
            warmup = min(1.0, (self.step + 1) / max(g.get("warmup_steps", t.warmup_steps), 1))
            g["lr"] = g["base_lr"] * warmup * g.get("lr_final", t.lr_final) ** ctx.progress * scale
        return self.optimizer.param_groups[0]["lr"]

    # -- one step ------------------------------------------------------------------------------------------
    def step_generator(self) -> torch.Generator:
        """The generator of this step's random draws."""
        return torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + self.step)

    def check_parameters(self) -> None:
        """Stop if the weights are no longer finite (NaN weights would not show in the loss: their samples are
        pruned and the batch renders as background). Optimizer steps cannot make them so, as every step's
        gradients are checked first; ``train`` calls this after callbacks, which can (a pass over every weight
        each step cost 2% of a lego step)."""
        if not torch.isfinite(torch.stack([p.detach().sum() for p in self.field.parameters()])).all():
            raise TrainingError(f"field parameters became NaN/inf before step {self.step}")

    def apply_loss(self, loss: torch.Tensor, n_samples: int, local_samples: int | None = None,
                   loss_value: float | None = None) -> None:
        """Backward and optimizer step (skipped for an empty batch); a NaN loss or gradient stops training.
        Data-parallel: ``n_samples`` and ``loss_value`` are over all ranks (all step, or stop, together),
        ``local_samples`` this rank's, and the gradients are averaged over ranks before they are checked."""
        value = loss.item() if loss_value is None else loss_value
        if not math.isfinite(value):
            raise TrainingError(f"loss became NaN/inf ({value}) at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        if n_samples > 0:
            if (n_samples if local_samples is None else local_samples) > 0:
                loss.backward()
            if self.dist is not None:
                self.dist.average_gradients([p for g in self.optimizer.param_groups for p in g["params"]])
            grads = [p.grad.detach().sum() for g in self.optimizer.param_groups for p in g["params"]
                     if p.grad is not None]
            if grads and not torch.isfinite(torch.stack(grads)).all():  # stepping would poison the weights
                raise TrainingError(f"gradients became NaN/inf at step {self.step}")
            self.optimizer.step()

    def train_step(self) -> dict:
        """One optimisation step; returns its metrics."""
        d = self.dist
        ctx = StepContext(self.step, self.step_generator(), self.progress(), self.budget_spent())
        if d is not None:  # each rank its share of the batch, from its own stream
            ctx.own, ctx.rank, ctx.world = d.draws(self.cfg.train.seed, self.step), d.rank, d.world
        lr = self._set_lr(ctx)
        loss, metrics, info = self.steps.loss(ctx)
        local, value = metrics["samples"], loss.item()
        if d is not None:
            d.beat(self.step)
            value, metrics = d.combine(value, metrics)
            info["sum_over_ranks"] = lambda *t: d.sum_(*t, what="densification statistics")
        self.apply_loss(loss, metrics["samples"], local, value)
        self.steps.after_step(ctx, self.optimizer, metrics, info)
        self.step += 1
        psnr = {"psnr": psnr_from_mse(metrics["mse"])} if "mse" in metrics else {}
        return {"loss": value, **psnr, "lr": lr, **metrics}

    def _stopped(self, problem: str) -> TrainingError:
        """The error that ends training: the problem, the step, and the checkpoint it can resume from."""
        if self.run_dir is None:
            return TrainingError(f"{problem}; training stopped at step {self.step}")
        kept = list_checkpoints(self.run_dir)
        return TrainingError(f"{problem}; training stopped at step {self.step}. Saved: "
                             f"{kept[0] if kept else 'no checkpoint yet'}; continue with "
                             f"`fields train --resume {self.run_dir}` once the problem is fixed")

    def _open_run_folder(self):
        """Create the run folder, write config.yaml and open metrics.jsonl for appending (None without a folder)."""
        if self.run_dir is None:
            return None
        try:
            self.hold_lock()
            self.write_config()
            return (self.run_dir / "metrics.jsonl").open("a")
        except OSError as e:  # read-only or full disk
            self.release_lock()
            raise self._stopped(f"cannot write to the run folder {self.run_dir} ({e.strerror or e})") from None

    # -- loop ----------------------------------------------------------------------------------------------
    def train(self, callbacks: list[Callable[["Trainer"], None]] = (), show_progress: bool = True) -> None:
        """Train until the budget is spent. Callbacks run after each step, outside the training clock.

        Ctrl-C saves a checkpoint and re-raises; a NaN loss stops without overwriting good checkpoints. Each
        metrics line averages the loss over its window and gives the PSNR of the steps that report an image
        ``mse``; other entries a step returns (e.g. a distillation stage) are logged as the last step had them.
        """
        metrics_file = self._open_run_folder()
        t = self.cfg.train
        fresh = lambda: {"samples": 0, "time": 0.0, "loss": 0.0, "n": 0, "mse": 0.0, "n_mse": 0}  # noqa: E731
        window = fresh()
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                       TextColumn("step {task.fields[step]}  loss {task.fields[loss]:.5f}  "
                                  "psnr {task.fields[psnr]:.2f}  {task.fields[sps]:.3g} samples/s"),
                       TimeRemainingColumn(), console=self.console, disable=not show_progress, transient=False)
        label = self.steps.label if self.dist is None else f"{self.steps.label} ({self.dist.world} ranks)"
        task = bar.add_task(label, total=1.0, step=self.step, loss=0.0, psnr=0.0, sps=0.0)
        try:
            with bar, native.flushed_denormals():  # denormals late in a run halved the step rate
                while not self.done():
                    tic = time.perf_counter()
                    m = self.train_step()
                    dt = time.perf_counter() - tic
                    if self.dist is not None:  # one budget clock for all ranks: they stop at the same step
                        dt = self.dist.mean(dt, "step time")
                    self.elapsed += dt
                    window["samples"] += m["samples"]
                    window["time"] += dt
                    window["loss"] += m["loss"]
                    window["n"] += 1
                    if "mse" in m:
                        window["mse"] += m["mse"]
                        window["n_mse"] += 1
                    self.last = m
                    if self.step % t.log_every == 0 or self.done():
                        loss = window["loss"] / window["n"]
                        psnr = psnr_from_mse(window["mse"] / window["n_mse"]) if window["n_mse"] else None
                        record = {"step": self.step, "loss": loss, "psnr": psnr,
                                  "samples_per_s": window["samples"] / max(window["time"], 1e-9),
                                  "lr": m["lr"], "elapsed": self.elapsed, **self.steps.log(), **self.field.stats(),
                                  **({} if self.dist is None else self.dist.totals())}
                        record.update({k: v for k, v in m.items() if k not in record and k not in ("mse", "samples")})
                        if metrics_file is not None:
                            metrics_file.write(json.dumps(record) + "\n")
                            metrics_file.flush()
                        bar.update(task, completed=self.progress(), step=self.step, loss=loss,
                                   psnr=psnr or 0.0, sps=record["samples_per_s"])
                        window = fresh()
                    if self.run_dir is not None and (self.step % t.ckpt_every == 0
                                                     or self.elapsed - self.saved_at >= t.ckpt_seconds):
                        self.save()
                    for cb in callbacks:
                        cb(self)
                    if callbacks:
                        self.check_parameters()
                if self.run_dir is not None:
                    self.save()
        except KeyboardInterrupt:
            if self.run_dir is None:
                raise
            path = self.save()
            self.console.print(f"Interrupted: saved {path}; continue with `fields train --resume {self.run_dir}`")
            raise
        except (TrainingError, RankFailure, OSError) as e:  # OSError: metrics.jsonl could not be written (disk full ...)
            raise self._stopped(str(e)) from None
        finally:
            try:
                if metrics_file is not None:
                    metrics_file.close()
            except OSError:  # flushing to a full disk; the error above already says what was saved
                pass
            self.release_lock()

    def hold_lock(self) -> None:
        """Lock the run folder for this trainer (RunError if another trainer writes it)."""
        if self.lock is None:
            try:
                self.lock = RunLock(self.run_dir)
            except OSError as e:  # read-only or full disk
                raise self._stopped(f"cannot write to the run folder {self.run_dir} ({e.strerror or e})") from None

    def release_lock(self) -> None:
        """Let another trainer write the run folder (after training, or when starting it failed)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
