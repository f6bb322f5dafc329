"""The ``fields`` command line: ``fields train | distill | eval | fit | view | export | process``.

Every subcommand is a dataclass whose fields are its options (tyro turns them into flags and ``--help``
text) and whose ``run()`` does the work. Expected failures (bad scene, bad run folder, NaN loss) print one
line naming the file and the problem; set FIELDS_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import torch
import tyro
from rich.console import Console
from rich.markup import escape

from fields.run.checkpoint import CheckpointError
from fields.run.config import CaptureConfig, ConfigError, RunConfig, SceneConfig, TrainConfig
from fields.training.distill import DistillConfig
from fields.training.distributed import DistConfig, torchrun_command, under_torchrun
from fields.export.commands import Export
from fields.process import ProcessError
from fields.process.commands import Process
from fields.backends.registry import FIELD_CONFIGS
from fields.run.folder import LoadedRun, RunError, RunLock, load_run, new_run_dir, resolve_run
from renderers.chunks import is_out_of_memory
from renderers.render import RenderConfig
from scenes import SceneError

if TYPE_CHECKING:
    from fields.export.run_exports import RunExporter
    from fields.training.trainer import Trainer
    from viewer import Viewer

console = Console()
FieldName = Literal[tuple(FIELD_CONFIGS)]  # type: ignore[valid-type]
Flat = tyro.conf.OmitArgPrefixes


@dataclass
class _TrainOptions:
    scene: Annotated[SceneConfig, Flat] = dataclasses.field(default_factory=SceneConfig)
    field: FieldName = "hashgrid"  # type: ignore[valid-type]
    """Field backend; its options are under --<backend>.*"""
    train: Annotated[TrainConfig, Flat] = dataclasses.field(default_factory=TrainConfig)
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    capture: Annotated[CaptureConfig, Flat] = dataclasses.field(default_factory=CaptureConfig)
    grid_resolution: int = 64
    """Occupancy-grid cells per side."""
    output_dir: Path = Path("outputs")
    """Run folders are created under <output-dir>/<scene>/<field>/."""
    resume: Path | None = None
    """Continue this run folder from its newest checkpoint (its saved config is used)."""
    quiet: bool = False
    """No progress bar."""
    viewer: bool = False
    """Watch training in the browser (viser); the viewer keeps serving after training until Ctrl-C."""
    host: str = "127.0.0.1"
    """Viewer bind address; 0.0.0.0 exposes it to the network."""
    port: int = 7007
    """Viewer port (the next free one is taken if it is busy)."""
    dist: Annotated[DistConfig, Flat] = dataclasses.field(default_factory=DistConfig)

    def run_config(self) -> RunConfig:
        return RunConfig(scene=self.scene, field_config=getattr(self, self.field),
                         render=self.render, train=self.train, capture=self.capture,
                         grid_resolution=self.grid_resolution)

    def _folder(self, cfg: RunConfig, name: str | None) -> tuple[Path | None, bool]:
        """The run folder and whether training resumes it: ``--resume``; else the run named ``name`` (resumed
        when it has a checkpoint); else None (a new timestamped folder, made once the scene has loaded)."""
        from fields.training.distributed import run_exists

        if self.resume is not None:
            return resolve_run(self.resume), True
        if name is None:
            return None, False
        run = self.output_dir / cfg.scene.name / cfg.field / name
        return run, run_exists(run)

    def run(self) -> None:
        from fields.training.trainer import Trainer

        self.dist.validate()
        if under_torchrun():
            return self._run_distributed()
        cfg = self.run_config()
        run_dir, resuming = self._folder(cfg, self.dist.run_name)
        if resuming:
            trainer = Trainer(RunConfig.load(run_dir / "config.yaml"), run_dir, console)
            trainer.resume()
        else:
            trainer = Trainer(cfg, None, console)  # loads the scene first: bad data leaves no empty run folder
            run_dir = trainer.run_dir = run_dir or new_run_dir(self.output_dir, cfg.scene.name, cfg.field)
            console.print(f"Run folder: {run_dir}")
        self._train(trainer, run_dir)

    def _run_distributed(self) -> None:
        """One rank of a torchrun job: rank 0 finds (or makes) and locks the run folder and sends every rank the
        config and the start-up state; ranks started with different command lines or data are refused."""
        from fields.training.distributed import Distributed

        own = self.run_config()
        d = Distributed.start(self.dist, own.train.device)
        try:
            trainer, run_dir = self._start_ranks(d, own)
        except (RunError, ConfigError):
            d.close()  # every rank reached the refusal through a finished collective: leave the group cleanly
            raise  # (exiting with gloo's threads alive can abort the process instead of exiting 2)
        self._train(trainer, run_dir, show_progress=d.rank == 0)
        d.close()

    def _start_ranks(self, d: "Distributed", own: RunConfig) -> tuple["Trainer", Path]:
        """Start-up of a torchrun job: same command line on every rank, rank 0's run folder and lock, same
        training data, rank 0's start-up state on every rank. Returns this rank's trainer and the run folder."""
        from fields.training.distributed import data_digest, digest, launch_name
        from fields.training.trainer import Trainer

        d.require_same("command line", digest(own.to_dict(), str(self.resume), self.dist.run_name))
        found, lock = None, None
        if d.rank == 0:
            try:
                run_dir, resuming = self._folder(own, self.dist.run_name or launch_name())
                lock = RunLock(run_dir)  # a second trainer of this run is refused before any rank loads data
                found = (run_dir, resuming, RunConfig.load(run_dir / "config.yaml") if resuming else own, None)
            except (RunError, ConfigError, OSError) as e:
                found = (None, False, None, str(e))
        run_dir, resuming, cfg, problem = d.broadcast(found, "run folder")
        if problem is not None:
            raise RunError(problem)
        trainer = Trainer(cfg, None, console if d.rank == 0 else Console(quiet=True), dist=d)
        d.require_same("training data", data_digest(trainer.data))
        if d.rank == 0:
            trainer.run_dir, trainer.lock = run_dir, lock
            if resuming:
                trainer.resume()
            else:  # a job restarted before its first checkpoint starts over in its folder
                (run_dir / "metrics.jsonl").unlink(missing_ok=True)
                console.print(f"Run folder: {run_dir} ({d.world} ranks)")
        state = d.broadcast(trainer.state_dict() if d.rank == 0 else None, "start-up state")
        if d.rank != 0:
            trainer.load_state_dict(state)
        return trainer, run_dir

    def _train(self, trainer: "Trainer", run_dir: Path, show_progress: bool = True) -> None:
        viewer = self._open_viewer(trainer) if self.viewer and show_progress else None  # rank 0's only
        try:
            trainer.train(callbacks=[viewer.on_step] if viewer else [], show_progress=show_progress and not self.quiet)
        except BaseException as e:
            if viewer:
                viewer.close()
            if isinstance(e, KeyboardInterrupt):
                sys.exit(130)
            raise
        trainer.console.print(f"Trained {trainer.step} steps in {trainer.elapsed:.1f} s; "
                              f"evaluate with `fields eval {run_dir}`")
        if viewer:
            viewer.training_finished(trainer)
            viewer.serve_forever()

    def _open_viewer(self, trainer: "Trainer") -> "Viewer":
        from viewer import RenderTarget, Viewer

        target = RenderTarget(trainer.model, torch.tensor(trainer.data.background), trainer.step)
        on_cpu = trainer.device.type == "cpu"  # the exporters read the field on the CPU
        if not on_cpu:
            console.print("Training on the GPU: the viewer's export buttons are off (use `fields export` on the run)")
        viewer = Viewer(target, trainer.data.cameras, trainer.data.aabb, host=self.host, port=self.port,
                        training=True, title=f"fields: {trainer.run_dir.name}", console=console,
                        exporter=live_exporter(trainer) if on_cpu else None)
        console.print(f"Viewer at {viewer.url}")
        return viewer


def with_backend_options(name: str, base: type, doc: str) -> type:
    """``base`` plus one nested options group per backend (--hashgrid.n-levels ...), generated from the
    registry so that adding a backend never touches the CLI."""
    cls = dataclasses.make_dataclass(
        name, [(field, Annotated[cfg, tyro.conf.arg(help=f"Options of the '{field}' backend.")],
                dataclasses.field(default_factory=cfg)) for field, cfg in FIELD_CONFIGS.items()], bases=(base,))
    cls.__doc__ = doc
    return cls


Train = with_backend_options("Train", _TrainOptions,
                             "Train a radiance field on a scene (default: the embedded procedural scene).")


@dataclass
class _DistillOptions:
    teacher: Path | None = None
    """Trained run folder (any backend) whose field is distilled."""
    student: FieldName = "mlp"  # type: ignore[valid-type]
    """Student backend; its options are under --<backend>.*"""
    train: Annotated[TrainConfig, Flat] = dataclasses.field(default_factory=TrainConfig)
    distill: Annotated[DistillConfig, Flat] = dataclasses.field(default_factory=DistillConfig)
    output_dir: Path = Path("outputs")
    """Run folders are created under <output-dir>/<scene>/<student>/."""
    resume: Path | None = None
    """Continue this distilled run folder from its newest checkpoint (its saved config and teacher are used)."""
    quiet: bool = False
    """No progress bar."""

    def run(self) -> None:
        from fields.training.distill import distiller as make_distiller, load_distill_config, student_config

        if self.resume is not None:
            run_dir = resolve_run(self.resume)
            teacher_path, dcfg = load_distill_config(run_dir)
            trainer = make_distiller(RunConfig.load(run_dir / "config.yaml"), run_dir, load_run(teacher_path), dcfg,
                                     console)
            trainer.resume()
        else:
            if self.teacher is None:
                raise RunError("fields distill: pass --teacher RUN (a trained run folder) or --resume RUN")
            teacher = load_run(self.teacher)
            cfg = student_config(teacher.config, getattr(self, self.student), self.train)
            if cfg.field_config.training_steps == "images":  # explicit primitives: seeded on the teacher's surface
                self._distill_to_gaussians(teacher, cfg)
                return
            trainer = make_distiller(cfg, None, teacher, self.distill, console)
            run_dir = trainer.run_dir = new_run_dir(self.output_dir, cfg.scene.name, cfg.field)
            console.print(f"Run folder: {run_dir} (teacher {teacher.path}, {teacher.config.field})")
        try:
            trainer.train(show_progress=not self.quiet)
        except KeyboardInterrupt:
            sys.exit(130)
        console.print(f"Distilled {trainer.step} steps in {trainer.elapsed:.1f} s; "
                      f"evaluate with `fields eval {run_dir}`")

    def _distill_to_gaussians(self, teacher, cfg: RunConfig) -> None:
        from fields.training.gaussian_distill import distill_to_gaussians

        run_dir = new_run_dir(self.output_dir, cfg.scene.name, cfg.field)
        console.print(f"Run folder: {run_dir} (teacher {teacher.path}, {teacher.config.field})")
        try:
            distill_to_gaussians(teacher, run_dir, field_config=cfg.field_config, train=cfg.train, console=console,
                                 show_progress=not self.quiet)
        except KeyboardInterrupt:
            sys.exit(130)
        console.print(f"Distilled into Gaussians; evaluate with `fields eval {run_dir}`, continue with "
                      f"`fields train --resume {run_dir}`")


Distill = with_backend_options("Distill", _DistillOptions,
                               "Distil a trained run into another field backend (Progressive Volume Distillation); "
                               "writes a normal run folder for the student.")


@dataclass
class _FitOptions:
    image: tyro.conf.Positional[Path]
    """Image file to fit (PNG, JPEG ...)."""
    field: FieldName = "hashgrid"  # type: ignore[valid-type]
    """Field backend; its options are under --<backend>.*"""
    steps: int | None = None
    """Step budget (None: no limit)."""
    max_time: float | None = 60.0
    """Time budget in seconds (None: no limit); stops at whichever budget runs out first."""
    lr: float = 3e-2
    """Base learning rate (Adam); backends scale it per parameter group. Higher than for training: image fits
    run for fewer steps, and at 1e-2 every backend is still far from converged after a minute."""
    batch: int = 1 << 13
    """Random pixels per step."""
    seed: int = 0
    """Random seed (initialisation and pixel batches)."""
    quiet: bool = False
    """No progress bar."""

    def run(self) -> None:
        from fields.training.fit import fit_image, fit_output_path, load_image
        from renderers.imaging import write_png

        target = load_image(self.image)
        torch.manual_seed(self.seed)
        field = getattr(self, self.field).build_image()
        result = fit_image(field, target, self.steps, self.max_time, self.lr, batch=self.batch, seed=self.seed,
                           console=console, show_progress=not self.quiet)
        out = fit_output_path(self.image, self.field)
        write_png(out, result.image)
        console.print(f"{self.field}: PSNR {result.psnr:.2f} dB after {result.steps} steps "
                      f"({result.seconds:.1f} s); wrote {out}")


Fit = with_backend_options("Fit", _FitOptions,
                           "Fit a 2-D neural field (pixel coordinates -> RGB) to an image; writes <name>.fit-<field>.png.")


@dataclass
class Eval:
    """Render held-out views of a trained run; write PSNR/SSIM to <run>/eval/metrics.json and image grids."""

    run_dir: tyro.conf.Positional[Path]
    """Run folder (or its config.yaml)."""
    split: Literal["test", "val", "train"] = "test"
    """Which split to evaluate."""
    every: int | None = None
    """Evaluate every N-th view (default: every view of a real capture's held-out split, which is every 8th image,
    and of any split of up to 32 views; every 8th of larger ones, such as Blender's 200 test views)."""
    quiet: bool = False
    """No progress bar."""

    def run(self) -> None:
        from fields.evaluation import evaluate

        run = load_run(self.run_dir)
        split = run.split(self.split)
        out = run.path / "eval" / f"{self.split}-step-{run.step:06d}"
        appearance = run.field.held_out_appearance()
        result = evaluate(run.model, split, self.every, out, not self.quiet, appearance)
        (run.path / "eval" / "metrics.json").write_text(json.dumps({**result, "images": str(out)}, indent=2))
        console.print(f"{self.split}: PSNR {result['psnr']:.2f} dB  SSIM {result['ssim']:.4f}  "
                      f"over {result['views']} views ({result['seconds_per_view']:.2f} s/view); images in {out}")
        if "psnr_every_pixel" in result:
            console.print(f"masks: the figures leave masked pixels out; PSNR over every pixel "
                          f"{result['psnr_every_pixel']:.2f} dB")
        if appearance is not None:
            console.print(f"appearance: {self.split} views are rendered with {appearance} (a held-out image's own "
                          "exposure and white balance are unknown)")


@dataclass
class View:
    """Open a trained run in the browser (viser web viewer); serves until Ctrl-C."""

    run_dir: tyro.conf.Positional[Path]
    """Run folder (or its config.yaml)."""
    host: str = "127.0.0.1"
    """Bind address; 0.0.0.0 exposes the viewer to the network."""
    port: int = 7007
    """Port (the next free one is taken if it is busy)."""
    max_resolution: int = 256
    """Initial cap on the longer image side, in pixels (adjustable in the panel)."""

    def run(self) -> None:
        from fields.export.run_exports import RunExporter

        run = load_run(self.run_dir)
        run_viewer(run, host=self.host, port=self.port, max_side=self.max_resolution, console=console,
                   exporter=RunExporter.for_run(run)).serve_forever()


def live_exporter(trainer: "Trainer") -> "RunExporter":
    """Exports of a run while it trains (of the field at the step an export starts)."""
    from fields.export.run_exports import RunExporter
    from fields.run.scene_record import SceneRecord

    return RunExporter(trainer.run_dir, trainer.model, SceneRecord.of(trainer.data), lambda: trainer.step)


def run_viewer(run: LoadedRun, **options) -> "Viewer":
    """A static viewer of a saved run (its newest checkpoint) with its training cameras; ``options`` go to
    ``viewer.Viewer``. Needs only what the run folder holds, not the scene's images."""
    from viewer import RenderTarget, Viewer

    target = RenderTarget(run.model, torch.tensor(run.record.background), run.step)
    return Viewer(target, run.record.cameras, run.grid.aabb, title=f"fields: {run.path.name}", **options)


COMMANDS = {"train": Train, "distill": Distill, "eval": Eval, "fit": Fit, "view": View, "export": Export,
            "process": Process}
EXPECTED_ERRORS = (SceneError, ConfigError, RunError, CheckpointError, ProcessError, ValueError, OSError)


def main(argv: list[str] | None = None) -> None:
    """Run a subcommand. Errors print one line (exit 2: bad input; 1: training stopped or a bug); ``--debug``
    anywhere on the line, or FIELDS_DEBUG=1, shows tracebacks instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("FIELDS_DEBUG")) or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    cmd = tyro.extras.subcommand_cli_from_dict(COMMANDS, args=argv, prog="fields",
                                               description="Neural fields and 3D reconstruction on your CPU "
                                               "(--debug: show tracebacks).")
    if not debug:
        warnings.formatwarning = lambda message, category, *_, **__: f"warning: {message}\n"
    try:
        if isinstance(cmd, Train) and cmd.dist.nproc > 1 and not under_torchrun():
            cmd.dist.validate()
            sys.exit(subprocess.run(torchrun_command(argv, cmd.dist, time.strftime("%Y-%m-%d_%H%M%S"))).returncode)
        cmd.run()
    except Exception as e:
        if debug:
            raise
        if isinstance(e, EXPECTED_ERRORS):
            message, code = str(e), 2
        elif is_out_of_memory(e):
            message, code = (f"out of memory ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); "
                             "lower the resolution, --num-points or raise --downscale"), 1
        elif isinstance(e, RuntimeError):  # TrainingError and friends
            message, code = str(e), 1
        else:
            message, code = (f"unexpected {type(e).__name__}: {e} (a bug in fields; rerun with --debug for the "
                             "traceback and please report it)"), 1
        console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # paths hold [ ]
        sys.exit(code)


if __name__ == "__main__":
    main()
