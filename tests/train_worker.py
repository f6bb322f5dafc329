"""A fork server for kill -9 tests: imports torch and fields and loads the run's scene once, then forks one
training child per request, so each of many kills costs training time only, not a ~5 s interpreter start.

Usage: ``python tests/train_worker.py RUN_DIR`` (RUN_DIR holds config.yaml). Each stdin line is a request:
``train`` (continue the run with ``fields train --resume``, or start it), or ``midwrite`` (the same, but the
second checkpoint write stops halfway, prints ``midwrite``, and waits to be killed). The worker prints
``pid N`` when a child starts and ``exit CODE`` (negative: the signal) when it ends; the child prints
``started STEP`` once it is training. Everything runs on one torch thread: a forked child must never inherit
an OpenMP pool.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from rich.console import Console  # noqa: E402

import fields.run.checkpoint  # noqa: E402
import fields.cli  # noqa: E402
import fields.training.steps  # noqa: E402
import fields.training.trainer  # noqa: E402
from fields.run.config import RunConfig, SceneConfig  # noqa: E402
from renderers.native import native_ops  # noqa: E402


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def child(run_dir: Path, data, rays, midwrite: bool) -> None:
    SceneConfig.load = lambda self, split: data  # the scene was loaded once, before forking
    fields.training.steps.TrainingRays = lambda *_: rays
    fields.cli.console = Console(file=io.StringIO())
    if midwrite:
        real_save, writes = torch.save, [0]

        def half_then_wait(state, f):
            writes[0] += 1
            if writes[0] < 2:
                return real_save(state, f)
            buf = io.BytesIO()
            real_save(state, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            say("midwrite")
            time.sleep(600)

        fields.run.checkpoint.torch.save = half_then_wait

    announced: list[int] = []

    def started(trainer) -> None:
        if not announced:
            announced.append(trainer.step)
            say(f"started {trainer.step}")

    real_train = fields.training.trainer.Trainer.train
    fields.training.trainer.Trainer.train = lambda self, callbacks=(), show_progress=True: real_train(
        self, [*callbacks, started], show_progress)
    if fields.run.checkpoint.list_checkpoints(run_dir):
        fields.cli.main(["train", "--resume", str(run_dir), "--quiet"])
    else:
        trainer = fields.training.trainer.Trainer(RunConfig.load(run_dir / "config.yaml"), run_dir, fields.cli.console)
        trainer.train(callbacks=[started], show_progress=False)


def main() -> None:
    run_dir = Path(sys.argv[1])
    cfg = RunConfig.load(run_dir / "config.yaml")
    native_ops()  # load (or build) the native kernels once, before forking
    data = cfg.scene.load("train")
    rays = fields.training.steps.TrainingRays(data)
    say("ready")
    for line in sys.stdin:
        request = line.strip()
        if not request:
            continue
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(run_dir, data, rays, request == "midwrite")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # noqa: BLE001 - reported to the test, which fails on it
                say(f"error {type(e).__name__}: {e}")
                code = 1
            sys.stdout.flush()
            os._exit(code)
        say(f"pid {pid}")
        _, status = os.waitpid(pid, 0)
        say(f"exit {os.waitstatus_to_exitcode(status)}")


if __name__ == "__main__":
    main()
