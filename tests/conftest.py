"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory) -> Path:
    """A run folder trained briefly on the procedural scene at half resolution (viewer tests render it).

    The scene is cached in $FIELDS_CACHE (a session folder when unset)."""
    os.environ.setdefault("FIELDS_CACHE", str(tmp_path_factory.mktemp("fields-cache")))
    from fields.config import RunConfig, SceneConfig, TrainConfig
    from fields.hashgrid import HashGridConfig
    from fields.trainer import Trainer
    from renderers.render import RenderConfig

    # A small field, small batches and a coarse march keep this to seconds.
    field = HashGridConfig(n_levels=6, log2_table_size=14, max_resolution=128, hidden=32)
    train = TrainConfig(max_steps=120, max_time=None, log_every=10, lr=2e-2, warmup_steps=5, init_rays=256, target_samples=1 << 12,
                        max_rays=2048, grid_every=4, grid_warmup=16)
    cfg = RunConfig(scene=SceneConfig(downscale=2), field_config=field, grid_resolution=32, train=train,
                    render=RenderConfig(samples_per_diagonal=128))
    run = tmp_path_factory.mktemp("tiny-run")
    Trainer(cfg, run).train(show_progress=False)
    return run
