"""One rank of the data-parallel tests (tests/test_distributed.py starts two under torchrun).

Usage: ``torchrun --nproc-per-node 2 tests/dist_worker.py OUT STEPS``. Trains the tests' tiny hash grid (rank 0
writes the run folder OUT/hashgrid) and then a tiny Gaussians run, each from rank 0's start-up state as
``fields train`` does, and writes OUT/rank<R>.json: a digest of the occupancy grid after each update, of the
weights at the end, and the Gaussians' count after each densification round, for the test to compare across ranks.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console

from conftest import tiny_config
from fields.backends.gaussians.field import GaussiansConfig
from fields.training.distributed import DistConfig, Distributed, digest
from fields.training.trainer import Trainer


def train(d: Distributed, cfg, run_dir: Path | None) -> dict:
    """Train ``cfg`` on this rank; what the test compares across ranks."""
    trainer = Trainer(cfg, run_dir if d.rank == 0 else None, Console(quiet=True), dist=d)
    state = d.broadcast(trainer.state_dict() if d.rank == 0 else None, "start-up state")
    trainer.load_state_dict(state)
    seen = {"grids": {}, "sizes": {}}

    def record(t: Trainer) -> None:
        if int(t.grid.updates) not in seen["grids"] and t.cfg.field_config.training_steps == "rays":
            seen["grids"][int(t.grid.updates)] = [t.step, digest(t.grid.occs, t.grid.binary)]
        seen["sizes"][t.step] = len(t.field) if hasattr(t.field, "__len__") else 0

    tic = time.perf_counter()
    trainer.train([record], show_progress=False)
    seen["seconds"] = time.perf_counter() - tic
    seen["weights"] = digest(*trainer.field.state_dict().values())
    seen["psnr"] = trainer.last.get("psnr")
    return seen


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    d = Distributed.start(DistConfig(collective_timeout=60), "cpu")
    result = {"hashgrid": train(d, tiny_config(max_steps=steps, grid_every=8), out / "hashgrid")}
    cfg = tiny_config(max_steps=30)
    cfg.field_config = GaussiansConfig(num_init=500, sh_degree=1, densify_from=5, densify_every=5,
                                       densify_until=25, grow_grad2d=1e-4, reset_opacity_every=0)
    result["gaussians"] = train(d, cfg, None)
    (out / f"rank{d.rank}.json").write_text(json.dumps(result))
    d.close()


if __name__ == "__main__":
    main()
