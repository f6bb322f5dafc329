"""Viewer benchmark on lego with the hash grid: preview frames per second at 128 and 256 px (idle and while
training), and training samples/s without a viewer, with a viewer open and idle, and while the viewer renders
continuously (a user dragging the camera). Writes its section of BENCHMARKS.md.

    FIELDS_DATA=/work/shared/scenes/nerf_synthetic_200 python scripts/bench_viewer.py   # about 3 minutes
    python scripts/bench_viewer.py --run outputs/lego/hashgrid/<run>   # start from a trained run (copied)

Preview speed depends on how far the occupancy grid has pruned the box: a barely trained field is sampled
almost everywhere and renders far slower than a converged one, so prefer --run with a trained lego run.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fields.run.config import RunConfig, SceneConfig, TrainConfig  # noqa: E402
from fields.run.folder import resolve_run  # noqa: E402
from fields.training.trainer import Trainer  # noqa: E402
from viewer import RenderTarget, Viewer  # noqa: E402
from viewer.camera import c2w_to_viser, vertical_fov, viewer_camera  # noqa: E402
from ws_client import ViserTab  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from benchlib import write_section  # noqa: E402



def train_for(trainer: Trainer, seconds: float, callbacks=()) -> float:
    """Train ``seconds`` more of training time; returns samples per second of training time."""
    total = {"samples": 0}

    def count(t: Trainer) -> None:
        total["samples"] += int(t.last["samples"])

    start = trainer.elapsed
    trainer.cfg.train.max_time, trainer.cfg.train.max_steps = start + seconds, None
    trainer.train(callbacks=[count, *callbacks], show_progress=False)
    return total["samples"] / (trainer.elapsed - start)


def render_loop(target: RenderTarget, cams, side: int, stop: threading.Event, seconds: list[float],
                budget: float) -> None:
    """Render full frames at ``side`` px the way a viewer thread does (one torch thread), orbiting the cameras."""
    torch.set_num_threads(1)
    t0, i = time.monotonic(), 0
    while not stop.is_set() and time.monotonic() - t0 < budget:
        wxyz, pos = c2w_to_viser(cams.c2w[i % len(cams)].numpy())
        cam = viewer_camera(wxyz, pos, vertical_fov(cams, 0), side, side)
        tic = time.perf_counter()
        target.image(cam, "RGB")
        seconds.append(time.perf_counter() - tic)
        i += 7


def fps(seconds: list[float]) -> str:
    return f"{1 / statistics.median(seconds):.2f}" if seconds else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", default="lego")
    ap.add_argument("--run", type=Path, help="continue this trained run (a copy) instead of training from scratch")
    ap.add_argument("--warmup", type=float, default=40.0, help="seconds of training before measuring")
    ap.add_argument("--phase", type=float, default=20.0, help="seconds of training per measurement")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="preview sizes (longer side, px)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    t_start = time.monotonic()
    quiet = Console(file=io.StringIO())

    work = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    if args.run is not None:
        shutil.copytree(resolve_run(args.run), work / "run")
        cfg = RunConfig.load(work / "run" / "config.yaml")
        trainer = Trainer(cfg, work / "run", quiet)
        trainer.resume()
        source = f"{cfg.scene.name} run {args.run.name} at step {trainer.step}"
    else:
        cfg = RunConfig(scene=SceneConfig(scene=args.scene), train=TrainConfig(max_time=args.warmup))
        trainer = Trainer(cfg, work / "run", quiet)
        print(f"warm-up: training {args.scene} for {args.warmup:.0f} s ...", flush=True)
        trainer.train(show_progress=False)
        source = f"{args.scene} trained {args.warmup:.0f} s from scratch"
    target = RenderTarget(trainer.model, torch.tensor(trainer.data.background), trainer.step)
    cams = trainer.data.cameras

    rows = {}
    for side in args.sizes:  # idle: nothing trains (a thread of its own, as in the viewer)
        secs: list[float] = []
        worker = threading.Thread(target=render_loop, args=(target, cams, side, threading.Event(), secs, 8.0))
        worker.start()
        worker.join()
        rows[f"idle_{side}"] = secs
        print(f"preview {side}px idle: {fps(secs)} fps ({len(secs)} frames)", flush=True)

    sps_alone = train_for(trainer, args.phase)
    print(f"training alone: {sps_alone:,.0f} samples/s", flush=True)

    viewer = Viewer(target, cams, trainer.data.aabb, port=0, training=True, console=quiet)
    cap = max(args.sizes)
    viewer._max_side.value = cap
    tab = ViserTab(viewer.url, cap, cap, fov_y=vertical_fov(cams, 0))
    tab.send_camera(cams.c2w[3].numpy())
    while (img := tab.next_image(300)) is not None and max(img.shape[:2]) < cap:
        pass  # let the open tab refine to full resolution before measuring
    frames_before = sum(r.frames for r in viewer.renderers().values())
    sps_idle = train_for(trainer, args.phase, [viewer.on_step])
    refreshes = sum(r.frames for r in viewer.renderers().values()) - frames_before
    print(f"training with the viewer open and idle: {sps_idle:,.0f} samples/s ({refreshes} live refreshes)",
          flush=True)
    tab.close()
    viewer.close()

    sps_drag = {}
    for side in args.sizes:  # a viewer thread rendering continuously while training runs
        stop, secs = threading.Event(), []
        worker = threading.Thread(target=render_loop, args=(target, cams, side, stop, secs, 1e9))
        worker.start()
        sps_drag[side] = train_for(trainer, args.phase)
        stop.set()
        worker.join()
        rows[f"train_{side}"] = secs
        print(f"preview {side}px while training: {fps(secs)} fps; training {sps_drag[side]:,.0f} samples/s",
              flush=True)

    total = time.monotonic() - t_start
    lines = [
        "## Viewer (`scripts/bench_viewer.py`)",
        "",
        f"Field: {source}; {args.phase:.0f} s per training phase; bench took {total:.0f} s. Each viewer render "
        "thread uses one torch thread (native kernels where built).",
        "",
        "| preview (full frame) | idle fps | fps while training | training samples/s meanwhile |",
        "|---|---|---|---|",
    ]
    for side in args.sizes:
        lines.append(f"| {side} x {side} px | {fps(rows[f'idle_{side}'])} | {fps(rows[f'train_{side}'])} | "
                     f"{sps_drag[side]:,.0f} ({sps_drag[side] / sps_alone:.0%}) |")
    lines += [
        "",
        "| training | samples/s | vs. alone |",
        "|---|---|---|",
        f"| no viewer | {sps_alone:,.0f} | 100% |",
        f"| viewer open, idle tab (live refresh at <= 10% duty) | {sps_idle:,.0f} | {sps_idle / sps_alone:.0%} |",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section("viewer", section)


if __name__ == "__main__":
    main()
