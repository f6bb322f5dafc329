"""Gaussian splatting. On lego 200x200: test PSNR/SSIM at the marks (default 300 and 600 s of training time) from a
random initialisation and from a hash-grid teacher (trained here for --teacher-time seconds unless --teacher names
a run), the number of Gaussians, training iterations/s and render frames/s at 200x200. Targets (issue 8): render
>= 20 fps and PSNR from the teacher >= the teacher's - 1 dB. Writes the ``gaussians`` section of BENCHMARKS.md.

With ``--real``, real captures straight from their folders instead (office_table images_2 at 960x540, fern images_8
at 504x378; Gaussians start on their SfM points), every held-out view evaluated at each mark. Targets (issue 25):
office_table >= 26 dB and fern >= 25 dB at 300 s, >= 5 steps/s and render >= 10 fps at 960x540. Writes the
``gaussians-real`` section and one picture per scene in docs/. ``--set crop=256`` etc. overrides GaussiansConfig.

    FIELDS_DATA=../shared/scenes/nerf_synthetic_200 python scripts/bench_gaussians.py
    python scripts/bench_gaussians.py --real office_table fern --marks 60 120 300 600
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, command, machine, write_section  # noqa: E402
from bench_real import SCENES, picture, train_and_evaluate  # noqa: E402
from fields.run.config import CaptureConfig  # noqa: E402
from fields.run.config import RunConfig, SceneConfig, TrainConfig  # noqa: E402
from fields.evaluation import evaluate, view_indices  # noqa: E402
from fields.training.gaussian_distill import distill_to_gaussians  # noqa: E402
from fields.backends.gaussians import GaussiansConfig  # noqa: E402
from fields.backends.hashgrid import HashGridConfig  # noqa: E402
from fields.run.folder import load_run, new_run_dir  # noqa: E402
from fields.training.trainer import Trainer  # noqa: E402


class MarkEvaluator:
    """Trainer callback: evaluate the test views when training time passes each mark (outside the clock)."""

    def __init__(self, test, every: int, marks: list[float], label: str):
        self.test, self.every, self.marks, self.label, self.rows = test, every, sorted(marks), label, []
        self.seconds = 0.0  # spent evaluating

    def __call__(self, tr: Trainer) -> None:
        if self.marks and tr.elapsed >= self.marks[0]:
            mark, tic = self.marks.pop(0), time.perf_counter()
            res = evaluate(tr.model, self.test, self.every, show_progress=False)
            self.rows.append({"run": self.label, "mark": mark, "elapsed": tr.elapsed, "step": tr.step,
                              "psnr": res["psnr"], "ssim": res["ssim"], **tr.field.stats(),
                              "it_per_s": tr.step / tr.elapsed, "fps": render_fps(tr.model, self.test, self.every)})
            print(json.dumps(self.rows[-1]), flush=True)
            self.seconds += time.perf_counter() - tic


@torch.no_grad()
def render_fps(model, test, every: int) -> float:
    """Frames per second of ``model.render`` over the evaluated test views."""
    views, bg = view_indices(len(test), every), torch.tensor(test.background)
    tic = time.perf_counter()
    for i in views:
        model.render(test.cameras, i, bg)
    return len(views) / (time.perf_counter() - tic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="lego")
    ap.add_argument("--marks", type=float, nargs="+", default=[300, 600], help="training seconds to evaluate at")
    ap.add_argument("--teacher", type=Path, help="a trained run to distill (default: train a hash grid here)")
    ap.add_argument("--teacher-time", type=float, default=300, help="seconds of hash-grid training for the teacher")
    ap.add_argument("--num-points", type=int, default=50_000, help="Gaussians seeded from the teacher")
    ap.add_argument("--teacher-views", type=int, default=50, help="extra views rendered by the teacher")
    ap.add_argument("--every", type=int, default=8, help="evaluate every N-th test view")
    ap.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "bench")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    ap.add_argument("--real", nargs="+", choices=list(SCENES), help="real captures instead of lego")
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "scenes" / "real")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="GaussiansConfig overrides")
    args = ap.parse_args()
    if args.real:
        return real_captures(args)

    scene, budget = SceneConfig(scene=args.scene), TrainConfig(max_time=max(args.marks))
    test = scene.load("test")
    random = MarkEvaluator(test, args.every, args.marks, "random init")
    cfg = RunConfig(scene=scene, field_config=GaussiansConfig(), train=budget)
    Trainer(cfg, new_run_dir(args.output_dir, args.scene, "gaussians")).train(callbacks=[random])

    if args.teacher is None:
        teacher_cfg = RunConfig(scene=scene, field_config=HashGridConfig(),
                                train=TrainConfig(max_time=args.teacher_time))
        args.teacher = new_run_dir(args.output_dir, args.scene, "hashgrid")
        Trainer(teacher_cfg, args.teacher).train()
    teacher = load_run(args.teacher)
    t_res = evaluate(teacher.model, test, args.every, show_progress=False)
    print(json.dumps({"teacher": str(args.teacher), "psnr": t_res["psnr"]}), flush=True)
    seeded = MarkEvaluator(test, args.every, args.marks, "from teacher")
    tic = time.perf_counter()
    distill_to_gaussians(teacher, new_run_dir(args.output_dir, args.scene, "gaussians-distilled"),
                         train=TrainConfig(max_time=max(args.marks)), num_points=args.num_points,
                         n_teacher_views=args.teacher_views, callbacks=[seeded])
    setup = time.perf_counter() - tic - max(args.marks) - seeded.seconds

    rows = random.rows + seeded.rows
    (Path(args.output_dir) / f"bench_gaussians_{args.scene}.json").write_text(json.dumps(rows, indent=2))
    table = ["| start | training time | steps | test PSNR (dB) | test SSIM | Gaussians | train it/s | render fps |",
             "|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['run']} | {r['mark']:.0f} s | {r['step']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
              f"{r['gaussians']} | {r['it_per_s']:.2f} | {r['fps']:.1f} |" for r in rows]
    best = max((r["psnr"] for r in seeded.rows), default=float("nan"))
    body = (f"## gaussians on {args.scene} {'x'.join(map(str, test.cameras.size(0)))} (every {args.every}th test view, "
            f"{len(view_indices(len(test), args.every))} views)\n\n" + "\n".join(table) +
            f"\n\nTeacher: {teacher.config.field} `{args.teacher}`, test PSNR {t_res['psnr']:.2f} dB; from it, "
            f"{best:.2f} dB (target >= {t_res['psnr'] - 1:.2f}). Seeding {args.num_points} points and rendering "
            f"{args.teacher_views} teacher views took about {setup:.0f} s before training (not in the training time). "
            "Render fps: `render` of the evaluated test views; eval time is excluded from training time.")
    print(body)
    if not args.no_write:
        write_section("gaussians", body)


def overrides(pairs: list[str]) -> GaussiansConfig:
    """GaussiansConfig with ``key=value`` overrides, each value parsed as the default's type."""
    cfg = GaussiansConfig()
    for pair in pairs:
        key, _, value = pair.partition("=")
        kind = type(getattr(cfg, key))
        cfg = dataclasses.replace(cfg, **{key: (value.lower() == "true") if kind is bool else kind(value)})
    return cfg


def real_captures(args: argparse.Namespace) -> None:
    """The ``--real`` benchmark: one run per capture, evaluated at each mark, a table and a picture each."""
    rows, field_config = [], overrides(args.set)
    for scene in args.real:
        got, trainer = train_and_evaluate(scene, "gaussians", args.marks, CaptureConfig(), args.output_dir,
                                          args.data_root, field_config, time_render=True)
        test = trainer.cfg.scene.load("test")
        for r in got:
            r["size"] = "x".join(map(str, test.cameras.size(0)))
        rows += got
        if not args.no_write:
            picture(trainer, scene, "gaussians", ROOT / "docs" / f"real_{scene}_gaussians.png")
    table = ["| scene | size | training time | steps | held-out PSNR (dB) | SSIM | Gaussians | train it/s | "
             "render fps | eval s/view |", "|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['scene']} | {r['size']} | {r['mark']:.0f} s | {r['step']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
              f"{r['gaussians']} | {r['it_per_s']:.2f} | {1 / r['frame_s']:.1f} | {r['render_s']:.2f} |" for r in rows]
    settings = ", ".join(args.set) or "defaults"
    body = (f"## gaussians on real captures (bench_gaussians.py --real)\n\nCommand: `{command()}` on {machine()}, "
            f"{time.strftime('%Y-%m-%d')}. GaussiansConfig: {settings}. Every 8th image held out, every held-out "
            "view evaluated; Gaussians start on the SfM points; eval time excluded from training time; render fps "
            "from `model.render` alone over the held-out views at the training size (no grad); eval s/view also "
            "holds PSNR and SSIM (at 960x540 SSIM costs ~3x a render).\n\n" + "\n".join(table)
            + "".join(f"\n\n![{s}](docs/real_{s}_gaussians.png)" for s in args.real))
    print(body)
    if not args.no_write:
        write_section("gaussians-real", body)


if __name__ == "__main__":
    main()
