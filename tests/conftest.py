"""Shared pytest fixtures. Each fixture is self-contained and named for what it provides."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def export_tiny_run(tmp_path_factory):
    """Folder of a procedural-scene run trained briefly (half-size images, small hash grid and batch, 200
    steps), for the export tests. The scene is cached in $FIELDS_CACHE (a session folder if unset)."""
    from rich.console import Console

    from fields.config import RunConfig, SceneConfig, TrainConfig
    from fields.hashgrid import HashGridConfig
    from fields.trainer import Trainer
    from renderers.render import RenderConfig

    if not os.environ.get("FIELDS_CACHE"):
        os.environ["FIELDS_CACHE"] = str(tmp_path_factory.mktemp("fields-cache"))
    cfg = RunConfig(scene=SceneConfig(downscale=2), field="hashgrid",
                    field_config=HashGridConfig(n_levels=8, log2_table_size=15, max_resolution=128),
                    render=RenderConfig(samples_per_diagonal=256),
                    train=TrainConfig(max_time=None, max_steps=200, target_samples=8192, warmup_steps=10,
                                      grid_every=8, grid_warmup=64, log_every=50),
                    grid_resolution=32)
    run_dir = tmp_path_factory.mktemp("export-run") / "procedural"
    Trainer(cfg, run_dir, Console(quiet=True)).train(show_progress=False)
    return run_dir
