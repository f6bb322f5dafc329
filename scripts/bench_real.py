"""Real captures straight from their folders: office_table (360-degree indoor, COLMAP, images_2: 960x540) and fern
(forward-facing LLFF, images_8: 504x378), every 8th image held out and every held-out view evaluated.

For each scene and backend: held-out PSNR/SSIM at the given training times (one run whose schedule follows the
longest; eval time excluded), steps, and the seconds to render one held-out view at the training resolution.
With ``--ablate``, one run per capture setting turned off in turn (contraction, appearance codes, camera
refinement, distortion loss) at ``--ablate-budget`` seconds, against the defaults at that budget. Writes the
``real`` section of BENCHMARKS.md and one picture per scene (ground truth | render | inverse depth of a held-out
view) in docs/.

    python scripts/bench_real.py                                    # hashgrid, 120 / 300 s, both scenes
    python scripts/bench_real.py --fields hashgrid gaussians --marks 120 300 600 --ablate
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
from fields.backends.base import FieldConfig  # noqa: E402
from fields.backends.registry import FIELD_CONFIGS  # noqa: E402
from fields.evaluation import evaluate  # noqa: E402
from fields.run.config import CaptureConfig, RunConfig, SceneConfig, TrainConfig  # noqa: E402
from fields.run.folder import new_run_dir  # noqa: E402
from fields.training.trainer import Trainer  # noqa: E402
from renderers.imaging import colormap, on_background, write_png  # noqa: E402

SCENES = {"office_table": 2, "fern": 8}  # name -> downscale (images_2, images_8)
ABLATIONS = {"no contraction": {"contraction": "off"}, "no appearance": {"appearance_dim": 0},
             "no camera refinement": {"camera_refinement": "off"}, "no distortion loss": {"distortion_weight": 0.0}}


def train_and_evaluate(scene: str, field: str, marks: list[float], capture: CaptureConfig, out: Path,
                       data_root: Path, field_config: FieldConfig | None = None, time_render: bool = False
                       ) -> tuple[list[dict], Trainer]:
    """One run of ``max(marks)`` seconds (the field's defaults unless ``field_config``), evaluated on every
    held-out view at each mark. ``time_render`` also times ``model.render`` alone over those views
    (``frame_s``): eval's seconds per view include the metrics, which outweigh a fast renderer's frame."""
    cfg = RunConfig(scene=SceneConfig(data=data_root / scene, downscale=SCENES[scene]),
                    field_config=field_config or FIELD_CONFIGS[field](), capture=capture,
                    train=TrainConfig(max_time=max(marks)))
    trainer = Trainer(cfg, new_run_dir(out, scene, field))
    test = cfg.scene.load("test")
    pending, rows = sorted(marks), []

    def at_mark(tr: Trainer) -> None:
        if pending and tr.elapsed >= pending[0]:
            mark = pending.pop(0)
            res = evaluate(tr.model, test, every=1, show_progress=False)
            rows.append({"scene": scene, "field": field, "mark": mark, "step": tr.step, "psnr": res["psnr"],
                         "psnr_every_pixel": res.get("psnr_every_pixel", res["psnr"]), "ssim": res["ssim"],
                         "views": res["views"], "render_s": res["seconds_per_view"],
                         "it_per_s": tr.step / tr.elapsed, **tr.field.stats()})
            if time_render:
                rows[-1]["frame_s"] = frame_seconds(tr.model, test)
            print(json.dumps(rows[-1]), flush=True)

    trainer.train(callbacks=[at_mark], show_progress=False)
    return rows, trainer


@torch.no_grad()
def frame_seconds(model, split) -> float:
    """Seconds per view of ``model.render`` alone (no grad) over every view of ``split``."""
    bg = torch.tensor(split.background)
    tic = time.perf_counter()
    for i in range(len(split)):
        model.render(split.cameras, i, bg)
    return (time.perf_counter() - tic) / len(split)


@torch.no_grad()
def picture(trainer: Trainer, scene: str, field: str, path: Path) -> None:
    """Ground truth | render | inverse depth of the first held-out view."""
    test = trainer.cfg.scene.load("test")
    bg = torch.tensor(test.background)
    out = trainer.model.render(test.cameras, 0, bg)
    disparity = out["opacity"] / (out["depth"] + 1e-6)  # 1 / (depth / opacity): the far shell fades to dark
    lo, hi = disparity.quantile(0.02).item(), disparity.quantile(0.98).item()
    row = torch.cat([on_background(test.rgba(0), bg), out["rgb"].clamp(0, 1), colormap(disparity, lo, hi)], 1)
    write_png(path, row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--fields", nargs="+", default=["hashgrid"], choices=list(FIELD_CONFIGS))
    ap.add_argument("--marks", type=float, nargs="+", default=[120, 300], help="training seconds to evaluate at")
    ap.add_argument("--ablate", action="store_true", help="also one run per capture setting turned off")
    ap.add_argument("--ablate-budget", type=float, default=120.0)
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "scenes" / "real")
    ap.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "bench_real")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md and docs/ alone")
    args = ap.parse_args()

    rows, ablation = [], []
    for scene in args.scenes:
        for field in args.fields:
            got, trainer = train_and_evaluate(scene, field, args.marks, CaptureConfig(), args.output_dir,
                                              args.data_root, time_render=True)
            rows += got
            if not args.no_write and field == args.fields[0]:
                picture(trainer, scene, field, ROOT / "docs" / f"real_{scene}_{field}.png")
            settings = trainer.cfg.capture
            print(f"{scene} {field}: capture settings {dataclasses.asdict(settings)}", flush=True)
        if args.ablate:
            base = [r for r in rows if r["scene"] == scene and r["field"] == args.fields[0]
                    and r["mark"] == args.ablate_budget]
            if not base:  # the defaults at the ablation budget were not among the marks
                base, _ = train_and_evaluate(scene, args.fields[0], [args.ablate_budget], CaptureConfig(),
                                             args.output_dir, args.data_root)
            ablation.append({**base[0], "variant": "defaults"})
            for name, change in ABLATIONS.items():
                got, _ = train_and_evaluate(scene, args.fields[0], [args.ablate_budget], CaptureConfig(**change),
                                            args.output_dir, args.data_root)
                ablation.append({**got[0], "variant": name})

    table = ["| scene | field | training time | steps | held-out PSNR (dB) | every pixel | SSIM | views "
             "| render s/view | eval s/view |", "|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['scene']} | {r['field']} | {r['mark']:.0f} s | {r['step']} | {r['psnr']:.2f} | "
              f"{r['psnr_every_pixel']:.2f} | {r['ssim']:.4f} | {r['views']} | {r['frame_s']:.2f} | "
              f"{r['render_s']:.2f} |" for r in rows]
    body = (f"Command: `{command()}` on {machine()}, {time.strftime('%Y-%m-%d')}. Every 8th image held out, every "
            "held-out view evaluated (held-out views use the mean appearance code) over the pixels the scene keeps "
            "(office_table's black padding rows masked: README, Use), every pixel: PSNR with them; render "
            "s/view: `model.render` alone over the held-out views, eval s/view: with the metrics.\n\n"
            + "\n".join(table))
    if ablation:
        body += (f"\n\nAblation ({args.fields[0]}, {args.ablate_budget:.0f} s, one setting off at a time):\n\n"
                 "| scene | variant | held-out PSNR (dB) | SSIM | steps |\n|---|---|---|---|---|\n")
        body += "\n".join(f"| {r['scene']} | {r['variant']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['step']} |"
                          for r in ablation)
    body += "".join(f"\n\n![{s}](docs/real_{s}_{args.fields[0]}.png)" for s in args.scenes)
    print(body)
    if not args.no_write:
        write_section("real", "## Real captures (bench_real.py)\n\n" + body)


if __name__ == "__main__":
    main()
