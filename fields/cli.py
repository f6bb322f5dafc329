"""The ``fields`` command line: ``fields train | eval``.

Every subcommand is a dataclass whose fields are its options (tyro turns them into flags and ``--help``
text) and whose ``run()`` does the work. Expected failures (bad scene, bad run folder, NaN loss) print one
line naming the file and the problem; set FIELDS_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro
from rich.console import Console

from fields.checkpoint import CheckpointError
from fields.config import ConfigError, RunConfig, SceneConfig, TrainConfig
from fields.registry import FIELD_CONFIGS
from fields.run import RunError, load_run, new_run_dir, resolve_run
from renderers.render import RenderConfig
from scenes import SceneError

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
    grid_resolution: int = 64
    """Occupancy-grid cells per side."""
    output_dir: Path = Path("outputs")
    """Run folders are created under <output-dir>/<scene>/<field>/."""
    resume: Path | None = None
    """Continue this run folder from its newest checkpoint (its saved config is used)."""
    quiet: bool = False
    """No progress bar."""

    def run_config(self) -> RunConfig:
        return RunConfig(scene=self.scene, field=self.field, field_config=getattr(self, self.field),
                         render=self.render, train=self.train, grid_resolution=self.grid_resolution)

    def run(self) -> None:
        from fields.trainer import Trainer

        if self.resume is not None:
            run_dir = resolve_run(self.resume)
            trainer = Trainer(RunConfig.load(run_dir / "config.yaml"), run_dir, console)
            trainer.resume()
        else:
            cfg = self.run_config()
            trainer = Trainer(cfg, None, console)  # loads the scene first: bad data leaves no empty run folder
            run_dir = trainer.run_dir = new_run_dir(self.output_dir, cfg.scene.name, cfg.field)
            console.print(f"Run folder: {run_dir}")
        try:
            trainer.train(show_progress=not self.quiet)
        except KeyboardInterrupt:
            sys.exit(130)
        console.print(f"Trained {trainer.step} steps in {trainer.elapsed:.1f} s; "
                      f"evaluate with `fields eval {run_dir}`")


# One nested options group per backend (--hashgrid.n-levels ...), generated from the registry so that adding a
# backend never touches the CLI.
Train = dataclasses.make_dataclass(
    "Train",
    [(name, Annotated[cls, tyro.conf.arg(help=f"Options of the '{name}' backend.")],
      dataclasses.field(default_factory=cls)) for name, cls in FIELD_CONFIGS.items()],
    bases=(_TrainOptions,))
Train.__doc__ = "Train a radiance field on a scene (default: the embedded procedural scene)."


@dataclass
class Eval:
    """Render held-out views of a trained run; write PSNR/SSIM to <run>/eval/metrics.json and image grids."""

    run_dir: tyro.conf.Positional[Path]
    """Run folder (or its config.yaml)."""
    split: Literal["test", "val", "train"] = "test"
    """Which split to evaluate."""
    every: int = 8
    """Evaluate every N-th view."""
    quiet: bool = False
    """No progress bar."""

    def run(self) -> None:
        from fields.evaluation import evaluate

        run = load_run(self.run_dir)
        split = run.split(self.split)
        out = run.path / "eval" / f"{self.split}-step-{run.step:06d}"
        result = evaluate(run.field, run.grid, split, run.config.render, self.every, out, not self.quiet)
        (run.path / "eval" / "metrics.json").write_text(json.dumps({k: v for k, v in result.items()}, indent=2))
        console.print(f"{self.split}: PSNR {result['psnr']:.2f} dB  SSIM {result['ssim']:.4f}  "
                      f"over {result['views']} views ({result['seconds_per_view']:.2f} s/view); images in {out}")


COMMANDS = {"train": Train, "eval": Eval}
EXPECTED_ERRORS = (SceneError, ConfigError, RunError, CheckpointError, ValueError, OSError)


def main(argv: list[str] | None = None) -> None:
    cmd = tyro.extras.subcommand_cli_from_dict(COMMANDS, args=argv, prog="fields",
                                               description="Neural fields and 3D reconstruction on your CPU.")
    try:
        cmd.run()
    except EXPECTED_ERRORS as e:
        if os.environ.get("FIELDS_DEBUG"):
            raise
        console.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(2)
    except RuntimeError as e:  # TrainingError and friends
        if os.environ.get("FIELDS_DEBUG"):
            raise
        console.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
