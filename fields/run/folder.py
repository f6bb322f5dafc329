"""Run folders: creating them, and loading a trained run back (config, field, occupancy grid).

Layout (see README): ``outputs/<scene>/<field>/<timestamp>/`` with ``config.yaml``, ``cameras.json``,
``checkpoints/``, ``metrics.jsonl``, ``eval/`` and ``exports/``. Every command that reads a run takes the folder
or its ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from fields.backends.base import Appearance, Field
from fields.run.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from fields.run.config import RunConfig
from fields.run.scene_record import RECORD_NAME, SceneRecord, read_scene_record
from renderers.model import VolumeModel
from renderers.ndc import NDC
from renderers.occupancy import OccupancyGrid
from scenes import SceneSplit


class RunError(ValueError):
    """A run folder that cannot be used; the message names the folder and the problem."""


def new_run_dir(output_dir: Path, scene: str, field: str) -> Path:
    """A fresh, timestamped run folder (created)."""
    base = Path(output_dir) / scene / field / time.strftime("%Y-%m-%d_%H%M%S")
    run, n = base, 1
    while run.exists():
        run, n = base.with_name(f"{base.name}-{n}"), n + 1
    run.mkdir(parents=True)
    return run


def resolve_run(path: Path) -> Path:
    """The run folder for a folder or its ``config.yaml``; RunError if it is not a run."""
    path = Path(path)
    run = path.parent if path.name == "config.yaml" else path
    if not (run / "config.yaml").is_file():
        raise RunError(f"{path}: not a run folder (no config.yaml); pass outputs/<scene>/<field>/<run>")
    return run


LOCK_NAME = "train.lock"


class RunLock:
    """Holds an exclusive lock on a run folder while one trainer writes to it, so that a second ``fields train
    --resume`` of the same run is refused instead of two processes writing one folder. An advisory ``flock`` on
    ``train.lock``: the kernel drops it when the process ends, however it ends, so a killed run never stays
    locked."""

    def __init__(self, run: Path):
        run.mkdir(parents=True, exist_ok=True)
        self.path = run / LOCK_NAME
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunError(f"{run}: another trainer is writing this run folder ({holder}); wait for it to finish "
                           "or stop it first") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def model_box(cfg: RunConfig, data: SceneSplit) -> torch.Tensor:
    """The box a run's field and grid are built over: the scene's box, or with scene contraction the inner region
    [-1, 1]^3 that nerfacto uses: the loaders centre real captures and scale their cameras into the unit sphere,
    so it holds every camera and what they converge on, and walls, windows and sky lie in the contracted shell.
    With NDC, the box of NDC space that every training ray crosses from the near plane to infinity."""
    if cfg.capture.contraction == "on":
        return torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    if cfg.capture.contraction == "ndc":
        return NDC.from_list(cfg.capture.ndc_frame).box(data.cameras)
    return data.aabb


def build_field(cfg: RunConfig, aabb) -> Field:
    """A fresh field for ``cfg`` over the scene box ``aabb``, with the scene contraction and per-image appearance
    its capture section decided (none where still 'auto': runs recorded before these existed)."""
    dim = cfg.capture.appearance_dim
    field = cfg.field_config.build(aabb, Appearance(0 if dim == "auto" else dim, cfg.capture.appearance_images))
    field.contracted = cfg.capture.contraction == "on"
    field.ndc = NDC.from_list(cfg.capture.ndc_frame) if cfg.capture.contraction == "ndc" else None
    return field


def build_model(cfg: RunConfig, aabb) -> tuple[Field, OccupancyGrid]:
    """A fresh field and occupancy grid for ``cfg`` over the scene box ``aabb`` (with scene contraction where the
    run decided on it: both then cover the whole world, the box as their inner region)."""
    return build_field(cfg, aabb), OccupancyGrid(aabb, cfg.grid_resolution, cfg.capture.contraction == "on")


def newest_checkpoint(run: Path) -> tuple[Path, dict]:
    """The newest checkpoint of a run that loads; a corrupt one is reported and the previous one used."""
    problems = []
    for path in list_checkpoints(run):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            warnings.warn(f"{e}; trying the previous checkpoint", stacklevel=2)
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise RunError(f"{run}: no usable checkpoint in {run / 'checkpoints'}{detail}")


@dataclass
class LoadedRun:
    """A trained run ready to render: config, field, grid (eval mode) and the step it was saved at."""

    path: Path
    config: RunConfig
    field: Field
    grid: OccupancyGrid
    step: int

    @property
    def model(self) -> VolumeModel:
        """What renders the run (a ``VolumeModel``, or the Gaussians' splatting model)."""
        return self.field.scene_model(self.grid, self.config.render)

    def split(self, name: str):
        """A split of the run's scene, loaded as it was for training (needs the scene's images); the training
        split with the poses training refined, where it refined them (``capture.camera_refinement``, recorded in
        cameras.json), so that it matches what the field learned."""
        split = self.config.scene.load(name)
        if name == "train" and self.config.capture.camera_refinement == "on" and (self.path / RECORD_NAME).exists():
            split = dataclasses.replace(split, cameras=dataclasses.replace(split.cameras, c2w=self.record.cameras.c2w))
        return split

    @functools.cached_property
    def record(self) -> SceneRecord:
        """Training cameras, scene box and background for viewing and exporting: from the run's
        ``cameras.json``, or for runs trained before it existed from the scene's training split."""
        path = self.path / RECORD_NAME
        return read_scene_record(path) if path.exists() else SceneRecord.of(self.split("train"))


def load_run(path: Path) -> LoadedRun:
    """Load a run's config and newest checkpoint."""
    run = resolve_run(path)
    cfg = RunConfig.load(run / "config.yaml")
    _, state = newest_checkpoint(run)
    field, grid = build_model(cfg, state["grid"]["aabb"])
    field.load_state_dict(state["field"])
    grid.load_state_dict(state["grid"])
    field.eval()
    return LoadedRun(run, cfg, field, grid, int(state["step"]))
